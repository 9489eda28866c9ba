// Tasks: the paged list with exact counts by status (GET /v1/stats) and a lateness chart, one
// task's detail with its attempts, and the create and modify forms. Live events update rows in
// place and refresh the counts.

import { api, page, query } from "./api.js";
import { alertBox, badge, confirmButton, fill, h, heading, ms, pretty, svg, when } from "./dom.js";
import { field, input, onSubmit, Problems, specEditor, whenEditor } from "./forms.js";

export const STATUSES = ["scheduled", "running", "retrying", "succeeded", "failed", "cancelled"];
const CHANGEABLE = new Set(["scheduled", "retrying"]);
const LIMIT = 50;
const MAX_INSERTS = 50; // more new tasks than this at once: reload the first page instead

// Kept across views: the latest full copy of loaded tasks (for the lateness chart) and the filter.
const cache = new Map();
let filter = "";

/** Forget everything: called on sign-out, so the next account starts clean. */
export function reset() {
  cache.clear();
  filter = "";
}

function remember(task) {
  cache.set(task.id, task);
}

export function mount(root, [id, action]) {
  if (!id) return listView(root);
  if (id === "new") return createView(root);
  if (action === "edit") return editView(root, id);
  return detailView(root, id);
}


// -- the list ----------------------------------------------------------------------------------

function listView(root) {
  const rows = new Map(); // id -> <tr>
  let cursor = null;
  let generation = 0; // answers for an older filter are dropped
  let counts = null; // the owner's tasks by status, from GET /v1/stats
  const tbody = h("tbody");
  const more = h("button", { type: "button", onclick: () => load(false) }, "Load more");
  const shown = h("span", { class: "muted", role: "status" });
  const problem = alertBox();
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Filter by status" });
  const chart = h("figure", { class: "chart" });
  const table = h(
    "table",
    { class: "list tasks" },
    h("caption", { class: "sr-only" }, "Tasks, newest first"),
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col" }, "Task"),
        h("th", { scope: "col" }, "Due"),
        h("th", { scope: "col", class: "num opt" }, "Attempts"),
        h("th", { scope: "col", class: "num opt" }, "Lateness"),
        h("th", { scope: "col", class: "opt" }, "Queue"),
      ),
    ),
    tbody,
  );
  fill(
    root,
    heading("Tasks", h("a", { href: "#/tasks/new", class: "button primary" }, "New task")),
    h("div", { class: "summary" }, chips, chart),
    problem,
    h("div", { class: "scroll" }, table),
    h("div", { class: "pager" }, shown, more),
  );

  function row(t) {
    const last = t.attempts.at(-1);
    return h(
      "tr",
      { "data-id": t.id, "data-status": t.status },
      h("td", null, badge(t.status), t.status === "failed" ? h("button", { type: "button", class: "link", onclick: () => retry(t.id) }, "Retry") : null),
      h(
        "td",
        { class: "task" },
        h("a", { href: `#/tasks/${t.id}` }, t.name || t.id),
        h("div", { class: "sub" }, `${t.method} ${t.url}`),
      ),
      h("td", null, when(t.run_at)),
      h("td", { class: "num opt" }, `${t.attempts.length} / ${t.retries + 1}`),
      h("td", { class: "num opt" }, ms(last?.lateness_ms)),
      h("td", { class: "opt" }, t.queue ?? "default"),
    );
  }

  async function retry(id) {
    try {
      put(await api("POST", `/v1/tasks/${id}/retry`));
      problem.show("");
      stats.soon();
    } catch (err) {
      problem.show(err.message);
    }
  }

  function put(t) {
    remember(t);
    const old = rows.get(t.id);
    const tr = row(t);
    if (old) {
      rows.set(t.id, tr);
      return old.replaceWith(tr);
    }
    // Ids sort by creation time: a new task goes above the first older one; one older than
    // every loaded row belongs to a page not loaded yet.
    const next = [...tbody.children].find((other) => other.dataset.id < t.id);
    if (!next && cursor) return;
    rows.set(t.id, tr);
    tbody.insertBefore(tr, next ?? null);
  }

  function footer() {
    shown.textContent = rows.size
      ? `Showing ${rows.size} task${rows.size > 1 ? "s" : ""}${cursor ? "" : ", all there are"}.`
      : filter
        ? `No ${filter} tasks.`
        : "No tasks yet: create one with New task.";
    more.hidden = !cursor;
  }

  async function load(fresh) {
    const gen = fresh ? ++generation : generation;
    more.disabled = true;
    try {
      const path = `/v1/tasks${query({ status: filter, limit: LIMIT, cursor: fresh ? null : cursor })}`;
      const answer = page(await api("GET", path));
      if (gen !== generation) return;
      problem.show("");
      if (fresh) {
        rows.clear();
        tbody.replaceChildren();
      }
      const frag = document.createDocumentFragment();
      for (const t of answer.items) {
        remember(t);
        const tr = row(t);
        rows.set(t.id, tr);
        frag.append(tr);
      }
      tbody.append(frag);
      cursor = answer.next_cursor;
      footer();
      redrawChart.now();
    } catch (err) {
      if (gen === generation) problem.show(err.message);
    } finally {
      more.disabled = false;
    }
  }

  const redrawChart = throttled(() => renderChart(chart), 250);
  const stats = liveStats((answer) => {
    counts = answer.tasks;
    renderChips();
  });

  function renderChips() {
    const total = counts && STATUSES.reduce((sum, s) => sum + (counts[s] ?? 0), 0);
    const chip = (value, label, n) => {
      const b = h(
        "button",
        { type: "button", class: `chip s-${value || "all"}`, "aria-pressed": String(filter === value), "data-status": value || "all" },
        label,
        " ",
        h("span", { class: "count" }, counts ? String(n ?? 0) : "…"),
      );
      b.addEventListener("click", () => {
        if (filter === value) return;
        filter = value;
        renderChips();
        load(true);
      });
      return b;
    };
    const focused = chips.contains(document.activeElement) ? document.activeElement.dataset.status : null;
    fill(
      chips,
      chip("", "All", total),
      STATUSES.map((s) => chip(s, s, counts?.[s])),
    );
    if (focused) chips.querySelector(`[data-status="${focused}"]`)?.focus();
  }

  // Live: a known row updates in place; a new task is fetched and inserted when it fits the filter.
  const pending = new Set();
  const fresh = new Set();
  const flush = throttled(async () => {
    if (fresh.size > MAX_INSERTS) {
      pending.clear();
      fresh.clear();
      return load(true);
    }
    const ids = [...pending];
    pending.clear();
    fresh.clear();
    await inBatches(ids, 6, async (id) => {
      try {
        const t = await api("GET", `/v1/tasks/${id}`);
        if (rows.has(id) || !filter || t.status === filter) put(t);
        else remember(t);
      } catch {
        // gone or not ours any more: leave the row as it was
      }
    });
    footer();
    redrawChart.soon();
  }, 150);

  footer();
  renderChips();
  redrawChart.now();
  load(true);

  return {
    onEvent(e) {
      if (e.type !== "task") return;
      stats.soon();
      const tr = rows.get(e.id);
      if (tr) {
        tr.dataset.status = e.status;
        tr.firstChild.replaceChildren(badge(e.status));
      } else if (e.status !== "scheduled" || (filter && filter !== "scheduled")) {
        return;
      } else {
        fresh.add(e.id);
      }
      pending.add(e.id);
      flush.soon();
    },
    refresh() {
      stats.now();
      load(true);
    },
    unmount() {
      flush.cancel();
      redrawChart.cancel();
      stats.cancel();
    },
  };
}

/** Histogram of the lateness of the most recent attempts the page knows of. */
const EDGES = [1, 2, 5, 10, 20, 50, 100, 1000, Infinity];
const LABELS = ["<1", "1–2", "2–5", "5–10", "10–20", "20–50", "50–100", "0.1–1s", "≥1s"];

function renderChart(figure) {
  const all = [];
  for (const t of cache.values()) for (const a of t.attempts) all.push(a);
  all.sort((a, b) => (a.started_at < b.started_at ? 1 : -1));
  const recent = all.slice(0, 500).map((a) => a.lateness_ms);
  const counts = EDGES.map(() => 0);
  for (const v of recent) counts[EDGES.findIndex((e) => v < e)] += 1;
  const sorted = [...recent].sort((a, b) => a - b);
  const pct = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  const caption = recent.length
    ? `Lateness of the last ${recent.length} attempt${recent.length > 1 ? "s" : ""}: p50 ${ms(pct(0.5))}, p99 ${ms(pct(0.99))}, max ${ms(sorted.at(-1))}`
    : "Lateness: no attempts yet";
  const top = Math.max(1, ...counts);
  const W = 36;
  const bars = counts.map((n, i) => {
    const height = Math.round((n / top) * 70);
    return svg(
      "g",
      null,
      svg("rect", { x: i * W + 4, y: 80 - height, width: W - 8, height, class: "bar" }, svg("title", null, `${LABELS[i]} ms: ${n}`)),
      n ? svg("text", { x: i * W + W / 2, y: 76 - height, class: "n" }, n) : null,
      svg("text", { x: i * W + W / 2, y: 94, class: "label" }, LABELS[i]),
    );
  });
  fill(
    figure,
    svg("svg", { viewBox: `0 0 ${W * EDGES.length} 98`, role: "img", "aria-label": caption }, bars),
    h("figcaption", null, caption),
  );
}

// -- one task ----------------------------------------------------------------------------------

function detailView(root, id) {
  const body = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const title = heading(id);
  const problem = alertBox();
  fill(root, h("p", null, h("a", { href: "#/tasks" }, "← All tasks")), title, problem, body);
  let task = null;

  async function load() {
    try {
      task = await api("GET", `/v1/tasks/${encodeURIComponent(id)}`);
      remember(task);
      render();
    } catch (err) {
      if (!task) fill(body, h("p", { class: "form-error" }, err.message));
    }
  }

  function render() {
    title.querySelector("h1").textContent = task.name || task.id;
    const actions = h("div", { class: "actions" });
    const change = async (verb) => {
      try {
        task = await api("POST", `/v1/tasks/${task.id}/${verb}`);
        remember(task);
        problem.show("");
        render();
        title.querySelector("h1").focus();
      } catch (err) {
        problem.show(err.message);
        load();
      }
    };
    if (CHANGEABLE.has(task.status)) {
      actions.append(
        h("a", { href: `#/tasks/${task.id}/edit`, class: "button" }, "Modify"),
        " ",
        confirmButton("Cancel task", "Cancel this task?", () => change("cancel")),
      );
    }
    if (task.status === "failed") actions.append(h("button", { type: "button", onclick: () => change("retry") }, "Retry"));
    const t = task;
    fill(
      body,
      h("p", { class: "status-line" }, badge(t.status), " ", h("code", null, t.id)),
      actions,
      h(
        "dl",
        { class: "facts" },
        fact("Call", `${t.method} ${t.url}`),
        fact("Queue", t.queue ?? "default"),
        t.schedule_id ? fact("Schedule", h("a", { href: "#/schedules" }, t.schedule_id)) : null,
        fact("Due", when(t.run_at)),
        fact("Created", when(t.created_at)),
        fact("Finished", when(t.finished_at)),
        fact(
          "Retry policy",
          `${t.retries} retries, first after ${t.retry_delay} s, ×${t.backoff}, at most ${t.max_retry_delay} s apart; timeout ${t.timeout} s`,
        ),
        t.orchestration_id ? fact("Orchestration", h("a", { href: `#/orchestrations/${t.orchestration_id}` }, t.orchestration_id)) : null,
        fact("Headers", Object.keys(t.headers).length ? h("pre", null, pretty(t.headers)) : "none"),
        fact("Payload", h("pre", null, pretty(t.payload))),
      ),
      h("h2", null, `Attempts (${t.attempts.length} of at most ${t.retries + 1})`),
      t.attempts.length ? attemptsTable(t.attempts) : h("p", { class: "muted" }, "No attempt yet."),
    );
  }

  const refetch = throttled(load, 100);
  load();
  return {
    onEvent(e) {
      if (e.type === "task" && e.id === id) refetch.soon();
    },
    refresh: load,
    unmount: () => refetch.cancel(),
  };
}

function fact(term, value) {
  return [h("dt", null, term), h("dd", null, value)];
}

function attemptsTable(attempts) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { class: "list attempts" },
      h(
        "thead",
        null,
        h(
          "tr",
          null,
          ["#", "Scheduled for", "Started", "Lateness", "Duration", "Answer"].map((c) => h("th", { scope: "col" }, c)),
        ),
      ),
      h(
        "tbody",
        null,
        attempts.map((a) =>
          h(
            "tr",
            null,
            h("td", null, a.number),
            h("td", null, when(a.scheduled_for)),
            h("td", null, when(a.started_at)),
            h("td", { class: "num" }, ms(a.lateness_ms)),
            h("td", { class: "num" }, ms(a.duration_ms)),
            h(
              "td",
              { class: "answer" },
              a.status_code != null ? h("span", { class: `code c${String(a.status_code)[0]}` }, a.status_code) : null,
              a.error ? h("span", { class: "error-text" }, ` ${a.error}`) : null,
              a.response_body ? h("details", null, h("summary", null, "Response"), h("pre", null, a.response_body)) : null,
            ),
          ),
        ),
      ),
    ),
  );
}

// -- create and modify -------------------------------------------------------------------------

function taskForm(values, { patch }) {
  const name = input({ value: values.name ?? "", maxlength: 200, placeholder: "optional" });
  const whenEd = whenEditor({ patch });
  const spec = specEditor(values, { patch });
  const queue = input({ placeholder: "default", maxlength: 64, readonly: patch, value: values.queue ?? "" }); // fixed once made
  const form = h(
    "form",
    { class: "card", novalidate: true },
    h("p", { class: "form-error", role: "alert", tabindex: -1, hidden: true }),
    h("div", { class: "row" }, field("Name", name, { rel: "name", cls: "grow" }), field("Queue", queue, { rel: "queue" })),
    whenEd.el,
    spec.el,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, patch ? "Save changes" : "Create task")),
  );
  function read() {
    const problems = new Problems();
    const body = { ...spec.read("", problems), ...whenEd.read(problems) };
    if (name.value.trim()) body.name = name.value.trim();
    else if (patch) body.name = null;
    if (!patch && queue.value.trim()) body.queue = queue.value.trim();
    problems.throwIfAny();
    return body;
  }
  return { form, read, whenEd, spec };
}

function createView(root) {
  const { form, read } = taskForm({}, { patch: false });
  fill(root, h("p", null, h("a", { href: "#/tasks" }, "← All tasks")), heading("New task"), form);
  onSubmit(form, async () => {
    const task = await api("POST", "/v1/tasks", read());
    remember(task);
    location.hash = `#/tasks/${task.id}`;
  });
  form.querySelector("input[type=url]").focus();
  return {};
}

function editView(root, id) {
  const back = h("a", { href: `#/tasks/${id}` }, "← Back to the task");
  const body = h("div", null, h("p", { class: "muted" }, "Loading…"));
  fill(root, h("p", null, back), heading("Modify task"), body);
  api("GET", `/v1/tasks/${encodeURIComponent(id)}`)
    .then((task) => {
      if (!CHANGEABLE.has(task.status)) {
        fill(body, h("p", { class: "form-error" }, `The task is ${task.status}: only a scheduled or retrying task can be modified.`));
        return;
      }
      const { form, read } = taskForm(task, { patch: true });
      fill(body, h("p", null, "Due ", when(task.run_at)), form);
      onSubmit(form, async () => {
        const updated = await api("PATCH", `/v1/tasks/${id}`, read());
        remember(updated);
        location.hash = `#/tasks/${id}`;
      });
    })
    .catch((err) => fill(body, h("p", { class: "form-error" }, err.message)));
  return {};
}

// -- helpers -----------------------------------------------------------------------------------

/** fn at most once per `wait` ms: soon() schedules, now() runs at once, cancel() drops it. */
export function throttled(fn, wait) {
  let timer = null;
  return {
    soon() {
      timer ??= setTimeout(() => {
        timer = null;
        fn();
      }, wait);
    },
    now() {
      clearTimeout(timer);
      timer = null;
      fn();
    },
    cancel() {
      clearTimeout(timer);
      timer = null;
    },
  };
}

/**
 * The owner's exact counts from GET /v1/stats, handed to `render` now and, after soon() (called
 * on live events), at most every 500 ms; an answer overtaken by a newer request is dropped.
 */
export function liveStats(render) {
  let asked = 0;
  const stats = throttled(async () => {
    const turn = ++asked;
    try {
      const answer = await api("GET", "/v1/stats");
      if (turn === asked) render(answer);
    } catch {
      // keep the counts shown; the next event or reconnect asks again
    }
  }, 500);
  stats.now();
  return stats;
}

/** Run `fn` over `items`, at most `n` at a time. */
export async function inBatches(items, n, fn) {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: Math.min(n, queue.length) }, async () => {
      while (queue.length) await fn(queue.shift());
    }),
  );
}
