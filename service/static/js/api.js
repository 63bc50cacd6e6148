// Every request to the service, with the API key. A service started with REPAINT_API_KEYS answers
// 401 without `Authorization: Bearer <key>`: api() sends the saved key; on a 401 it shows the key
// field and waits until a key is saved, then sends the request again. Nothing about keys shows
// until a 401 does.

import { $ } from "./dom.js";
import { state } from "./state.js";

const KEY_STORAGE = "repaint.apiKey";
const auth = { key: readStoredKey(), waiters: [] };

function readStoredKey() {
  try { return localStorage.getItem(KEY_STORAGE) || ""; } catch (_) { return ""; }
}

function authHeaders(headers = {}) {
  return auth.key ? { ...headers, Authorization: `Bearer ${auth.key}` } : { ...headers };
}

export function showKeyStatus() {
  $("key-status").hidden = !auth.key;
}

function askForKey(refusedKey, signal) {
  // Resolves once a key is saved (every request waiting for one goes on then).
  $("key-why").textContent = refusedKey
    ? "The service refused the saved API key: enter a valid one. The page carries on once it is saved."
    : "This service needs an API key. The page carries on once one is saved.";
  const model = $("model");
  if (!state.modelsLoaded && !model.options.length) model.add(new Option("(the models load once a key is saved)", ""));
  const panel = $("key-panel");
  if (panel.hidden) {
    panel.hidden = false;
    $("api-key").value = "";
    if (!document.activeElement || document.activeElement === document.body) $("api-key").focus();
  }
  return new Promise((resolve, reject) => {
    auth.waiters.push(resolve);
    if (signal) signal.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
  });
}

function saveKey(key) {
  auth.key = key;
  try { localStorage.setItem(KEY_STORAGE, key); } catch (_) { /* kept for this page only */ }
  $("key-panel").hidden = true;
  $("api-key").value = "";
  showKeyStatus();
  const waiters = auth.waiters;
  auth.waiters = [];
  for (const resolve of waiters) resolve();
}

export function forgetKey() {
  // The next request goes without a key (app.js reloads the models: asked again if needed).
  auth.key = "";
  try { localStorage.removeItem(KEY_STORAGE); } catch (_) { /* nothing stored */ }
  showKeyStatus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  try {
    new Headers({ Authorization: `Bearer ${key}` });  // what fetch() would refuse to send
  } catch (_) {
    $("key-why").textContent = "This key has characters an HTTP header cannot carry: check it and try again.";
    return;
  }
  saveKey(key);
});

export async function api(url, options = {}) {
  // fetch() with the saved key. `body` may be a function (called for each try) so that a request
  // sent again after a key is saved is built from what the page shows then.
  for (;;) {
    const { body, headers, ...init } = options;
    if (typeof body === "function") init.body = await body();
    else if (body !== undefined) init.body = body;
    const key = auth.key;
    init.headers = authHeaders(headers);
    const response = await fetch(url, init);
    if (response.status !== 401) return response;
    if (auth.key !== key) continue;  // a key was saved while this request was on its way
    await askForKey(key, init.signal);
  }
}

export async function errorText(response) {
  // The API answers {"detail": ...}: a string, an object with a message, or validation errors.
  try {
    const body = await response.json();
    const d = body.detail;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
    if (d && d.message) return d.message;
    return JSON.stringify(d);
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}
