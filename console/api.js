// api.js — the credential and every call to joule's admin API.
//
// Owns: where the credential lives (this module's memory and sessionStorage, never a cookie or
// localStorage), the `Authorization: Bearer` header, JSON bodies, timeouts, and turning every
// failure (network, timeout, HTTP error) into an ApiError whose message can be shown as is.

const STORAGE_KEY = 'joule.console.credential';
const TIMEOUT_MS = 20000;

let credential = null;
let unauthorizedHandler = null;

/** An API failure with a message fit for the error banner. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = null, param = null } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

/** The credential remembered for this tab (sessionStorage), or null. */
export function storedCredential() {
  if (credential) return credential;
  try {
    credential = window.sessionStorage.getItem(STORAGE_KEY) || null;
  } catch {
    credential = null; // storage disabled: memory only
  }
  return credential;
}

/** Keeps `value` for this tab: in memory and in sessionStorage (gone when the tab closes). */
export function rememberCredential(value) {
  credential = value;
  try {
    window.sessionStorage.setItem(STORAGE_KEY, value);
  } catch {
    // Storage disabled or full: the credential stays in memory for this page only.
  }
}

/** Forgets the credential everywhere this console keeps it. */
export function forgetCredential() {
  credential = null;
  try {
    window.sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    // nothing stored
  }
}

/**
 * Called with the ApiError when a request made with the remembered credential is answered
 * 401 (the key was revoked or the token changed): app.js signs out.
 */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

/** `path` with the non-empty `params` as a query string. */
export function withQuery(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/** The readable message of an error answer: joule's `error.message`, else the text, else the status. */
async function errorMessage(response) {
  let text = '';
  try {
    text = await response.text();
  } catch {
    // body unreadable: fall back to the status line
  }
  let code = null;
  let param = null;
  let message = '';
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      message = typeof body.error === 'string' ? body.error : body.error.message || '';
      code = body.error.code || null;
      param = body.error.param || null;
    }
  } catch {
    message = text.trim().slice(0, 500);
  }
  if (!message) message = `HTTP ${response.status} ${response.statusText}`.trim();
  return new ApiError(message, { status: response.status, code, param });
}

/**
 * Sends one request and returns the Response when it is a success (2xx); throws ApiError
 * otherwise.
 *
 * options: method, json (a value sent as JSON), body + contentType (raw bytes), signal (an
 * AbortSignal: the page's, aborted when the page is left), credential (sign-in tries one that
 * is not remembered yet; its 401 is the caller's to show).
 */
export async function send(path, options = {}) {
  const { method = 'GET', json, body, contentType, signal, accept = 'application/json' } = options;
  const bearer = options.credential ?? storedCredential();
  const headers = { Accept: accept };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let payload = body;
  if (json !== undefined) {
    payload = JSON.stringify(json);
    headers['Content-Type'] = 'application/json';
  } else if (contentType) {
    headers['Content-Type'] = contentType;
  }

  // One controller for the timeout and the caller's signal (AbortSignal.any is too new to rely on).
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, TIMEOUT_MS);
  const forward = () => controller.abort();
  if (signal) {
    if (signal.aborted) controller.abort();
    else signal.addEventListener('abort', forward, { once: true });
  }

  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: payload,
      signal: controller.signal,
      credentials: 'omit', // bearer header only: no cookies, so no CSRF surface
      cache: 'no-store',
      referrerPolicy: 'no-referrer',
    });
  } catch (e) {
    if (timedOut) throw new ApiError(`joule did not answer ${method} ${path} within ${TIMEOUT_MS / 1000} s.`);
    if (signal && signal.aborted) throw abortError();
    throw new ApiError(`Cannot reach joule (${method} ${path}): ${e.message || e}`);
  } finally {
    clearTimeout(timer);
    if (signal) signal.removeEventListener('abort', forward);
  }

  if (!response.ok) {
    const err = await errorMessage(response);
    if (err.status === 401 && options.credential === undefined && unauthorizedHandler) {
      unauthorizedHandler(err);
    }
    throw err;
  }
  return response;
}

/** An error that callers recognise as "the page was left": never shown. */
function abortError() {
  const e = new ApiError('aborted');
  e.aborted = true;
  return e;
}

/** True for the error thrown when a request was cancelled because its page went away. */
export function isAbort(e) {
  return Boolean(e && (e.aborted || e.name === 'AbortError'));
}

/** GET `path` (with `params`) and parse the JSON answer. */
export async function getJson(path, params, options = {}) {
  const response = await send(withQuery(path, params), options);
  return parseJson(response, path);
}

/** A request with a JSON body; returns the parsed answer (or null when it has none). */
export async function sendJson(method, path, json, options = {}) {
  const response = await send(path, { ...options, method, json });
  return parseJson(response, path);
}

async function parseJson(response, path) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    throw new ApiError(`joule answered ${path} with something that is not JSON.`, { status: response.status });
  }
}
