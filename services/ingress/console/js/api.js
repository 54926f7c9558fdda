// The JSON API, called with the workspace key this tab signed in with (sessionStorage only).

const STORAGE_KEY = "trigger-plane.key";

export const session = {
  get key() {
    return sessionStorage.getItem(STORAGE_KEY);
  },
  signIn(key) {
    sessionStorage.setItem(STORAGE_KEY, key);
  },
  signOut() {
    sessionStorage.removeItem(STORAGE_KEY);
  },
};

/** An answer that is not a success: the API's problem document (status, code, title, detail). */
export class ApiError extends Error {
  constructor(status, problem) {
    const body = problem && typeof problem === "object" ? problem : {};
    const detail = body.detail || (typeof problem === "string" && problem) || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.code = body.code || "http_error";
    this.title = body.title || "";
    this.detail = detail;
    this.problem = body;
  }
}

/** Listeners told when the key is refused (401): the app goes back to sign-in. */
const refusedListeners = [];
export function onKeyRefused(listener) {
  refusedListeners.push(listener);
}

function urlOf(path, query) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== "") url.searchParams.append(name, item);
    }
  }
  return url;
}

/**
 * Calls the API. `body` is sent as JSON (a string as is); `accept` lists statuses besides 2xx
 * answered as `{status, data}` instead of thrown (Run now's 502/504/409 with a run).
 */
export async function call(method, path, { body, query, headers, accept = [], key } = {}) {
  const init = {
    method,
    headers: { Accept: "application/json", ...headers },
    credentials: "omit",
    cache: "no-store",
  };
  const secret = key ?? session.key;
  if (secret) init.headers.Authorization = `Bearer ${secret}`;
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(urlOf(path, query), init);
  } catch (error) {
    throw new ApiError(0, {
      code: "network_error",
      title: "Network error",
      detail: `the ingress did not answer (${error.message})`,
    });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (response.ok || accept.includes(response.status)) return { status: response.status, data };
  const error = new ApiError(response.status, data);
  if (response.status === 401 && key === undefined) {
    for (const listener of refusedListeners) listener(error);
  }
  throw error;
}

export const get = async (path, query) => (await call("GET", path, { query })).data;
export const post = async (path, body, options = {}) =>
  (await call("POST", path, { body, ...options })).data;
export const patch = async (path, body) => (await call("PATCH", path, { body })).data;
export const remove = async (path) => (await call("DELETE", path)).data;
