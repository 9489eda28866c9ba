// Schedules: the list with each one's next runs, pause, resume and delete in place, and the create
// form (cron or every, a time zone, the task each occurrence makes). Their tasks' live events (and
// a slow poll, as next runs move on with the clock) refresh the list.

import { api, page, query } from "./api.js";
import { alertBox, badge, confirmButton, fill, h, heading, listTable, timeZone, when } from "./dom.js";
import { field, formCard, input, onSubmit, Problems, select, showChosen, specEditor } from "./forms.js";
import { throttled } from "./tasks.js";

const POLL_MS = 15000;

/** #/schedules, #/schedules/new, and #/schedules/sch_… (the list with that one picked out). */
export function mount(root, [id]) {
  return id === "new" ? createView(root) : listView(root, id);
}

/** "every 5 min", "every 90 s", "every 2 h". */
export function every(s) {
  if (s % 3600 === 0) return `every ${s / 3600} h`;
  if (s % 60 === 0) return `every ${s / 60} min`;
  return `every ${s} s`;
}

function listView(root, pick) {
  const rows = new Map();
  let cursor = null;
  const tbody = h("tbody");
  const problem = alertBox();
  const shown = h("span", { class: "muted", role: "status" });
  const more = h("button", { type: "button", onclick: () => load(false) }, "Load more");
  const cols = ["Status", "Schedule", "When", "Next runs", "Last task", "Actions"];
  fill(
    root,
    heading("Schedules", h("a", { href: "#/schedules/new", class: "button primary" }, "New schedule")),
    problem,
    listTable("list schedules", cols, tbody),
    h("div", { class: "pager" }, shown, more),
  );

  // A row's cells are redrawn when its schedule changed; its actions cell is kept, so a live
  // refresh leaves a half-done "Delete?" and the focus alone, and opened run lists stay open.
  const shownAs = new Map(); // id -> the schedule shown, as JSON
  const opened = new Set();

  function cells(s) {
    const [first, ...rest] = s.next_runs ?? [];
    const more = rest.length
      ? h(
          "details",
          { open: opened.has(s.id), ontoggle: (e) => opened[e.target.open ? "add" : "delete"](s.id) },
          h("summary", null, `${rest.length} more`),
          h("ol", null, rest.map((t) => h("li", null, when(t)))),
        )
      : null;
    // data-label names each cell where a phone shows the row as a card, without the header.
    return [
      h("td", null, badge(s.status)),
      h("td", { class: "task" }, h("strong", null, s.name || s.id), h("div", { class: "sub" }, s.task ? `${s.task.method ?? "POST"} ${s.task.url}` : "starts an orchestration")),
      h("td", { class: "when", "data-label": "When" }, h("code", null, s.cron ?? every(s.every)), h("div", { class: "sub" }, s.timezone)),
      h("td", { class: "runs", "data-label": "Next runs" }, first ? when(first) : h("span", { class: "muted" }, "none"), more),
      h("td", { "data-label": "Last task" }, s.last_task_id ? h("a", { href: `#/tasks/${s.last_task_id}` }, s.last_task_id) : h("span", { class: "muted" }, "—")),
    ];
  }

  function row(id) {
    const toggle = h("button", { type: "button" });
    toggle.onclick = async () => {
      toggle.disabled = true;
      try {
        const verb = JSON.parse(shownAs.get(id)).status === "paused" ? "resume" : "pause";
        put(await api("POST", `/v1/schedules/${id}/${verb}`));
        problem.show("");
      } catch (err) {
        problem.show(err.message);
      } finally {
        toggle.disabled = false;
        toggle.focus();
      }
    };
    const remove = confirmButton("Delete", "Delete this schedule?", async () => {
      try {
        await api("DELETE", `/v1/schedules/${id}`);
        rows.get(id)?.remove();
        rows.delete(id);
        footer();
      } catch (err) {
        problem.show(err.message);
      }
    });
    return h("tr", { "data-id": id }, h("td", null, h("div", { class: "actions" }, toggle, remove)));
  }

  function put(s) {
    let tr = rows.get(s.id);
    if (!tr) rows.set(s.id, (tr = row(s.id)));
    const json = JSON.stringify(s);
    if (shownAs.get(s.id) === json) return tr;
    shownAs.set(s.id, json);
    tr.dataset.status = s.status;
    const toggle = tr.querySelector(".actions button");
    toggle.textContent = s.status === "paused" ? "Resume" : "Pause";
    toggle.hidden = s.status === "ended";
    tr.replaceChildren(...cells(s), tr.lastChild);
    return tr;
  }

  function footer() {
    shown.textContent = rows.size ? `Showing ${rows.size} schedule${rows.size > 1 ? "s" : ""}.` : "No schedules yet: create one with New schedule.";
    more.hidden = !cursor;
  }

  let asked = 0;
  async function load(fresh) {
    const turn = ++asked;
    try {
      // A refresh reloads as many as are shown, so a live update keeps the pages loaded so far.
      const limit = fresh ? Math.min(500, Math.max(50, rows.size)) : 50;
      const answer = page(await api("GET", `/v1/schedules${query({ limit, cursor: fresh ? null : cursor })}`));
      if (turn !== asked) return;
      problem.show("");
      const ids = new Set(answer.items.map((s) => s.id));
      if (fresh) {
        for (const [id, tr] of rows) {
          if (!ids.has(id)) {
            tr.remove();
            rows.delete(id);
          }
        }
      }
      // Rows already in place stay put (moving one would take the focus from it).
      let at = fresh ? tbody.firstChild : null;
      for (const s of answer.items) {
        const tr = put(s);
        if (tr === at) at = at.nextSibling;
        else tbody.insertBefore(tr, at);
      }
      cursor = answer.next_cursor;
      footer();
      if (pick) await pickOut(pick);
      pick = null;
    } catch (err) {
      if (turn !== asked) return;
      problem.show(err.message);
      if (!rows.size) shown.textContent = ""; // not "No schedules yet": they could not be read
    }
  }

  // The schedule a link named (from a function or a task): shown first if it is not on the first
  // page, outlined, scrolled to.
  async function pickOut(id) {
    if (!rows.has(id)) {
      try {
        tbody.prepend(put(await api("GET", `/v1/schedules/${encodeURIComponent(id)}`)));
        footer();
      } catch (err) {
        problem.show(err.status === 404 ? "That schedule does not exist (any more)." : err.message);
        return;
      }
    }
    const tr = rows.get(id);
    tr.classList.add("picked");
    tr.setAttribute("aria-current", "true");
    tr.scrollIntoView({ block: "center" });
  }

  const refresh = throttled(() => load(true), 1000);
  const poll = setInterval(() => refresh.soon(), POLL_MS);
  footer();
  load(true);
  return {
    onEvent(e) {
      if (e.type === "schedule" || e.type === "task") refresh.soon();
    },
    refresh: refresh.now,
    unmount() {
      refresh.cancel();
      clearInterval(poll);
    },
  };
}

function createView(root) {
  const name = input({ maxlength: 200 });
  const kind = select([["cron", "Cron (5 fields)"], ["every", "Every N seconds"]], "cron");
  const cron = input({ placeholder: "*/5 * * * *", spellcheck: "false" });
  const secs = input({ type: "number", min: 1, step: "any", placeholder: "60" });
  const zones = h("datalist", { id: "zones" }, (Intl.supportedValuesOf?.("timeZone") ?? []).map((z) => h("option", { value: z })));
  const tz = input({ list: "zones", value: timeZone });
  const catchUp = select([["one", "One late run, then on time"], ["none", "None"], ["all", "All missed runs"]], "one");
  const spec = specEditor({});
  const cronField = field("Cron", cron, { rel: "cron", cls: "grow", hint: "minute hour day-of-month month day-of-week, read in the time zone" });
  const secsField = field("Every (s)", secs, { rel: "every" });
  showChosen(kind, { cron: cronField, every: secsField });
  const form = formCard(
    field("Name", name, { rel: "name" }),
    h("div", { class: "row wrap" }, field("Repeat", kind, { rel: "kind" }), cronField, secsField),
    h("div", { class: "row wrap" }, field("Time zone", tz, { rel: "timezone", cls: "grow" }), field("After downtime", catchUp, { rel: "catch_up", cls: "grow" })),
    zones,
    h("h2", null, "The task each run makes"),
    h("div", { "data-group": "task" }, spec.el),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create schedule")),
  );
  fill(root, h("p", null, h("a", { href: "#/schedules" }, "← All schedules")), heading("New schedule"), form);
  onSubmit(form, async () => {
    const problems = new Problems();
    const body = { timezone: tz.value.trim() || "UTC", catch_up: catchUp.value, task: spec.read("task", problems) };
    if (name.value.trim()) body.name = name.value.trim();
    if (kind.value === "cron") {
      if (cron.value.trim()) body.cron = cron.value.trim();
      else problems.add("cron", "is required");
    } else if (secs.validity.badInput || !(Number(secs.value) > 0)) {
      problems.add("every", "must be a number of seconds above 0");
    } else {
      body.every = Number(secs.value);
    }
    problems.throwIfAny();
    await api("POST", "/v1/schedules", body);
    location.hash = "#/schedules";
  });
  name.focus();
  return {};
}
