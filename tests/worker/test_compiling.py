"""REPAINT_COMPILE: the worker serves eagerly at once, compiles in the background, switches when warm."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from models.sampler_settings import RePaintSettings
from tests.conftest import face_and_mask, png_bytes
import models
from worker.compiling import EagerWhileCompiling
from worker.engine import BatchEngine
from worker.params import JobParams
from worker.runtime import Runtime
from worker.settings import WorkerSettings

PARAMS = JobParams(seed=1, sampler=RePaintSettings(steps=5, jump_length=5, jump_n_sample=1), num_samples=2)


def job():
    image, mask = face_and_mask(seed=3)
    return png_bytes(image), png_bytes(mask)


class Counting(nn.Module):
    """Stands for a compiled network: the eager one, counting its calls."""

    def __init__(self, net: nn.Module, shift: float = 0.0):
        super().__init__()
        self.inner, self.shift, self.calls = net, shift, 0

    def forward(self, *inputs):
        self.calls += 1
        return self.inner(*inputs) + self.shift


class GatedCompile:
    """A compile function that holds the thread until `go` is set: compilation that is slow."""

    def __init__(self):
        self.go = threading.Event()
        self.compiled: Counting | None = None

    def __call__(self, net: nn.Module) -> nn.Module:
        assert self.go.wait(60)
        self.compiled = Counting(net)
        return self.compiled


def compiling_runtime(compile_fn, **settings) -> Runtime:
    return Runtime(WorkerSettings(model="tiny", device="cpu", compile=True, **settings), compile_fn=compile_fn)


def test_without_compile_the_state_is_eager():
    runtime = Runtime(WorkerSettings(model="tiny", device="cpu"))
    assert runtime.compiler is None and runtime.compile_state == "eager" and runtime.network() is runtime.net


def test_jobs_run_eagerly_while_compiling_then_on_the_compiled_network(caplog):
    caplog.set_level(logging.INFO, logger="worker.compiling")
    gate = GatedCompile()
    runtime = compiling_runtime(gate)
    assert runtime.compile_state == "compiling"
    assert isinstance(runtime.network(), EagerWhileCompiling) and runtime.network().net is runtime.net
    image, mask = job()
    eager = runtime.inpaint(image, mask, PARAMS)  # served now, compilation still held
    assert len(eager) == 2 and runtime.compile_state == "compiling" and gate.compiled is None
    gate.go.set()
    assert runtime.compiler.join(60)
    assert runtime.compile_state == "compiled"
    compiled = runtime.network()
    assert compiled is gate.compiled
    warm_up = compiled.calls
    assert warm_up == 2  # batch sizes 1 and 2, before the switch
    assert runtime.inpaint(image, mask, PARAMS) == eager  # same network underneath: same bytes
    assert compiled.calls == warm_up + 5  # every pass of the second job went through it
    messages = [r.getMessage() for r in caplog.records]
    assert any("serving eagerly meanwhile" in m for m in messages)
    assert any("compiled and warmed up" in m for m in messages)


def test_a_pass_hijacked_by_another_threads_tracer_runs_again(caplog):
    """While a torch.fx tracer runs (inductor calls one while lowering), nn.Module.__call__ is
    the tracer's in every thread: an eager pass then fails. The guard runs it again."""
    net = models.load_preset("tiny").unet
    inputs = (torch.randn(2, 3, 32, 32), torch.tensor([3, 700]))
    with torch.inference_mode():
        expected = net(*inputs)
    inside, release = threading.Event(), threading.Event()

    def traced(x):
        inside.set()
        release.wait(10)
        return x

    tracer = threading.Thread(target=torch.fx.symbolic_trace, args=(traced,))
    tracer.start()
    try:
        assert inside.wait(10)
        with pytest.raises(NameError, match="not installed as a submodule"):
            net(*inputs)
        threading.Timer(0.1, release.set).start()
        with torch.inference_mode():
            out = EagerWhileCompiling(net, pause=0.05)(*inputs)
    finally:
        release.set()
        tracer.join(10)
    assert torch.equal(out, expected)
    assert any("ran into the compiler's tracing" in r.getMessage() for r in caplog.records)


def test_the_guard_raises_other_errors_at_once():
    calls = []

    def broken(*inputs):
        calls.append(1)
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        EagerWhileCompiling(broken)(torch.zeros(1))
    assert len(calls) == 1


def test_warm_up_inputs_are_what_the_sampler_passes():
    runtime = Runtime(WorkerSettings(model="tiny", device="cpu"))
    x, t = runtime._example_inputs(3)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert t.shape == (3,) and t.dtype == torch.int64 and int(t.max()) < 1000


def test_a_failing_compile_leaves_eager_serving(caplog):
    def broken(net):
        raise RuntimeError("backend='inductor' raised:\nCppCompileError: C++ compile error\n" + "detail\n" * 50)

    runtime = compiling_runtime(broken)
    assert runtime.compiler.join(30)
    assert runtime.compile_state == ("failed: RuntimeError: backend='inductor' raised: "
                                     "CppCompileError: C++ compile error")
    assert runtime.network() is runtime.net  # no compiler tracing any more: no guard
    assert any(r.levelno == logging.WARNING and "serving eagerly" in r.getMessage() for r in caplog.records)
    image, mask = job()
    assert len(runtime.inpaint(image, mask, PARAMS)) == 2


def test_after_a_failed_compile_the_eager_network_s_graphs_are_captured_between_jobs(monkeypatch):
    """With REPAINT_CUDA_GRAPHS, the compiled network's graphs were to be captured on the compile
    thread; once the compile fails, the eager network serves for good, and its graphs are captured
    at the next moment no job is in the batch (not between two passes). Stood in for on the CPU:
    the device reads as CUDA and the capture is recorded."""
    import dataclasses

    import worker.runtime as runtime_module

    captured = []

    class Recorded:
        def __init__(self, net, capture_on_call=True):
            self.net, self.graphs, self.failed = net, {}, None

        def capture_all(self, example_inputs, sizes, context):
            captured.append(tuple(sizes))
            self.graphs = {n: object() for n in sizes}
            return list(sizes)

    monkeypatch.setattr(runtime_module, "GraphedNetwork", Recorded)
    runtime = compiling_runtime(lambda net: (_ for _ in ()).throw(RuntimeError("no compiler here")))
    assert runtime.compiler.join(30) and runtime.compile_state.startswith("failed")
    runtime.speed = dataclasses.replace(runtime.speed, cuda_graphs=True)
    monkeypatch.setattr(runtime, "device", torch.device("cuda"))
    assert runtime._graphed is None  # nothing captured until the batch is empty
    runtime.between_jobs()
    assert isinstance(runtime._graphed, Recorded) and runtime._graphed.net is runtime.net
    assert captured == [runtime._pass_sizes()]
    runtime.between_jobs()
    assert len(captured) == 1  # captured once, not at every empty batch


def test_a_compiled_network_that_disagrees_with_eager_is_not_used():
    runtime = compiling_runtime(lambda net: Counting(net, shift=1.0))
    assert runtime.compiler.join(30)
    assert runtime.compile_state.startswith("failed: RuntimeError: compiled output differs from eager by 1")
    assert runtime.network() is runtime.net


def test_what_the_compiled_network_needs_before_serving_is_done_on_the_compile_thread():
    """CUDA graphs of the compiled network are captured by `finish`, on the compile thread, after
    the warm-up: `ready` (what the next served pass uses) is only set once that is done."""
    from worker.compiling import BackgroundCompile

    seen = {}

    def finish(compiled):
        seen["thread"] = threading.current_thread().name
        seen["warm"] = compiled.calls  # the warm-up passes ran first
        return SimpleNamespace(net=compiled)

    net = nn.Linear(2, 2)
    compiler = BackgroundCompile(net, lambda n: (torch.randn(n, 2),), batch_sizes=(1, 2),
                                 compile_fn=Counting, finish=finish)
    compiler.start()
    assert compiler.join(30) and compiler.state == "compiled"
    assert seen == {"thread": "compile-unet", "warm": 2} and compiler.ready.net.inner is net


def test_the_first_pass_gets_the_plain_stall_timeout():
    """No served pass compiles any more: the first one has the same deadline as the others."""
    engine = SimpleNamespace(scheduler=SimpleNamespace(seconds_per_pass=None),
                             settings=SimpleNamespace(stall_timeout=120.0))
    assert BatchEngine.stall_deadline(engine) == 120.0
    engine.scheduler.seconds_per_pass = 10.0
    assert BatchEngine.stall_deadline(engine) == 200.0


@pytest.mark.slow
def test_real_compile_finishes_in_the_background_and_matches_eager():
    """torch.compile (inductor, frozen weights) of the tiny preset: the worker serves before it
    is done; afterwards every batch size up to max_batch runs without recompiling and agrees
    with the eager network. 0.5 to 5 minutes on a 2-core CPU (two graphs: batch 1, and batch N;
    faster with a warm inductor cache)."""
    from torch._dynamo.utils import counters

    started = time.monotonic()
    runtime = Runtime(WorkerSettings(model="tiny", device="cpu", compile=True, max_batch=4))
    image, mask = job()
    assert len(runtime.inpaint(image, mask, PARAMS)) == 2
    served_after = time.monotonic() - started
    served = 1
    while runtime.compile_state == "compiling" and time.monotonic() - started < 600:
        runtime.inpaint(image, mask, PARAMS)  # serving without a pause, through the tracing
        served += 1
    assert runtime.compiler.join(600), "compilation did not finish in 10 minutes"
    assert runtime.compile_state == "compiled", runtime.compile_state
    assert served_after < runtime.compiler.seconds  # the job did not wait for compilation
    compiled = runtime.network()
    assert compiled is not runtime.net
    graphs = counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        for n in range(1, runtime.max_batch + 1):
            inputs = runtime._example_inputs(n)
            torch.testing.assert_close(compiled(*inputs), runtime.net(*inputs), atol=1e-4, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs  # no compilation in a served pass
    assert len(runtime.inpaint(image, mask, PARAMS)) == 2
