// Form building blocks shared by the views: labelled fields, the task-spec and condition editors
// (used by tasks, orchestration steps and fallbacks), and putting each error next to its field.
//
// Every field carries `data-rel` (its name inside its group, "url"); groups carry `data-group`
// ("steps[2]", "condition"). An API error detail's `field` ("steps[2].condition.url") is matched
// against those paths, so the message lands beside the input it is about.

import { ApiError } from "./api.js";
import { h } from "./dom.js";

let seq = 0;

/** A labelled control with room for a hint and an error. */
export function field(label, control, { rel, hint, cls } = {}) {
  const id = `f${++seq}`;
  control.id = id;
  const hintEl = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h(
    "div",
    { class: `field ${cls ?? ""}`, "data-rel": rel },
    h("label", { for: id }, label),
    control,
    hintEl,
    h("p", { class: "error", id: `${id}-err`, hidden: true }),
  );
}

export function input(props) {
  return h("input", { autocomplete: "off", ...props });
}

export function select(options, value) {
  return h(
    "select",
    null,
    options.map(([v, label]) => h("option", { value: v, selected: v === value }, label ?? v)),
  );
}

export function textarea(props, value = "") {
  return h("textarea", { spellcheck: "false", rows: 4, ...props, value });
}

function number(value, placeholder, props) {
  return input({ type: "number", step: "any", inputmode: "decimal", value: value ?? "", placeholder, ...props });
}

const METHODS = ["POST", "GET", "PUT", "PATCH", "DELETE"].map((m) => [m]);

/** A view's form: a card whose first line is where onSubmit shows an error that has no field. */
export function formCard(...children) {
  return h(
    "form",
    { class: "card", novalidate: true },
    h("p", { class: "form-error", role: "alert", tabindex: -1, hidden: true }),
    ...children,
  );
}

/** Collects (field, message) problems found before sending, with the group's prefix. */
export class Problems {
  constructor() {
    this.list = [];
  }
  add(path, message) {
    this.list.push({ field: path, message });
  }
  throwIfAny() {
    if (!this.list.length) return;
    const n = this.list.length;
    throw new ApiError(0, {
      code: "invalid_input",
      message: `${n} field${n > 1 ? "s need" : " needs"} fixing before this can be sent.`,
      details: this.list,
    });
  }
}

const join = (prefix, rel) => (prefix ? `${prefix}.${rel}` : rel);

function readNumber(ctl, path, problems, out, key) {
  if (ctl.validity.badInput) problems.add(path, "must be a number");
  else if (ctl.value.trim() !== "") out[key] = Number(ctl.value);
}

/** "Name: value" lines -> an object of strings. */
function readHeaders(text, path, problems) {
  const out = {};
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    const at = line.indexOf(":");
    if (at < 1) problems.add(path, `line ${i + 1} must read "Name: value"`);
    else out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  });
  return out;
}

function headersText(headers) {
  return Object.entries(headers ?? {})
    .map(([k, v]) => `${k}: ${v}`)
    .join("\n");
}

/** JSON typed by a person, checked before it is sent. */
export function readJson(text, path, problems, empty = undefined) {
  if (!text.trim()) return empty;
  try {
    return JSON.parse(text);
  } catch (e) {
    problems.add(path, `is not valid JSON: ${e.message}`);
    return undefined;
  }
}

/** The URL, method and headers of a call (a task's, a condition's check) in controls `c`. */
function callFields(c, urlLabel) {
  return [
    h("div", { class: "row" }, field(urlLabel, c.url, { rel: "url", cls: "grow" }), field("Method", c.method, { rel: "method" })),
    field("Headers", c.headers, { rel: "headers", hint: "One per line: Name: value" }),
  ];
}

/** Reads callFields: [{url, method}, the headers read], a missing URL added to `problems`. */
function readCall(c, prefix, problems) {
  const out = { url: c.url.value.trim(), method: c.method.value };
  if (!out.url) problems.add(join(prefix, "url"), "is required");
  return [out, readHeaders(c.headers.value, join(prefix, "headers"), problems)];
}

/** A row of number fields, one a [label, key] of `labels`: the control `c[key]`, named `key`. */
function numberRow(c, labels) {
  return h("div", { class: "row wrap" }, labels.map(([label, key]) => field(label, c[key], { rel: key })));
}

/** Reads the fields of numberRow(c, labels) into `out`. */
function readNumbers(c, labels, prefix, problems, out) {
  for (const [, key] of labels) readNumber(c[key], join(prefix, key), problems, out, key);
}

const POLICY = [
  ["Retries", "retries"],
  ["First retry after (s)", "retry_delay"],
  ["Backoff ×", "backoff"],
  ["Longest wait (s)", "max_retry_delay"],
  ["Timeout (s)", "timeout"],
];
const CHECKS = [
  ["Wait before check (s)", "delay"],
  ["Re-checks", "retries"],
  ["Between re-checks (s)", "retry_delay"],
  ["Timeout (s)", "timeout"],
];

/**
 * The fields of one HTTP call with its retry policy (a task, a step, a fallback).
 * `values` prefills it (a Task when modifying). `read(prefix, problems)` returns the spec.
 */
export function specEditor(values = {}, { patch = false } = {}) {
  const c = {
    url: input({ type: "url", value: values.url ?? "", placeholder: "https://example.com/hook", required: true }),
    method: select(METHODS, values.method ?? "POST"),
    headers: textarea({ rows: 2, placeholder: "Authorization: Bearer …" }, headersText(values.headers)),
    payload: textarea(
      { rows: 4, placeholder: '{"hello": "world"}' },
      values.payload == null ? "" : JSON.stringify(values.payload, null, 2),
    ),
    retries: number(values.retries, "3", { min: 0, max: 100, step: 1, inputmode: "numeric" }),
    retry_delay: number(values.retry_delay, "1"),
    backoff: number(values.backoff, "2"),
    max_retry_delay: number(values.max_retry_delay, "300"),
    timeout: number(values.timeout, "30"),
  };
  const el = h(
    "div",
    { class: "spec" },
    callFields(c, "URL"),
    field("Payload (JSON)", c.payload, { rel: "payload", hint: "Sent as the JSON body; empty means null." }),
    h(
      "details",
      { class: "policy" },
      h("summary", null, "Retry policy and timeout"),
      numberRow(c, POLICY),
    ),
  );
  function read(prefix, problems) {
    const [out, headers] = readCall(c, prefix, problems);
    if (patch || Object.keys(headers).length) out.headers = headers;
    const payload = readJson(c.payload.value, join(prefix, "payload"), problems, patch ? null : undefined);
    if (payload !== undefined) out.payload = payload;
    readNumbers(c, POLICY, prefix, problems, out);
    return out;
  }
  return { el, read, controls: c };
}

/** The fields of a condition check run between orchestration steps. */
export function conditionEditor() {
  const c = {
    url: input({ type: "url", placeholder: "https://example.com/check", required: true }),
    method: select(METHODS, "POST"),
    headers: textarea({ rows: 2, placeholder: "Name: value" }),
    delay: number("", "0"),
    retries: number("", "0", { min: 0, step: 1, inputmode: "numeric" }),
    retry_delay: number("", "1"),
    timeout: number("", "30"),
  };
  const el = h(
    "div",
    { class: "spec", "data-group": "condition" },
    callFields(c, "Check URL"),
    numberRow(c, CHECKS),
  );
  function read(prefix, problems) {
    const [out, headers] = readCall(c, prefix, problems);
    if (Object.keys(headers).length) out.headers = headers;
    readNumbers(c, CHECKS, prefix, problems, out);
    return out;
  }
  return { el, read };
}

/** A checkbox that shows an optional block (a condition, a fallback) only when ticked. */
export function optional(label, editor) {
  const box = input({ type: "checkbox" });
  const id = `f${++seq}`;
  box.id = id;
  const body = h("div", { class: "optional-body", hidden: true }, editor.el);
  box.addEventListener("change", () => {
    body.hidden = !box.checked;
  });
  const el = h("div", { class: "optional" }, h("label", { class: "check", for: id }, box, " ", label), body);
  return { el, read: (prefix, problems) => (box.checked ? editor.read(prefix, problems) : undefined), box };
}

/** Shows, of `fields` ({value: field}), only the one the select `choice` has chosen, as it changes. */
export function showChosen(choice, fields) {
  const sync = () => {
    for (const [value, el] of Object.entries(fields)) el.hidden = choice.value !== value;
  };
  choice.addEventListener("change", sync);
  sync();
}

/** When it runs: now (or as it is, when modifying), after a delay, or at a local date and time. */
export function whenEditor({ patch = false } = {}) {
  const first = patch ? ["keep", "Keep its due time"] : ["now", "Now"];
  const mode = select([first, ["delay", "After a delay"], ["at", "At a date and time"]], first[0]);
  const delay = number("", "seconds", { min: 0 });
  const at = input({ type: "datetime-local", step: 1 });
  const delayField = field("Delay (s)", delay, { rel: "delay" });
  const atField = field("Run at (your time)", at, { rel: "run_at" });
  showChosen(mode, { delay: delayField, at: atField });
  const el = h("div", { class: "row wrap" }, field("When", mode, { rel: "when" }), delayField, atField);
  function read(problems) {
    if (mode.value === "delay") {
      if (delay.validity.badInput || delay.value.trim() === "") problems.add("delay", "must be a number of seconds");
      else return { delay: Number(delay.value) };
    } else if (mode.value === "at") {
      const t = at.value ? new Date(at.value) : null;
      if (!t || Number.isNaN(t.getTime())) problems.add("run_at", "pick a date and time");
      else return { run_at: t.toISOString() };
    } else if (mode.value === "now" && patch) {
      return { delay: 0 };
    }
    return {};
  }
  return { el, read, mode, delay, at };
}

// -- errors next to their fields --------------------------------------------------------------

function pathOf(el, form) {
  const parts = [el.dataset.rel];
  for (let n = el.parentElement; n && n !== form; n = n.parentElement) {
    if (n.dataset.group) parts.unshift(n.dataset.group);
  }
  return parts.join(".");
}

/** Clear every error shown in `form`. */
export function clearErrors(form) {
  for (const el of form.querySelectorAll(".field.invalid")) {
    el.classList.remove("invalid");
    const err = el.querySelector(":scope > .error");
    err.hidden = true;
    err.textContent = "";
    const ctl = el.querySelector(":scope > input, :scope > select, :scope > textarea");
    if (ctl && "describedby" in ctl.dataset) {
      ctl.removeAttribute("aria-invalid");
      if (ctl.dataset.describedby) ctl.setAttribute("aria-describedby", ctl.dataset.describedby);
      else ctl.removeAttribute("aria-describedby");
      delete ctl.dataset.describedby;
    }
  }
  const top = form.querySelector(":scope > .form-error");
  if (top) {
    top.hidden = true;
    top.textContent = "";
  }
}

/**
 * Show an ApiError in `form`: each detail beside its field (the nearest enclosing field when the
 * exact one is not on the form, "headers.X-Bad" -> headers), the rest in the form's alert line.
 */
export function showErrors(form, err) {
  clearErrors(form);
  const fields = new Map();
  for (const el of form.querySelectorAll(".field[data-rel]")) {
    if (!el.closest("[hidden]")) fields.set(pathOf(el, form), el);
  }
  const unplaced = [];
  let first = null;
  for (const d of err.details ?? []) {
    let path = d.field ?? "";
    let el = fields.get(path);
    while (!el && path) {
      const up = path.replace(/(\.[^.[\]]+|\[\d+\])$/, ""); // steps[2].url -> steps[2] -> steps
      path = up === path ? "" : up;
      el = path ? fields.get(path) : undefined;
    }
    if (!el) {
      unplaced.push(d.field ? `${d.field} ${d.message}` : d.message);
      continue;
    }
    const rest = d.field.slice(path.length).replace(/^\./, "");
    const msg = el.querySelector(":scope > .error");
    msg.textContent = (msg.textContent ? `${msg.textContent}; ` : "") + (rest ? `${rest}: ${d.message}` : d.message);
    msg.hidden = false;
    el.classList.add("invalid");
    const ctl = el.querySelector(":scope > input, :scope > select, :scope > textarea");
    if (ctl && !("describedby" in ctl.dataset)) {
      ctl.dataset.describedby = ctl.getAttribute("aria-describedby") ?? "";
      ctl.setAttribute("aria-invalid", "true");
      ctl.setAttribute("aria-describedby", `${ctl.dataset.describedby} ${msg.id}`.trim());
    }
    first ??= el;
  }
  const top = form.querySelector(":scope > .form-error");
  const details = err.details ?? [];
  const summary = !details.length || unplaced.length ? [err.message, ...unplaced].join(" ") : err.message;
  // One detail that repeats the message needs no second copy at the top.
  const repeated = details.length === 1 && !unplaced.length && details[0].message === err.message;
  if (top && !repeated) {
    top.textContent = summary;
    top.hidden = false;
  }
  if (first) {
    first.closest("details")?.setAttribute("open", "");
    first.querySelector("input, select, textarea")?.focus();
  } else {
    top?.focus?.();
  }
}

/** Submit handler wrapper: disables the button, shows errors, keeps the page from reloading. */
export function onSubmit(form, action) {
  form.noValidate = true;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button?.disabled) return;
    if (button) button.disabled = true;
    clearErrors(form);
    try {
      await action();
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      showErrors(form, err);
    } finally {
      if (button) button.disabled = false;
    }
  });
}
