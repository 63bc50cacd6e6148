"""REPAINT_CUDA_GRAPHS: replay a captured CUDA graph of the network instead of launching it.

A forward pass of the UNet is a few hundred kernel launches; at small batch sizes the GPU
finishes each kernel before the CPU has launched the next, so the pass costs the launches, not
the arithmetic. A CUDA graph records the pass once per input shape and replays it with one
launch. One graph per (batch size, dtype, labels or not), all in one memory pool; batch buckets
(worker.speed) keep the number of shapes small.

The worker captures every shape it will serve before serving it (`capture_all`: at start for the
eager network, on the compile thread for the compiled one), and a served pass of a shape without a
graph runs uncaptured: a capture (warm-up passes, then the recording) never happens between two
passes of live jobs. Capturing on first use (`capture_on_call`) is for scripts and benchmarks.

Replays read their inputs from static buffers and write a static output: a call copies its
inputs in, replays, and returns a copy of the output, so callers never hold a buffer the next
replay overwrites. A capture that fails for a reason other than running out of memory is logged
and the network is called eagerly from then on (a slower pass, never a wrong or failed one).
Autocast around a capture must not cache its casts (`cache_enabled=False`, as the runtime's
autocast does): a cached cast made outside the capture would be freed under the graph.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)


class GraphedNetwork:
    def __init__(self, net: Callable, *, warm_up: int = 2, capture_on_call: bool = True):
        self.net = net
        self.warm_up = warm_up
        self.capture_on_call = capture_on_call
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None
        self.failed: str | None = None
        self.uncaptured: set[tuple] = set()  # shapes served without a graph (logged once each)

    def capture_all(self, inputs_for: Callable[[int], tuple], sizes, context: Callable = None) -> list[int]:
        """Capture a graph for each batch size in `sizes` (inputs as `inputs_for(n)` makes them,
        inside `context()`, the served passes' autocast); returns the sizes captured. Stops at the
        first failure: out of memory leaves the larger sizes uncaptured (they run plainly), any
        other failure turns graphs off (`failed`)."""
        done = []
        with torch.inference_mode(), (context or contextlib.nullcontext)():
            for n in sorted(sizes):
                inputs = inputs_for(n)
                if inputs[0].device.type != "cuda":
                    return done
                x, t, y = (*inputs, None)[:3]
                with torch.cuda.device(x.device):
                    try:
                        if self._capture(self._key(x, t, y), x, t, y) is None:
                            return done
                    except torch.OutOfMemoryError as exc:
                        log.warning("CUDA graphs: out of memory capturing batch %d (%s); larger batches run "
                                    "without a graph", n, str(exc).splitlines()[0] if str(exc) else "")
                        return done
                done.append(n)
        return done

    @staticmethod
    def _key(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> tuple:
        return (tuple(x.shape), x.dtype, t.dtype, None if y is None else y.dtype)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.failed is not None or x.device.type != "cuda":
            return self.net(x, t, y)
        # Capture and replay on the input's GPU (REPAINT_DEVICE=cuda:N): torch.cuda.graph makes its
        # capture stream on the current device.
        with torch.cuda.device(x.device):
            key = self._key(x, t, y)
            entry = self.graphs.get(key)
            if entry is None and not self.capture_on_call:
                if key not in self.uncaptured:
                    self.uncaptured.add(key)
                    log.warning("CUDA graphs: no graph for batch %d; such passes run without one", x.shape[0])
                return self.net(x, t, y)
            if entry is None:
                entry = self._capture(key, x, t, y)
                if entry is None:
                    return self.net(x, t, y)
            graph, static_x, static_t, static_y, static_out = entry
            static_x.copy_(x)
            static_t.copy_(t)
            if y is not None:
                static_y.copy_(y)
            graph.replay()
            return static_out.clone()

    def _capture(self, key: tuple, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None):
        static_x, static_t = x.clone(), t.clone()
        static_y = None if y is None else y.clone()
        stream = torch.cuda.current_stream(x.device)
        try:
            # Warm-up on a side stream, as capture requires: lazy initialisations (cuDNN/cuBLAS
            # handles, autotuning) must not happen inside the capture.
            side = torch.cuda.Stream(device=x.device)
            side.wait_stream(stream)
            with torch.cuda.stream(side):
                for _ in range(self.warm_up):
                    self.net(static_x, static_t, static_y)
            stream.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the compile thread captures while the serving thread runs passes
            # (allocations there are not part of this capture and must not invalidate it).
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                static_out = self.net(static_x, static_t, static_y)
        except Exception as exc:  # noqa: BLE001 - any capture failure: serve eagerly instead
            # A capture that ends in error can leave its stream current (torch.cuda.graph's exit
            # stops at the failed capture_end): the passes that follow must run on the usual one.
            torch.cuda.set_stream(stream)
            if out_of_memory(exc):
                # Not this network's fault: the scheduler shrinks the batch and a later pass
                # captures at the smaller size. (Ending a capture that ran out of memory raises a
                # RuntimeError whose context is the out-of-memory error.)
                raise torch.OutOfMemoryError(str(exc)) from exc
            self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            log.warning("CUDA graph capture failed (%s); serving without CUDA graphs", self.failed)
            torch.cuda.synchronize(x.device)
            return None
        if self.pool is None:
            self.pool = graph.pool()
        entry = (graph, static_x, static_t, static_y, static_out)
        self.graphs[key] = entry
        log.info("captured a CUDA graph for batch %d (%d graphs)", x.shape[0], len(self.graphs))
        return entry

    def reset(self) -> None:
        """Drop every graph and its memory (after running out of memory); `capture_all` again,
        between jobs, brings them back."""
        self.graphs.clear()
        self.uncaptured.clear()
        self.pool = None


def out_of_memory(exc: BaseException | None) -> bool:
    """Whether an error is, or was raised while handling, running out of device memory."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False
