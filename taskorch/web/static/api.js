// Talking to the taskorch API: the session token, fetch with the contract's error bodies, and the
// live event stream. Only the token is kept (in sessionStorage), never the password.

const TOKEN_KEY = "taskorch.token";

export class ApiError extends Error {
  /** An error answer: `status` 0 means the service could not be reached. */
  constructor(status, { code = "error", message = "", details = [] } = {}) {
    super(message || `The service answered ${status}.`);
    this.status = status;
    this.code = code;
    this.details = Array.isArray(details) ? details : [];
  }
}

let onExpired = () => {};
let onReach = () => {};

/** `fn(false)` when a request could not reach the service, `fn(true)` when one did again. */
export function onReachability(fn) {
  onReach = fn;
}

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
  /** The token's claims (sub, exp, scope), read without verifying: for display only. */
  claims() {
    try {
      const part = this.token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part));
    } catch {
      return {};
    }
  },
  /** Called when an authenticated request answers 401: the token expired or was revoked. */
  onExpired(fn) {
    onExpired = fn;
  },
};

/** Call the API; resolves to the parsed JSON answer, rejects with ApiError. */
export async function api(method, path, body, { token = session.token } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    onReach(false);
    throw new ApiError(0, {
      code: "unreachable",
      message: "The service cannot be reached; check the connection and try again.",
    });
  }
  onReach(true);
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = new ApiError(
      res.status,
      data?.error ?? { code: `http_${res.status}`, message: text.slice(0, 300) || res.statusText },
    );
    if (res.status === 401 && token && token === session.token) onExpired(err);
    throw err;
  }
  return data;
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** Pages answer {items, next_cursor}; accept a bare list too. */
export function page(data) {
  if (Array.isArray(data)) return { items: data, next_cursor: null };
  return { items: data?.items ?? [], next_cursor: data?.next_cursor ?? null };
}

/**
 * The owner's live changes from GET /v1/events. `handler(event)` gets {type, id, status};
 * `onState(state)` gets "live", "reconnecting" or "closed". EventSource reconnects by itself;
 * after a reconnect `onState("live", true)` tells views to reload what they may have missed.
 * When the browser gives up ("closed"), the caller may listen again with {missed: true}.
 */
export function listen(handler, onState, { missed = false } = {}) {
  const url = `/v1/events?access_token=${encodeURIComponent(session.token)}`;
  const source = new EventSource(url);
  let wasDown = missed;
  const deliver = (e) => {
    try {
      handler(JSON.parse(e.data));
    } catch (err) {
      console.error("bad event", e.data, err);
    }
  };
  for (const type of ["task", "orchestration", "function", "schedule", "queue", "message"]) {
    source.addEventListener(type, deliver);
  }
  source.onopen = () => {
    onState("live", wasDown);
    wasDown = false;
  };
  source.onerror = () => {
    wasDown = true;
    if (source.readyState === EventSource.CLOSED) {
      onState("closed");
      // The stream refuses an expired token: a plain request tells us whether that is why.
      api("GET", "/v1/tasks?limit=1").catch(() => {});
    } else {
      onState("reconnecting");
    }
  };
  return () => source.close();
}
