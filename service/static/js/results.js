// What the box shows: the image with its mask ("edit"), or ("result") the live estimate while a job
// runs and its results (one per sample) when it is done, all at the same size, with the
// before/after split; and what else a job gives: its progress under the box while it runs (the
// result's tools take that place), its settings as it runs them, the sample buttons and the
// download. Images are fetched with the key and shown from object URLs, which are revoked when they
// are replaced or the job is forgotten.

import { api, errorText } from "./api.js";
import { defaultSampler, outputFormat, samplerInfo } from "./catalog.js";
import { drawCursor } from "./cursor.js";
import { $, content, fmt, label, maskCanvas, previewImage, resultImage, showError, stage } from "./dom.js";
import { state } from "./state.js";

// The before/after split: `at` percent of the box, from the left, shows the image before.
const split = { at: 0, beforeToggle: null, dragging: false };

export function setView(view) {
  state.view = view;
  render();
}

export function render() {
  const job = state.job;
  const results = job && job.results && job.results.length ? job.results : null;
  const showingResult = state.view === "result" && results;
  const showingPreview = state.view === "result" && !results && job && job.previewStep != null;
  stage.dataset.view = state.view;
  stage.classList.toggle("comparing", Boolean(showingResult));
  previewImage.hidden = !showingPreview;
  resultImage.hidden = !showingResult;
  $("compare-line").hidden = !showingResult;
  maskCanvas.hidden = Boolean(showingResult || showingPreview);
  for (const el of stage.querySelectorAll(".corner")) el.hidden = !showingResult;
  $("result-tools").hidden = !showingResult;
  $("run-tools").hidden = !job || Boolean(showingResult);  // the result's tools take its place
  $("view-tools").hidden = !state.width;
  $("view-edit").setAttribute("aria-selected", String(state.view === "edit"));
  $("view-result").setAttribute("aria-selected", String(state.view === "result"));
  $("view-result").disabled = !job;
  $("view-result").textContent = results ? "Result" : "Live estimate";
  const badge = $("badge");
  badge.hidden = state.view !== "result" || !job || (showingResult && results.length === 1);
  if (showingResult) {
    badge.textContent = `Sample ${state.sample + 1} of ${results.length} (seed ${job.seed + state.sample})`;
  } else if (showingPreview) {
    badge.textContent = `Live estimate at ${Math.round(100 * (job.fraction || 0))}%`;
  } else if (job && !job.final) {
    badge.textContent = "Waiting for the live estimate (it appears after a third of the work)";
  } else if (job) {
    badge.textContent = "No result";
  }
  applySplit();
  drawCursor();
}

// ---------------------------------------------------------------- before/after

function applySplit() {
  content.style.setProperty("--split", `${split.at}%`);
  $("compare").value = String(split.at);
  $("toggle").setAttribute("aria-pressed", String(split.at >= 100));
  $("toggle").textContent = split.at >= 100 ? "Show after" : "Show before";
}

function setSplit(value) {
  split.at = Math.min(100, Math.max(0, value));
  applySplit();
}

function resetSplit() {
  // A new result: all of it after.
  setSplit(0);
  split.beforeToggle = null;
}

export function toggleBefore() {
  if (stage.classList.contains("comparing")) {
    if (split.at >= 100) setSplit(split.beforeToggle ?? 0);
    else { split.beforeToggle = split.at; setSplit(100); }
  }
}

// ---------------------------------------------------------------- previews and results

export async function loadPreview(job, url, step) {
  // The server answers 404 until the estimate is worth showing (a third of the work): skip those.
  if (job.final || job.loadingPreview || (step != null && job.previewStep != null && step <= job.previewStep)) return;
  if (step != null && job.total && 3 * step < job.total) return;
  job.loadingPreview = true;
  try {
    const response = await api(`${url}${url.includes("?") ? "&" : "?"}step=${step ?? Date.now()}`, { cache: "no-store" });
    if (!response.ok) return;
    const objectUrl = URL.createObjectURL(await response.blob());
    const img = new Image();
    img.src = objectUrl;
    try { await img.decode(); } catch (_) { URL.revokeObjectURL(objectUrl); return; }
    if (state.job !== job || job.final) { URL.revokeObjectURL(objectUrl); return; }
    const old = previewImage.src;
    previewImage.src = objectUrl;
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    job.previewStep = step ?? 0;
    job.previewSize = [img.naturalWidth, img.naturalHeight];
    render();
  } catch (_) {
    // A preview is a nicety: the next one will come.
  } finally {
    job.loadingPreview = false;
  }
}

export function jobImage(job, url) {
  // One of the job's results, fetched once: {blob, objectUrl}, decoded and ready to show.
  if (!job.images.has(url)) {
    const loading = (async () => {
      const response = await api(url);
      if (!response.ok) throw new Error(await errorText(response));
      const blob = await response.blob();
      const objectUrl = URL.createObjectURL(blob);
      const img = new Image();
      img.src = objectUrl;
      try { await img.decode(); } catch (_) {
        URL.revokeObjectURL(objectUrl);
        throw new Error("the result is not an image this browser can show");
      }
      return { blob, objectUrl };
    })();
    job.images.set(url, loading);
    loading.catch(() => { if (job.images.get(url) === loading) job.images.delete(url); });  // a later try may work
  }
  return job.images.get(url);
}

function describeJobSettings(params) {
  // The sampler and the settings that run, as the job records them; advanced ones only when set.
  // (A record without `sampler` is the default sampler's: jobs queued before samplers were pluggable.)
  const name = params.sampler || (defaultSampler() || {}).name || "";
  const sampler = samplerInfo(name);
  const shown = (sampler ? sampler.parameters : [])
    .filter((p) => params[p.name] != null && !(p.advanced && params[p.name] === p.default))
    .map((p) => `${label(p.name)} ${fmt(params[p.name])}`);
  $("job-settings").textContent = [name, ...shown].join(" · ")
    + ` — ${fmt(params.evaluations_per_sample)} evaluations per sample, seed ${params.seed}`;
}

export async function showJobSettings(job) {
  // What the job runs, as the service resolved it (a preset, the model's defaults).
  try {
    const response = await api(`/jobs/${job.id}`, { cache: "no-store" });
    if (response.ok && state.job === job) describeJobSettings((await response.json()).params);
  } catch (_) {
    // Shown with the result.
  }
}

export async function showResults(job) {
  try {
    const response = await api(`/jobs/${job.id}`, { cache: "no-store" });
    if (!response.ok) { showError(await errorText(response)); return; }
    const data = await response.json();
    if (state.job !== job) return;
    const results = data.links.results || (data.links.result ? [data.links.result] : []);
    if (!results.length) return;
    job.seed = data.params.seed;
    job.format = data.params.output_format;
    describeJobSettings(data.params);
    await jobImage(job, results[0]);  // shown in one go, not drawn in as it loads
    if (state.job !== job) return;
    job.results = results;
  } catch (e) {
    if (state.job === job) showError(`Could not load the result: ${e.message}`);
    return;
  }
  const samples = $("samples");
  samples.innerHTML = "";
  if (job.results.length > 1) {
    job.results.forEach((url, i) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sample";
      button.title = `Sample ${i + 1} (seed ${job.seed + i})`;
      const thumb = document.createElement("img");
      thumb.alt = `sample ${i + 1}`;
      jobImage(job, url).then((image) => { if (state.job === job) thumb.src = image.objectUrl; }, () => {});
      button.append(thumb, String(i + 1));
      button.addEventListener("click", () => selectSample(i));
      samples.append(button);
    });
  }
  resetSplit();
  await selectSample(0);
  if (state.job === job) setView("result");
}

export function resultName(job, i, blob) {
  // The suffix of the result's format, as GET /models lists the formats (worker/output_formats.py).
  const format = outputFormat(blob.type, job.format);
  return `repaint-${job.id.slice(0, 8)}-${i + 1}${format ? format.suffix : ".png"}`;
}

async function selectSample(i) {
  const job = state.job;
  if (!job || !job.results || !job.results[i]) return;
  job.wantedSample = i;
  let image;
  try {
    image = await jobImage(job, job.results[i]);
  } catch (e) {
    if (state.job === job) showError(`Could not load sample ${i + 1}: ${e.message}`);
    return;
  }
  if (state.job !== job || job.wantedSample !== i) return;  // another sample was asked for since
  state.sample = i;
  resultImage.src = image.objectUrl;
  resultImage.dataset.result = job.results[i];
  // The object URL downloads the bytes already fetched (with the key), under a readable name.
  $("download").href = image.objectUrl;
  $("download").download = resultName(job, i, image.blob);
  $("download").textContent = job.results.length > 1 ? `Download sample ${i + 1}` : "Download";
  $("samples").querySelectorAll("button").forEach((b, j) => b.setAttribute("aria-pressed", String(i === j)));
  render();
}

$("view-edit").addEventListener("click", () => setView("edit"));
$("view-result").addEventListener("click", () => setView("result"));
$("compare").addEventListener("input", () => setSplit(Number($("compare").value)));
$("toggle").addEventListener("click", toggleBefore);
$("compare-line").addEventListener("pointerdown", (event) => {
  event.preventDefault();
  split.dragging = true;
  $("compare-line").setPointerCapture(event.pointerId);
});
$("compare-line").addEventListener("pointermove", (event) => {
  if (!split.dragging) return;
  const rect = content.getBoundingClientRect();
  setSplit(100 * (event.clientX - rect.left) / rect.width);
});
for (const type of ["pointerup", "pointercancel"]) {
  $("compare-line").addEventListener(type, () => { split.dragging = false; });
}
