// What GET /models last said (models, the ones that cannot take jobs, samplers, presets, output
// formats, job statuses) and the questions the page asks of it. Nothing here knows a sampler, a
// preset or a final status by name: the listing says it all.

import { $ } from "./dom.js";

export const listing = { default: "", models: [], unavailable: {}, presets: {}, samplers: [], defaultSampler: "",
                         outputFormats: {}, jobStatuses: {} };

export function setListing(data) {
  listing.default = data.default || "";
  listing.models = data.models;
  listing.unavailable = data.unavailable || {};
  listing.presets = data.presets || {};
  listing.samplers = data.samplers || [];
  listing.defaultSampler = data.default_sampler || "";
  listing.outputFormats = data.output_formats || {};
  listing.jobStatuses = data.job_statuses || {};
}

export function selectedModel() {
  return listing.models.find((m) => m.name === $("model").value) || null;
}

export function unavailable(name = $("model").value || listing.default) {
  // Why the service refuses jobs for the model (the one chosen, else the one a job without `model`
  // goes to): {reason, workers, startup_failures} as GET /models lists it under `unavailable`; or
  // null when it takes jobs.
  return listing.unavailable[name] || null;
}

export function samplerInfo(name) {
  return listing.samplers.find((s) => s.name === name) || null;
}

export function defaultSampler() {
  // The sampler a job without `sampler` or `preset` runs (`default_sampler`).
  return samplerInfo(listing.defaultSampler);
}

export function isFinal(status) {
  // Whether a job's status is one it never leaves (`job_statuses`).
  return listing.jobStatuses[status] === true;
}

export function modelDefaults(m, sampler) {
  // The model's own settings for a sampler that takes them (`takes_model_defaults`): its
  // `defaults` for the parameters both name (so never its guidance scale), as the service does.
  if (!m || !m.defaults || !sampler || !sampler.takes_model_defaults) return {};
  return Object.fromEntries(sampler.parameters.filter((p) => m.defaults[p.name] != null)
                                               .map((p) => [p.name, m.defaults[p.name]]));
}

export function outputFormat(mediaType, name) {
  // One of the output formats ({media_type, suffix, ...}), by media type, else by name; or null.
  return Object.values(listing.outputFormats).find((f) => f.media_type === mediaType)
    || listing.outputFormats[name] || null;
}
