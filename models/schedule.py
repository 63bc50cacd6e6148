"""Time schedules: the order in which a sample visits the respaced diffusion indices.

Torch-free on purpose: the API counts a request's network evaluations with these functions
before it queues the job, and must not import torch.
"""

from __future__ import annotations

from typing import Iterator, Mapping

# The reference's "never" for start_resampling: resampling is allowed at every index.
RESAMPLE_EVERYWHERE = 100_000_000


class ScheduleTooLong(ValueError):
    """The schedule would visit more times than the caller allows (it is not built in full)."""


def jump_schedule(t_T: int, *, n_sample: int = 1, jump_length: int = 10, jump_n_sample: int = 10,
                  jump2_length: int = 1, jump2_n_sample: int = 1, jump3_length: int = 1, jump3_n_sample: int = 1,
                  start_resampling: int = RESAMPLE_EVERYWHERE, max_length: int | None = None) -> list[int]:
    """Times visited by RePaint sampling (Lugmayr et al. 2022, Algorithm 1 with resampling).

    Takes the reference generator's parameters by their names and returns its exact times.
    Starts at t_T - 1 and ends with -1 (the clean image). A move from a to a - 1 is a reverse
    step that evaluates the network at index a; a move from a to a + 1 re-noises without one.
    - Level 1: every `jump_length` indices, go back up `jump_length` and redo the stretch,
      `jump_n_sample - 1` more times.
    - Levels 2 and 3: the same with their own lengths and counts, nested inside level 1; a
      level-1 jump resets levels 2 and 3, a level-2 jump resets level 3.
    - `n_sample > 1`: after each reverse step, re-noise one index and redo it `n_sample - 1` times.
    - Jumps and single-step resampling happen only at or below `start_resampling`.
    `max_length` bounds the list (ScheduleTooLong past it), so that parameters from a client
    cannot make the server build a schedule of billions of moves before counting its cost.
    """
    times: list[int] = []
    for t in walk_jump_schedule(t_T, n_sample=n_sample, jump_length=jump_length, jump_n_sample=jump_n_sample,
                                jump2_length=jump2_length, jump2_n_sample=jump2_n_sample, jump3_length=jump3_length,
                                jump3_n_sample=jump3_n_sample, start_resampling=start_resampling):
        times.append(t)
        if max_length is not None and len(times) > max_length:
            raise ScheduleTooLong(f"the schedule visits more than {max_length} times")
    return times


def walk_jump_schedule(t_T: int, *, n_sample: int = 1, jump_length: int = 10, jump_n_sample: int = 10,
                       jump2_length: int = 1, jump2_n_sample: int = 1, jump3_length: int = 1,
                       jump3_n_sample: int = 1, start_resampling: int = RESAMPLE_EVERYWHERE) -> Iterator[int]:
    """`jump_schedule`'s times one at a time (memory: the stretch boundaries, not the moves)."""
    for name, value, minimum in (("t_T", t_T, 1), ("n_sample", n_sample, 1), ("jump_length", jump_length, 1),
                                 ("jump_n_sample", jump_n_sample, 1), ("jump2_length", jump2_length, 1),
                                 ("jump2_n_sample", jump2_n_sample, 1), ("jump3_length", jump3_length, 1),
                                 ("jump3_n_sample", jump3_n_sample, 1), ("start_resampling", start_resampling, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

    class Level:
        """One level of jumps: the jumps left at each stretch boundary below t_T - length. A reset
        (an outer level's jump) starts a new generation instead of rebuilding the table, so resets
        cost nothing however short the outer stretches are."""

        def __init__(self, length: int, n: int):
            self.length, self.n, self.generation = length, n, 0
            self.left: dict[int, tuple[int, int]] = {}  # boundary -> (generation, jumps left)

        def jumps_left(self, t: int) -> int:
            if self.n <= 1 or t >= t_T - self.length or t % self.length:
                return 0
            generation, left = self.left.get(t, (-1, 0))
            return left if generation == self.generation else self.n - 1

    levels = [Level(jump3_length, jump3_n_sample), Level(jump2_length, jump2_n_sample),
              Level(jump_length, jump_n_sample)]
    t = t_T
    while t >= 1:
        t -= 1
        yield t
        if t + 1 < t_T - 1 and t <= start_resampling:
            for _ in range(n_sample - 1):
                yield t + 1
                yield t
        # Innermost level first, then outward; each level sees the index the inner one left.
        for depth, level in enumerate(levels):
            left = level.jumps_left(t)
            if left > 0 and t <= start_resampling - level.length:
                level.left[t] = (level.generation, left - 1)
                for _ in range(level.length):
                    t += 1
                    yield t
                for inner in levels[:depth]:
                    inner.generation += 1
    yield -1


def count_model_evaluations(times: list[int]) -> int:
    """The number of reverse transitions, i.e. network evaluations, in a schedule."""
    return sum(1 for a, b in zip(times, times[1:]) if b < a)


def count_evaluations_upto(settings: Mapping[str, int], cap: int) -> int | None:
    """The network evaluations of a jump schedule (`jump_schedule`'s keyword arguments and t_T),
    counted move by move without keeping them; None once the count passes `cap`."""
    count, last = 0, None
    for t in walk_jump_schedule(**settings):
        if last is not None and t < last:
            count += 1
            if count > cap:
                return None
        last = t
    return count
