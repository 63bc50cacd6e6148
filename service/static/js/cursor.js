// The brush's outline under the pointer, at the brush's true size on screen, and the mapping from
// the pointer to image pixels.

import { $, content } from "./dom.js";
import { state } from "./state.js";

const cursor = $("brush-cursor");
let cursorTimer = null;

export function brushWidth() {
  return Number($("brush").value);  // image pixels
}

export function scale() {
  // Screen pixels per image pixel.
  return content.getBoundingClientRect().width / Math.max(state.width, 1);
}

export function imagePoint(event) {
  const rect = content.getBoundingClientRect();
  return { x: (event.clientX - rect.left) * (state.width / rect.width),
           y: (event.clientY - rect.top) * (state.height / rect.height) };
}

export function drawCursor() {
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

export function flashCursor() {
  // Show the brush's size in the middle of the image while it changes with the pointer elsewhere.
  if (state.overStage || !state.width) { drawCursor(); return; }
  state.pointer = { x: state.width / 2, y: state.height / 2 };
  drawCursor();
  clearTimeout(cursorTimer);
  cursorTimer = setTimeout(() => { if (!state.overStage) { state.pointer = null; drawCursor(); } }, 900);
}
