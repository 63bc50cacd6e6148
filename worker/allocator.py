"""glibc's malloc, set for what each process allocates: the API returns large blocks to the OS,
the worker keeps the blocks of its forward passes for the next pass.

glibc serves blocks above its mmap threshold (128 KiB at start) with mmap, and unmaps them when
freed. The first time such a block is freed, it raises the threshold to that block's size (up to
32 MiB on 64-bit) and the trim threshold to twice that, and serves later blocks from its arenas,
which keep freed memory. What a process's speed and peak memory are then depends on which large
block happened to be freed first. Each process fixes both thresholds at start instead (mallopt
turns the adjustment off), which also needs no launcher's help (no MALLOC_*_ environment):

- The API (`return_large_blocks_to_os`): 1 MiB. A request thread that decoded a 12-megapixel
  upload would otherwise keep its buffers (about 95 MiB) after the request, so the peak would
  grow with the number of threads that had ever decoded a large upload instead of with
  REPAINT_PIXEL_BUDGET (docs/deployment.md, measured by `bench.sizing`).
- The worker (`reuse_tensor_blocks`): 32 MiB, trim at 64 MiB (glibc's own ceiling). A forward
  pass on a CPU allocates and frees the same activations, from a few hundred KiB to a few MiB
  each for a 32 px model, a few hundred times per pass. Served by mmap, every one is zero-filled
  page by page on first touch and unmapped again (each unmap stalls the pass's other threads):
  the same sampler ran 1.3-1.5x faster with the blocks kept (docs/performance.md). The memory
  kept is at most what one pass had in use at once, plus the 64 MiB trim allowance; blocks of
  32 MiB or more (a 256 px model's activations) still come from mmap and go back when freed.

A no-op on other C libraries (musl, macOS), which have no mallopt or manage memory otherwise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

API_MMAP_THRESHOLD = 1 << 20
WORKER_MMAP_THRESHOLD = 32 << 20   # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
WORKER_TRIM_THRESHOLD = 64 << 20   # twice it, as glibc's own adjustment would set


def _mallopt():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def set_thresholds(mmap_threshold: int, trim_threshold: int | None = None) -> bool:
    """Fix glibc's mmap threshold (and the trim threshold, when given); True where it took effect."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    if trim_threshold is not None:
        done = bool(mallopt(M_TRIM_THRESHOLD, trim_threshold)) and done
    return done


def return_large_blocks_to_os(threshold: int = API_MMAP_THRESHOLD) -> bool:
    """The API's setting: every block of `threshold` bytes or more is unmapped when freed."""
    done = set_thresholds(threshold)
    if not done:
        log.info("could not fix the allocator's mmap threshold: decoding buffers may stay with their threads")
    return done


def reuse_tensor_blocks() -> bool:
    """The worker's setting: blocks under 32 MiB are kept for reuse instead of mapped per pass."""
    done = set_thresholds(WORKER_MMAP_THRESHOLD, WORKER_TRIM_THRESHOLD)
    if not done:
        log.info("could not fix the allocator's thresholds: forward passes on a CPU may run slower")
    return done
