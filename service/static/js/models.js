// The form made from GET /models: the model menu and what each model is (or why the service cannot
// take jobs for it), the quality presets, and a custom sampler's controls with the cost of the
// choice. Everything about a sampler comes from the listing (its parameters with their ranges, which
// ones sit under "more", its `schedule` for the evaluation count, whether a model's defaults apply to
// it, which one a job runs by default), so a sampler or a parameter the service adds shows up here
// as it is.

import { api, errorText } from "./api.js";
import { updateButtons } from "./canvas.js";
import { defaultSampler, listing, modelDefaults, samplerInfo, selectedModel, setListing, unavailable } from "./catalog.js";
import { $, bold, fmt, label, showError } from "./dom.js";
import { offerExample } from "./examples.js";
import { updateNotices } from "./notices.js";
import { MAX_COUNTED, samplerEvaluations } from "./schedule.js";
import { state } from "./state.js";

let signature = null;  // of the listing the menus were built from
let loading = null;    // the request in flight
const typed = {};      // custom parameter values typed, per sampler: {sampler: {name: text}}
// The quality chosen first, by name (GET /models marks no preset as the page's first choice);
// "model default" where no preset has this name.
const FIRST_PRESET = "balanced";

function parameterDefault(sampler, param) {
  const own = modelDefaults(selectedModel(), sampler);
  return own[param.name] != null ? own[param.name] : param.default;
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

export function loadModels() {
  // One request at a time: the periodic refresh must not pile up while the key field waits.
  if (!loading) {
    loading = fetchModels().finally(() => { loading = null; });
  }
  return loading;
}

async function fetchModels() {
  try {
    const response = await api("/models", { cache: "no-store" });
    if (!response.ok) throw new Error(await errorText(response));
    const data = await response.json();
    setListing(data);
    // The models, then those the service only names as unavailable (every worker that tried to start
    // them failed): named too, with why, rather than left out.
    const names = [...new Set([...data.models.map((m) => m.name), ...Object.keys(listing.unavailable)])];
    // Rebuilt only when they change (the list refreshes in the background; an open menu stays open).
    const now = JSON.stringify([names, Object.keys(listing.unavailable),
                                data.models.map((m) => [m.name, m.defaults, m.diffusion_steps]),
                                listing.presets, listing.samplers, listing.defaultSampler]);
    if (now !== signature) {
      signature = now;
      const model = $("model");
      const keep = state.modelsLoaded ? model.value : data.default;
      model.innerHTML = "";
      for (const name of names) {
        const option = new Option(unavailable(name) ? `${name} (unavailable)` : name, name);
        option.selected = name === keep;
        model.add(option);
      }
      if (!names.length) model.add(new Option("no model is being served yet", ""));
      const sampler = $("sampler");
      const keepSampler = sampler.value;
      sampler.innerHTML = "";
      for (const s of listing.samplers) sampler.add(new Option(s.name, s.name));
      sampler.value = samplerInfo(keepSampler) ? keepSampler : (defaultSampler() || {}).name || "";
      fillPresets(state.modelsLoaded ? $("preset").value : FIRST_PRESET);
      state.modelsLoaded = true;
    }
    describeModel();
  } catch (e) {
    showError(`Could not load the models: ${e.message}`);
  }
}

function fillPresets(keep) {
  const preset = $("preset");
  preset.innerHTML = "";
  const own = defaultChoice();
  preset.add(new Option(own && own.evaluations ? `model default — ${own.sampler}, ${fmt(own.evaluations)} evaluations`
    : "model default", ""));
  for (const [name, p] of Object.entries(listing.presets)) {
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
  // (the model's own where the sampler takes the model's defaults); advanced ones under "more".
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
    const value = (typed[sampler.name] || {})[param.name];
    input.value = value ?? String(parameterDefault(sampler, param));
    input.dataset.hint = parameterHint(param);
    const field = document.createElement("label");
    field.title = input.dataset.hint;
    field.append(label(param.name), input);
    (param.advanced ? more : main).append(field);
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

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
const utcTime = (iso) => `${new Date(iso).toISOString().slice(11, 16)} UTC`;

function describeModel() {
  const m = selectedModel();
  const broken = unavailable();
  const notes = $("model-notes");
  const open = Boolean(notes.querySelector("details[open]"));  // kept open across the refreshes
  notes.classList.remove("warn");
  describeDomain(m);
  describeUnavailable(broken);
  offerExample(m);
  updateNotices();
  updateButtons();
  if (!m || broken) { notes.textContent = ""; return; }  // the reason, above, says it all
  notes.textContent = `${plural(m.workers, "worker")}, ${m.queued} queued`;
  if (m.workers === 0) {
    notes.append(document.createElement("br"), "No worker runs this model now: jobs wait in the queue until one starts.");
    notes.classList.add("warn");
  }
  const failures = m.startup_failures || [];
  if (failures.length) {
    // Served by other workers: a quiet word, the reasons one click away.
    const details = document.createElement("details");
    details.className = "failures";
    details.open = open;
    const summary = document.createElement("summary");
    summary.textContent = `${plural(failures.length, "other worker")} could not start it`;
    details.append(summary, ...failures.map((f) => {
      const p = document.createElement("p");
      p.textContent = `${f.where} (${f.stage === "load" ? "loading" : "self-test"}, since ${utcTime(f.since)}): ${f.reason}`;
      return p;
    }));
    notes.append(details);
  }
}

function describeUnavailable(broken) {
  // Why the service refuses jobs for the chosen model, in its own words (the 503's reason too).
  const el = $("model-unavailable");
  el.hidden = !broken;
  if (broken) el.replaceChildren(bold("Cannot take jobs: "), broken.reason);
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

function defaultChoice() {
  // What a job with no preset and no sampler runs: the default sampler with the model's own
  // settings where it takes them (shown), its defaults for the rest.
  const m = selectedModel(), sampler = defaultSampler();
  if (!m || !sampler) return null;
  const settings = modelDefaults(m, sampler);
  const all = { ...Object.fromEntries(sampler.parameters.map((p) => [p.name, p.default])), ...settings };
  return { sampler: sampler.name, settings, evaluations: samplerEvaluations(sampler, all),
           note: Object.keys(settings).length ? "the model's own settings" : `the defaults of ${sampler.name}` };
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
    return { sampler: sampler.name, settings, evaluations: samplerEvaluations(sampler, settings) };
  }
  if (value) {
    const p = listing.presets[value];
    return p ? { sampler: p.sampler, settings: p.settings, evaluations: p.evaluations, note: p.description } : null;
  }
  return defaultChoice();
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
  const settings = Object.entries(c.settings);
  const what = custom || !settings.length ? c.sampler
    : `${c.sampler}, ${settings.map(([k, v]) => `${label(k)} ${fmt(v)}`).join(", ")}`;
  const note = c.note ? ` ${c.note[0].toUpperCase()}${c.note.slice(1)}.` : "";
  if (c.evaluations == null) { cost.textContent = `${what}: the service counts its evaluations.${note}`; return; }
  cost.textContent = `${what}: ${fmt(c.evaluations)} network evaluations per sample`
    + (samples > 1 ? `, ${fmt(c.evaluations * samples)} for ${samples} samples.` : ".") + note;
}

$("model").addEventListener("change", () => { fillPresets($("preset").value); describeModel(); });
$("sampler").addEventListener("change", buildCustom);
$("preset").addEventListener("input", describeCost);
$("num-samples").addEventListener("input", describeCost);
for (const grid of ["params", "more-params-list"]) {
  $(grid).addEventListener("input", (event) => {
    const sampler = $("sampler").value;
    typed[sampler] = { ...typed[sampler], [event.target.name]: event.target.value };
    describeCost();
  });
}
$("custom").addEventListener("focusin", (event) => { if (event.target.dataset.hint) showHint(event.target); });
