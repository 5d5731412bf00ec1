// The JSON API, called with the signed-in key in the Authorization header. The key lives in
// this tab's sessionStorage only: never in local storage, a URL, or a log line.

const KEY_SLOT = "footprint.dashboard.key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function savedKey() {
  return sessionStorage.getItem(KEY_SLOT);
}

export function saveKey(key) {
  sessionStorage.setItem(KEY_SLOT, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_SLOT);
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

async function call(key, path, params, as) {
  let response;
  try {
    response = await fetch(path + query(params || {}), {
      // No key at all: a proxy with auth = "none" (local use) answers for team "default".
      headers: key ? { Authorization: `Bearer ${key}` } : {},
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    throw new ApiError(0, "network", `the proxy could not be reached (${error.message})`);
  }
  if (!response.ok) {
    let code = "";
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      code = body.error?.code || body.error?.type || "";
      message = body.error?.message || message;
    } catch {
      // Not OpenAI's error shape: keep the status line.
    }
    throw new ApiError(response.status, code, message);
  }
  return as === "text" ? response.text() : response.json();
}

export function apiJson(key, path, params) {
  return call(key, path, params, "json");
}

export function apiText(key, path, params) {
  return call(key, path, params, "text");
}
