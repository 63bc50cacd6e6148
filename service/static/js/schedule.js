// Network evaluations per sample, counted as the service counts them: the jump schedule
// (models/schedule.py) and each sampler's `schedule` from GET /models, which says where every
// argument of the jump schedule comes from (models/sampler_settings.py, `SamplerSettings.times`).
// No DOM: tests import it and compare with Python.

export const MAX_COUNTED = 1_000_000;  // evaluations per sample the page counts up to (the service allows far fewer)

// The jump schedule's arguments: a sampler's `schedule` maps each to a parameter or a number.
const SCHEDULE_ARGUMENTS = ["n_sample", "jump_length", "jump_n_sample", "jump2_length", "jump2_n_sample",
                                   "jump3_length", "jump3_n_sample", "start_resampling"];

export function scheduleEvaluations(steps, o) {
  // Network evaluations per sample of a jump schedule: a port of models/schedule.py (`jump_schedule`,
  // then `count_model_evaluations`: each move from index a down to a - 1 is one evaluation) that
  // counts the moves instead of listing them. Infinity past MAX_COUNTED. Every argument must be
  // given in `o`: the page assumes none (samplerArguments resolves them).
  const missing = SCHEDULE_ARGUMENTS.filter((name) => typeof o[name] !== "number");
  if (missing.length) throw new TypeError(`the jump schedule needs ${missing.join(", ")}`);
  if (steps > 100_000) return Infinity;
  // Innermost level first. `left[j]` is the jumps left at boundary j, valid while `seen[j]` is the
  // level's generation: a reset (an outer jump) starts a new one, where every boundary has n - 1.
  const levels = [[o.jump3_length, o.jump3_n_sample], [o.jump2_length, o.jump2_n_sample],
                  [o.jump_length, o.jump_n_sample]].map(([length, n]) => (
    { length, n, generation: 0, left: new Float64Array(steps), seen: new Int32Array(steps).fill(-1) }));
  const jumpsLeft = (level, t) => {
    if (t >= steps - level.length || t % level.length) return 0;
    return level.seen[t] === level.generation ? level.left[t] : level.n - 1;
  };
  let evaluations = 0, last = -Infinity;  // the schedule starts at steps - 1: no move into it
  const visit = (t) => { if (t < last) evaluations += 1; last = t; };
  let t = steps;
  while (t >= 1) {
    t -= 1;
    visit(t);
    if (t + 1 < steps - 1 && t <= o.start_resampling) {
      for (let i = 1; i < o.n_sample && evaluations <= MAX_COUNTED; i++) { visit(t + 1); visit(t); }
    }
    levels.forEach((level, depth) => {
      const left = jumpsLeft(level, t);
      if (left > 0 && t <= o.start_resampling - level.length) {
        level.left[t] = left - 1;
        level.seen[t] = level.generation;
        for (let i = 0; i < level.length; i++) visit(++t);
        for (const inner of levels.slice(0, depth)) inner.generation += 1;
      }
    });
    if (evaluations > MAX_COUNTED) return Infinity;
  }
  visit(-1);
  return evaluations;
}

function samplerArguments(sampler, settings) {
  // The jump schedule's arguments for a sampler's settings: each from the parameter its
  // `schedule` names, or the number it fixes. null where the listing or the settings lack one.
  const schedule = sampler.schedule || {};
  const args = {};
  for (const name of SCHEDULE_ARGUMENTS) {
    const source = schedule[name];
    const value = typeof source === "string" ? settings[source] : source;
    if (typeof value !== "number") return null;
    args[name] = value;
  }
  return args;
}

export function samplerEvaluations(sampler, settings) {
  // Network evaluations per sample of `settings` ({parameter: number}, every parameter of the
  // sampler), or null when the page cannot tell. Every sampler's `steps` is the schedule's length.
  const args = samplerArguments(sampler, settings);
  return args && typeof settings.steps === "number" ? scheduleEvaluations(settings.steps, args) : null;
}
