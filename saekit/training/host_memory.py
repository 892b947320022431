"""Let a CPU run reuse the pages of its freed tensors instead of faulting in fresh ones every step.

PyTorch's CPU allocator takes each tensor straight from malloc. glibc serves blocks above its mmap
threshold (128 KiB at start, adapting upward only slowly) with a fresh `mmap` and returns them with
`munmap` when freed, so every large temporary of a step (a chunk of pre-activations, the weight gradients,
the model's MLP activations: tens of MB at a live run's shape) is zeroed page by page by the kernel again on
first touch. On the 2-core machine of docs/benchmarks.md that is ~5,000 page faults and ~7% of a TopK step
at 2 threads (2,048 × 576 → 4,608); live training (`saekit.train` on a model stream) ran ×1.18 faster in
benchmarks/host_memory.py (docs/benchmarks.md). Raising the mmap threshold to 32 MiB (the ceiling of glibc's
own adaptive threshold on 64-bit systems) and the trim threshold well above it keeps freed blocks in the heap
for the next step; the process's peak memory is unchanged (the same tensors are alive at the peak), it just
is not returned to the system between steps. Blocks above 32 MiB are still mapped afresh.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # where glibc's adaptive threshold stops on 64-bit systems
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_blocks() -> bool:
    """Ask glibc to keep freed blocks of up to 32 MiB for reuse (once per process). True when set; False
    where the C library is not glibc (macOS, musl, Windows), where nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not done:
        logger.debug("mallopt refused the thresholds; freed blocks go back to the system as before")
    return done
