"""The RePaint jump schedule: the order in which a sample visits the respaced diffusion indices."""

from __future__ import annotations


def jump_schedule(t_T: int, jump_length: int, jump_n_sample: int, n_sample: int = 1) -> list[int]:
    """Times visited by RePaint sampling (Lugmayr et al. 2022, Algorithm 1 with resampling).

    Starts at t_T - 1 and ends with -1 (the clean image). A step from a to a - 1 is a reverse
    step that evaluates the network at index a; a step from a to a + 1 re-noises without one.
    Every `jump_length` steps the sampler goes back up `jump_length` indices and redoes them,
    `jump_n_sample - 1` times in all per stretch; `n_sample > 1` adds single-step resampling.
    """
    for name, value, minimum in (("t_T", t_T, 1), ("jump_length", jump_length, 1),
                                 ("jump_n_sample", jump_n_sample, 1), ("n_sample", n_sample, 1)):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    # Remaining jumps back per landing index (the stretch boundaries below t_T - jump_length).
    jumps_left = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t = t_T
    times: list[int] = []
    while t >= 1:
        t -= 1
        times.append(t)
        if t + 1 < t_T - 1:
            for _ in range(n_sample - 1):
                times.extend((t + 1, t))
        if jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            times.extend(range(t + 1, t + jump_length + 1))
            t += jump_length
    times.append(-1)
    return times


def count_model_evaluations(times: list[int]) -> int:
    """The number of reverse transitions, i.e. network evaluations, in a jump schedule."""
    return sum(1 for a, b in zip(times, times[1:]) if b < a)
