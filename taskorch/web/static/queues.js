// Queues: each queue's limits and its tasks by status, a form to set a queue's rate and
// concurrency, pause and resume, and "redrive failed": every failed task of a queue retried
// (POST /v1/tasks/{id}/retry), page by page, with progress and a summary of what was refused.

import { api, page, query } from "./api.js";
import { alertBox, badge, fill, h, heading, listTable } from "./dom.js";
import { field, formCard, input, onSubmit, Problems } from "./forms.js";
import { inBatches, STATUSES, throttled } from "./tasks.js";

const counts = (q) => q.counts ?? {};
const PAGE = 25; // failed tasks read per request while redriving

export function mount(root) {
  const rows = new Map();
  const tbody = h("tbody");
  const problem = alertBox();
  const shown = h("span", { class: "muted", role: "status" });
  const redriving = new Set();

  const c = {
    name: input({ maxlength: 64, required: true }),
    rate: input({ type: "number", min: 0, step: "any", placeholder: "unlimited" }),
    max: input({ type: "number", min: 1, step: 1, placeholder: "unlimited" }),
    paused: input({ type: "checkbox" }),
  };
  const form = formCard(
    h(
      "div",
      { class: "row wrap" },
      field("Queue name", c.name, { rel: "name" }),
      field("Rate (calls/s)", c.rate, { rel: "rate" }),
      field("Max concurrent", c.max, { rel: "max_concurrent" }),
    ),
    h("label", { class: "check" }, c.paused, " Paused"),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save queue")),
  );
  onSubmit(form, async () => {
    const problems = new Problems();
    const num = (ctl, rel) => {
      if (ctl.validity.badInput) problems.add(rel, "must be a number");
      return ctl.value.trim() === "" ? null : Number(ctl.value);
    };
    const name = c.name.value.trim();
    if (!name) problems.add("name", "is required");
    const body = { rate: num(c.rate, "rate"), max_concurrent: num(c.max, "max_concurrent"), paused: c.paused.checked };
    problems.throwIfAny();
    put(await api("PUT", `/v1/queues/${encodeURIComponent(name)}`, body));
  });

  fill(
    root,
    heading("Queues"),
    form,
    problem,
    listTable("list queues", ["Queue", "Rate", "Max concurrent", "Tasks", "Actions"], tbody),
    h("p", { class: "pager" }, shown),
  );

  async function setPaused(q, button) {
    button.disabled = true;
    try {
      put(await api("PUT", `/v1/queues/${encodeURIComponent(q.name)}`, { paused: !q.paused }));
      rows.get(q.name).querySelectorAll("button")[1].focus(); // the new Pause or Resume
      problem.show("");
    } catch (err) {
      problem.show(err.message);
    } finally {
      button.disabled = false;
    }
  }

  function edit(q) {
    c.name.value = q.name;
    c.rate.value = q.rate ?? "";
    c.max.value = q.max_concurrent ?? "";
    c.paused.checked = q.paused;
    c.rate.focus();
  }

  function row(q) {
    const n = counts(q);
    const toggle = h("button", { type: "button" }, q.paused ? "Resume" : "Pause");
    toggle.onclick = () => setPaused(q, toggle);
    const redrive = h("button", { type: "button", disabled: !n.failed || redriving.has(q.name) }, `Redrive failed (${n.failed ?? 0})`);
    redrive.onclick = () => redriveFailed(q, redrive);
    const nonzero = STATUSES.filter((s) => n[s]);
    return h(
      "tr",
      { "data-name": q.name },
      h("td", null, h("strong", null, q.name), " ", q.paused ? badge("paused") : null),
      h("td", { class: "num" }, q.rate == null ? "unlimited" : `${q.rate}/s`),
      h("td", { class: "num" }, q.max_concurrent ?? "unlimited"),
      h(
        "td",
        { class: "counts" },
        nonzero.length ? nonzero.map((s) => h("span", { class: `badge s-${s}`, "data-status": s }, `${s} `, h("span", { class: "count" }, n[s]))) : h("span", { class: "muted" }, "no tasks"),
        q.waiting ? h("div", { class: "sub waiting" }, `${q.waiting} due, waiting their turn`) : null,
      ),
      h(
        "td",
        null,
        // `default` spreads over every partition, so it cannot be limited or paused (422).
        h("div", { class: "actions" }, q.name === "default" ? null : [h("button", { type: "button", onclick: () => edit(q) }, "Edit"), toggle], redrive),
        h("p", { class: "redrive", role: "status" }),
      ),
    );
  }

  function put(q) {
    const old = rows.get(q.name);
    const json = JSON.stringify(q) + redriving.has(q.name);
    if (old?.json === json) return;
    const tr = row(q);
    tr.json = json;
    if (old) {
      tr.lastChild.replaceChild(old.querySelector(".redrive"), tr.querySelector(".redrive"));
      const at = [...old.querySelectorAll("button")].indexOf(document.activeElement);
      old.replaceWith(tr);
      tr.querySelectorAll("button")[at]?.focus();
    } else {
      tbody.append(tr);
    }
    rows.set(q.name, tr);
    shown.textContent = `${rows.size} queue${rows.size > 1 ? "s" : ""}.`;
  }

  /** Retry every failed task of the queue; ids are the cursor, so retried tasks leaving the
   * failed index do not shift later pages. Each task is retried once, however often it fails. */
  async function redriveFailed(q, button) {
    redriving.add(q.name);
    button.disabled = true;
    const line = () => rows.get(q.name).querySelector(".redrive");
    const bar = h("progress", { max: counts(q).failed ?? 0, value: 0, "aria-label": "Redriven" });
    const text = h("span");
    let done = 0;
    let refused = 0;
    const errors = new Map(); // message -> ids
    const note = (more) => {
      bar.max = Math.max(bar.max, done + refused);
      bar.value = done;
      text.textContent = ` Retried ${done}${refused ? `, ${refused} refused` : ""}${more}`;
    };
    fill(line(), bar, text);
    let cursor = null;
    try {
      do {
        const path = `/v1/tasks${query({ queue: q.name, status: "failed", limit: PAGE, cursor })}`;
        const answer = page(await api("GET", path));
        await inBatches(answer.items, 6, async (t) => {
          try {
            await api("POST", `/v1/tasks/${t.id}/retry`);
            done += 1;
          } catch (err) {
            refused += 1;
            errors.set(err.message, [...(errors.get(err.message) ?? []), t.id]);
          }
          note("…");
        });
        cursor = answer.next_cursor;
      } while (cursor);
      const summary = `Retried ${done} failed task${done === 1 ? "" : "s"}.`;
      fill(
        line(),
        refused ? `${summary} ${refused} could not be retried: ` : summary,
        [...errors].map(([msg, ids]) => h("span", { class: "error-text" }, `${msg} (${ids.length}: ${ids.slice(0, 3).join(", ")}${ids.length > 3 ? ", …" : ""}) `)),
      );
    } catch (err) {
      fill(line(), h("span", { class: "error-text" }, `Stopped after ${done} retried: ${err.message}`));
    } finally {
      redriving.delete(q.name);
      refresh.now();
    }
  }

  let asked = 0;
  async function load() {
    const turn = ++asked;
    try {
      const answer = page(await api("GET", "/v1/queues"));
      if (turn !== asked) return;
      problem.show("");
      for (const q of answer.items) put(q);
      for (const [name, tr] of rows) {
        if (!answer.items.some((q) => q.name === name)) {
          tr.remove();
          rows.delete(name);
        }
      }
      if (!rows.size) shown.textContent = "No queues yet.";
    } catch (err) {
      if (turn === asked) problem.show(err.message);
    }
  }

  const refresh = throttled(load, 1000);
  load();
  return {
    onEvent(e) {
      if (e.type === "task" || e.type === "queue") refresh.soon();
    },
    refresh: refresh.now,
    unmount: refresh.cancel,
  };
}
