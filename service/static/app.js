// The repaint page: paint a mask over an image, submit it, follow the job live, show results.
"use strict";

const $ = (id) => document.getElementById(id);
const imageCanvas = $("image-canvas");
const maskCanvas = $("mask-canvas");
const maskCtx = maskCanvas.getContext("2d");
const state = { file: null, imageUrl: null, drawing: false, erasing: false, undo: [], last: null,
                painted: false, events: null, results: [], showBefore: false };

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

async function errorText(response) {
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

async function loadModels() {
  try {
    const response = await fetch("/models");
    if (!response.ok) throw new Error(await errorText(response));
    const data = await response.json();
    const model = $("model");
    model.innerHTML = "";
    for (const m of data.models) {
      const option = new Option(`${m.name} (${m.image_size}px, ${m.workers} worker${m.workers === 1 ? "" : "s"})`, m.name);
      option.selected = m.name === data.default;
      model.add(option);
    }
    if (!data.models.length) model.add(new Option("no model is being served yet", ""));
    const preset = $("preset");
    preset.innerHTML = "";
    preset.add(new Option("model default", ""));
    for (const [name, p] of Object.entries(data.presets)) {
      const option = new Option(`${name} (${p.evaluations} steps)`, name);
      option.selected = name === "balanced";
      preset.add(option);
    }
  } catch (e) {
    showError(`Could not load the models: ${e.message}`);
  }
}

function openImage(file) {
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    state.file = file;
    state.imageUrl = url;
    for (const c of [imageCanvas, maskCanvas]) { c.width = img.naturalWidth; c.height = img.naturalHeight; }
    imageCanvas.getContext("2d").drawImage(img, 0, 0);
    maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    state.undo = [];
    state.painted = false;
    $("stage").classList.remove("empty");
    updateButtons();
    showError("");
  };
  img.onerror = () => showError("This file could not be opened as an image.");
  img.src = url;
}

function updateButtons() {
  $("undo").disabled = state.undo.length === 0;
  $("clear").disabled = !state.painted;
  $("submit").disabled = !state.file || !state.painted;
}

function canvasPoint(event) {
  const rect = maskCanvas.getBoundingClientRect();
  return { x: (event.clientX - rect.left) * (maskCanvas.width / rect.width),
           y: (event.clientY - rect.top) * (maskCanvas.height / rect.height) };
}

function brushWidth() {
  // The slider is in screen pixels; convert to image pixels so the brush looks the same at any zoom.
  const rect = maskCanvas.getBoundingClientRect();
  return Number($("brush").value) * (maskCanvas.width / Math.max(rect.width, 1));
}

function strokeTo(point) {
  maskCtx.globalCompositeOperation = state.erasing ? "destination-out" : "source-over";
  maskCtx.strokeStyle = "rgba(255, 40, 80, 1)";
  maskCtx.fillStyle = "rgba(255, 40, 80, 1)";
  maskCtx.lineCap = "round";
  maskCtx.lineJoin = "round";
  maskCtx.lineWidth = brushWidth();
  maskCtx.beginPath();
  const from = state.last || point;
  maskCtx.moveTo(from.x, from.y);
  maskCtx.lineTo(point.x, point.y);
  maskCtx.stroke();
  state.last = point;
}

maskCanvas.addEventListener("pointerdown", (event) => {
  if (!state.file) return;
  state.undo.push(maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height));
  if (state.undo.length > 30) state.undo.shift();
  state.drawing = true;
  state.last = null;
  maskCanvas.setPointerCapture(event.pointerId);
  strokeTo(canvasPoint(event));
  state.painted = true;
  updateButtons();
});
maskCanvas.addEventListener("pointermove", (event) => { if (state.drawing) strokeTo(canvasPoint(event)); });
for (const type of ["pointerup", "pointercancel"]) {
  maskCanvas.addEventListener(type, () => { state.drawing = false; state.last = null; });
}

$("file").addEventListener("change", (event) => { if (event.target.files[0]) openImage(event.target.files[0]); });
$("brush").addEventListener("input", () => { $("brush-size").textContent = $("brush").value; });
$("eraser").addEventListener("click", () => {
  state.erasing = !state.erasing;
  $("eraser").setAttribute("aria-pressed", String(state.erasing));
});
$("undo").addEventListener("click", () => {
  const previous = state.undo.pop();
  if (previous) maskCtx.putImageData(previous, 0, 0);
  state.painted = hasPaint();
  updateButtons();
});
$("clear").addEventListener("click", () => {
  state.undo.push(maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height));
  maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
  state.painted = false;
  updateButtons();
});

function hasPaint() {
  const data = maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 127) return true;
  return false;
}

function maskBlob() {
  // White where painted, black elsewhere, at the image's own size.
  const out = document.createElement("canvas");
  out.width = maskCanvas.width;
  out.height = maskCanvas.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  const painted = maskCtx.getImageData(0, 0, out.width, out.height);
  const pixels = ctx.getImageData(0, 0, out.width, out.height);
  for (let i = 0; i < painted.data.length; i += 4) {
    if (painted.data[i + 3] > 127) { pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = 255; }
  }
  ctx.putImageData(pixels, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

function formatEta(seconds) {
  if (seconds == null) return "";
  if (seconds < 60) return `about ${Math.ceil(seconds)} s left`;
  return `about ${Math.ceil(seconds / 60)} min left`;
}

function follow(jobId) {
  if (state.events) state.events.close();
  const events = new EventSource(`/jobs/${jobId}/events`);
  state.events = events;
  events.addEventListener("status", (event) => {
    const data = JSON.parse(event.data);
    if (data.status === "queued") {
      $("status-line").textContent = data.position != null
        ? `Queued: ${data.position === 0 ? "next in line" : `${data.position} job(s) ahead`}` : "Queued";
    } else if (data.status === "running") {
      $("status-line").textContent = "Running…";
    } else if (data.status === "succeeded") {
      events.close();
      $("status-line").textContent = "Done.";
      $("progress").value = 1;
      showResults(jobId);
    } else if (data.status === "failed") {
      events.close();
      const message = data.error ? data.error.message : "the job failed";
      $("status-line").textContent = "Failed.";
      showError(`The job failed: ${message}`);
    } else if (data.status === "canceled") {
      events.close();
      $("status-line").textContent = "Canceled.";
    }
  });
  events.addEventListener("progress", (event) => {
    const p = JSON.parse(event.data);
    $("progress").value = p.fraction;
    $("status-line").textContent = `Running: step ${p.step} of ${p.total}, ${Math.round(100 * p.fraction)}% ${formatEta(p.eta_seconds)}`;
  });
  events.addEventListener("preview", (event) => {
    const p = JSON.parse(event.data);
    $("preview").src = `${p.url}?step=${p.step}`;
  });
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) showError("Lost the connection to the service.");
  };
}

async function showResults(jobId) {
  const response = await fetch(`/jobs/${jobId}`);
  if (!response.ok) { showError(await errorText(response)); return; }
  const job = await response.json();
  const container = $("results");
  container.innerHTML = "";
  state.results = [];
  (job.links.results || []).forEach((url, i) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = url;
    img.alt = `result ${i + 1}`;
    img.dataset.result = url;
    img.className = "result";
    const caption = document.createElement("figcaption");
    const link = document.createElement("a");
    link.href = url;
    link.download = `repaint-${jobId.slice(0, 8)}-${i + 1}.png`;
    link.textContent = "Download";
    caption.append(`Sample ${i + 1} (seed ${job.params.seed + i}) `, link);
    figure.append(img, caption);
    container.append(figure);
    state.results.push(img);
  });
  if (state.results.length) $("preview").src = state.results[0].src;  // the final estimate
  state.showBefore = false;
  $("toggle").textContent = "Show before";
  $("result-panel").hidden = false;
}

$("toggle").addEventListener("click", () => {
  state.showBefore = !state.showBefore;
  $("toggle").textContent = state.showBefore ? "Show after" : "Show before";
  $("toggle").setAttribute("aria-pressed", String(state.showBefore));
  for (const img of state.results) img.src = state.showBefore ? state.imageUrl : img.dataset.result;
});

$("options").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  if (!state.file || !hasPaint()) { showError("Paint the region to fill first."); return; }
  const form = new FormData();
  form.append("image", state.file);
  form.append("mask", await maskBlob(), "mask.png");
  if ($("model").value) form.append("model", $("model").value);
  if ($("preset").value) form.append("preset", $("preset").value);
  form.append("num_samples", $("num-samples").value || "1");
  if ($("seed").value !== "") form.append("seed", $("seed").value);
  $("submit").disabled = true;
  try {
    const response = await fetch("/inpaint", { method: "POST", body: form });
    if (!response.ok) { showError(await errorText(response)); return; }
    const job = await response.json();
    $("job-id").textContent = job.id;
    $("job-panel").hidden = false;
    $("result-panel").hidden = true;
    $("progress").value = 0;
    $("preview").removeAttribute("src");
    $("status-line").textContent = "Queued";
    follow(job.id);
  } catch (e) {
    showError(`Could not reach the service: ${e.message}`);
  } finally {
    updateButtons();
  }
});

loadModels();
