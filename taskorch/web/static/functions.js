// Functions: paste or upload code, pick the runtime, watch the build, copy the trigger URL and
// invoke it with an event.

import { api, page, query } from "./api.js";
import { alertBox, backLink, badge, confirmButton, fill, h, heading, listTable, loader, pretty, statusRow, when } from "./dom.js";
import { field, formCard, input, onSubmit, Problems, readJson, select, textarea } from "./forms.js";
import { every } from "./schedules.js";
import { throttled } from "./tasks.js";

const RUNTIMES = {
  python: { label: "Python", ext: [".py"], handler: "handler", sample: 'def handler(event, context):\n    return {"hello": event.get("name", "world")}\n' },
  node: { label: "Node.js", ext: [".js", ".mjs", ".cjs"], handler: "handler", sample: 'exports.handler = async (event, context) => {\n  return { hello: event.name ?? "world" };\n};\n' },
  java: { label: "Java", ext: [".java"], handler: "Hello::handle", sample: 'import java.util.Map;\n\npublic class Hello {\n  public Object handle(Map<String, Object> event) {\n    return Map.of("hello", event.getOrDefault("name", "world"));\n  }\n}\n' },
};

export function mount(root, [id]) {
  if (!id) return listView(root);
  if (id === "new") return createView(root);
  return detailView(root, id);
}


const back = () => backLink("#/functions", "All functions");

/** A read-only URL with a Copy button (the trigger URL is a credential: shown, never logged). */
function copyable(url) {
  const box = input({ value: url, readonly: true, class: "url", "aria-label": "Trigger URL" });
  const note = h("span", { class: "muted", role: "status" });
  const button = h("button", { type: "button" }, "Copy URL");
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(url);
    } catch {
      box.select(); // no clipboard permission: leave it selected for Ctrl+C
      document.execCommand?.("copy");
    }
    note.textContent = "Copied.";
    setTimeout(() => (note.textContent = ""), 2000);
  });
  return h("span", { class: "copy" }, box, " ", button, " ", note);
}

// -- the list ----------------------------------------------------------------------------------

function listView(root) {
  const tbody = h("tbody");
  const problem = alertBox();
  const shown = h("span", { class: "muted", role: "status" });
  const more = h("button", { type: "button", hidden: true, onclick: () => load(false) }, "Load more");
  let cursor = null;
  fill(
    root,
    heading("Functions", h("a", { href: "#/functions/new", class: "button primary" }, "New function")),
    problem,
    listTable("list", ["Status", "Function", "Runtime", "Trigger URL", ["Created", "opt"]], tbody),
    h("div", { class: "pager" }, shown, more),
  );
  const row = (f) =>
    statusRow(
      f,
      `#/functions/${f.id}`,
      h("td", null, RUNTIMES[f.runtime]?.label ?? f.runtime),
      h("td", null, f.url ? copyable(f.url) : h("span", { class: "muted" }, "—")),
      h("td", { class: "opt" }, when(f.created_at)),
    );
  async function load(fresh) {
    try {
      const answer = page(await api("GET", `/v1/functions${query({ limit: 50, cursor: fresh ? null : cursor })}`));
      problem.show("");
      if (fresh) tbody.replaceChildren();
      tbody.append(...answer.items.map(row));
      cursor = answer.next_cursor;
      more.hidden = !cursor;
      shown.textContent = tbody.children.length ? "" : "No functions yet.";
    } catch (err) {
      problem.show(err.message);
    }
  }
  const reload = throttled(() => load(true), 200);
  load(true);
  return {
    onEvent: (e) => e.type === "function" && reload.soon(),
    refresh: () => load(true),
    unmount: () => reload.cancel(),
  };
}

// -- one function ------------------------------------------------------------------------------

function detailView(root, id) {
  const title = heading(id);
  const problem = alertBox();
  const body = h("div", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  const invoke = invokeForm();
  const callers = h("section", { "aria-labelledby": "fn-callers" });
  const source = h("section", { "aria-labelledby": "fn-code" });
  fill(root, back(), title, problem, body, callers, source, invoke.el);
  let fn = null;
  let callersOf; // the URL whose callers are shown

  const load = loader(body, () => api("GET", `/v1/functions/${encodeURIComponent(id)}`), (answer) => {
    fn = answer;
    render();
    if (!source.hasChildNodes()) showCode(); // the source never changes: read it once
    if (fn.url !== callersOf) findCallers.now(); // once it has a URL; schedule events after
  });

  async function showCode() {
    fill(source, h("h2", { id: "fn-code" }, "Code"), h("p", { class: "muted" }, "Loading…"));
    try {
      const c = await api("GET", `/v1/functions/${encodeURIComponent(id)}/code`);
      fill(
        source,
        h("h2", { id: "fn-code" }, "Code"),
        h("pre", { class: "source", tabindex: 0, "aria-label": "The function's code" }, h("code", null, c.code)),
        c.requirements ? [h("h2", null, "Requirements"), h("pre", { class: "source" }, c.requirements)] : null,
      );
    } catch (err) {
      fill(source, h("h2", { id: "fn-code" }, "Code"), h("p", { class: "form-error" }, `The code could not be read (${err.message})`));
    }
  }

  // What calls the trigger URL: the call scheduled at create (task_id) and every schedule whose
  // task has this URL, from the schedules list (read up to CALLER_PAGES pages of CALLER_LIMIT).
  const findCallers = throttled(async () => {
    const f = fn;
    callersOf = f?.url;
    if (!f?.url) return fill(callers);
    const found = [];
    let cursor = null;
    try {
      for (let n = 0; n < CALLER_PAGES; n++) {
        const answer = page(await api("GET", `/v1/schedules${query({ limit: CALLER_LIMIT, cursor })}`));
        found.push(...answer.items.filter((s) => s.task?.url === f.url));
        cursor = answer.next_cursor;
        if (!cursor) break;
      }
    } catch (err) {
      return fill(callers, h("h2", { id: "fn-callers" }, "Called by"), h("p", { class: "form-error" }, err.message));
    }
    const items = [
      f.task_id ? h("li", null, "The call scheduled when it was made: ", h("a", { href: `#/tasks/${f.task_id}` }, f.task_id)) : null,
      found.map((s) =>
        h("li", null, "Schedule ", h("a", { href: `#/schedules/${s.id}` }, s.name || s.id), ` (${s.cron ?? every(s.every)}, ${s.timezone}) `, badge(s.status)),
      ),
    ].flat().filter(Boolean);
    fill(
      callers,
      h("h2", { id: "fn-callers" }, "Called by"),
      items.length
        ? h("ul", { class: "callers" }, items)
        : h("p", { class: "muted" }, "No schedule calls this URL yet: create one with its trigger URL under ", h("a", { href: "#/schedules/new" }, "New schedule"), "."),
      cursor ? h("p", { class: "muted" }, `Only the newest ${CALLER_PAGES * CALLER_LIMIT} schedules were looked at.`) : null,
    );
  }, 1000);

  function render() {
    const f = fn;
    title.querySelector("h1").textContent = f.name || f.id;
    invoke.setUrl(f.status === "ready" ? f.url : null);
    fill(
      body,
      h(
        "p",
        { class: "status-line" },
        badge(f.status),
        " ",
        f.status === "building" ? h("span", { class: "muted" }, "Building… this page updates when it is done.") : "",
      ),
      f.error ? h("pre", { class: "error-text" }, f.error) : null,
      h(
        "dl",
        { class: "facts" },
        h("dt", null, "Trigger URL"),
        h("dd", null, f.url ? copyable(f.url) : h("span", { class: "muted" }, "once it is ready")),
        h("dt", null, "Runtime"),
        h("dd", null, `${RUNTIMES[f.runtime]?.label ?? f.runtime}, handler ${f.handler}`),
        h("dt", null, "Provider"),
        h("dd", null, f.provider),
        h("dt", null, "Created"),
        h("dd", null, when(f.created_at)),
      ),
      h(
        "div",
        { class: "actions" },
        confirmButton("Delete", "Delete this function? Its URL stops working.", async () => {
          try {
            await api("DELETE", `/v1/functions/${f.id}`);
            location.hash = "#/functions";
          } catch (err) {
            problem.show(err.message);
          }
        }),
      ),
    );
  }

  const refetch = throttled(load, 100);
  load();
  return {
    onEvent(e) {
      if (e.type === "schedule") return findCallers.soon();
      if (e.type !== "function" || e.id !== id) return;
      if (e.status !== "deleted") return refetch.soon();
      refetch.cancel();
      invoke.setUrl(null);
      fill(body, h("p", { class: "muted" }, "This function has been deleted."));
    },
    refresh: load,
    unmount: () => (refetch.cancel(), findCallers.cancel()),
  };
}

const CALLER_PAGES = 5;
const CALLER_LIMIT = 200;

function invokeForm() {
  const event = textarea({ rows: 4 }, '{"name": "taskorch"}');
  const answer = h("div", { class: "answer", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card", novalidate: true, hidden: true },
    h("h2", null, "Invoke"),
    h("p", { class: "form-error", role: "alert", tabindex: -1, hidden: true }),
    field("Event (JSON)", event, { rel: "event", hint: "Sent as the request body to the trigger URL." }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Invoke")),
    answer,
  );
  let url = null;
  onSubmit(form, async () => {
    const problems = new Problems();
    const value = readJson(event.value, "event", problems, null);
    problems.throwIfAny();
    fill(answer, h("p", { class: "muted" }, "Calling…"));
    let res;
    try {
      res = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value) });
    } catch (err) {
      fill(answer, h("p", { class: "form-error" }, `The call did not go through (${err.message}).`));
      return;
    }
    const text = await res.text();
    let shown = text;
    try {
      shown = pretty(JSON.parse(text));
    } catch {
      // not JSON: show the text as it came
    }
    fill(answer, h("p", null, "Answer ", h("span", { class: `code c${String(res.status)[0]}` }, res.status)), h("pre", null, shown));
  });
  return {
    el: form,
    setUrl(next) {
      url = next;
      form.hidden = !next;
    },
  };
}

// -- create ------------------------------------------------------------------------------------

function createView(root) {
  const name = input({ maxlength: 200, placeholder: "hello" });
  const runtime = select(Object.entries(RUNTIMES).map(([k, r]) => [k, r.label]), "python");
  const handler = input({ value: RUNTIMES.python.handler });
  const code = textarea({ rows: 12, class: "code", placeholder: RUNTIMES.python.sample });
  const file = input({ type: "file", accept: Object.values(RUNTIMES).flatMap((r) => r.ext).join(",") });
  const requirements = textarea({ rows: 3, placeholder: "requests==2.32.3" });
  const requirementsField = field("Requirements (requirements.txt)", requirements, { rel: "requirements" });
  const provider = select([["", "Default of the service"], ["local", "local"], ["aws", "AWS Lambda"]], "");
  const schedule = textarea({ rows: 3, placeholder: '{"delay": 60, "payload": {"name": "taskorch"}}' });
  let lastRuntime = "python";

  function setRuntime(next) {
    const before = RUNTIMES[lastRuntime];
    const r = RUNTIMES[next];
    runtime.value = next;
    code.placeholder = r.sample;
    if (!handler.value || handler.value === before.handler) handler.value = r.handler;
    requirementsField.hidden = next !== "python";
    lastRuntime = next;
  }
  runtime.addEventListener("change", () => setRuntime(runtime.value));
  file.addEventListener("change", async () => {
    const chosen = file.files[0];
    if (!chosen) return;
    code.value = await chosen.text();
    const match = Object.entries(RUNTIMES).find(([, r]) => r.ext.some((e) => chosen.name.endsWith(e)));
    if (match) setRuntime(match[0]);
    if (!name.value) name.value = chosen.name.replace(/\.[^.]+$/, "");
  });

  const form = formCard(
    h(
      "div",
      { class: "row wrap" },
      field("Name", name, { rel: "name", cls: "grow" }),
      field("Runtime", runtime, { rel: "runtime" }),
      field("Handler", handler, { rel: "handler", hint: "python, node: a function name; java: Class::method" }),
    ),
    field("Code", code, { rel: "code", hint: "Paste the source (one file), or upload it below." }),
    field("Upload a file", file, { rel: "file" }),
    requirementsField,
    field("Provider", provider, { rel: "provider" }),
    field("Schedule a call (JSON, optional)", schedule, {
      rel: "schedule",
      hint: "Task fields without url (delay or run_at, payload, retries…): once the function is ready, a task calls it.",
    }),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create function")),
  );
  fill(root, back(), heading("New function"), form);

  onSubmit(form, async () => {
    const problems = new Problems();
    const body = { runtime: runtime.value, code: code.value };
    if (name.value.trim()) body.name = name.value.trim();
    if (!body.code.trim()) problems.add("code", "is required: paste the source or upload a file");
    if (handler.value.trim()) body.handler = handler.value.trim();
    if (runtime.value === "python" && requirements.value.trim()) body.requirements = requirements.value;
    if (provider.value) body.provider = provider.value;
    const call = readJson(schedule.value, "schedule", problems);
    if (call !== undefined && (call === null || typeof call !== "object" || Array.isArray(call))) {
      problems.add("schedule", "must be a JSON object of task fields");
    } else if (call !== undefined) body.schedule = call;
    problems.throwIfAny();
    const fn = await api("POST", "/v1/functions", body);
    location.hash = `#/functions/${fn.id}`;
  });
  name.focus();
  return {};
}
