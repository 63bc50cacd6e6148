"""`python -m tests.fault_worker [--oom-above N] [--fail-passes] [--hang-seconds S]`: the real
worker (worker.main) on a device that misbehaves, for the fault tests.

The production worker knows nothing of these faults: this entry point hands `worker.main.main`
a Runtime whose forward pass (`Runtime.step`) first plays the chosen fault, then runs as usual.
The worker's self-test pass is left alone, as a device that breaks after the start would.
tests.procs.WorkerProcess(..., faults=["--oom-above", "2"]) starts one.

  --oom-above N     out of memory when a pass would hold more than N samples (0: every pass)
  --fail-passes     every pass fails (a device that broke after the worker's self-test)
  --hang-seconds S  every pass first hangs S seconds (a stuck device)
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass

import torch

import models
from worker import main as worker_main
from worker.runtime import Runtime
from worker.settings import WorkerSettings


@dataclass(frozen=True)
class Faults:
    oom_above: int | None = None
    fail_passes: bool = False
    hang_seconds: float | None = None


class FaultyRuntime(Runtime):
    """A Runtime whose forward passes first play `faults`."""

    def __init__(self, settings: WorkerSettings, *, faults: Faults):
        super().__init__(settings)
        self.faults = faults

    def step(self, batch: models.SampleBatch, cap: int | None = None) -> int:
        limit = self.faults.oom_above
        live = sum(not s.done for s in batch.states)
        if limit is not None and live and min(live, cap or live) > limit:  # passes hold at most `cap`
            raise torch.OutOfMemoryError(f"simulated: more than {limit} samples in one forward pass")
        if self.faults.fail_passes:
            raise RuntimeError("simulated: the device failed (tests.fault_worker --fail-passes)")
        if self.faults.hang_seconds:
            time.sleep(self.faults.hang_seconds)
        return super().step(batch, cap)


def parse(argv: list[str] | None = None) -> Faults:
    parser = argparse.ArgumentParser(prog="python -m tests.fault_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--oom-above", type=int, metavar="N")
    parser.add_argument("--fail-passes", action="store_true")
    parser.add_argument("--hang-seconds", type=float, metavar="S")
    args = parser.parse_args(argv)
    return Faults(oom_above=args.oom_above, fail_passes=args.fail_passes, hang_seconds=args.hang_seconds)


if __name__ == "__main__":
    worker_main.main(make_runtime=functools.partial(FaultyRuntime, faults=parse()))
