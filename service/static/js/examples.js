// The model's example (GET /models/{name}/example): a picture it knows with a mask, fetched once
// per model, and the "Try an example" button shown for the models that have one and take jobs.

import { api, errorText } from "./api.js";
import { unavailable } from "./catalog.js";
import { $ } from "./dom.js";

// The examples, fetched once per model: {model, data} (GET /models/{name}/example), or null when the
// service has none for it (a diffusers model of a domain it has no picture for).
const examples = new Map();

export function exampleFor(name) {
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

function offer(shown) {
  // The button, and the empty box's mention of it.
  $("try-example").hidden = !shown;
  $("placeholder-example").hidden = !shown;
}

export function offerExample(m) {
  // Not for a model the service refuses jobs for: its example could not run.
  if (!m || unavailable(m.name)) { offer(false); return; }
  exampleFor(m.name).then((ex) => {
    if ($("model").value !== m.name || unavailable(m.name)) return;  // another model meanwhile, or it broke
    offer(Boolean(ex));
    $("try-example").title = ex ? `Open a picture ${m.name} knows, with its mask painted: ${ex.data.shows}` : "";
  }, () => offer(false));
}
