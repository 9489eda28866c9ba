// Orchestrations: the list, a step-by-step progress view that moves with live events, and a
// create form with any number of steps and a shared or per-step condition.

import { api, page, query } from "./api.js";
import { alertBox, backLink, badge, confirmButton, fill, h, heading, listTable, loader, statusRow, when } from "./dom.js";
import { conditionEditor, field, formCard, input, onSubmit, optional, Problems, select, specEditor, whenEditor } from "./forms.js";
import { liveStats, reason, throttled } from "./tasks.js";

const STATUSES = ["scheduled", "running", "waiting", "succeeded", "failed", "stopped", "cancelled"];
const ENDED = new Set(["succeeded", "failed", "stopped", "cancelled"]);
// Steps are numbered from 0 everywhere on the page, as the API numbers them (a step's `index`,
// `current_step`, the `step` a condition check receives, `steps[0].url` in an error).
const NUMBERING = "Steps are numbered from 0, as the API numbers them.";
const CANCELLABLE = new Set(["scheduled", "running", "waiting"]);
const LIMIT = 50;
const WINDOW = 100; // steps shown around the current one in very long orchestrations

export function mount(root, [id, action]) {
  if (!id) return listView(root);
  if (id === "new") return formView(root, null);
  if (action === "edit") return formView(root, id);
  return detailView(root, id);
}


const back = () => backLink("#/orchestrations", "All orchestrations");

function progress(o) {
  const done = o.steps.filter((s) => s.status === "succeeded").length;
  return h(
    "span",
    { class: "progress" },
    h("progress", { max: o.steps.length, value: done, "aria-label": "Steps done" }),
    ` ${done} / ${o.steps.length}`,
  );
}

// -- the list ----------------------------------------------------------------------------------

function listView(root) {
  let status = "";
  let cursor = null;
  let pages = 0;
  const rows = new Map();
  const tbody = h("tbody");
  const problem = alertBox();
  const shown = h("span", { class: "muted", role: "status" });
  const more = h("button", { type: "button", onclick: () => load(false) }, "Load more");
  const filter = select([["", "All"], ...STATUSES.map((s) => [s])], "");
  filter.addEventListener("change", () => {
    status = filter.value;
    load(true);
  });
  // Each option carries its exact count, e.g. "running (3)".
  const stats = liveStats(({ orchestrations: counts }) => {
    const total = STATUSES.reduce((sum, s) => sum + (counts[s] ?? 0), 0);
    for (const option of filter.options) {
      option.textContent = `${option.value || "All"} (${option.value ? (counts[option.value] ?? 0) : total})`;
    }
  });
  fill(
    root,
    heading("Orchestrations", h("a", { href: "#/orchestrations/new", class: "button primary" }, "New orchestration")),
    h("div", { class: "toolbar" }, field("Status", filter, { rel: "status" })),
    problem,
    listTable("list", ["Status", "Orchestration", "Steps done", ["Starts", "opt"]], tbody),
    h("div", { class: "pager" }, shown, more),
  );

  const row = (o) => statusRow(o, `#/orchestrations/${o.id}`, h("td", null, progress(o)), h("td", { class: "opt" }, when(o.run_at)));

  async function load(fresh) {
    try {
      const path = `/v1/orchestrations${query({ status, limit: LIMIT, cursor: fresh ? null : cursor })}`;
      const answer = page(await api("GET", path));
      problem.show("");
      if (fresh) {
        rows.clear();
        tbody.replaceChildren();
        pages = 0;
      }
      pages += 1;
      for (const o of answer.items) {
        const tr = row(o);
        rows.set(o.id, tr);
        tbody.append(tr);
      }
      cursor = answer.next_cursor;
      shown.textContent = rows.size ? `Showing ${rows.size}.` : "No orchestrations yet.";
      more.hidden = !cursor;
    } catch (err) {
      problem.show(err.message);
    }
  }

  const pending = new Set();
  const flush = throttled(async () => {
    const ids = [...pending];
    pending.clear();
    if (ids.some((id) => !rows.has(id))) return pages <= 1 ? load(true) : undefined;
    for (const id of ids) {
      try {
        const tr = row(await api("GET", `/v1/orchestrations/${id}`));
        rows.get(id).replaceWith(tr);
        rows.set(id, tr);
      } catch {
        // deleted or not ours: keep the row
      }
    }
  }, 200);

  more.hidden = true;
  load(true);
  return {
    onEvent(e) {
      if (e.type !== "orchestration") return;
      stats.soon();
      pending.add(e.id);
      flush.soon();
    },
    refresh() {
      stats.now();
      load(true);
    },
    unmount() {
      flush.cancel();
      stats.cancel();
    },
  };
}

// -- one orchestration -------------------------------------------------------------------------

function detailView(root, id) {
  const title = heading(id);
  const problem = alertBox();
  const body = h("div", null, h("p", { class: "muted" }, "Loading…"));
  fill(root, back(), title, problem, body);
  let orc = null;

  const load = loader(body, () => api("GET", `/v1/orchestrations/${encodeURIComponent(id)}`), (answer) => {
    orc = answer;
    render();
  });

  function render() {
    const o = orc;
    title.querySelector("h1").textContent = o.name || o.id;
    const actions = h("div", { class: "actions" });
    if (o.status === "scheduled") actions.append(h("a", { href: `#/orchestrations/${o.id}/edit`, class: "button" }, "Modify"), " ");
    if (CANCELLABLE.has(o.status)) {
      actions.append(
        confirmButton("Cancel orchestration", "Cancel it? No later step, check or fallback will start.", async () => {
          try {
            orc = await api("POST", `/v1/orchestrations/${o.id}/cancel`);
            problem.show("");
            render();
          } catch (err) {
            problem.show(err.message);
            load();
          }
        }),
      );
    }
    const running = o.status === "running";
    const current = o.current_step ?? -1;
    let from = 0;
    let to = o.steps.length;
    if (o.steps.length > WINDOW) {
      from = Math.max(0, current - 10);
      to = Math.min(o.steps.length, from + WINDOW);
    }
    fill(
      body,
      h(
        "p",
        { class: "status-line" },
        badge(o.status),
        " ",
        progress(o),
        running && current >= 0 ? ` · at step ${current} (steps 0–${o.steps.length - 1})` : "",
      ),
      actions,
      h(
        "dl",
        { class: "facts" },
        h("dt", null, "Starts"),
        h("dd", null, when(o.run_at)),
        h("dt", null, "Created"),
        h("dd", null, when(o.created_at)),
        h("dt", null, "Finished"),
        h("dd", null, when(o.finished_at)),
      ),
      h("h2", null, "Steps"),
      h("p", { class: "hint" }, NUMBERING),
      from > 0 ? h("p", { class: "muted" }, `${from} earlier steps not shown.`) : null,
      h(
        "ol",
        { class: "steps", start: from },
        o.steps.slice(from, to).map((s) => stepItem(s, running && s.index === current, ENDED.has(o.status))),
      ),
      to < o.steps.length ? h("p", { class: "muted" }, `${o.steps.length - to} later steps not shown.`) : null,
      h("h2", null, "Fallback"),
      o.fallback
        ? h(
            "p",
            { class: "fallback" },
            // A finished orchestration's unused fallback never will run: say so, not "pending".
            ENDED.has(o.status) && !o.fallback.task_id ? badge("not run") : badge(o.fallback.status),
            " ",
            ENDED.has(o.status) && !o.fallback.task_id ? h("span", { class: "muted" }, "it was not needed") : taskLink(o.fallback.task_id),
          )
        : h("p", { class: "muted" }, "None."),
    );
  }

  // Steps move when their tasks change; a step's task may be new to us, so while the
  // orchestration is live any task event prompts a (throttled) look.
  const refetch = throttled(load, 150);
  load();
  return {
    onEvent(e) {
      if (e.type === "orchestration" && e.id === id) return refetch.soon();
      if (e.type !== "task" || !orc) return;
      const ours = orc.steps.some((s) => s.task_id === e.id) || orc.fallback?.task_id === e.id;
      const fallbackLive = orc.fallback && !["succeeded", "failed", "cancelled"].includes(orc.fallback.status);
      if (ours || fallbackLive || CANCELLABLE.has(orc.status)) refetch.soon();
    },
    refresh: load,
    unmount: () => refetch.cancel(),
  };
}

function taskLink(taskId) {
  return taskId ? h("a", { href: `#/tasks/${taskId}` }, taskId) : h("span", { class: "muted" }, "not started");
}

/** A check that got an answer and still did not pass said so in its body. */
function why(a) {
  if (a.error || !(a.status_code >= 200 && a.status_code < 300)) return reason(a);
  return `${reason(a)} (the check said not to go on)`;
}

function stepItem(s, isCurrent, ended) {
  const status = ended && !s.task_id ? "not run" : s.status; // it never will: not "pending"
  const check = s.condition;
  // attempts is the list of check calls ({number, status_code, passed, error, ...}); tolerate a count.
  const calls = Array.isArray(check?.attempts) ? check.attempts : [];
  const n = Array.isArray(check?.attempts) ? calls.length : (check?.attempts ?? 0);
  const rechecks = Math.max(0, n - 1);
  return h(
    "li",
    { class: `step st-${s.status}${isCurrent ? " current" : ""}`, "aria-current": isCurrent ? "step" : null, "data-index": s.index },
    h("div", { class: "step-head" }, h("strong", null, `Step ${s.index}`), " ", badge(status), " ", ended && !s.task_id ? null : taskLink(s.task_id)),
    check
      ? h(
          "div",
          { class: "step-check" },
          "Check ",
          badge(check.status),
          ` ${n} attempt${n === 1 ? "" : "s"}`,
          rechecks ? ` (${rechecks} re-check${rechecks > 1 ? "s" : ""})` : "",
          calls.map((a) =>
            h(
              "span",
              { class: `code ${a.passed ? "c2" : "c5"}`, title: a.error ?? a.response_body ?? "" },
              ` ${a.status_code ?? a.error ?? "—"}${a.passed ? " ✓" : " ✗"}`,
            ),
          ),
          // Why a check did not pass: each failed call's error, or its status code and answer.
          calls.some((a) => !a.passed)
            ? h(
                "ul",
                { class: "check-calls" },
                calls.filter((a) => !a.passed).map((a) => h("li", { class: "error-text check-reason" }, `Check ${a.number}: ${why(a)}`)),
              )
            : null,
        )
      : null,
  );
}

// -- create and modify --------------------------------------------------------------------------

/** The create form; with an id, the modify form (PATCH, while it is scheduled). */
function formView(root, id) {
  const title = heading(id ? "Modify orchestration" : "New orchestration");
  if (!id) {
    fill(root, back(), title);
    return orcForm(root, null);
  }
  const body = h("div", null, h("p", { class: "muted" }, "Loading…"));
  fill(root, backLink(`#/orchestrations/${id}`, "Back to the orchestration"), title, body);
  api("GET", `/v1/orchestrations/${encodeURIComponent(id)}`)
    .then((o) => {
      if (o.status !== "scheduled") {
        fill(body, h("p", { class: "form-error" }, `The orchestration is ${o.status}: only a scheduled one can be modified.`));
        return;
      }
      fill(body, h("p", null, "Starts ", when(o.run_at), ` · ${o.steps.length} step${o.steps.length > 1 ? "s" : ""}`));
      orcForm(body, o);
    })
    .catch((err) => fill(body, h("p", { class: "form-error" }, err.message)));
  return {};
}

function orcForm(root, orc) {
  const patch = !!orc;
  const name = input({ maxlength: 200, placeholder: "optional", value: orc?.name ?? "" });
  const whenEd = whenEditor({ patch });
  const stepList = h("div", { class: "step-list" });
  const stepsField = h(
    "div",
    { class: "field", "data-rel": "steps" },
    h("h2", null, "Steps, run one after another"),
    h("p", { class: "hint" }, NUMBERING),
    stepList,
    h("p", { class: "error", id: "steps-err", hidden: true }),
  );
  const steps = [];
  const addButton = h("button", { type: "button", onclick: () => addStep(true) }, "Add step");
  const shared = optional("Check a condition between steps", conditionEditor());
  const fallbackEd = specEditor();
  const fallback = optional(patch ? "Set a new fallback task" : "Run a fallback task when it cannot go on", {
    el: h("div", { "data-group": "fallback" }, fallbackEd.el),
    read: fallbackEd.read,
  });

  function renumber() {
    steps.forEach((s, i) => {
      s.el.dataset.group = `steps[${i}]`;
      s.legend.textContent = `Step ${i}`;
      s.remove.hidden = steps.length === 1;
      s.remove.setAttribute("aria-label", `Remove step ${i}`);
    });
  }

  function addStep(focus) {
    const spec = specEditor();
    const own = optional("Its own condition check (overrides the shared one)", conditionEditor());
    const legend = h("legend");
    const remove = h("button", { type: "button", class: "link" }, "Remove");
    const el = h("fieldset", { class: "step-editor" }, legend, remove, spec.el, own.el);
    const step = { el, legend, remove, spec, own };
    remove.addEventListener("click", () => {
      steps.splice(steps.indexOf(step), 1);
      el.remove();
      renumber();
      addButton.focus();
    });
    steps.push(step);
    stepList.append(el);
    renumber();
    if (focus) spec.controls.url.focus();
  }

  // Modifying: the steps (and the shared check) are replaced only when asked to.
  const stepsBlock = h("div", null, stepsField, h("div", { class: "actions" }, addButton), h("h2", null, "Between steps"), shared.el);
  const replace = patch ? optional("Replace its steps and the check between them", { el: stepsBlock, read: () => true }) : null;
  const form = formCard(
    field("Name", name, { rel: "name" }),
    whenEd.el,
    replace ? replace.el : stepsBlock,
    h("h2", null, "When it cannot go on"),
    fallback.el,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, patch ? "Save changes" : "Create orchestration")),
  );
  addStep(false);
  root.append(form);

  onSubmit(form, async () => {
    const problems = new Problems();
    const body = { ...whenEd.read(problems) };
    if (name.value.trim()) body.name = name.value.trim();
    else if (patch) body.name = null;
    if (!patch || replace.read()) {
      body.steps = steps.map((s, i) => {
        const spec = s.spec.read(`steps[${i}]`, problems);
        const cond = s.own.read(`steps[${i}].condition`, problems);
        return cond ? { ...spec, condition: cond } : spec;
      });
      const cond = shared.read("condition", problems);
      if (cond) body.condition = cond;
      else if (patch) body.condition = null;
    }
    const fb = fallback.read("fallback", problems);
    if (fb) body.fallback = fb;
    problems.throwIfAny();
    const saved = await api(patch ? "PATCH" : "POST", patch ? `/v1/orchestrations/${orc.id}` : "/v1/orchestrations", body);
    location.hash = `#/orchestrations/${saved.id}`;
  });
  return {};
}
