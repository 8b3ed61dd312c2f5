"""Pin glibc's allocator thresholds for the CPU-heavy CLIs (``sdt-energy``, ``sdt-deploy``, ``sdt-eval``).

glibc returns a freed heap top to the kernel once it exceeds a trim threshold that grows and shrinks with the
program's history, and serves mid-size blocks by ``mmap`` below an equally moving threshold. A batched executor
frees and re-allocates the same multi-megabyte tensors every batch, so by default each batch page-faults its
tensors back in: on our 2-core VM that is 15-33 % of a digits-model graph run (``perf stat``: 0.9-2.5 M page faults
per 280 batches against 0.09 M pinned), and how much depends on what else allocated in between, which made the
counted/uncounted energy benchmark swing by more than the counter costs. Pinning both thresholds keeps freed
memory in the process (RSS stays at its peak, which short-lived CLIs do not mind). PyTorch's CPU tuning guide gives
the same advice in the form of jemalloc/tcmalloc; this needs no extra library.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h> mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30

_pinned = False


def pin_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (idempotent). Returns True if they are pinned, False
    where the C library is not glibc (macOS, musl) and nothing was changed."""
    global _pinned
    if _pinned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _pinned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _pinned


def malloc_regime(choice: str) -> str:
    """The benchmarks' ``--malloc pinned|default``: pin the thresholds as the CLIs run, or leave glibc's own regime.
    Returns the regime in force (``default`` where pinning is not possible)."""
    return "pinned" if choice == "pinned" and pin_malloc() else "default"


__all__ = ["pin_malloc", "malloc_regime", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]
