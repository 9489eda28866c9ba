// Building DOM without innerHTML: every string becomes a text node, so nothing the API or a user
// sends can turn into markup. Also times (browser's zone, plus relative) and small shared widgets.

/** h("a", {href, class, onclick}, "text", child, [more]) -> an element. */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

/** The same for SVG elements. */
export function svg(tag, props, ...children) {
  return build(document.createElementNS("http://www.w3.org/2000/svg", tag), props, children);
}

function build(el, props, children) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value == null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "value" || key === "checked" || key === "selected") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return build(el, null, children);
}

// -- time ----------------------------------------------------------------------------------------

export const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const full = new Intl.DateTimeFormat(undefined, {
  dateStyle: "full",
  timeStyle: "long",
});
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });

/** "26 Nov 2026, 14:03:07" in the browser's language and time zone: always with its date, so
 * that a time is never read as today's (or tomorrow's) by mistake, and every column lines up. */
export function absTime(iso) {
  return dateTime.format(new Date(iso));
}

/** "in 3 sec.", "2 min. ago", as the browser's language says it. */
export function relTime(iso, now = Date.now()) {
  const s = (new Date(iso).getTime() - now) / 1000;
  const a = Math.abs(s);
  if (a < 1) return relative.format(0, "second");
  if (a < 60) return relative.format(Math.round(s), "second");
  if (a < 3600) return relative.format(Math.round(s / 60), "minute");
  if (a < 86400) return relative.format(Math.round(s / 3600), "hour");
  return relative.format(Math.round(s / 86400), "day");
}

/** <time> with the absolute time and a relative part that tick() keeps current. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h(
    "time",
    { datetime: iso, title: full.format(new Date(iso)) },
    absTime(iso),
    " ",
    h("span", { class: "rel", "data-ts": iso }, `(${relTime(iso)})`),
  );
}

/** Refresh every relative time under `root`; app.js calls it once a second. */
export function tick(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll(".rel[data-ts]")) {
    const text = `(${relTime(el.dataset.ts, now)})`;
    if (el.textContent !== text) el.textContent = text;
  }
}

// -- small widgets -------------------------------------------------------------------------------

export function badge(status) {
  return h("span", { class: `badge s-${(status ?? "none").replace(/ /g, "-")}` }, status ?? "—");
}

export function ms(value) {
  if (value == null) return "—";
  if (value >= 1000) return `${(value / 1000).toFixed(2)} s`;
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** A two-step button for destructive actions: first click asks, the second does it. */
export function confirmButton(label, question, action) {
  const box = h("span", { class: "confirm" });
  const ask = h("button", { type: "button", class: "danger", onclick: () => swap(true) }, label);
  const yes = h("button", { type: "button", class: "danger", onclick: run }, `Yes, ${label.toLowerCase()}`);
  const no = h("button", { type: "button", onclick: () => swap(false) }, "Keep it");
  function swap(asking) {
    fill(box, asking ? [h("span", null, question), " ", yes, " ", no] : ask);
    (asking ? yes : ask).focus();
  }
  async function run() {
    yes.disabled = true;
    try {
      await action();
    } finally {
      yes.disabled = false;
    }
  }
  box.append(ask);
  return box;
}

/** A status line for errors and notices; role=alert so screen readers hear it. */
export function alertBox() {
  const el = h("p", { class: "form-error", role: "alert", hidden: true });
  el.show = (message) => {
    el.textContent = message ?? "";
    el.hidden = !message;
  };
  return el;
}

/** A page heading (focusable, so a route change can move focus to it) with optional actions. */
export function heading(text, ...extra) {
  return h("div", { class: "head" }, h("h1", { tabindex: -1 }, text), ...extra);
}

/** The "← All …" link back to a section's list. */
export const backLink = (href, label) => h("p", null, h("a", { href }, `← ${label}`));

/** A list's table in its scrolling box: `heads` are column titles, or [title, class] pairs. */
export function listTable(cls, heads, tbody) {
  const th = (head) => {
    const [title, thClass] = [head].flat();
    return h("th", { scope: "col", class: thClass }, title);
  };
  return h("div", { class: "scroll" }, h("table", { class: cls }, h("thead", null, h("tr", null, heads.map(th))), tbody));
}

/** A list's row for an item with a status: its badge, its name (or id) linking to `href`, `cells`. */
export function statusRow(item, href, ...cells) {
  return h(
    "tr",
    { "data-id": item.id, "data-status": item.status },
    h("td", null, badge(item.status)),
    h("td", null, h("a", { href }, item.name || item.id)),
    ...cells,
  );
}

/** A detail view's `load()`: `fetch()` then `render(answer)`; until an answer came, an error
 * takes the place of `body`'s "Loading…" (later ones are left to the view's own problem line). */
export function loader(body, fetch, render) {
  let answered = false;
  return async () => {
    try {
      const answer = await fetch();
      answered = true;
      render(answer);
    } catch (err) {
      if (!answered) fill(body, h("p", { class: "form-error" }, err.message));
    }
  };
}
