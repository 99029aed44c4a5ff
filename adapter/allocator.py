"""Keep freed memory in the process for reuse (glibc only), which halves a CPU training step.

A training step allocates and frees hundreds of tensors of 0.1–2 MB. glibc's malloc hands blocks above its mmap
threshold straight back to the kernel and trims the top of its heap as soon as a few MB there are free, so every
step faults its whole working set back in, page by page, and the kernel zeroes each page first. On the 2-core CPU of
`benchmarks/lathadapter_step.py` that doubles the step, even the bare matrix products. A fixed 32 MiB mmap threshold
(glibc's maximum) and a 1 GiB trim threshold let freed blocks be reused instead; the process keeps up to 1 GiB of
freed memory, which its next step reuses anyway. Elsewhere (macOS, musl, Windows) nothing changes.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024

_done = False


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True when they are set (on glibc systems)."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    _done = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                        TRIM_THRESHOLD))
    return _done
