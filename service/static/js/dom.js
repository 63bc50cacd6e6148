// The page's fixed elements and the small helpers every module uses: $, numbers and names as
// text, and the error line.

export const $ = (id) => document.getElementById(id);

// The box that shows the image with its mask, the live estimate and the result (results.js).
export const stage = $("stage");
export const viewport = $("viewport");
export const content = $("content");
export const imageCanvas = $("image-canvas");
export const maskCanvas = $("mask-canvas");
export const maskCtx = maskCanvas.getContext("2d");
export const previewImage = $("preview-image");
export const resultImage = $("result-image");

export const fmt = (n) => Number(n).toLocaleString("en");
export const label = (name) => name.replaceAll("_", " ");

export function bold(text) {
  const b = document.createElement("strong");
  b.textContent = text;
  return b;
}

export function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}
