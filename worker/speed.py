"""How the worker runs its network: precision, memory layout, batch buckets, CUDA graphs.

Every REPAINT_* speed setting defaults to `auto`, which on CUDA means the fastest setting that
keeps fidelity (measured in docs/gpu.md, fidelity tested in tests/worker/test_speed.py) and on
the CPU means plain float32, as the golden tests run:

| setting | auto on CUDA | auto on CPU |
|---|---|---|
| REPAINT_DTYPE | float16 in the reference's layout for confs with `use_fp16`, else float32 weights | float32 |
| REPAINT_AUTOCAST | bfloat16 (float16 on GPUs without bf16) when the weights are float32 | none |
| REPAINT_BATCH_BUCKETS | 1, 2, 4, ... up to max_batch | off |
| REPAINT_CUDA_GRAPHS | on | (CUDA only) |
| REPAINT_COMPILE | on, in the background (worker.compiling) | off |

Channels-last stays off on both: on an H200 it made every variant slower (0.74x at batch 16 in
bfloat16: cuDNN gains less than GroupNorm loses in that layout).

Buckets: a pass of n samples runs at the smallest bucket >= n, the extra rows copies of the first
one, and only the n real rows are read back. The network treats rows independently (GroupNorm
and attention are per sample), so padding changes no result beyond the rounding of a different
batch size; what it buys is a handful of shapes, so that compiled code (REPAINT_COMPILE: one
static graph per bucket, all compiled in the background before the worker switches to them) and
captured CUDA graphs (REPAINT_CUDA_GRAPHS) are reused instead of being made for every count of
samples in flight. Passes are padded only when such code runs them: an eager pass would only do
more work. The scheduler's limit on samples in flight moves between buckets (halved after running
out of memory, grown back bucket by bucket), and no pass is padded past it. More samples than the
limit (a lone job larger than it) or than the largest bucket run over several passes, each at a
bucket's size, so that no pass ever needs code that was not made before serving.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

import models

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class SpeedPlan:
    dtype: torch.dtype               # the weights; half means the reference's layout (torso convs only)
    autocast: torch.dtype | None     # torch.autocast around every forward pass, or None
    channels_last: bool
    buckets: tuple[int, ...]         # batch sizes passes are padded to; () = no padding
    cuda_graphs: bool
    compile: bool

    def describe(self) -> str:
        """One log line."""
        name = str(self.dtype).removeprefix("torch.")
        autocast = "none" if self.autocast is None else str(self.autocast).removeprefix("torch.")
        buckets = ",".join(map(str, self.buckets)) or "off"
        return (f"weights {name}, autocast {autocast}, channels-last {'on' if self.channels_last else 'off'}, "
                f"batch buckets {buckets}, CUDA graphs {'on' if self.cuda_graphs else 'off'}, "
                f"compile {'on' if self.compile else 'off'}")


def resolve_dtype(name: str, device: torch.device, preset: models.Preset) -> torch.dtype:
    """REPAINT_DTYPE as a dtype for `models.load_preset`. float16 (the default on CUDA for confs
    with `use_fp16`, as the reference samples them) and bfloat16 mean the reference's layout:
    only the UNet torso's convolutions in half precision, the rest float32."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" and preset.conf.get("use_fp16") else torch.float32
    return DTYPES[name]


def resolve_autocast(name: str, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """REPAINT_AUTOCAST. `auto` is bfloat16 autocast on CUDA for float32 weights (half weights
    already run in the reference's layout), float16 where the GPU has no bfloat16, none on CPU."""
    if name == "none":
        return None
    if name != "auto":
        return DTYPES[name]
    if device.type != "cuda" or dtype != torch.float32:
        return None
    # Ask the worker's GPU (cuda:N), not the current one.
    with torch.cuda.device(device) if device.index is not None else contextlib.nullcontext():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def parse_buckets(text: str, *, max_batch: int, device: torch.device) -> tuple[int, ...]:
    """REPAINT_BATCH_BUCKETS: `auto` (powers of two up to max_batch on CUDA, off on CPU), `off`,
    or sizes such as `1,2,4,8,16`; max_batch is always a bucket when buckets are on, so that a
    full batch is never padded past it."""
    text = text.strip().lower()
    if text == "off" or (text == "auto" and device.type != "cuda"):
        return ()
    if text == "auto":
        sizes = {1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch}
    else:
        try:
            sizes = {int(part) for part in text.split(",") if part.strip()}
        except ValueError:
            raise models.ConfigError(f"REPAINT_BATCH_BUCKETS must be 'auto', 'off' or sizes such as 1,2,4,8; "
                                     f"got {text!r}") from None
        if not sizes or min(sizes) < 1:
            raise models.ConfigError(f"REPAINT_BATCH_BUCKETS sizes must be positive; got {text!r}")
        sizes = {s for s in sizes if s <= max_batch}
    return tuple(sorted(sizes | {max_batch}))


def bucket_for(n: int, buckets: tuple[int, ...], cap: int | None = None) -> int:
    """The batch size a pass of n samples runs at: the smallest bucket >= n (and <= cap), else n.
    `passes_for` never asks for an n above the largest usable bucket."""
    for size in buckets:
        if size >= n and (cap is None or size <= cap):
            return size
    return n


def passes_for(n: int, buckets: tuple[int, ...], cap: int | None = None) -> list[tuple[int, int]]:
    """How a forward pass over n samples runs: (samples, batch size) per pass, in order.

    No pass holds more samples than `cap` (the scheduler's limit: a lone job larger than it, or
    one left after running out of memory, runs over several passes instead of one that may not
    fit), nor more than the largest bucket at or under the cap, so that every pass runs at a
    bucket's size: compiled code and CUDA graphs exist for those only, and a pass of another size
    would compile or capture on the serving loop."""
    usable = [b for b in buckets if cap is None or b <= cap]
    most = max(usable) if usable else cap
    if most is None or n <= most:
        return [(n, bucket_for(n, buckets, cap))] if n else []
    out = []
    for start in range(0, n, most):
        rows = min(most, n - start)
        out.append((rows, bucket_for(rows, buckets, cap)))
    return out


def plan_for(settings, device: torch.device, preset: models.Preset, max_batch: int) -> SpeedPlan:
    cuda = device.type == "cuda"
    dtype = resolve_dtype(settings.dtype, device, preset)
    if settings.cuda_graphs and not cuda:
        raise models.ConfigError("REPAINT_CUDA_GRAPHS needs a CUDA device (REPAINT_DEVICE)")
    return SpeedPlan(dtype=dtype, autocast=resolve_autocast(settings.autocast, device, dtype),
                     channels_last=settings.channels_last,
                     buckets=parse_buckets(settings.batch_buckets, max_batch=max_batch, device=device),
                     cuda_graphs=cuda if settings.cuda_graphs is None else settings.cuda_graphs,
                     compile=cuda if settings.compile is None else settings.compile)


class BucketedPasses:
    """A network called at bucketed batch sizes, in several passes where one would exceed the
    largest usable bucket or the cap (see the module's docstring and `passes_for`). Not an
    nn.Module: it wraps whatever the runtime serves with (eager, compiled, graphed)."""

    def __init__(self, net, buckets: tuple[int, ...], cap: int | None = None):
        self.net, self.buckets, self.cap = net, buckets, cap

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        passes = passes_for(x.shape[0], self.buckets, self.cap)
        if len(passes) == 1:
            return self._padded(x, t, y, passes[0][1])
        outs, start = [], 0
        for rows, size in passes:
            end = start + rows
            outs.append(self._padded(x[start:end], t[start:end], None if y is None else y[start:end], size))
            start = end
        return torch.cat(outs)

    def _padded(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, size: int) -> torch.Tensor:
        n = x.shape[0]
        if size == n:
            return self.net(x, t, y)
        extra = size - n
        x = torch.cat([x, x[:1].expand(extra, *x.shape[1:])])
        t = torch.cat([t, t[:1].expand(extra)])
        if y is not None:
            y = torch.cat([y, y[:1].expand(extra)])
        return self.net(x, t, y)[:n]
