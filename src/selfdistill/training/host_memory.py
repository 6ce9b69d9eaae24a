"""Host memory on CPU training: glibc's malloc told to keep freed blocks for reuse.

By default glibc serves every block over a threshold (128 KiB, raised on the fly to at most 32 MiB) with a fresh
`mmap` and gives it back on `free`, and trims the heap's free top above twice that. A CPU training step allocates
and frees hundreds of MB per phase (logits, the loss's chunks, activations, gradients), so every phase faults its
memory in page by page again: in an SDFT step of `make bench` (SmolLM2-135M, 8 x 64 tokens) the student's
forward + loss + backward took 4.6-4.8 s this way and 2.9-3.0 s with freed blocks kept (docs/performance.md).
`keep_freed_memory` raises both thresholds once for the process (`mallopt`), so freed blocks stay in the heap and
the next step reuses them. The price: memory the process freed is not returned to the system until it exits
(peak RSS +4% in that step). `train.malloc_keep_freed=false` leaves glibc's policy alone; other C libraries
(musl, macOS) are left alone too. jemalloc or tcmalloc through LD_PRELOAD do the same job for a whole process.
"""

from __future__ import annotations

import ctypes
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 30  # blocks under 1 GiB come from the heap, not from a fresh mmap
TRIM_THRESHOLD_BYTES = 2**31 - 1  # the heap's free top is kept up to the largest value mallopt takes (an int)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse (module docstring), for the rest of the process.
    Returns whether it applied: False off Linux/glibc or when glibc refused a value."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
