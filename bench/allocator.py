"""Keep freed CPU buffers in the process, so timings compare kernels, not page faults.

With glibc's defaults, a freed 10 MB tensor can go back to the OS (it was mmap'ed, or
it sat at the top of the heap), and the next tensor of that size page-faults in again:
~1 us per 4 KB page, 2.5 ms for 16x197x768 float32 on one core. Which variant of an
interleaved benchmark pays that depends on the heap's layout, not on its kernels: on 2
vCPUs, nn.GELU took ~580 faults per forward+backward while a generated module took 0,
and identical kernels read 0.66x and 1.26x nn.GELU in one run. Fixing glibc's mmap and
trim thresholds (jemalloc and tcmalloc, which PyTorch's CPU tuning guide recommends,
keep freed memory too) keeps freed buffers in the heap for reuse. A few faults remain
where the heap still grows (an aligned allocation needs a little more than a freed
buffer of the same size); `page_faults()` lets a benchmark report them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import resource

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit; larger values are refused


def keep_freed_memory() -> str:
    """Allocations up to 32 MB come from the heap and freed memory is not trimmed.

    Returns what was done, for the benchmark's JSON: "glibc mallopt" or why not."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return f"default (no glibc mallopt in {name!r})"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) != 1 or mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        return "default (mallopt refused)"
    return f"glibc mallopt: mmap threshold {_MMAP_THRESHOLD_MAX >> 20} MB, no trimming"


def page_faults() -> int:
    """Minor page faults of this process so far (first touches of fresh memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
