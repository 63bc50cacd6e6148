// Zoom and pan. The box keeps the image's aspect ratio; at zoom 1 the image fits it, and zooming
// grows the image inside it (buttons, keys, Ctrl + wheel around the pointer). Panning: space or the
// middle button and drag, or a plain drag where there is nothing to paint.

import { drawCursor, imagePoint, scale } from "./cursor.js";
import { $, content, stage, viewport } from "./dom.js";
import { state } from "./state.js";

const MAX_ZOOM_PIXELS = 16;  // zoom in until one image pixel is this many screen pixels

function fitSize() {
  // The box's size on screen, which is the image's size at zoom 1 (the box has its aspect ratio).
  const rect = stage.getBoundingClientRect();
  return { width: rect.width, height: rect.width * state.height / state.width };
}

export function oneToOne() {
  return state.width / Math.max(fitSize().width, 1);
}

function zoomLimits() {
  const one = oneToOne();
  return { min: Math.min(1, one), max: Math.max(4, one * MAX_ZOOM_PIXELS) };
}

export function layout() {
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

export function setZoom(zoom, anchor) {
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
