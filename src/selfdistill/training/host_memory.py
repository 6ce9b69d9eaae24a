"""Host memory on CPU training: glibc's malloc told to keep freed blocks for reuse.

By default glibc serves a block over a threshold that starts at 128 KiB (and rises with the blocks freed, to at
most 32 MiB) with a fresh `mmap`, unmaps it on `free`, and trims the heap's free top above twice that threshold.
A CPU training step allocates and frees hundreds of MB per phase (activations, logits, the loss's chunks,
gradients), so phase after phase faults its memory in again page by page. `keep_freed_memory` sets the threshold
to 32 MiB from the start and turns trimming off (`mallopt`), once for the process: blocks up to 32 MiB are
reused from the heap, larger ones (a [B, T, V] logits tensor) are still mapped and unmapped. Measured on an SDFT
step of `make bench`'s settings (SmolLM2-135M, 8 x 64 tokens, 2-core CPU, docs/performance.md): the student's
forward + loss + backward 2.9-3.0 s instead of 4.4-4.7 s, the step 9.5-9.8 s instead of 11.0-11.4 s, peak RSS
4903 MB instead of 4725 MB (memory freed stays with the process until it exits). `train.malloc_keep_freed=false`
leaves glibc's policy alone; other C libraries (musl, macOS) are left alone too. jemalloc or tcmalloc through
LD_PRELOAD do this job for a whole process. `heap_rows` keeps the loss's chunks under the threshold.
"""

from __future__ import annotations

import ctypes
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 32 << 20  # blocks up to glibc's own largest threshold come from the heap
TRIM_THRESHOLD_BYTES = 2**31 - 1  # the heap's free top is kept (the largest value mallopt takes: an int)
HEAP_BLOCK_BYTES = MMAP_THRESHOLD_BYTES // 8  # 4 MiB: the loss's chunks stay under it (heap_rows)


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


def heap_rows(rows: int, row_bytes: int) -> int:
    """`rows`, or as many rows of `row_bytes` as fit in `HEAP_BLOCK_BYTES` if fewer, so that a buffer of them comes
    from the heap `keep_freed_memory` keeps. A block over the mmap threshold is mapped fresh and faulted in page by
    page at every use: inside a training step the loss's `[256, 49152]` float32 chunks (50 MB) made its log-softmax
    and exp up to 9x slower. Blocks of 16 MiB made the heap grow step after step (peak RSS +100-250 MB); at 4 MiB
    and under it did not (docs/performance.md)."""
    return max(1, min(rows, HEAP_BLOCK_BYTES // row_bytes))
