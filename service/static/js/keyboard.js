// The keyboard shortcuts the page lists under "Shortcuts": undo/redo, brush size, eraser, zoom,
// space to pan, B for the whole image before/after.

import { editing, redo, setBrush, toggleEraser, undo } from "./canvas.js";
import { brushWidth, drawCursor, flashCursor } from "./cursor.js";
import { viewport } from "./dom.js";
import { toggleBefore } from "./results.js";
import { state } from "./state.js";
import { oneToOne, setZoom } from "./zoom.js";

let lastClient = null;  // the pointer, in client coordinates: zoom keys keep it over the same pixel

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
document.addEventListener("pointermove", (event) => { lastClient = { x: event.clientX, y: event.clientY }; });
