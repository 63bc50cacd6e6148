"""REPAINT_COMPILE: compile the UNet on a background thread while the eager one serves.

The worker takes jobs at once with the eager network. A daemon thread compiles the same
module (`torch.compile`, inductor, weights frozen into the graph as constants) and warms it up with forward passes at the shapes the worker feeds it, so that no
compilation happens inside a served pass. When the warm-up succeeds, and its output agrees
with the eager network's, `ready` holds the compiled network and the runtime uses it from its
next pass on; a failure is logged with its reason and the worker keeps serving eagerly.

The state, for logs and the worker's report: "eager" (compilation off), "compiling",
"compiled", "failed: <reason>".

Tracing in one thread reaches the others: while a torch.fx tracer runs it patches
`nn.Module.__call__` for the whole process, and a module called from another thread in that
window goes through the tracer (`torch.fx.symbolic_trace`, which inductor calls during lowering,
then raises "module is not installed as a submodule"). So while compiling, the runtime calls
its eager networks through `EagerWhileCompiling`, which runs a pass again when it failed inside
torch.fx code.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from typing import Callable, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

EAGER, COMPILING, COMPILED, FAILED = "eager", "compiling", "compiled", "failed"

# (batch size) -> the network's positional inputs at that batch size: (x, timesteps[, y]).
ExampleInputs = Callable[[int], tuple]
CompileFn = Callable[[nn.Module], nn.Module]


def compile_network(net: nn.Module) -> nn.Module:
    """torch.compile with inductor, weights frozen into the graph (inference only).

    Batch sizes vary from pass to pass: dynamo specialises the first shape it sees and, at the
    next batch size, recompiles once with the batch dimension symbolic (automatic dynamic
    shapes); the warm-up runs both, so served passes of any batch size find compiled code."""
    return torch.compile(net, options={"freezing": True})


def compile_per_batch_size(net: nn.Module, sizes: int) -> nn.Module:
    """torch.compile with static shapes: one graph per batch size, for workers whose passes are
    padded to a few batch buckets (worker.speed). Static graphs are what bench.gpu measured
    (docs/gpu.md); the warm-up compiles every bucket, so no served pass compiles."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), sizes + 2))
    return torch.compile(net, dynamic=False, options={"freezing": True})


def warm_up_batch_sizes(max_batch: int, buckets: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Every bucket when passes are padded to buckets; else batch 1 (dynamo specialises size-1
    dimensions) and 2 (the symbolic batch graph)."""
    if buckets:
        return tuple(buckets)
    return (1,) if max_batch <= 1 else (1, 2)


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """One line: the type and the first lines of the message (inductor's errors run long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (f"{type(exc).__name__}: " + " ".join(lines[:2]) if lines else type(exc).__name__)[:limit]


def raised_in_fx(exc: BaseException) -> bool:
    """Whether the error came out of torch.fx code: a call hijacked by another thread's tracer."""
    return any("/torch/fx/" in frame.filename.replace("\\", "/")
               for frame in traceback.extract_tb(exc.__traceback__))


class EagerWhileCompiling:
    """An eager network (UNet or classifier) as served while the compiler traces: a call that
    failed inside torch.fx code is made again (a forward pass is a pure function of its inputs);
    any other error, out of memory included, is raised as it is. Not an nn.Module: its own
    call must not go through the patched `nn.Module.__call__`."""

    def __init__(self, net: nn.Module, *, attempts: int = 5, pause: float = 0.01):
        self.net, self.attempts, self.pause = net, attempts, pause

    def __call__(self, *args, **kwargs):
        for attempt in range(1, self.attempts + 1):
            try:
                return self.net(*args, **kwargs)
            except Exception as exc:
                if attempt == self.attempts or not raised_in_fx(exc):
                    raise
                log.warning("compile: a forward pass ran into the compiler's tracing (%s); running it again",
                            describe_error(exc))
                time.sleep(self.pause * attempt)


class BackgroundCompile:
    """Compiles `net` on a daemon thread; `ready` is the warm compiled network, else None."""

    def __init__(self, net: nn.Module, example_inputs: ExampleInputs, *, batch_sizes: Sequence[int],
                 compile_fn: CompileFn | None = None, context: Callable[[], contextlib.AbstractContextManager]
                 = contextlib.nullcontext, atol: float = 1e-2, finish: Callable | None = None):
        self.net = net
        self.example_inputs = example_inputs
        self.batch_sizes = tuple(batch_sizes)
        self.compile_fn = compile_fn or compile_network
        self.context = context  # the served passes' context (autocast), entered for the warm-up too
        self.atol = atol
        # (compiled network) -> what to serve: the runtime captures its CUDA graphs here, on this
        # thread, so that nothing is captured between two served passes.
        self.finish = finish
        self.ready: Callable | None = None
        self.seconds: float | None = None
        self._state = EAGER
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="compile-unet", daemon=True)

    @property
    def state(self) -> str:
        return self._state

    def start(self) -> None:
        self._set_state(COMPILING)
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has finished (compiled or failed)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set_state(self, state: str) -> None:
        with self._lock:
            self._state = state

    def _run(self) -> None:
        t0 = time.perf_counter()
        log.info("compile: compiling the network in the background; serving eagerly meanwhile")
        try:
            compiled = self.compile_fn(self.net)
            self._warm_up(compiled)
            if self.finish is not None:
                compiled = self.finish(compiled)
        except Exception as exc:  # never the worker's end: it keeps its eager network
            reason = describe_error(exc)
            self._set_state(f"{FAILED}: {reason}")
            log.warning("compile: failed after %.1fs, serving eagerly: %s", time.perf_counter() - t0, reason,
                        exc_info=log.isEnabledFor(logging.DEBUG))
            return
        self.seconds = time.perf_counter() - t0
        self.ready = compiled  # one attribute write: the runtime reads it at the start of each pass
        self._set_state(COMPILED)
        log.info("compile: compiled and warmed up in %.1fs (batch sizes %s); the next forward pass uses it",
                 self.seconds, ", ".join(map(str, self.batch_sizes)))

    def _warm_up(self, compiled: nn.Module) -> None:
        """Forward passes at every warm-up batch size, as the runtime runs them; the last one's
        output is checked against the eager network's."""
        with torch.inference_mode(), self.context():
            for n in self.batch_sizes:
                inputs = self.example_inputs(n)
                out = compiled(*inputs)
            expected = self.net(*inputs)
        difference = (out.float() - expected.float()).abs().max().item()
        if not difference <= self.atol:  # also NaN
            raise RuntimeError(f"compiled output differs from eager by {difference:.3g} (> {self.atol:g})")
