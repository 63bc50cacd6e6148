// The repaint page: paint a mask over an image, submit it, follow the job live, compare the result.
//
// One box shows everything, at the image's aspect ratio: the image with its mask while painting, the
// live estimate while a job runs, and the result (with a before/after split) when it is done, so all
// three are the same size on screen. The mask canvas has the image's own size: the brush is in image
// pixels, and strokes are kept as a list (undo/redo replays them).
"use strict";

const $ = (id) => document.getElementById(id);
const stage = $("stage");
const viewport = $("viewport");
const content = $("content");
const imageCanvas = $("image-canvas");
const maskCanvas = $("mask-canvas");
const maskCtx = maskCanvas.getContext("2d");
const previewImage = $("preview-image");
const resultImage = $("result-image");
const cursor = $("brush-cursor");
const MASK_COLOR = "rgb(255, 0, 200)";
const MAX_ZOOM_PIXELS = 16;  // zoom in until one image pixel is this many screen pixels

const state = {
  file: null, width: 0, height: 0,        // the image being painted on
  ops: [], redone: [], stroke: null,      // mask strokes ({erase, width, points}) and clears ({clear})
  painted: false, erasing: false,
  view: "edit",                           // "edit": image + mask; "result": live estimate or result
  zoom: 1,                                // 1 = the image fits the box
  pointer: null, overStage: false, spaceDown: false, pan: null, splitDrag: false,
  models: [], presets: {}, samplers: [], outputFormats: {}, modelsLoaded: false, signature: null, loadingModels: null,
  typed: {},                              // custom parameter values typed, per sampler: {sampler: {name: text}}
  job: null,                              // {id, total, fraction, previewStep, results, final, images}
  events: null,                           // the AbortController of the job's event stream
  submitting: false, sample: 0, split: 0, splitBeforeToggle: null,
  look: null,                             // pictureStatistics of the image: how much it looks like a drawing
  example: null,                          // the example last opened: {model, data, file}
};

// ---------------------------------------------------------------- errors

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

// ---------------------------------------------------------------- the API key
//
// A service started with REPAINT_API_KEYS answers 401 without `Authorization: Bearer <key>`. Every
// request goes through api(), which sends the saved key; on a 401 it shows the key field and waits
// until a key is saved, then sends the request again. Nothing about keys shows until a 401 does.

const KEY_STORAGE = "repaint.apiKey";
const auth = { key: readStoredKey(), waiters: [] };

function readStoredKey() {
  try { return localStorage.getItem(KEY_STORAGE) || ""; } catch (_) { return ""; }
}

function authHeaders(headers = {}) {
  return auth.key ? { ...headers, Authorization: `Bearer ${auth.key}` } : { ...headers };
}

function showKeyStatus() {
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

function forgetKey() {
  auth.key = "";
  try { localStorage.removeItem(KEY_STORAGE); } catch (_) { /* nothing stored */ }
  showKeyStatus();
  loadModels();  // asks for a key again if the service needs one
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
$("forget-key").addEventListener("click", (event) => { event.preventDefault(); forgetKey(); });

async function api(url, options = {}) {
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

// ---------------------------------------------------------------- models, samplers and quality
//
// GET /models lists the samplers with their parameters (type, range, default, description) and the
// presets with their sampler, settings and cost. The "custom" form is built from that list, so a
// parameter the service adds shows up here as it is.

const fmt = (n) => Number(n).toLocaleString("en");
const label = (name) => name.replaceAll("_", " ");
// RePaint's rarely changed parameters: under "more" in the custom form.
const RARE_PARAMETERS = new Set(["n_sample", "jump2_length", "jump2_n_sample", "jump3_length", "jump3_n_sample",
                                 "start_resampling"]);
const MAX_COUNTED = 1_000_000;  // evaluations per sample the page counts up to (the service allows far fewer)

function scheduleEvaluations(steps, p = {}) {
  // Network evaluations per sample of a jump schedule: a port of models/schedule.py (`jump_schedule`,
  // then `count_model_evaluations`: each move from index a down to a - 1 is one evaluation) that
  // counts the moves instead of listing them. Infinity past MAX_COUNTED.
  const o = { n_sample: 1, jump_length: 10, jump_n_sample: 10, jump2_length: 1, jump2_n_sample: 1,
              jump3_length: 1, jump3_n_sample: 1, start_resampling: 100_000_000, ...p };
  if (steps > 100_000) return Infinity;
  // Innermost level first. `left[j]` is the jumps left at boundary j, valid while `seen[j]` is the
  // level's generation: a reset (an outer jump) starts a new one, where every boundary has n - 1.
  const levels = [[o.jump3_length, o.jump3_n_sample], [o.jump2_length, o.jump2_n_sample],
                  [o.jump_length, o.jump_n_sample]].map(([length, n]) => (
    { length, n, generation: 0, left: new Float64Array(steps), seen: new Int32Array(steps).fill(-1) }));
  const jumpsLeft = (level, t) => {
    if (t >= steps - level.length || t % level.length) return 0;
    return level.seen[t] === level.generation ? level.left[t] : level.n - 1;
  };
  let evaluations = 0, last = -Infinity;  // the schedule starts at steps - 1: no move into it
  const visit = (t) => { if (t < last) evaluations += 1; last = t; };
  let t = steps;
  while (t >= 1) {
    t -= 1;
    visit(t);
    if (t + 1 < steps - 1 && t <= o.start_resampling) {
      for (let i = 1; i < o.n_sample && evaluations <= MAX_COUNTED; i++) { visit(t + 1); visit(t); }
    }
    levels.forEach((level, depth) => {
      const left = jumpsLeft(level, t);
      if (left > 0 && t <= o.start_resampling - level.length) {
        level.left[t] = left - 1;
        level.seen[t] = level.generation;
        for (let i = 0; i < level.length; i++) visit(++t);
        for (const inner of levels.slice(0, depth)) inner.generation += 1;
      }
    });
    if (evaluations > MAX_COUNTED) return Infinity;
  }
  visit(-1);
  return evaluations;
}

// The schedule each sampler walks (models/sampler_settings.py, `times`).
const SCHEDULES = {
  repaint: (s) => scheduleEvaluations(s.steps, s),
  ddnm: (s) => scheduleEvaluations(s.steps, { jump_length: s.travel_length, jump_n_sample: s.travel_repeat }),
};

function selectedModel() {
  return state.models.find((m) => m.name === $("model").value) || null;
}

function samplerInfo(name) {
  return state.samplers.find((s) => s.name === name) || null;
}

function modelDefaults(m) {
  // The model's RePaint settings, as GET /models gives them (its guidance scale is not one).
  if (!m || !m.defaults) return null;
  const { classifier_scale: _, ...settings } = m.defaults;
  return settings;
}

function parameterDefault(sampler, param) {
  const own = sampler.name === "repaint" ? modelDefaults(selectedModel()) : null;
  return own && own[param.name] != null ? own[param.name] : param.default;
}

function parameterBounds(param) {
  let high = param.maximum;
  const m = selectedModel();
  if (param.name === "steps" && m && m.diffusion_steps) high = Math.min(high ?? Infinity, m.diffusion_steps);
  return [param.minimum, high];
}

function parameterHint(param) {
  const [low, high] = parameterBounds(param);
  const range = low != null && high != null ? `${fmt(low)} to ${fmt(high)}`
    : low != null ? `at least ${fmt(low)}` : high != null ? `at most ${fmt(high)}` : "";
  return `${param.name}: ${param.description}${range ? `; ${range}` : ""}.`;
}

function loadModels() {
  // One request at a time: the periodic refresh must not pile up while the key field waits.
  if (!state.loadingModels) {
    state.loadingModels = fetchModels().finally(() => { state.loadingModels = null; });
  }
  return state.loadingModels;
}

async function fetchModels() {
  try {
    const response = await api("/models", { cache: "no-store" });
    if (!response.ok) throw new Error(await errorText(response));
    const data = await response.json();
    state.models = data.models;
    state.presets = data.presets || {};
    state.samplers = data.samplers || [];
    state.outputFormats = data.output_formats || {};
    // Rebuilt only when they change (the list refreshes in the background; an open menu stays open).
    const signature = JSON.stringify([data.models.map((m) => [m.name, m.defaults, m.diffusion_steps]),
                                      state.presets, state.samplers]);
    if (signature !== state.signature) {
      state.signature = signature;
      const model = $("model");
      const keep = state.modelsLoaded ? model.value : data.default;
      model.innerHTML = "";
      for (const m of data.models) {
        const option = new Option(m.name, m.name);
        option.selected = m.name === keep;
        model.add(option);
      }
      if (!data.models.length) model.add(new Option("no model is being served yet", ""));
      const sampler = $("sampler");
      const keepSampler = sampler.value || "repaint";
      sampler.innerHTML = "";
      for (const s of state.samplers) sampler.add(new Option(s.name, s.name));
      sampler.value = samplerInfo(keepSampler) ? keepSampler : (state.samplers[0] || {}).name || "";
      fillPresets(state.modelsLoaded ? $("preset").value : "balanced");
      state.modelsLoaded = true;
    }
    describeModel();
  } catch (e) {
    showError(`Could not load the models: ${e.message}`);
  }
}

function fillPresets(keep) {
  const preset = $("preset");
  const defaults = modelDefaults(selectedModel());
  preset.innerHTML = "";
  const evaluations = defaults && SCHEDULES.repaint(defaults);
  preset.add(new Option(evaluations ? `model default — repaint, ${fmt(evaluations)} evaluations` : "model default", ""));
  for (const [name, p] of Object.entries(state.presets)) {
    const option = new Option(`${name} — ${p.sampler}, ${fmt(p.evaluations)} evaluations`, name);
    option.title = p.description || "";
    preset.add(option);
  }
  preset.add(new Option("custom…", "custom"));
  preset.value = [...preset.options].some((o) => o.value === keep) ? keep : "";
  buildCustom();
}

function buildCustom() {
  // The chosen sampler's parameters as inputs: what was typed for this sampler, else its default
  // (for RePaint, the model's own schedule where it has one).
  const sampler = samplerInfo($("sampler").value);
  const main = $("params"), more = $("more-params-list");
  main.innerHTML = "";
  more.innerHTML = "";
  $("sampler").title = sampler ? sampler.description : "";
  for (const param of sampler ? sampler.parameters : []) {
    const input = document.createElement("input");
    input.type = "number";
    input.id = `param-${param.name.replaceAll("_", "-")}`;
    input.name = param.name;
    input.required = true;
    input.step = param.type === "integer" ? "1" : "any";
    const [low, high] = parameterBounds(param);
    if (low != null) input.min = String(low);
    if (high != null) input.max = String(high);
    const typed = (state.typed[sampler.name] || {})[param.name];
    input.value = typed ?? String(parameterDefault(sampler, param));
    input.dataset.hint = parameterHint(param);
    const field = document.createElement("label");
    field.title = input.dataset.hint;
    field.append(label(param.name), input);
    (sampler.name === "repaint" && RARE_PARAMETERS.has(param.name) ? more : main).append(field);
  }
  $("more-params").hidden = !more.children.length;
  showHint(null);
  describeCost();
}

function showHint(input) {
  // The description of the parameter last focused, else the sampler's. It changes only when a
  // parameter gets focus, never on blur: what is below it must not move under a click.
  const sampler = samplerInfo($("sampler").value);
  $("param-hint").textContent = input ? input.dataset.hint : sampler ? sampler.description : "";
}

function describeModel() {
  const m = selectedModel();
  const notes = $("model-notes");
  notes.classList.remove("warn");
  describeDomain(m);
  offerExample(m);
  updateNotices();
  if (!m) { notes.textContent = ""; return; }
  notes.textContent = `${m.workers} worker${m.workers === 1 ? "" : "s"}, ${m.queued} queued`;
  if (m.workers === 0) {
    notes.append(document.createElement("br"), "No worker runs this model now: jobs wait in the queue until one starts.");
    notes.classList.add("warn");
  }
}

function describeDomain(m) {
  // What the model was trained on and at what size, always in view; where its weights come from and
  // their licence one click (or a hover) away, except a non-commercial licence, which is always shown.
  $("model-info").hidden = !m;
  if (!m) return;
  const size = `${m.image_size}×${m.image_size} px`;
  const sees = m.framing === "whole" ? "it sees the whole picture" : "it sees a square around the mask";
  $("model-domain").replaceChildren(bold("Trained on "), m.domain || "images the service does not describe",
                                    `. Works at ${size}: ${sees}.`);
  const licence = m.licence || "not stated";
  const restricted = /non-?commercial/i.test(licence);
  $("model-licence").hidden = !restricted;
  $("model-licence").replaceChildren(bold("Licence: "), licence);
  $("model-provenance").replaceChildren(bold("Weights: "), m.provenance || "not stated");
  $("model-terms").replaceChildren(bold("Licence: "), licence);
  $("model-terms").hidden = restricted;  // already shown above
  $("model-description").textContent = m.description;
  $("model-origin").querySelector("summary").title = `${m.provenance || ""}\nLicence: ${licence}`;
}

function bold(text) {
  const b = document.createElement("strong");
  b.textContent = text;
  return b;
}

function checkParameter(param, input) {
  // The input's value, or why the service would refuse it.
  const [low, high] = parameterBounds(param);
  const value = Number(input.value);
  const name = label(param.name);
  if (input.value.trim() === "" || !Number.isFinite(value)) return { error: `${name} needs a number.` };
  if (param.type === "integer" && !Number.isInteger(value)) return { error: `${name} must be a whole number.` };
  if (low != null && value < low) return { error: `${name} must be at least ${fmt(low)}.` };
  if (high != null && value > high) return { error: `${name} must be at most ${fmt(high)}.` };
  return { value };
}

function choice() {
  // What the job will run, as far as the page knows: {sampler, settings, evaluations, note} or {error}.
  const value = $("preset").value;
  if (value === "custom") {
    const sampler = samplerInfo($("sampler").value);
    if (!sampler) return null;
    const settings = {};
    let error = null;
    for (const param of sampler.parameters) {
      const input = $(`param-${param.name.replaceAll("_", "-")}`);
      const checked = checkParameter(param, input);
      input.setAttribute("aria-invalid", String(Boolean(checked.error)));
      if (checked.error) error = error || checked.error;
      else settings[param.name] = checked.value;
    }
    if (error) return { error };
    const count = SCHEDULES[sampler.name];
    return { sampler: sampler.name, settings, evaluations: count ? count(settings) : null };
  }
  if (value) {
    const p = state.presets[value];
    return p ? { sampler: p.sampler, settings: p.settings, evaluations: p.evaluations, note: p.description } : null;
  }
  const settings = modelDefaults(selectedModel());
  return settings ? { sampler: "repaint", settings, evaluations: SCHEDULES.repaint(settings), note: "the model's own settings" }
    : null;
}

function describeCost() {
  const custom = $("preset").value === "custom";
  $("custom").hidden = !custom;
  $("custom").disabled = !custom;  // its inputs are not checked or sent then
  const c = choice();
  const samples = Math.max(1, Number($("num-samples").value) || 1);
  const cost = $("cost");
  cost.classList.toggle("warn", Boolean(c && (c.error || c.evaluations === Infinity)));
  if (!c) { cost.textContent = ""; return; }
  if (c.error) { cost.textContent = c.error; return; }
  if (c.evaluations === Infinity) {
    cost.textContent = `More than ${fmt(MAX_COUNTED)} network evaluations per sample: fewer steps or less resampling.`;
    return;
  }
  const what = custom ? c.sampler
    : `${c.sampler}, ${Object.entries(c.settings).map(([k, v]) => `${label(k)} ${fmt(v)}`).join(", ")}`;
  const note = c.note ? ` ${c.note[0].toUpperCase()}${c.note.slice(1)}.` : "";
  if (c.evaluations == null) { cost.textContent = `${what}: the service counts its evaluations.${note}`; return; }
  cost.textContent = `${what}: ${fmt(c.evaluations)} network evaluations per sample`
    + (samples > 1 ? `, ${fmt(c.evaluations * samples)} for ${samples} samples.` : ".") + note;
}

function describeJobSettings(params) {
  // The sampler and the settings that run, as the job records them; RePaint's rare ones only when set.
  const sampler = samplerInfo(params.sampler);
  const shown = (sampler ? sampler.parameters : [])
    .filter((p) => params[p.name] != null && !(sampler.name === "repaint" && RARE_PARAMETERS.has(p.name)
                                               && params[p.name] === p.default))
    .map((p) => `${label(p.name)} ${fmt(params[p.name])}`);
  $("job-settings").textContent = [params.sampler || "repaint", ...shown].join(" · ")
    + ` — ${fmt(params.evaluations_per_sample)} evaluations per sample, seed ${params.seed}`;
}

$("model").addEventListener("change", () => { fillPresets($("preset").value); describeModel(); });

// ---------------------------------------------------------------- what to expect before a job runs
//
// Two notices under the Inpaint button, shown from the upload and the model alone (nothing is sent):
// the picture does not look like what the model was trained on, or the model will see it at a much
// coarser scale than it has. They never block a job. And "Try an example": an input the model knows.

// Does a picture look like a flat-coloured drawing (faces32's training pictures) or a photograph?
// Measured on a copy at most LOOK.side px a side: blocks of k x k pixels are summed (k = the longer
// side / LOOK.side, rounded up; sums keep the arithmetic exact, so tests/test_page.py can mirror it).
// - flat: among the pixels not on a sharp edge, the share where the colour is constant or changes
//   linearly: |4 c - left - right - up - down| <= LOOK.flat levels in every channel. Drawings are
//   flat fills and linear gradients; photographs have fine shading, texture and noise nearly
//   everywhere (LOOK.flat to LOOK.edge levels). Sharp edges (over LOOK.edge) count for neither:
//   both have them, and on a small drawing they are a large share of the pixels.
// - colour: the share of pixels whose channels differ by more than LOOK.grey levels.
// Calibrated with the Python mirror in tests/test_page.py (test_the_drawing_statistic_calibration;
// test_the_drawing_statistic_separates_faces_from_photos keeps the margins): 100 held-out faces of
// service/faces.py at 32 to 512 px and the 4x example: flat 0.850 to 0.996, colour 0.761 to 1.
// scikit-image's photographs as they are, as JPEG (quality 90, 60, 30) and resized (64 to 3000 px):
// in colour (astronaut, chelsea, coffee, rocket, motorcycle, retina, ihc) flat 0.014 to 0.449; grey
// or nearly (camera, moon, coins, textures, the Hubble deep field, a motion-blurred clock) flat up to
// 0.836, but colour 0.047 at most. Known misses: a drawing saved as JPEG (flat 0.11 to 0.68) counts
// as a photograph, and a colour photograph of mostly flat sky could pass for a drawing.
const LOOK = { side: 128, flat: 1.5, edge: 12, grey: 16, drawingFlat: 0.65, drawingColour: 0.4 };
// The notice on size: a model pixel covers more than this many image pixels a side (the examples
// of the 32 px models are drawn at 4x, and are fine).
const SIZE_NOTICE_RATIO = 4;

function pictureStatistics(canvas) {
  // {flat, colour} of the picture on `canvas` (see LOOK), or null when it is too small to tell.
  const k = Math.max(1, Math.ceil(Math.max(canvas.width, canvas.height) / LOOK.side));
  const w = Math.floor(canvas.width / k), h = Math.floor(canvas.height / k);
  if (Math.min(w, h) < 8) return null;
  const sums = new Float64Array(w * h * 3);  // integers, exact in doubles
  const ctx = canvas.getContext("2d");
  // Read in bands of whole block rows (about 4M pixels each), not the whole picture at once.
  const band = k * Math.max(1, Math.floor(4_000_000 / (w * k * k)));
  for (let top = 0; top < h * k; top += band) {
    const rows = Math.min(band, h * k - top);
    const data = ctx.getImageData(0, top, w * k, rows).data;
    for (let y = 0; y < rows; y++) {
      const row = 3 * Math.floor((top + y) / k) * w;
      for (let x = 0, i = 4 * y * w * k; x < w * k; x++, i += 4) {
        const o = row + 3 * Math.floor(x / k);
        sums[o] += data[i];
        sums[o + 1] += data[i + 1];
        sums[o + 2] += data[i + 2];
      }
    }
  }
  const n = k * k;
  let flat = 0, soft = 0, coloured = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = 3 * (y * w + x);
      const r = sums[o], g = sums[o + 1], b = sums[o + 2];
      if (Math.max(r, g, b) - Math.min(r, g, b) > LOOK.grey * n) coloured += 1;
      if (x === 0 || y === 0 || x === w - 1 || y === h - 1) continue;
      let lap = 0;
      for (let c = 0; c < 3; c++) {
        const v = 4 * sums[o + c] - sums[o + c - 3] - sums[o + c + 3] - sums[o + c - 3 * w] - sums[o + c + 3 * w];
        lap = Math.max(lap, Math.abs(v));
      }
      if (lap <= LOOK.flat * n) flat += 1;
      else if (lap <= LOOK.edge * n) soft += 1;
    }
  }
  return { flat: flat / Math.max(flat + soft, 1), colour: coloured / (w * h) };
}

function modelPlan(size, framing, strategy, width, height, box) {
  // The square the model sees, as worker/geometry.py `plan` chooses it: {strategy, side, longer} in
  // image pixels. `crop`: the mask's box with half its longer side around it (CONTEXT = 0.5), at
  // least the model's size where the image allows; `auto` crops when that square fits in the image,
  // except for models of whole subjects (framing "whole"); otherwise `resize`: the whole image,
  // padded to a square. Without a mask (`box` null) only a whole-image plan is known, else null.
  if (!box) return strategy === "resize" || (strategy === "auto" && framing === "whole")
    ? { strategy: "resize", side: Math.max(width, height), longer: null } : null;
  const longer = Math.max(box.x1 - box.x0, box.y1 - box.y0);
  const side = Math.max(Math.ceil(longer * 2), Math.min(size, width, height));
  const fits = side <= Math.min(width, height);
  if (strategy === "crop" || (strategy === "auto" && fits && framing !== "whole")) {
    return { strategy: "crop", side: fits ? side : Math.min(side, Math.max(width, height)), longer };
  }
  return { strategy: "resize", side: Math.max(width, height), longer };
}

function sizeNotice(m) {
  // The model's scale against the picture's: said when one model pixel covers more than
  // SIZE_NOTICE_RATIO image pixels a side.
  if (Math.max(state.width, state.height) <= SIZE_NOTICE_RATIO * m.image_size) return null;  // never more
  const p = modelPlan(m.image_size, m.framing, currentStrategy(), state.width, state.height, maskBox());
  if (!p || p.side <= SIZE_NOTICE_RATIO * m.image_size) return null;
  const per = p.side / m.image_size;  // image pixels per model pixel, a side
  const r = per < 10 ? per.toFixed(1) : String(Math.round(per));
  const scale = `one model pixel per ${r}×${r} image pixels`;
  const picture = `${fmt(state.width)}×${fmt(state.height)}`;
  const fill = p.longer
    ? `your mask, ${fmt(p.longer)} px across, is filled with about ${fmt(Math.max(1, Math.round(p.longer / per)))} px `
      + "of detail and scaled up"
    : `this ${picture} image is scaled down and the fill scaled back up`;
  let text = `${m.name} works at ${m.image_size}×${m.image_size} px`;
  if (p.strategy === "crop") {
    text += `: it crops a ${fmt(p.side)} px square around the mask and scales it down, so ${fill} (${scale}). `
            + "A smaller mask gets more detail.";
  } else if (currentStrategy() === "auto" && m.framing !== "whole") {
    text += `; the mask is too large for a crop, so the whole ${picture} image is scaled down: ${fill} (${scale}). `
            + "A smaller mask, or a picture cropped around it, gets more detail.";
  } else {
    text += `${currentStrategy() === "resize" ? " (strategy resize)" : " and sees the whole picture"}: ${fill} `
            + `(${scale}). Crop the picture to the subject for more detail.`;
  }
  return { kind: "warn", title: "Much larger than the model. ", text };
}

function domainNotice(m) {
  // Only for models that say whether they were trained on photographs (true) or not (false).
  const look = state.look;
  if (!look || m.photographic == null) return null;
  const pct = (x) => `${Math.round(100 * x)}%`;
  const drawing = look.flat >= LOOK.drawingFlat;
  const measured = `(${pct(look.flat)} of its smooth areas are flat colour; drawings: ${pct(LOOK.drawingFlat)} `
                   + "or more.)";
  if (m.photographic === false && !drawing) {
    return { kind: "warn", title: "This looks like a photograph. ",
             text: `${m.name} was not trained on photographs: expect noise-like colour in the hole. Pick a model `
                   + "trained on photographs (docs/models.md: diffusers DDPM folders), or try the example. "
                   + measured };
  }
  if (m.photographic === false && look.colour < LOOK.drawingColour) {
    return { kind: "warn", title: "This picture is mostly grey. ",
             text: `It does not look like what ${m.name} was trained on (see above): expect a meaningless fill. `
                   + `Try the example to see what it does. (${pct(look.colour)} of it is in colour.)` };
  }
  if (m.photographic === true && drawing) {
    return { kind: "mild", title: "This looks like a flat-coloured drawing. ",
             text: `${m.name} was trained on photographs: expect a fill in their manner. ${measured}` };
  }
  return null;
}

function describeExample() {
  // What the example shows and hides, and what to expect, under the picture while it is open.
  const ex = activeExample();
  const note = $("example-note");
  note.hidden = !ex;
  if (!ex) return;
  const onIts = ex.model === $("model").value;
  const sent = Object.entries(ex.data.form).map(([k, v]) => `${k}=${v}`).join(", ");
  note.replaceChildren(bold(`Example for ${ex.model}: `), `${ex.data.shows}; the mask hides ${ex.data.hides}. `,
                       ex.data.notes.join(" "),
                       !onIts ? ` Made for ${ex.model}, not for ${$("model").value}.`
                         : sent ? ` The page sends it with ${sent}.` : "");
}

function updateNotices() {
  const box = $("notices");
  const m = selectedModel();
  const notices = m && state.width ? [domainNotice(m), sizeNotice(m)].filter(Boolean) : [];
  box.replaceChildren(...notices.map((n) => {
    const p = document.createElement("p");
    p.className = `notice ${n.kind}`;
    p.append(bold(n.title), n.text);
    return p;
  }));
  describeExample();
}

const maskBoxSeen = { file: null, length: 0, top: null, box: null };

function maskBox() {
  // The painted region's bounding box in image pixels ({x0, y0, x1, y1}, exclusive), or null.
  // Remembered until the mask changes (the model list refreshes every few seconds, and a large
  // picture's mask is worth reading once): the strokes are a stack, so its length and top say.
  if (!state.painted || !state.width) return null;
  const top = state.ops[state.ops.length - 1];
  const seen = maskBoxSeen;
  if (seen.file === state.file && seen.length === state.ops.length && seen.top === top) return seen.box;
  const data = maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height).data;
  let x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1;
  for (let y = 0, i = 3; y < maskCanvas.height; y++) {
    for (let x = 0; x < maskCanvas.width; x++, i += 4) {
      if (data[i] > 127) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        y1 = y;
      }
    }
  }
  const box = x1 < 0 ? null : { x0, y0, x1: x1 + 1, y1: y1 + 1 };
  // Not remembered mid-stroke: the stroke on top of the stack is still growing.
  if (!state.stroke) Object.assign(seen, { file: state.file, length: state.ops.length, top, box });
  return box;
}

// The examples, fetched once per model: {model, data} (GET /models/{name}/example), or null when the
// service has none for it (a diffusers model of a domain it has no picture for).
const examples = new Map();

function exampleFor(name) {
  if (!examples.has(name)) {
    const loading = (async () => {
      const response = await api(`/models/${encodeURIComponent(name)}/example`);
      if (response.status === 404) return null;
      if (!response.ok) throw new Error(await errorText(response));
      return { model: name, data: await response.json() };
    })();
    examples.set(name, loading);
    loading.catch(() => { if (examples.get(name) === loading) examples.delete(name); });  // tried again later
  }
  return examples.get(name);
}

function offerExample(m) {
  const button = $("try-example");
  if (!m) { button.hidden = true; return; }
  exampleFor(m.name).then((ex) => {
    if ($("model").value !== m.name) return;  // another model was chosen meanwhile
    button.hidden = !ex;
    button.title = ex ? `Open a picture ${m.name} knows, with its mask painted: ${ex.data.shows}` : "";
  }, () => { button.hidden = true; });
}

function activeExample() {
  // The example being edited (its file is still the image), if any.
  return state.example && state.example.file === state.file ? state.example : null;
}

function currentStrategy() {
  // The page sends no strategy (the service's `auto`), except the fields of an example on its model.
  const ex = activeExample();
  return ex && ex.model === $("model").value && ex.data.form.strategy ? ex.data.form.strategy : "auto";
}

function dataUrlBytes(url) {
  return Uint8Array.from(atob(url.slice(url.indexOf(",") + 1)), (c) => c.charCodeAt(0));
}

async function tryExample() {
  const name = $("model").value;
  showError("");
  let ex;
  try {
    ex = await exampleFor(name);
  } catch (e) {
    showError(`Could not load the example: ${e.message}`);
    return;
  }
  if (!ex) return;
  const file = new File([dataUrlBytes(ex.data.image)], `example-${name}.png`, { type: "image/png" });
  // The mask as one undoable layer in the mask colour: white pixels painted, the rest transparent.
  // (Decoded from its bytes, as the image is: no data: URL is loaded, whatever the page's CSP.)
  const mask = await createImageBitmap(new Blob([dataUrlBytes(ex.data.mask)], { type: "image/png" }));
  const layer = document.createElement("canvas");
  layer.width = mask.width;
  layer.height = mask.height;
  const ctx = layer.getContext("2d");
  ctx.drawImage(mask, 0, 0);
  const pixels = ctx.getImageData(0, 0, layer.width, layer.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const on = pixels.data[i] > 127;
    // MASK_COLOR where white, transparent elsewhere.
    [pixels.data[i], pixels.data[i + 1], pixels.data[i + 2], pixels.data[i + 3]] = on ? [255, 0, 200, 255] : [0, 0, 0, 0];
  }
  ctx.putImageData(pixels, 0, 0);
  if (!(await openImage(file))) return;
  state.example = { ...ex, file };
  state.ops.push({ layer });
  replayMask();
  state.painted = hasPaint();
  updateButtons();
  updateNotices();
}

$("try-example").addEventListener("click", tryExample);
$("sampler").addEventListener("change", buildCustom);
$("preset").addEventListener("input", describeCost);
$("num-samples").addEventListener("input", describeCost);
for (const grid of ["params", "more-params-list"]) {
  $(grid).addEventListener("input", (event) => {
    const sampler = $("sampler").value;
    state.typed[sampler] = { ...state.typed[sampler], [event.target.name]: event.target.value };
    describeCost();
  });
}
$("custom").addEventListener("focusin", (event) => { if (event.target.dataset.hint) showHint(event.target); });

// ---------------------------------------------------------------- the image and the box

function openImage(file) {
  // Resolves to whether the file could be opened.
  const url = URL.createObjectURL(file);
  const img = new Image();
  let opened;
  const done = new Promise((resolve) => { opened = resolve; });
  img.onload = () => {
    state.file = file;
    state.width = img.naturalWidth;
    state.height = img.naturalHeight;
    for (const c of [imageCanvas, maskCanvas]) { c.width = state.width; c.height = state.height; }
    const ctx = imageCanvas.getContext("2d");
    ctx.clearRect(0, 0, state.width, state.height);
    ctx.drawImage(img, 0, 0);
    URL.revokeObjectURL(url);
    state.ops = [];
    state.redone = [];
    state.painted = false;
    replayMask();
    // A brush about a twentieth of the image, at most a third of it.
    const longest = Math.max(state.width, state.height);
    const brush = $("brush");
    brush.max = String(Math.max(8, Math.round(longest / 3)));
    setBrush(Math.round(longest / 24));
    stage.style.setProperty("--ar", String(state.width / state.height));
    stage.style.aspectRatio = `${state.width} / ${state.height}`;
    stage.classList.remove("empty");
    forgetJob();
    state.zoom = 1;
    setView("edit");
    layout();
    updateButtons();
    showError("");
    state.look = pictureStatistics(imageCanvas);
    updateNotices();
    opened(true);
  };
  img.onerror = () => {
    URL.revokeObjectURL(url);
    showError("This file could not be opened as an image.");
    opened(false);
  };
  img.src = url;
  return done;
}

function fitSize() {
  // The box's size on screen, which is the image's size at zoom 1 (the box has its aspect ratio).
  const rect = stage.getBoundingClientRect();
  return { width: rect.width, height: rect.width * state.height / state.width };
}

function oneToOne() {
  return state.width / Math.max(fitSize().width, 1);
}

function zoomLimits() {
  const one = oneToOne();
  return { min: Math.min(1, one), max: Math.max(4, one * MAX_ZOOM_PIXELS) };
}

function scale() {
  // Screen pixels per image pixel.
  return content.getBoundingClientRect().width / Math.max(state.width, 1);
}

function layout() {
  if (!state.width) return;
  const fit = fitSize();
  content.style.width = `${fit.width * state.zoom}px`;
  content.style.height = `${fit.height * state.zoom}px`;
  viewport.classList.toggle("zoomed", state.zoom > 1.0001);
  const s = scale();
  content.classList.toggle("pixelated", s >= 2);
  $("zoom-level").textContent = `${Math.round(s * 100)}%`;
  $("image-info").textContent = `${state.width} × ${state.height} px`;
  const limits = zoomLimits();
  $("zoom-in").disabled = state.zoom >= limits.max - 1e-6;
  $("zoom-out").disabled = state.zoom <= limits.min + 1e-6;
  $("zoom-fit").disabled = Math.abs(state.zoom - 1) < 1e-6;
  $("zoom-1").disabled = Math.abs(state.zoom - oneToOne()) < 1e-6;
  drawCursor();
}

function setZoom(zoom, anchor) {
  // anchor: a point in the viewport (client coordinates) that stays over the same image pixel.
  if (!state.width) return;
  const limits = zoomLimits();
  zoom = Math.min(limits.max, Math.max(limits.min, zoom));
  const vr = viewport.getBoundingClientRect();
  const cr = content.getBoundingClientRect();
  const ax = anchor ? anchor.x - vr.left : vr.width / 2;
  const ay = anchor ? anchor.y - vr.top : vr.height / 2;
  // The anchor as a fraction of the content.
  const fx = (vr.left + ax - cr.left) / cr.width;
  const fy = (vr.top + ay - cr.top) / cr.height;
  state.zoom = zoom;
  layout();
  const nr = content.getBoundingClientRect();
  viewport.scrollLeft += (nr.left + fx * nr.width) - (vr.left + ax);
  viewport.scrollTop += (nr.top + fy * nr.height) - (vr.top + ay);
}

new ResizeObserver(() => layout()).observe(stage);

$("zoom-in").addEventListener("click", () => setZoom(state.zoom * 1.5));
$("zoom-out").addEventListener("click", () => setZoom(state.zoom / 1.5));
$("zoom-fit").addEventListener("click", () => setZoom(1));
$("zoom-1").addEventListener("click", () => setZoom(oneToOne()));
viewport.addEventListener("wheel", (event) => {
  if (!state.width || !(event.ctrlKey || event.metaKey)) return;  // plain wheel scrolls
  event.preventDefault();
  setZoom(state.zoom * Math.exp(-event.deltaY * 0.002), { x: event.clientX, y: event.clientY });
}, { passive: false });

// ---------------------------------------------------------------- views

function setView(view) {
  state.view = view;
  render();
}

function render() {
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
  $("view-tools").hidden = !state.width;
  $("preview-note").hidden = !job || job.final || job.previewStep != null;
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

$("view-edit").addEventListener("click", () => setView("edit"));
$("view-result").addEventListener("click", () => setView("result"));

// ---------------------------------------------------------------- the brush and the mask

function setBrush(value) {
  const brush = $("brush");
  const v = Math.min(Number(brush.max), Math.max(Number(brush.min), Math.round(value)));
  brush.value = String(v);
  $("brush-size").textContent = String(v);
  drawCursor();
}

function brushWidth() {
  return Number($("brush").value);  // image pixels
}

function imagePoint(event) {
  const rect = content.getBoundingClientRect();
  return { x: (event.clientX - rect.left) * (state.width / rect.width),
           y: (event.clientY - rect.top) * (state.height / rect.height) };
}

function drawCursor() {
  const p = state.pointer;
  const visible = p && state.width && state.view === "edit" && !state.pan && !state.spaceDown;
  cursor.hidden = !visible;
  if (!visible) return;
  const s = scale();
  const d = Math.max(brushWidth() * s, 3);
  cursor.style.width = cursor.style.height = `${d}px`;
  cursor.style.left = `${p.x * s}px`;
  cursor.style.top = `${p.y * s}px`;
  cursor.classList.toggle("erasing", state.erasing);
}

let cursorTimer = null;
function flashCursor() {
  // Show the brush's size in the middle of the image while it changes with the pointer elsewhere.
  if (state.overStage || !state.width) { drawCursor(); return; }
  state.pointer = { x: state.width / 2, y: state.height / 2 };
  drawCursor();
  clearTimeout(cursorTimer);
  cursorTimer = setTimeout(() => { if (!state.overStage) { state.pointer = null; drawCursor(); } }, 900);
}

function strokePath(ctx, stroke, from) {
  ctx.globalCompositeOperation = stroke.erase ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = MASK_COLOR;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.lineWidth = stroke.width;
  const pts = stroke.points;
  if (from === 0) {
    ctx.beginPath();
    ctx.arc(pts[0].x, pts[0].y, stroke.width / 2, 0, 2 * Math.PI);
    ctx.fill();
  }
  if (pts.length > 1 && from < pts.length) {
    ctx.beginPath();
    const start = pts[Math.max(from - 1, 0)];
    ctx.moveTo(start.x, start.y);
    for (let i = Math.max(from, 1); i < pts.length; i++) ctx.lineTo(pts[i].x, pts[i].y);
    ctx.stroke();
  }
  ctx.globalCompositeOperation = "source-over";
}

function replayMask() {
  maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
  for (const op of state.ops) {
    if (op.clear) maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    else if (op.layer) maskCtx.drawImage(op.layer, 0, 0);  // an example's mask
    else strokePath(maskCtx, op, 0);
  }
}

function hasPaint() {
  if (!state.width) return false;
  const data = maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 127) return true;
  return false;
}

function updateButtons() {
  $("undo").disabled = state.ops.length === 0;
  $("redo").disabled = state.redone.length === 0;
  $("clear").disabled = !state.painted;
  $("submit").disabled = !state.file || !state.painted || state.submitting;
  for (const id of ["zoom-in", "zoom-out", "zoom-fit", "zoom-1"]) if (!state.width) $(id).disabled = true;
}

function editing() {
  // Brush controls used while the result is shown: go back to the mask, where they act.
  if (state.view !== "edit" && state.width) setView("edit");
}

// Undo moves the last stroke from the done list to the redone list; redo moves it back.
function moveOp(from, to) {
  editing();
  const op = from.pop();
  if (!op) return;
  to.push(op);
  replayMask();
  state.painted = hasPaint();
  updateButtons();
  updateNotices();
}

function undo() { moveOp(state.ops, state.redone); }
function redo() { moveOp(state.redone, state.ops); }

function clearMask() {
  editing();
  if (!state.painted) return;
  state.ops.push({ clear: true });
  state.redone = [];
  replayMask();
  state.painted = false;
  updateButtons();
  updateNotices();
}

function toggleEraser() {
  editing();
  state.erasing = !state.erasing;
  $("eraser").setAttribute("aria-pressed", String(state.erasing));
  drawCursor();
}

maskCanvas.addEventListener("pointerdown", (event) => {
  if (!state.file || state.view !== "edit" || event.button !== 0 || state.spaceDown) return;
  event.preventDefault();
  const point = imagePoint(event);
  state.stroke = { erase: state.erasing, width: brushWidth(), points: [point] };
  state.ops.push(state.stroke);
  state.redone = [];
  maskCanvas.setPointerCapture(event.pointerId);
  strokePath(maskCtx, state.stroke, 0);
});
maskCanvas.addEventListener("pointermove", (event) => {
  if (!state.stroke) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  const from = state.stroke.points.length;
  for (const e of (events.length ? events : [event])) state.stroke.points.push(imagePoint(e));
  strokePath(maskCtx, state.stroke, from);
});
for (const type of ["pointerup", "pointercancel"]) {
  maskCanvas.addEventListener(type, () => {
    if (!state.stroke) return;
    const erased = state.stroke.erase;
    state.stroke = null;
    state.painted = erased ? hasPaint() : true;
    updateButtons();
    updateNotices();  // the size notice follows the mask
  });
}

// The pointer over the box: the brush outline, and panning (space or middle button; plain drag
// when there is nothing to paint).
viewport.addEventListener("pointermove", (event) => {
  state.overStage = true;
  if (state.width) state.pointer = imagePoint(event);
  if (state.pan) {
    viewport.scrollLeft = state.pan.left - (event.clientX - state.pan.x);
    viewport.scrollTop = state.pan.top - (event.clientY - state.pan.y);
  }
  drawCursor();
});
viewport.addEventListener("pointerleave", () => {
  state.overStage = false;
  state.pointer = null;
  drawCursor();
});
viewport.addEventListener("pointerdown", (event) => {
  if (!state.width || event.target.closest("#compare-line")) return;
  const panning = event.button === 1 || (event.button === 0 && (state.spaceDown || state.view !== "edit"));
  if (!panning) return;
  event.preventDefault();
  state.pan = { x: event.clientX, y: event.clientY, left: viewport.scrollLeft, top: viewport.scrollTop };
  viewport.setPointerCapture(event.pointerId);
  viewport.classList.add("panning");
  drawCursor();
});
for (const type of ["pointerup", "pointercancel"]) {
  viewport.addEventListener(type, () => {
    if (!state.pan) return;
    state.pan = null;
    viewport.classList.remove("panning");
    drawCursor();
  });
}

$("file").addEventListener("change", (event) => {
  if (event.target.files[0]) openImage(event.target.files[0]);
  event.target.value = "";
});
$("brush").addEventListener("input", () => { editing(); setBrush(Number($("brush").value)); flashCursor(); });
$("eraser").addEventListener("click", toggleEraser);
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("clear").addEventListener("click", clearMask);

// Drop or paste an image.
stage.addEventListener("dragover", (event) => { event.preventDefault(); stage.classList.add("dropping"); });
stage.addEventListener("dragleave", () => stage.classList.remove("dropping"));
stage.addEventListener("drop", (event) => {
  event.preventDefault();
  stage.classList.remove("dropping");
  const file = [...(event.dataTransfer.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) openImage(file);
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData ? event.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
  if (file) { event.preventDefault(); openImage(file); }
});

// ---------------------------------------------------------------- keyboard

document.addEventListener("keydown", (event) => {
  const t = event.target;
  const typing = t.matches && t.matches("input:not([type=range]):not([type=file]), select, textarea");
  if (typing) return;
  const mod = event.ctrlKey || event.metaKey;
  const key = event.key.toLowerCase();
  if (mod && key === "z") { event.preventDefault(); (event.shiftKey ? redo : undo)(); return; }
  if (mod && key === "y") { event.preventDefault(); redo(); return; }
  if (mod || event.altKey) return;
  if (event.key === "[") { editing(); setBrush(Math.min(brushWidth() - 1, Math.round(brushWidth() / 1.15))); flashCursor(); }
  else if (event.key === "]") { editing(); setBrush(Math.max(brushWidth() + 1, Math.round(brushWidth() * 1.15))); flashCursor(); }
  else if (key === "e") toggleEraser();
  else if (event.key === "+" || event.key === "=") setZoom(state.zoom * 1.5, state.overStage ? lastClient : null);
  else if (event.key === "-" || event.key === "_") setZoom(state.zoom / 1.5, state.overStage ? lastClient : null);
  else if (event.key === "0") setZoom(1);
  else if (event.key === "1") setZoom(oneToOne(), state.overStage ? lastClient : null);
  else if (key === "b") toggleBefore();
  else if (event.key === " " && state.overStage && state.width) {
    event.preventDefault();
    if (!state.spaceDown) { state.spaceDown = true; viewport.classList.add("can-pan"); drawCursor(); }
  } else return;
});
document.addEventListener("keyup", (event) => {
  if (event.key === " " && state.spaceDown) {
    state.spaceDown = false;
    viewport.classList.remove("can-pan");
    drawCursor();
  }
});
let lastClient = null;
document.addEventListener("pointermove", (event) => { lastClient = { x: event.clientX, y: event.clientY }; });

// ---------------------------------------------------------------- before/after

function applySplit() {
  content.style.setProperty("--split", `${state.split}%`);
  $("compare").value = String(state.split);
  $("toggle").setAttribute("aria-pressed", String(state.split >= 100));
  $("toggle").textContent = state.split >= 100 ? "Show after" : "Show before";
}

function setSplit(value) {
  state.split = Math.min(100, Math.max(0, value));
  applySplit();
}

function toggleBefore() {
  if (stage.classList.contains("comparing")) {
    if (state.split >= 100) setSplit(state.splitBeforeToggle ?? 0);
    else { state.splitBeforeToggle = state.split; setSplit(100); }
  }
}

$("compare").addEventListener("input", () => setSplit(Number($("compare").value)));
$("toggle").addEventListener("click", toggleBefore);
$("compare-line").addEventListener("pointerdown", (event) => {
  event.preventDefault();
  state.splitDrag = true;
  $("compare-line").setPointerCapture(event.pointerId);
});
$("compare-line").addEventListener("pointermove", (event) => {
  if (!state.splitDrag) return;
  const rect = content.getBoundingClientRect();
  setSplit(100 * (event.clientX - rect.left) / rect.width);
});
for (const type of ["pointerup", "pointercancel"]) {
  $("compare-line").addEventListener(type, () => { state.splitDrag = false; });
}

// ---------------------------------------------------------------- jobs

function maskBlob() {
  // White where painted, black elsewhere, at the image's own size.
  const out = document.createElement("canvas");
  out.width = maskCanvas.width;
  out.height = maskCanvas.height;
  const ctx = out.getContext("2d");
  const painted = maskCtx.getImageData(0, 0, out.width, out.height);
  const pixels = ctx.createImageData(out.width, out.height);
  for (let i = 0; i < painted.data.length; i += 4) {
    const v = painted.data[i + 3] > 127 ? 255 : 0;
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = v;
    pixels.data[i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

function formatEta(seconds) {
  if (seconds == null) return "";
  if (seconds < 60) return `, about ${Math.ceil(seconds)} s left`;
  return `, about ${Math.ceil(seconds / 60)} min left`;
}

function forgetJob() {
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
  $("preview-note").hidden = true;
  render();
}

// ---------------------------------------------------------------- live events
//
// GET /jobs/<id>/events is read with fetch() rather than EventSource, which cannot send the API
// key: the text/event-stream format is parsed here, and a stream that ends before a final status
// is opened again after a short wait, as EventSource would.

const LOST_CONNECTION = "Lost the connection to the service; reconnecting…";
const RECONNECT_MS = 500;
const RECONNECT_MAX_MS = 8000;

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
  if (state.events) state.events.abort();
  state.events = null;
}

async function follow(job) {
  stopEvents();
  const controller = new AbortController();
  state.events = controller;
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
      await readEventStream(response.body, stream, (event) => onJobEvent(job, event));
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

function onJobEvent(job, event) {
  if (state.job !== job) return;
  let data;
  try { data = JSON.parse(event.data); } catch (_) { return; }
  if (event.type === "status") {
    if (job.final) return;
    if (data.status === "queued") {
      $("status-line").textContent = data.position != null
        ? `Queued: ${data.position === 0 ? "next in line" : `${data.position} job(s) ahead`}` : "Queued";
    } else if (data.status === "running") {
      if (!job.total) $("status-line").textContent = "Running…";
    } else if (data.status === "succeeded") {
      $("progress").value = 1;
      finish(job, "Done.");
      showResults(job);
    } else if (data.status === "failed") {
      const message = data.error ? data.error.message : "the job failed";
      finish(job, "Failed.");
      showError(`The job failed: ${message}`);
      setView("edit");
    } else if (data.status === "canceled") {
      finish(job, "Canceled.");
      setView("edit");
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

// ---------------------------------------------------------------- previews and results
//
// Fetched (with the key) and shown from object URLs, which are revoked when they are replaced or
// the job is forgotten.

async function loadPreview(job, url, step) {
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

function jobImage(job, url) {
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

async function showJobSettings(job) {
  // What the job runs, as the service resolved it (a preset, the model's defaults).
  try {
    const response = await api(`/jobs/${job.id}`, { cache: "no-store" });
    if (response.ok && state.job === job) describeJobSettings((await response.json()).params);
  } catch (_) {
    // Shown with the result.
  }
}

async function showResults(job) {
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
  setSplit(0);
  state.splitBeforeToggle = null;
  await selectSample(0);
  if (state.job === job) setView("result");
}

function resultName(job, i, blob) {
  // The suffix of the result's format, as GET /models lists the formats (worker/output_formats.py).
  const format = Object.values(state.outputFormats).find((f) => f.media_type === blob.type)
    || state.outputFormats[job.format];
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

$("continue").addEventListener("click", async () => {
  const job = state.job;
  if (!job || !job.results) return;
  const i = state.sample;
  try {
    const image = await jobImage(job, job.results[i]);
    openImage(new File([image.blob], resultName(job, i, image.blob), { type: image.blob.type }));
  } catch (e) {
    showError(`Could not fetch the result: ${e.message}`);
  }
});

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

async function jobForm() {
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
    if (!response.ok) { showError(await errorText(response)); return; }
    const created = await response.json();
    forgetJob();
    const job = { id: created.id, total: null, fraction: 0, previewStep: null, results: null, final: false,
                  images: new Map() };
    state.job = job;
    $("job-id").textContent = job.id;
    $("job-panel").hidden = false;
    $("progress").value = 0;
    $("status-line").textContent = "Queued";
    $("cancel").hidden = false;
    $("preview-note").hidden = false;
    setView("result");
    follow(job);
    showJobSettings(job);
  } catch (e) {
    showError(`Could not reach the service: ${e.message}`);
  } finally {
    state.submitting = false;
    updateButtons();
  }
});

showKeyStatus();

loadModels();
setInterval(() => { if (!document.hidden) loadModels(); }, 15000);  // workers and queue lengths change
updateButtons();
render();
