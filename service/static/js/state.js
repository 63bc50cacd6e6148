// What several modules read and change: the image and its mask strokes, the view, the zoom and
// the pointer, the job shown. What one module alone uses stays in that module.

export const state = {
  file: null, width: 0, height: 0,        // the image being painted on
  ops: [], redone: [], stroke: null,      // mask strokes ({erase, width, points}), clears ({clear}), layers ({layer})
  painted: false, erasing: false,
  view: "edit",                           // "edit": image + mask; "result": live estimate or result
  zoom: 1,                                // 1 = the image fits the box
  pointer: null, overStage: false, spaceDown: false, pan: null,
  modelsLoaded: false,                    // GET /models answered once (the form shows its choices)
  job: null,                              // {id, total, fraction, previewStep, results, final, images}
  submitting: false,
  sample: 0,                              // the result shown, of the job's samples
  look: null,                             // pictureStatistics of the image: how much it looks like a drawing
  example: null,                          // the example last opened: {model, data, file}
};
