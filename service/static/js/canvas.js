// The mask and the brush. The mask canvas has the image's own size: the brush is in image pixels,
// and strokes are kept as a list (undo/redo replays them). The eraser, undo/redo/clear, an
// example's mask as one layer, and the mask as a PNG to send.

import { unavailable } from "./catalog.js";
import { brushWidth, drawCursor, flashCursor, imagePoint } from "./cursor.js";
import { $, maskCanvas, maskCtx } from "./dom.js";
import { updateNotices } from "./notices.js";
import { setView } from "./results.js";
import { state } from "./state.js";

const MASK_COLOR = "rgb(255, 0, 200)";

export function setBrush(value) {
  const brush = $("brush");
  const v = Math.min(Number(brush.max), Math.max(Number(brush.min), Math.round(value)));
  brush.value = String(v);
  $("brush-size").textContent = String(v);
  drawCursor();
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

export function replayMask() {
  maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
  for (const op of state.ops) {
    if (op.clear) maskCtx.clearRect(0, 0, maskCanvas.width, maskCanvas.height);
    else if (op.layer) maskCtx.drawImage(op.layer, 0, 0);  // an example's mask
    else strokePath(maskCtx, op, 0);
  }
}

export function hasPaint() {
  if (!state.width) return false;
  const data = maskCtx.getImageData(0, 0, maskCanvas.width, maskCanvas.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 127) return true;
  return false;
}

export function updateButtons() {
  $("undo").disabled = state.ops.length === 0;
  $("redo").disabled = state.redone.length === 0;
  $("clear").disabled = !state.painted;
  // A model the service refuses jobs for (GET /models `unavailable`) takes none from here either.
  const broken = unavailable();
  $("submit").disabled = !state.file || !state.painted || state.submitting || Boolean(broken);
  $("submit").title = broken ? broken.reason : "";
  for (const id of ["zoom-in", "zoom-out", "zoom-fit", "zoom-1"]) if (!state.width) $(id).disabled = true;
}

export function editing() {
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

export function undo() { moveOp(state.ops, state.redone); }
export function redo() { moveOp(state.redone, state.ops); }

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

export function toggleEraser() {
  editing();
  state.erasing = !state.erasing;
  $("eraser").setAttribute("aria-pressed", String(state.erasing));
  drawCursor();
}

export function maskLayer(mask) {
  // A mask image (white = to fill) as a layer in the mask colour, transparent elsewhere: one
  // undoable op ({layer}), as an example's mask is painted.
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
  return layer;
}

export function maskBlob() {
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

$("brush").addEventListener("input", () => { editing(); setBrush(Number($("brush").value)); flashCursor(); });
$("eraser").addEventListener("click", toggleEraser);
$("undo").addEventListener("click", undo);
$("redo").addEventListener("click", redo);
$("clear").addEventListener("click", clearMask);
