// The job: submitting the form (POST /inpaint), following its events (status, progress, the live
// estimate), canceling it, and forgetting it when another image or job comes.
//
// GET /jobs/<id>/events is read with fetch() rather than EventSource, which cannot send the API
// key: the text/event-stream format is parsed here, and a stream that ends before a final status
// is opened again after a short wait, as EventSource would.

import { api, errorText } from "./api.js";
import { hasPaint, maskBlob, updateButtons } from "./canvas.js";
import { isFinal } from "./catalog.js";
import { $, fmt, label, previewImage, resultImage, showError } from "./dom.js";
import { loadModels } from "./models.js";
import { activeExample } from "./notices.js";
import { loadPreview, render, setView, showJobSettings, showResults } from "./results.js";
import { state } from "./state.js";

// ---------------------------------------------------------------- the event stream

const LOST_CONNECTION = "Lost the connection to the service; reconnecting…";
const RECONNECT_MS = 500;
const RECONNECT_MAX_MS = 8000;

let events = null;  // the AbortController of the stream being read

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

async function readEventStream(body, stream, onEvent) {
  // The WHATWG format: lines end in CRLF, LF or CR; `field: value` (one leading space dropped);
  // a line starting with ':' is a comment; a blank line dispatches the event gathered so far
  // (none if it has no data); an event cut off by the end of the stream is dropped. TextDecoder
  // drops a leading BOM and replaces invalid UTF-8, as the format asks.
  const reader = body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "", type = "", data = [];
  const line = (text) => {
    if (text === "") {
      if (data.length) onEvent({ type: type || "message", data: data.join("\n"), id: stream.lastId });
      type = "";
      data = [];
      return;
    }
    if (text[0] === ":") return;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id" && !value.includes("\0")) stream.lastId = value;
    else if (field === "retry" && /^\d+$/.test(value)) stream.retry = Number(value);
  };
  for (;;) {
    const { done, value } = await reader.read();
    buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
    const ends = /\r\n|\r|\n/g;
    let start = 0;
    for (let m; (m = ends.exec(buffer));) {
      // A CR last in the buffer may be the first half of a CRLF split across chunks.
      if (!done && m[0] === "\r" && m.index === buffer.length - 1) break;
      line(buffer.slice(start, m.index));
      start = ends.lastIndex;
    }
    buffer = buffer.slice(start);
    if (done) return;
  }
}

function stopEvents() {
  if (events) events.abort();
  events = null;
}

async function follow(job, onEvent) {
  // Calls onEvent({type, data, id}) for each event of the job, until it is final, forgotten or
  // another job is followed.
  stopEvents();
  const controller = new AbortController();
  events = controller;
  const live = () => state.job === job && !job.final && !controller.signal.aborted;
  const stream = { lastId: "", retry: RECONNECT_MS };
  let failures = 0;
  while (live()) {
    try {
      const headers = { Accept: "text/event-stream" };
      // As EventSource does; the server starts every stream with the job's state anyway.
      if (stream.lastId) headers["Last-Event-ID"] = stream.lastId;
      const response = await api(`/jobs/${job.id}/events`, { headers, cache: "no-store", signal: controller.signal });
      if (!live()) { response.body && response.body.cancel().catch(() => {}); return; }
      if (!response.ok) {
        if (response.status >= 500) throw new Error(`${response.status}`);  // the service restarting: retry
        // Unknown or expired job: EventSource gives up on such an answer too.
        showError(`Lost the job's updates: ${await errorText(response)}`);
        return;
      }
      failures = 0;
      if ($("error").textContent === LOST_CONNECTION) showError("");
      await readEventStream(response.body, stream, onEvent);
    } catch (e) {
      if (e.name === "AbortError" || !live()) return;
      failures += 1;
    }
    if (!live()) return;
    // The stream ended (or failed) before a final status: connect again, waiting longer each time
    // it fails in a row.
    if (failures > 1) showError(LOST_CONNECTION);
    await sleep(Math.min(stream.retry * 2 ** Math.max(0, failures - 1), RECONNECT_MAX_MS), controller.signal);
  }
}

// ---------------------------------------------------------------- the job

function formatEta(seconds) {
  if (seconds == null) return "";
  if (seconds < 60) return `, about ${Math.ceil(seconds)} s left`;
  return `, about ${Math.ceil(seconds / 60)} min left`;
}

export function forgetJob() {
  stopEvents();
  const job = state.job;
  state.job = null;
  if (job) {
    // Revoke every object URL made for its images, including any still loading.
    for (const loading of job.images.values()) loading.then((image) => URL.revokeObjectURL(image.objectUrl), () => {});
    job.images.clear();
  }
  if (previewImage.src.startsWith("blob:")) URL.revokeObjectURL(previewImage.src);
  previewImage.removeAttribute("src");
  resultImage.removeAttribute("src");
  delete resultImage.dataset.result;
  $("download").removeAttribute("href");
  $("job-panel").hidden = true;
  $("job-settings").textContent = "";
  $("samples").innerHTML = "";
  render();
}

function finish(job, text) {
  job.final = true;
  stopEvents();
  $("status-line").textContent = text;
  $("cancel").hidden = true;
  render();
}

// What the page says of a final status (which statuses are final, GET /models `job_statuses` says).
const FINAL_TEXT = { succeeded: "Done.", failed: "Failed.", canceled: "Canceled." };

function onJobEvent(job, event) {
  if (state.job !== job) return;
  let data;
  try { data = JSON.parse(event.data); } catch (_) { return; }
  if (event.type === "status") {
    if (job.final) return;
    if (isFinal(data.status)) {
      const text = FINAL_TEXT[data.status] || `${label(data.status)[0].toUpperCase()}${label(data.status).slice(1)}.`;
      finish(job, text);
      if (data.status === "succeeded") {
        $("progress").value = 1;
        showResults(job);
        return;
      }
      if (data.error || data.status === "failed") {
        showError(`The job failed: ${data.error ? data.error.message : "the job failed"}`);
      }
      setView("edit");
    } else if (data.status === "queued") {
      $("status-line").textContent = data.position != null
        ? `Queued: ${data.position === 0 ? "next in line" : `${data.position} job(s) ahead`}` : "Queued";
    } else if (!job.total) {
      $("status-line").textContent = "Running…";  // running, or a status the page has no words for
    }
  } else if (event.type === "progress") {
    if (job.final) return;
    job.total = data.total;
    job.fraction = data.fraction;
    $("progress").value = data.fraction;
    $("status-line").textContent = `Running: ${fmt(data.step)} of ${fmt(data.total)} evaluations, `
      + `${Math.round(100 * data.fraction)}%${formatEta(data.eta_seconds)}`;
    if (job.previewStep != null) render();  // the badge's percentage
  } else if (event.type === "preview") {
    loadPreview(job, data.url, data.step);
  }
}

$("cancel").addEventListener("click", async () => {
  const job = state.job;
  if (!job) return;
  try {
    const response = await api(`/jobs/${job.id}`, { method: "DELETE" });
    if (!response.ok) showError(await errorText(response));
    else if (!job.final) $("status-line").textContent = "Canceling…";
  } catch (e) {
    showError(`Could not reach the service: ${e.message}`);
  }
});

export async function jobForm() {
  const form = new FormData();
  form.append("image", state.file);
  form.append("mask", await maskBlob(), "mask.png");
  if ($("model").value) form.append("model", $("model").value);
  const ex = activeExample();
  if (ex && ex.model === $("model").value) {
    // What the example needs on its model (strategy=resize for the 32 px faces, a class label).
    for (const [k, v] of Object.entries(ex.data.form)) form.append(k, String(v));
  }
  const preset = $("preset").value;
  if (preset === "custom") {
    // The chosen sampler and its parameters only: the service refuses another sampler's.
    form.append("sampler", $("sampler").value);
    for (const input of $("custom").querySelectorAll("input[name]")) form.append(input.name, input.value);
  } else if (preset) {
    form.append("preset", preset);
  }
  form.append("num_samples", $("num-samples").value || "1");
  if ($("seed").value !== "") form.append("seed", $("seed").value);
  return form;
}

$("options").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  if (!state.file || !hasPaint()) { showError("Paint the region to fill first."); return; }
  state.submitting = true;
  updateButtons();
  let tries = 0;
  try {
    const response = await api("/inpaint", {
      method: "POST",
      body: async () => {
        // Sent again once a key is saved: with the models (and the quality they default to) loaded
        // by then, as the form shows them.
        if (tries++ > 0 && !state.modelsLoaded) await loadModels();
        return jobForm();
      },
    });
    if (!response.ok) {
      showError(await errorText(response));
      if (response.status === 503) loadModels();  // perhaps the model became unavailable: the form says so
      return;
    }
    const created = await response.json();
    if (!state.modelsLoaded) await loadModels();  // which statuses are final
    forgetJob();
    const job = { id: created.id, total: null, fraction: 0, previewStep: null, results: null, final: false,
                  images: new Map() };
    state.job = job;
    $("job-id").textContent = job.id;
    $("job-panel").hidden = false;
    $("progress").value = 0;
    $("status-line").textContent = "Queued";
    $("cancel").hidden = false;
    setView("result");
    follow(job, (event) => onJobEvent(job, event));
    showJobSettings(job);
  } catch (e) {
    showError(`Could not reach the service: ${e.message}`);
  } finally {
    state.submitting = false;
    updateButtons();
  }
});
