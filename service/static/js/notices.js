// What to expect before a job runs: two notices under the Inpaint button, shown from the upload and
// the model alone (nothing is sent): the picture does not look like what the model was trained on,
// or the model will see it at a much coarser scale than it has. They never block a job. And, while
// the model's example is open, what it shows and the fields it is sent with.

import { selectedModel, unavailable } from "./catalog.js";
import { $, bold, fmt, maskCanvas, maskCtx } from "./dom.js";
import { state } from "./state.js";

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

export function pictureStatistics(canvas) {
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

export function modelPlan(size, framing, strategy, width, height, box) {
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

const maskBoxSeen = { file: null, length: 0, top: null, box: null };

export function maskBox() {
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

export function activeExample() {
  // The example being edited (its file is still the image), if any.
  return state.example && state.example.file === state.file ? state.example : null;
}

function currentStrategy() {
  // The page sends no strategy (the service's `auto`), except the fields of an example on its model.
  const ex = activeExample();
  return ex && ex.model === $("model").value && ex.data.form.strategy ? ex.data.form.strategy : "auto";
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

export function updateNotices() {
  const box = $("notices");
  const m = selectedModel();
  // None for a model that cannot take jobs: what it would make is beside the point.
  const notices = m && !unavailable(m.name) && state.width ? [domainNotice(m), sizeNotice(m)].filter(Boolean) : [];
  box.replaceChildren(...notices.map((n) => {
    const p = document.createElement("p");
    p.className = `notice ${n.kind}`;
    p.append(bold(n.title), n.text);
    return p;
  }));
  describeExample();
}
