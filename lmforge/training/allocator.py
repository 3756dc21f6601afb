"""Keep freed memory in the process while training, so each step reuses the last step's pages.

A training step allocates and frees the same activation buffers every step. glibc's malloc
returns blocks above its mmap threshold to the kernel and trims the top of its heap, so the
next step page-faults that memory in again, zeroed page by page (the README gives the counts
measured on nanoGPT's CPU configuration). With the mmap threshold at its maximum (32 MiB, glibc's
limit) and a high trim threshold the pages stay mapped, as a preloaded jemalloc or tcmalloc
would do. The cost: the process keeps its peak memory after the step instead of handing it back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's cap on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tune glibc's malloc to reuse freed memory (Linux with glibc; elsewhere a no-op). Returns
    whether it did. Process-wide and idempotent."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mmap_set = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    return libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and mmap_set
