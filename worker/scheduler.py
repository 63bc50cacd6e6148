"""Continuous batching over the sampler batch: which jobs share the next forward pass.

Knows no Redis and no RQ: the engine (worker.engine) asks it to admit a job, runs `step()`,
and reads back which jobs finished, which ran past their timeout and which must leave after
running out of memory. Tested with a fake runtime and a fake clock (tests/worker/test_scheduler.py).

The limit on samples in flight starts at the configured `max_batch`; out of memory halves it,
and after `grow_after` passes without running out of memory it grows back by half, up to the
configured value, so one transient spike does not cost throughput for the worker's lifetime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from .params import JobParams


class SamplerRuntime(Protocol):
    """What the scheduler needs of the resident model (worker.runtime.Runtime provides it)."""

    def new_batch(self) -> Any: ...
    def add_samples(self, batch: Any, prepared: Any, params: JobParams) -> list: ...
    def step(self, batch: Any, cap: int | None = None) -> int: ...
    def release_memory(self) -> None: ...


@dataclass
class Flight:
    """One admitted job: its samples in the batch and its bookkeeping."""

    job_id: str
    token: str
    params: JobParams
    prepared: Any
    samples: list = field(default_factory=list)
    started: float = 0.0
    timeout: float | None = None
    webhook: dict | None = None
    # Its previous execution ended because one sample did not fit in memory alone: a second time
    # is the job's own size, not memory held by something else at that moment.
    retried_out_of_memory: bool = False

    @property
    def step(self) -> int:
        return min(s.evaluations for s in self.samples)

    @property
    def total(self) -> int:
        return self.samples[0].total_evaluations

    @property
    def done(self) -> bool:
        return all(s.done for s in self.samples)


@dataclass(frozen=True)
class Shrink:
    """What out-of-memory asks of the engine: jobs to put back, and a job that cannot fit alone."""

    requeue: list[Flight]
    too_big: Flight | None


class BatchScheduler:
    def __init__(self, runtime: SamplerRuntime, *, max_batch: int, grow_after: int = 50,
                 clock: Callable[[], float] = time.monotonic, sizes: tuple[int, ...] = ()):
        self.runtime = runtime
        self.batch = runtime.new_batch()
        self.flights: list[Flight] = []
        self.max_batch = max_batch
        # The batch buckets (worker.speed): a limit between two of them would make passes of a
        # size that has no graph, so the limit moves from one bucket to the next.
        self.sizes = tuple(sorted(s for s in sizes if s <= max_batch))
        self.limit = max_batch
        self.grow_after = grow_after
        self.clock = clock
        self.seconds_per_pass: float | None = None
        self._passes_since_oom = 0

    # ---- admission -------------------------------------------------------------------------

    @property
    def samples(self) -> int:
        return len(self.batch)

    @property
    def free_slots(self) -> int:
        return self.limit - self.samples

    def fits(self, num_samples: int) -> bool:
        """A job fits if its samples fit; a job larger than the limit runs alone (over several
        passes of at most the limit)."""
        return not self.flights or num_samples <= self.free_slots

    def admit(self, job_id: str, token: str, params: JobParams, prepared: Any, *,
              timeout: float | None = None, webhook: dict | None = None,
              retried_out_of_memory: bool = False) -> Flight:
        """Put a job's samples into the batch (raises what `add_samples` raises for bad data)."""
        flight = Flight(job_id=job_id, token=token, params=params, prepared=prepared, started=self.clock(),
                        timeout=timeout, webhook=webhook, retried_out_of_memory=retried_out_of_memory)
        flight.samples = self.runtime.add_samples(self.batch, prepared, params)
        self.flights.append(flight)
        return flight

    def remove(self, flight: Flight) -> None:
        if flight in self.flights:
            self.batch.remove(flight.samples)
            self.flights.remove(flight)

    # ---- one forward pass ------------------------------------------------------------------

    def step(self) -> int:
        """One network evaluation for every unfinished sample; returns how many ran.

        Exceptions from the forward pass propagate: the engine tells out-of-memory (call
        `shrink_after_oom`) from other failures."""
        if not self.flights or all(f.done for f in self.flights):
            return 0
        t0 = self.clock()
        ran = self.runtime.step(self.batch, cap=self.limit)
        if ran:
            seconds = self.clock() - t0
            old = self.seconds_per_pass
            self.seconds_per_pass = seconds if old is None else 0.9 * old + 0.1 * seconds
            self._passes_since_oom += 1
            if self._passes_since_oom >= self.grow_after and self.limit < self.max_batch:
                grown = min(self.max_batch, self.limit + max(1, self.limit // 2))
                if self.sizes:
                    grown = min((s for s in self.sizes if s > self.limit), default=self.max_batch)
                self.limit = grown
                self._passes_since_oom = 0
        return ran

    def _halved(self) -> int:
        half = max(1, min(self.limit, self.samples) // 2)
        return max((s for s in self.sizes if s <= half), default=half) if self.sizes else half

    def finished(self) -> list[Flight]:
        return [f for f in self.flights if f.done]

    def overdue(self) -> list[Flight]:
        now = self.clock()
        return [f for f in self.flights if not f.done and f.timeout is not None and now - f.started > f.timeout]

    def shrink_after_oom(self) -> Shrink:
        """Halve the limit; the newest jobs leave until the rest fits. A job alone in the batch
        stays: its samples run over several smaller passes (the runtime never runs more than the
        limit in one), unless its pass was a single sample already: then it is `too_big`.
        The caller requeues or fails what it is given."""
        self.runtime.release_memory()
        self._passes_since_oom = 0
        if len(self.flights) == 1:
            alone = self.flights[0]
            largest_pass = min(self.limit, self.samples)
            self.limit = self._halved()
            if largest_pass > 1:
                return Shrink(requeue=[], too_big=None)
            self.remove(alone)
            return Shrink(requeue=[], too_big=alone)
        self.limit = self._halved()
        leaving: list[Flight] = []
        while len(self.flights) > 1 and self.samples > self.limit:
            flight = self.flights[-1]
            self.remove(flight)
            leaving.append(flight)
        return Shrink(requeue=leaving, too_big=None)
