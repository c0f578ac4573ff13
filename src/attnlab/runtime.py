"""Process settings the CLIs apply once at start-up.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with a fresh
mmap and unmaps it on free, so each large tensor (a batch's logits, tokens x vocabulary)
is new memory, and the kernel zero-fills every page on first touch, every step: time a
CPU training step spends in the kernel, not the model (docs/performance.md). Keeping
freed memory in the process's heap removes that; the price is that the resident size
stays at the run's peak, which a training or decoding process reaches anyway.
Set ATTNLAB_MALLOC=default to keep glibc's behaviour.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("attnlab")

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_applied = False


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and never trim it (glibc only). True if applied."""
    global _applied
    if _applied or os.environ.get("ATTNLAB_MALLOC", "").lower() == "default":
        return _applied
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl without mallopt): nothing to do
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # 2**30: above any trim a training process would want; c_int caps the value.
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))
    log.debug("malloc: large blocks from the heap, never trimmed: %s", _applied)
    return _applied
