// The repaint page: paint a mask over an image, submit it, follow the job live, compare the result.
//
// One box shows everything, at the image's aspect ratio: the image with its mask while painting, the
// live estimate while a job runs, and the result (with a before/after split) when it is done, so all
// three are the same size on screen.
//
// The page is native ES modules in js/, with no build step. Each module imports only modules listed
// above it here, so none imports another that imports it (tests/test_page.py checks the imports have
// no cycle). Each adds its own listeners when it loads; this one wires what crosses them and starts.
//   dom.js, state.js   the page's elements and helpers; the state several modules share
//   schedule.js        evaluations per sample from a sampler's `schedule` (a port of models/schedule.py)
//   api.js             every request, with the API key (asked for on a 401)
//   catalog.js         what GET /models said
//   cursor.js          the brush outline, and the pointer in image pixels
//   zoom.js            zoom and pan
//   results.js         what the box shows: the mask, the live estimate, the results, before/after
//   notices.js         what to expect before a job runs
//   canvas.js          the mask and the brush
//   examples.js        the model's example
//   models.js          the form: model, quality preset, a sampler's controls, the cost
//   jobs.js            submitting a job, its event stream, canceling it
//   image.js           opening a picture: a file, the example, a result
//   keyboard.js        the shortcuts

import { forgetKey, showKeyStatus } from "./js/api.js";
import { updateButtons } from "./js/canvas.js";
import { $ } from "./js/dom.js";
import "./js/image.js";
import "./js/keyboard.js";
import { loadModels } from "./js/models.js";
import { render } from "./js/results.js";

$("forget-key").addEventListener("click", (event) => {
  event.preventDefault();
  forgetKey();
  loadModels();  // asks for a key again if the service needs one
});

showKeyStatus();
loadModels();
setInterval(() => { if (!document.hidden) loadModels(); }, 15000);  // workers and queue lengths change
updateButtons();
render();
