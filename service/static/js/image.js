// Opening a picture to paint on: a file (the button, a drop or a paste), the model's example with
// its mask painted, or a result to edit further. A new picture starts afresh: no mask, a brush
// sized to it, zoom to fit, no job.

import { hasPaint, maskLayer, replayMask, setBrush, updateButtons } from "./canvas.js";
import { $, imageCanvas, maskCanvas, showError, stage } from "./dom.js";
import { exampleFor } from "./examples.js";
import { forgetJob } from "./jobs.js";
import { pictureStatistics, updateNotices } from "./notices.js";
import { jobImage, resultName, setView } from "./results.js";
import { state } from "./state.js";
import { layout } from "./zoom.js";

function openImage(file) {
  // Resolves to whether the file could be opened.
  const url = URL.createObjectURL(file);
  const img = new Image();
  let opened;
  const done = new Promise((resolve) => { opened = resolve; });
  img.onload = () => {
    state.file = file;
    state.width = img.naturalWidth;
    state.height = img.naturalHeight;
    for (const c of [imageCanvas, maskCanvas]) { c.width = state.width; c.height = state.height; }
    const ctx = imageCanvas.getContext("2d");
    ctx.clearRect(0, 0, state.width, state.height);
    ctx.drawImage(img, 0, 0);
    URL.revokeObjectURL(url);
    state.ops = [];
    state.redone = [];
    state.painted = false;
    replayMask();
    // A brush about a twentieth of the image, at most a third of it.
    const longest = Math.max(state.width, state.height);
    const brush = $("brush");
    brush.max = String(Math.max(8, Math.round(longest / 3)));
    setBrush(Math.round(longest / 24));
    stage.style.setProperty("--ar", String(state.width / state.height));
    stage.style.aspectRatio = `${state.width} / ${state.height}`;
    stage.classList.remove("empty");
    forgetJob();
    state.zoom = 1;
    setView("edit");
    layout();
    updateButtons();
    showError("");
    state.look = pictureStatistics(imageCanvas);
    updateNotices();
    opened(true);
  };
  img.onerror = () => {
    URL.revokeObjectURL(url);
    showError("This file could not be opened as an image.");
    opened(false);
  };
  img.src = url;
  return done;
}

function dataUrlBytes(url) {
  return Uint8Array.from(atob(url.slice(url.indexOf(",") + 1)), (c) => c.charCodeAt(0));
}

async function tryExample() {
  const name = $("model").value;
  showError("");
  let ex;
  try {
    ex = await exampleFor(name);
  } catch (e) {
    showError(`Could not load the example: ${e.message}`);
    return;
  }
  if (!ex) return;
  const file = new File([dataUrlBytes(ex.data.image)], `example-${name}.png`, { type: "image/png" });
  // The mask as one undoable layer in the mask colour.
  // (Decoded from its bytes, as the image is: no data: URL is loaded, whatever the page's CSP.)
  const layer = maskLayer(await createImageBitmap(new Blob([dataUrlBytes(ex.data.mask)], { type: "image/png" })));
  if (!(await openImage(file))) return;
  state.example = { ...ex, file };
  state.ops.push({ layer });
  replayMask();
  state.painted = hasPaint();
  updateButtons();
  updateNotices();
}

$("file").addEventListener("change", (event) => {
  if (event.target.files[0]) openImage(event.target.files[0]);
  event.target.value = "";
});
stage.addEventListener("dragover", (event) => { event.preventDefault(); stage.classList.add("dropping"); });
stage.addEventListener("dragleave", () => stage.classList.remove("dropping"));
stage.addEventListener("drop", (event) => {
  event.preventDefault();
  stage.classList.remove("dropping");
  const file = [...(event.dataTransfer.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) openImage(file);
});
document.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData ? event.clipboardData.files : [])].find((f) => f.type.startsWith("image/"));
  if (file) { event.preventDefault(); openImage(file); }
});
$("try-example").addEventListener("click", tryExample);
$("continue").addEventListener("click", async () => {
  // "Edit this result": the result shown, opened as the picture to paint on.
  const job = state.job;
  if (!job || !job.results) return;
  const i = state.sample;
  try {
    const image = await jobImage(job, job.results[i]);
    openImage(new File([image.blob], resultName(job, i, image.blob), { type: image.blob.type }));
  } catch (e) {
    showError(`Could not fetch the result: ${e.message}`);
  }
});
