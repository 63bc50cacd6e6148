// What GET /models last said (models, samplers, presets, output formats) and the questions the page
// asks of it. Nothing here knows a sampler or a preset by name: the listing says it all.

import { $ } from "./dom.js";

export const listing = { models: [], presets: {}, samplers: [], outputFormats: {} };

export function setListing(data) {
  listing.models = data.models;
  listing.presets = data.presets || {};
  listing.samplers = data.samplers || [];
  listing.outputFormats = data.output_formats || {};
}

export function selectedModel() {
  return listing.models.find((m) => m.name === $("model").value) || null;
}

export function samplerInfo(name) {
  return listing.samplers.find((s) => s.name === name) || null;
}

export function defaultSampler() {
  // The sampler a job without `sampler` or `preset` runs: the service lists it first.
  return listing.samplers[0] || null;
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
