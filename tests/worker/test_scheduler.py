"""The batching scheduler alone: a fake model runtime and a fake clock, no Redis, no torch."""

from __future__ import annotations

import pytest

from models.sampler_settings import RePaintSettings
from worker.params import JobParams
from worker.scheduler import BatchScheduler


class OutOfMemory(Exception):
    pass


class FakeSample:
    def __init__(self, total: int):
        self.evaluations, self.total_evaluations = 0, total

    @property
    def done(self) -> bool:
        return self.evaluations >= self.total_evaluations


class FakeBatch:
    def __init__(self):
        self.states: list[FakeSample] = []

    def __len__(self):
        return len(self.states)

    def remove(self, leaving):
        self.states = [s for s in self.states if s not in leaving]


class FakeRuntime:
    """Each pass takes `pass_seconds` on the fake clock; more than `oom_above` samples run out of memory."""

    def __init__(self, clock, pass_seconds=0.1, oom_above=None):
        self.clock, self.pass_seconds, self.oom_above = clock, pass_seconds, oom_above
        self.passes: list[int] = []
        self.caps: list[int | None] = []
        self.released = 0

    def new_batch(self):
        return FakeBatch()

    def add_samples(self, batch, prepared, params: JobParams):
        if prepared == "bad":
            raise ValueError("bad data")
        samples = [FakeSample(params.evaluations) for _ in range(params.num_samples)]
        batch.states.extend(samples)
        return samples

    def step(self, batch, cap=None) -> int:
        self.caps.append(cap)
        live = [s for s in batch.states if not s.done]
        # The real runtime never runs more than `cap` samples in one pass (worker.speed.passes_for).
        largest_pass = len(live) if cap is None else min(len(live), cap)
        if self.oom_above is not None and largest_pass > self.oom_above:
            raise OutOfMemory()
        for s in live:
            s.evaluations += 1
        self.clock.now += self.pass_seconds
        self.passes.append(len(live))
        return len(live)

    def release_memory(self):
        self.released += 1


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def params(steps=10, num_samples=1) -> JobParams:
    return JobParams(seed=0, sampler=RePaintSettings(steps=steps, jump_length=steps, jump_n_sample=1), num_samples=num_samples)


@pytest.fixture()
def clock():
    return Clock()


def test_jobs_join_and_leave_between_passes(clock):
    rt = FakeRuntime(clock)
    s = BatchScheduler(rt, max_batch=8, clock=clock)
    a = s.admit("a", "t", params(steps=3), "img")
    s.step()
    b = s.admit("b", "t", params(steps=2, num_samples=2), "img")
    s.step()
    s.step()
    assert s.finished() == [a, b] and rt.passes == [1, 3, 3]
    s.remove(a)
    s.remove(b)
    assert s.samples == 0 and s.step() == 0


def test_admission_respects_the_limit_but_a_large_job_runs_alone(clock):
    s = BatchScheduler(FakeRuntime(clock), max_batch=4, clock=clock)
    assert s.fits(6)  # nothing in flight: a job larger than the limit runs alone
    s.admit("big", "t", params(num_samples=6), "img")
    assert not s.fits(1)
    s.remove(s.flights[0])
    s.admit("a", "t", params(num_samples=3), "img")
    assert s.fits(1) and not s.fits(2)


def test_bad_data_raises_at_admission_and_leaves_the_batch_alone(clock):
    s = BatchScheduler(FakeRuntime(clock), max_batch=4, clock=clock)
    s.admit("good", "t", params(), "img")
    with pytest.raises(ValueError):
        s.admit("bad", "t", params(), "bad")
    assert [f.job_id for f in s.flights] == ["good"] and s.samples == 1


def test_timeouts_count_from_admission_on_the_clock(clock):
    s = BatchScheduler(FakeRuntime(clock, pass_seconds=1.0), max_batch=4, clock=clock)
    slow = s.admit("slow", "t", params(steps=100), "img", timeout=5)
    s.admit("free", "t", params(steps=100), "img")
    for _ in range(5):
        s.step()
    assert s.overdue() == []
    s.step()
    assert s.overdue() == [slow]


def test_seconds_per_pass_is_measured(clock):
    s = BatchScheduler(FakeRuntime(clock, pass_seconds=0.25), max_batch=4, clock=clock)
    s.admit("a", "t", params(steps=20), "img")
    for _ in range(5):
        s.step()
    assert s.seconds_per_pass == pytest.approx(0.25)


def test_out_of_memory_halves_the_limit_and_the_newest_jobs_leave(clock):
    rt = FakeRuntime(clock, oom_above=2)
    s = BatchScheduler(rt, max_batch=8, grow_after=1000, clock=clock)
    flights = [s.admit(str(i), "t", params(steps=50), "img") for i in range(4)]
    with pytest.raises(OutOfMemory):
        s.step()
    shrink = s.shrink_after_oom()
    assert s.limit == 2 and shrink.requeue == flights[:1:-1] and shrink.too_big is None
    assert [f.job_id for f in s.flights] == ["0", "1"] and rt.released == 1
    assert s.step() == 2


def test_a_lone_job_larger_than_memory_allows_goes_on_in_smaller_passes(clock):
    rt = FakeRuntime(clock, oom_above=2)
    s = BatchScheduler(rt, max_batch=8, grow_after=1000, clock=clock)
    big = s.admit("big", "t", params(num_samples=4), "img")
    with pytest.raises(OutOfMemory):
        s.step()
    shrink = s.shrink_after_oom()
    assert shrink.too_big is None and shrink.requeue == [] and s.flights == [big] and s.limit == 2
    assert s.step() == 4 and rt.caps[-1] == 2  # four samples, in passes of at most two


def test_a_job_whose_single_sample_does_not_fit_is_too_big(clock):
    rt = FakeRuntime(clock, oom_above=0)
    s = BatchScheduler(rt, max_batch=8, clock=clock)
    big = s.admit("big", "t", params(num_samples=4), "img")
    for _ in range(2):  # 4 -> passes of 2 -> passes of 1: still out of memory
        with pytest.raises(OutOfMemory):
            s.step()
        shrink = s.shrink_after_oom()
    assert s.limit == 1
    with pytest.raises(OutOfMemory):
        s.step()
    shrink = s.shrink_after_oom()
    assert shrink.too_big is big and shrink.requeue == [] and s.flights == []


def test_the_limit_grows_back_after_passes_without_running_out_of_memory(clock):
    rt = FakeRuntime(clock, oom_above=None)
    s = BatchScheduler(rt, max_batch=8, grow_after=10, clock=clock)
    for i in range(8):
        s.admit(str(i), "t", params(steps=1000), "img")
    rt.oom_above = 3
    with pytest.raises(OutOfMemory):
        s.step()
    s.shrink_after_oom()
    assert s.limit == 4 and s.samples == 4
    rt.oom_above = None  # memory freed elsewhere
    limits = []
    for _ in range(40):
        s.step()
        limits.append(s.limit)
    assert limits[9] == 6 and limits[19] == 8 and max(limits) == 8


def test_with_batch_buckets_the_limit_moves_between_buckets_and_caps_the_padding(clock):
    """A limit between two buckets would make passes of a size no graph was made for: after out
    of memory it halves to a bucket, grows back one bucket at a time, and every pass is told it
    (the runtime pads no pass past it)."""
    rt = FakeRuntime(clock, oom_above=None)
    s = BatchScheduler(rt, max_batch=16, grow_after=5, clock=clock, sizes=(1, 2, 4, 8, 16))
    for i in range(12):
        s.admit(str(i), "t", params(steps=1000), "img")
    rt.oom_above = 11
    with pytest.raises(OutOfMemory):
        s.step()
    s.shrink_after_oom()
    assert s.limit == 4 and s.samples == 4  # half of 12 is 6: the bucket below is 4
    rt.oom_above = None
    limits = []
    for _ in range(10):
        s.step()
        limits.append(s.limit)
    assert limits[4] == 8 and limits[9] == 16  # 4 -> 8 -> 16, never 6 or 12
    assert rt.caps[-10:] == [4, 4, 4, 4, 4, 8, 8, 8, 8, 8]
