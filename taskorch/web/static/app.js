// The page's frame: sign in and out, the hash router (#/tasks, #/tasks/tsk_…, #/orchestrations/new,
// …), the live event stream fanned out to the open view, and the clock for relative times.

import { ApiError, api, listen, onReachability, session } from "./api.js";
import { tick, timeZone } from "./dom.js";
import { clearErrors, onSubmit, showErrors } from "./forms.js";

const $ = (id) => document.getElementById(id);
// Each section's module is fetched the first time it is opened, keeping the first load small.
const sections = {
  tasks: () => import("./tasks.js"),
  orchestrations: () => import("./orchestrations.js"),
  functions: () => import("./functions.js"),
  schedules: () => import("./schedules.js"),
  queues: () => import("./queues.js"),
};
const loaded = new Set(); // modules opened so far, whose remembered state sign-out clears
let routing = 0; // a newer navigation wins over a module still loading
const view = $("view");
let current = null; // the mounted view: {onEvent, refresh, unmount}
let stopListening = null;

// -- signing in and out --------------------------------------------------------------------------

function showSignIn(note = "") {
  stopListening?.();
  stopListening = null;
  clearInterval(probe);
  probe = null;
  current?.unmount?.();
  current = null;
  for (const section of loaded) section.reset?.();
  view.replaceChildren();
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("live").hidden = true;
  $("who").textContent = "";
  $("signin-note").textContent = note;
  $("signin").hidden = false;
  $("username").focus();
}

function signedIn() {
  $("signin").hidden = true;
  for (const form of $("signin").querySelectorAll("form")) {
    form.reset();
    clearErrors(form);
  }
  const claims = session.claims();
  $("who").textContent = claims.sub ? `Signed in as ${claims.sub}` : "";
  $("nav").hidden = false;
  $("signout").hidden = false;
  startListening();
  route();
}

onSubmit($("password-form"), async () => {
  const form = $("password-form");
  const username = form.username.value.trim();
  const password = form.password.value;
  const missing = [];
  if (!username) missing.push({ field: "username", message: "is required" });
  if (!password) missing.push({ field: "password", message: "is required" });
  if (missing.length) {
    showErrors(form, { message: "Enter your username and password.", details: missing });
    return;
  }
  try {
    const answer = await api("POST", "/v1/auth/token", { username, password }, { token: null });
    session.set(answer.access_token);
  } catch (err) {
    if (err.status === 401) err.details = [{ field: "password", message: err.message }];
    throw err;
  }
  signedIn();
});

onSubmit($("token-form"), async () => {
  // A token copied from a terminal may come wrapped over lines, or with its "Bearer " in front.
  const token = $("token").value.replace(/^\s*Bearer\s+/i, "").replace(/\s+/g, "");
  const refuse = (message) => {
    throw new ApiError(401, { code: "invalid_token", message, details: [{ field: "token", message }] });
  };
  if (!token) {
    showErrors($("token-form"), { message: "Paste a token.", details: [{ field: "token", message: "is required" }] });
    return;
  }
  if (!/^[\w-]+\.[\w-]+\.[\w-]+$/.test(token)) refuse(NOT_WHOLE);
  try {
    await api("GET", "/v1/tasks?limit=1", undefined, { token });
  } catch (err) {
    if (err.status === 401 || err.status === 403) refuse(tokenProblem(err));
    throw err;
  }
  session.set(token);
  signedIn();
});

const NOT_WHOLE =
  "That token is not valid (it is not a whole token: copy all of it, three parts joined by dots, " +
  "as taskorch dev or taskorch token printed it).";

/** Why the API refused a token, in a person's words (its own reasons are PyJWT's). */
function tokenProblem(err) {
  if (err.status === 403) return "That token is valid but may not read here (its scope lacks read).";
  if (err.code === "token_expired") return "That token has expired: get a new one with taskorch token --sub NAME (or restart taskorch dev).";
  if (err.code === "token_revoked") return "That token was revoked (its user's password was changed, or the user removed): sign in again.";
  const reason = err.message.replace(/^The token is not valid: /, "").replace(/\.$/, "");
  if (/signature verification/i.test(reason)) {
    return "That token is not valid (it was signed with another secret than this service's TASKORCH_JWT_SECRET: was it made for another taskorch?).";
  }
  if (/segments|padding|invalid (header|payload|crypto)|decod|token type/i.test(reason)) return NOT_WHOLE;
  return `That token is not valid (${reason}).`;
}

$("signout").addEventListener("click", () => {
  session.clear();
  showSignIn("You are signed out.");
});

session.onExpired(() => {
  session.clear();
  showSignIn("Your session has ended; sign in again.");
});

// -- live updates --------------------------------------------------------------------------------

// The badge: "Live" while the event stream is open; "Offline, reconnecting…" as soon as the stream
// drops or a request cannot reach the service (a stream can outlive its server for a while), until
// the service answers again: then the stream is opened afresh and the view reloads what it missed.
const BADGE = { connecting: "Connecting…", live: "Live", offline: "Offline, reconnecting…" };
let probe = null; // while offline: asks /healthz every PROBE_MS until the service answers
const PROBE_MS = 2000;

function showBadge(state) {
  const live = $("live");
  live.hidden = false;
  live.dataset.state = state;
  live.textContent = BADGE[state];
}

function offline() {
  if (!session.token) return;
  showBadge("offline");
  probe ??= setInterval(async () => {
    try {
      if ((await fetch("/healthz", { cache: "no-store" })).ok) back();
    } catch {
      // still away
    }
  }, PROBE_MS);
}

function back() {
  clearInterval(probe);
  probe = null;
  if (session.token && $("live").dataset.state !== "live") startListening({ missed: true });
}

onReachability((reached) => (reached ? probe && back() : offline()));

function startListening({ missed = false } = {}) {
  stopListening?.();
  showBadge(missed ? "offline" : "connecting");
  const stop = listen(
    (event) => current?.onEvent?.(event),
    (state, wasDown) => {
      if (state === "live") {
        clearInterval(probe);
        probe = null;
        showBadge("live");
        if (wasDown) current?.refresh?.();
        return;
      }
      showBadge("offline");
      // EventSource stops retrying after an error answer (a restarting proxy, say); try again
      // later unless the session ended meanwhile (an expired token signs out instead).
      if (state === "closed") {
        setTimeout(() => stopListening === stop && startListening({ missed: true }), 5000);
      }
    },
    { missed },
  );
  stopListening = stop;
}

// -- routing -------------------------------------------------------------------------------------

async function route({ focus = false } = {}) {
  if (!session.token) return showSignIn();
  const hash = location.hash;
  if (hash && !hash.startsWith("#/")) return; // an in-page anchor such as the skip link
  let [name = "tasks", ...rest] = hash.slice(2).split("/").filter(Boolean);
  if (!sections[name]) [name, rest] = ["tasks", []];
  const turn = ++routing;
  const section = await sections[name]();
  loaded.add(section);
  if (turn !== routing || !session.token) return;
  for (const a of $("nav").querySelectorAll("a")) {
    if (a.dataset.section === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  current?.unmount?.();
  view.replaceChildren();
  current = section.mount(view, rest.map(decodeURIComponent));
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · taskorch`;
  // After a navigation, start keyboard and screen reader users at the new page's heading,
  // unless the view put the focus somewhere useful itself (a form's first field).
  if (focus && !view.contains(document.activeElement)) view.querySelector("h1")?.focus();
}

window.addEventListener("hashchange", () => route({ focus: true }));
$("tz").textContent = timeZone;
setInterval(() => tick(view), 1000);

if (session.token) signedIn();
else showSignIn();
