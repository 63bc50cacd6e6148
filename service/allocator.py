"""The API process's allocator set so that freed decoding buffers go back to the OS.

glibc's malloc serves large blocks with mmap until the first of them is freed, then raises its
mmap threshold to that size (up to 32 MiB on 64-bit) and serves later ones from per-thread arenas,
which keep freed memory. A request thread that decoded a 12-megapixel upload then holds its
buffers (about 95 MiB) after the request ended, so the process's peak grew with the number of
threads that had ever decoded a large upload, not with REPAINT_PIXEL_BUDGET (docs/deployment.md,
measured by `bench.sizing`). A fixed threshold keeps every block of 1 MiB or more on mmap, which
is unmapped when freed: the peak then follows the budget. Smaller blocks are unaffected.

Equivalent to MALLOC_MMAP_THRESHOLD_=1048576 in the environment, but needs no launcher's help.
A no-op on other C libraries (musl, macOS), which return large blocks anyway or have no mallopt.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_blocks_to_os(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; True where it took effect."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not done:
        log.info("could not fix the allocator's mmap threshold: decoding buffers may stay with their threads")
    return done
