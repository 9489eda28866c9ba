// Tasks: the paged list with exact counts by status (GET /v1/stats) and a lateness chart, one
// task's detail with its attempts, and the create and modify forms. Live events update rows in
// place and refresh the counts.

import { api, page, query } from "./api.js";
import { alertBox, badge, confirmButton, fill, h, heading, loader, ms, pretty, svg, when } from "./dom.js";
import { field, formCard, input, onSubmit, Problems, specEditor, whenEditor } from "./forms.js";

export const STATUSES = ["scheduled", "running", "retrying", "succeeded", "failed", "cancelled"];
const CHANGEABLE = new Set(["scheduled", "retrying"]);
const LIMIT = 50;
// Requests one load makes at most to fill a page of a search (each reads up to 256 tasks).
const SEARCH_REQUESTS = 100;
const MAX_INSERTS = 50; // more new tasks than this at once: reload the first page instead

// Kept across views: the status filter and the name searched for.
let filter = "";
let search = "";
// Orchestrations' names and step indexes, for their step tasks' rows: id -> Promise<{name, steps}>.
const orcs = new Map();

/** Forget everything: called on sign-out, so the next account starts clean. */
export function reset() {
  filter = "";
  search = "";
  orcs.clear();
}

export function mount(root, [id, action]) {
  if (!id) return listView(root);
  if (id === "new") return createView(root);
  if (action === "edit") return editView(root, id);
  return detailView(root, id);
}

/** "step 2 of ‹name›" for a step task (0-based, as the API's `index` and the check's `step`). */
export function stepOf(orcId, taskId) {
  if (!orcs.has(orcId)) orcs.set(orcId, api("GET", `/v1/orchestrations/${orcId}`).catch(() => null));
  const el = h("span", { class: "orc" }, "orchestration ", h("a", { href: `#/orchestrations/${orcId}` }, orcId));
  orcs.get(orcId).then((o) => {
    if (!o) return;
    const step = o.steps.find((st) => st.task_id === taskId);
    const what = step ? `step ${step.index}` : o.fallback?.task_id === taskId ? "fallback" : "task";
    if (what === "task") orcs.delete(orcId); // made after we read it: ask again next time
    fill(el, `${what} of `, h("a", { href: `#/orchestrations/${orcId}` }, o.name || orcId));
  });
  return el;
}

/** A failed attempt's reason in a few words: its error, else its status code and answer. */
export function reason(a) {
  if (!a) return "";
  if (a.error) return a.error;
  const body = (a.response_body ?? "").trim().slice(0, 120);
  return `HTTP ${a.status_code}${body ? `: ${body}` : ""}`;
}

// -- the list ----------------------------------------------------------------------------------

function listView(root) {
  const rows = new Map(); // id -> <tr>
  const tasks = new Map(); // id -> the task as last read, for bulk actions
  const picked = new Set(); // ids ticked for a bulk action
  let cursor = null;
  let generation = 0; // answers for an older filter are dropped
  let counts = null; // the owner's tasks by status, from GET /v1/stats
  const tbody = h("tbody");
  const more = h("button", { type: "button", onclick: () => load(false) }, "Load more");
  const shown = h("span", { class: "muted", role: "status" });
  const problem = alertBox();
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Filter by status" });
  const chart = h("figure", { class: "chart" });
  const find = input({ type: "search", value: search, placeholder: "name starts with…", maxlength: 200 });
  const typed = throttled(() => {
    if (find.value === search) return;
    search = find.value;
    load(true);
  }, 300);
  find.addEventListener("input", () => {
    typed.cancel();
    typed.soon();
  });
  const all = input({ type: "checkbox", "aria-label": "Select every task shown" });
  all.addEventListener("change", () => {
    for (const [id, tr] of rows) {
      tr.querySelector("input.pick").checked = all.checked;
      if (all.checked) picked.add(id);
      else picked.delete(id);
    }
    bulkBar();
  });
  const bulk = h("div", { class: "bulk", hidden: true });
  const bulkOut = h("div", { class: "bulk-out", role: "status" });
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
        h("th", { scope: "col", class: "pick" }, all),
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
    h("div", { class: "toolbar" }, field("Search by name", find, { rel: "name" }), bulk),
    bulkOut,
    problem,
    h("div", { class: "scroll" }, table),
    h("div", { class: "pager" }, shown, more),
  );

  function row(t) {
    const last = t.attempts.at(-1);
    const box = input({ type: "checkbox", class: "pick", checked: picked.has(t.id), "aria-label": `Select ${t.name || t.id}` });
    box.addEventListener("change", () => {
      if (box.checked) picked.add(t.id);
      else picked.delete(t.id);
      bulkBar();
    });
    return h(
      "tr",
      { "data-id": t.id, "data-status": t.status },
      h("td", { class: "pick" }, box),
      h("td", null, badge(t.status), t.status === "failed" ? h("button", { type: "button", class: "link", onclick: () => retry(t.id) }, "Retry") : null),
      h(
        "td",
        { class: "task" },
        h("a", { href: `#/tasks/${t.id}` }, t.name || t.id),
        h("div", { class: "sub" }, `${t.method} ${t.url}`),
        t.orchestration_id ? h("div", { class: "sub" }, stepOf(t.orchestration_id, t.id)) : null,
        t.status === "failed" && last ? h("div", { class: "sub error-text last-error", title: reason(last) }, reason(last)) : null,
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

  // -- bulk: cancel the ticked scheduled/retrying tasks, retry the ticked failed ones ---------
  function bulkBar() {
    const of = (ok) => [...picked].filter((id) => ok.has(tasks.get(id)?.status));
    const cancel = of(CHANGEABLE);
    const redo = of(new Set(["failed"]));
    bulk.hidden = !picked.size;
    fill(
      bulk,
      h("span", null, `${picked.size} selected`),
      h("button", { type: "button", disabled: !cancel.length, onclick: () => act("cancel", cancel) }, `Cancel selected (${cancel.length})`),
      h("button", { type: "button", disabled: !redo.length, onclick: () => act("retry", redo) }, `Retry selected (${redo.length})`),
      h("button", { type: "button", class: "link", onclick: clearPicks }, "Clear"),
    );
  }

  function clearPicks() {
    picked.clear();
    all.checked = false;
    for (const box of tbody.querySelectorAll("input.pick")) box.checked = false;
    bulkBar();
  }

  async function act(verb, ids) {
    const bar = h("progress", { max: ids.length, value: 0 });
    const note = h("span", null, `${verb === "cancel" ? "Cancelling" : "Retrying"} 0 of ${ids.length}…`);
    fill(bulkOut, bar, " ", note);
    const refused = [];
    let done = 0;
    await inBatches(ids, 6, async (id) => {
      try {
        put(await api("POST", `/v1/tasks/${id}/${verb}`));
      } catch (err) {
        refused.push(`${id}: ${err.message}`);
      }
      done += 1;
      bar.value = done;
      note.textContent = `${verb === "cancel" ? "Cancelling" : "Retrying"} ${done} of ${ids.length}…`;
    });
    const ok = ids.length - refused.length;
    fill(
      bulkOut,
      h("span", null, `${verb === "cancel" ? "Cancelled" : "Retried"} ${ok} of ${ids.length}.`),
      refused.length ? [` ${refused.length} refused:`, h("ul", { class: "error-text" }, refused.map((r) => h("li", null, r)))] : null,
    );
    clearPicks();
    stats.soon();
  }

  function put(t) {
    tasks.set(t.id, t);
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
    const what = [filter, "tasks", search ? `named “${search}…”` : ""].filter(Boolean).join(" ");
    shown.textContent = rows.size
      ? `Showing ${rows.size} task${rows.size > 1 ? "s" : ""}${cursor ? "" : ", all there are"}.`
      : filter || search
        ? `No ${what}.`
        : "No tasks yet: create one with New task.";
    more.hidden = !cursor;
  }

  async function load(fresh) {
    const gen = fresh ? ++generation : generation;
    more.disabled = true;
    try {
      // A name search reads a bounded number of tasks per request, so its pages can be short,
      // even empty, with a next_cursor: read on until a page's worth is found (or the end).
      let after = fresh ? null : cursor;
      const answer = { items: [], next_cursor: null };
      for (let request = 0; request < SEARCH_REQUESTS; request++) {
        const path = `/v1/tasks${query({ status: filter, name: search, limit: LIMIT - answer.items.length, cursor: after })}`;
        const got = page(await api("GET", path));
        if (gen !== generation) return;
        answer.items.push(...got.items);
        answer.next_cursor = after = got.next_cursor;
        if (!after || answer.items.length >= LIMIT) break;
      }
      problem.show("");
      if (fresh) {
        rows.clear();
        tbody.replaceChildren();
        clearPicks(); // a new filter or search: what was ticked is out of sight
      }
      const frag = document.createDocumentFragment();
      for (const t of answer.items) {
        tasks.set(t.id, t);
        const tr = row(t);
        rows.set(t.id, tr);
        frag.append(tr);
      }
      tbody.append(frag);
      cursor = answer.next_cursor;
      footer();
    } catch (err) {
      if (gen === generation) problem.show(err.message);
    } finally {
      more.disabled = false;
    }
  }

  const stats = liveStats((answer) => {
    counts = answer.tasks;
    renderChips();
  });
  const late = liveLateness(chart);

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
        const fits = (!filter || t.status === filter) && (!search || (t.name ?? "").startsWith(search));
        if (rows.has(id) || fits) put(t);
      } catch {
        // gone or not ours any more: leave the row as it was
      }
    });
    footer();
    if (picked.size) bulkBar();
  }, 150);

  footer();
  renderChips();
  load(true);

  return {
    onEvent(e) {
      if (e.type !== "task") return;
      stats.soon();
      if (!CHANGEABLE.has(e.status)) late.soon();
      const tr = rows.get(e.id);
      if (tr) {
        tr.dataset.status = e.status;
        tr.children[1].replaceChildren(badge(e.status));
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
      late.now();
      load(true);
    },
    unmount() {
      flush.cancel();
      typed.cancel();
      stats.cancel();
      late.stop();
    },
  };
}

/**
 * The owner's lateness over the last hour from GET /v1/stats/lateness (every attempt the
 * workers recorded, not only the tasks loaded): attempts per minute as bars, p99 as a line.
 * Asked again after finished attempts (soon()) and once a minute.
 */
function liveLateness(figure) {
  let asked = 0;
  const t = throttled(async () => {
    const turn = ++asked;
    try {
      const answer = await api("GET", "/v1/stats/lateness?minutes=60");
      if (turn === asked) renderChart(figure, answer);
    } catch {
      // keep what is shown; the next event asks again
    }
  }, 3000);
  const timer = setInterval(() => t.soon(), 60_000);
  t.now();
  return { soon: t.soon, now: t.now, stop: () => (clearInterval(timer), t.cancel()) };
}

// A minute of the last hour, with its date as every time on the page has (the hour may span midnight).
const clock = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

function renderChart(figure, { items, total }) {
  const caption = total.count
    ? `Last hour: ${total.count} attempt${total.count > 1 ? "s" : ""}; lateness p50 ${ms(total.p50_ms)}, p99 ${ms(total.p99_ms)}, max ${ms(total.max_ms)}`
    : "Last hour: no attempts yet";
  const W = 6;
  const top = Math.max(1, ...items.map((m) => m.count));
  const topLate = Math.max(1, ...items.map((m) => m.p99_ms ?? 0));
  const bars = items.map((m, i) => {
    const height = Math.round((m.count / top) * 70);
    const tip = `${clock.format(new Date(m.start))}: ${m.count} attempts${m.count ? `, p50 ${ms(m.p50_ms)}, p99 ${ms(m.p99_ms)}, max ${ms(m.max_ms)}` : ""}`;
    return svg("rect", { x: i * W + 1, y: 80 - height, width: W - 2, height, class: "bar", "data-count": m.count }, svg("title", null, tip));
  });
  const points = items
    .map((m, i) => (m.count ? `${i * W + W / 2},${80 - Math.round((m.p99_ms / topLate) * 70)}` : null))
    .filter(Boolean)
    .join(" ");
  const n = items.length;
  fill(
    figure,
    svg(
      "svg",
      { viewBox: `0 0 ${W * n} 94`, role: "img", "aria-label": caption },
      bars,
      points ? svg("polyline", { points, class: "p99" }) : null,
      svg("text", { x: 0, y: 92, class: "label start" }, `${n} min ago`),
      svg("text", { x: W * n, y: 92, class: "label end" }, "now"),
      svg("text", { x: W * n, y: 8, class: "label end" }, `bars: attempts/min (max ${top}); line: p99 (max ${ms(topLate)})`),
    ),
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

  const load = loader(body, () => api("GET", `/v1/tasks/${encodeURIComponent(id)}`), (answer) => {
    task = answer;
    render();
  });

  function render() {
    title.querySelector("h1").textContent = task.name || task.id;
    const actions = h("div", { class: "actions" });
    const change = async (verb) => {
      try {
        task = await api("POST", `/v1/tasks/${task.id}/${verb}`);
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
        t.schedule_id ? fact("Schedule", h("a", { href: `#/schedules/${t.schedule_id}` }, t.schedule_id)) : null,
        fact("Due", when(t.run_at)),
        fact("Created", when(t.created_at)),
        fact("Finished", when(t.finished_at)),
        fact(
          "Retry policy",
          `${t.retries} retries, first after ${t.retry_delay} s, ×${t.backoff}, at most ${t.max_retry_delay} s apart; timeout ${t.timeout} s`,
        ),
        t.orchestration_id ? fact("Orchestration", stepOf(t.orchestration_id, t.id)) : null,
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
  const form = formCard(
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
