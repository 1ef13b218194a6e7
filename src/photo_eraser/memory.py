"""glibc's allocator, tuned at start (`tune_allocator`), and its heaps trimmed after each task
(`trim`), so the engines reuse memory instead of touching fresh pages, and an idle server does
not keep the peak of its last task.

- **mmap threshold fixed at 8 MiB** (``MALLOC_MMAP_THRESHOLD_``). Blocks above it get mappings
  of their own, returned on free; the rest come from the heaps and are reused. The threshold
  was fixed at 1 MiB before: every plane of a 1080p image was then a fresh mapping, and every
  page of it a page fault (a zeroed page from the kernel). `auto` on 20 x 1080p took 72,000
  faults and 604-619 ms of CPU per image; at 8 MiB 3,800-6,100 and 374-377 ms, 1.6x the images
  per second (``bench/task.py``, docs/performance.md). 32 MiB (glibc's highest) was another
  10 % faster on `auto` but let six concurrent 5000x5000 masks take the API's peak past its
  bound (491-530 MiB against 480, ``tests/test_mask_memory.py``): their 25 MB planes then came
  from the heaps, which kept them.
- **trim threshold 64 MiB** (``MALLOC_TRIM_THRESHOLD_``): freed memory at a heap's top is kept
  up to that much between tasks' stages rather than handed back and faulted in again.
- **two arenas** (``MALLOC_ARENA_MAX``): each thread that allocates may otherwise get a heap of
  its own, each keeping its free memory; two bound what the image threads hold between them
  (with a 32 MiB threshold they were 15 % faster than the default count on `auto`, 1080p).
  Peak RSS of `auto` on 20 x 12 MP is about 1 GB either way (985-1038 MiB over the runs).

An operator's ``MALLOC_*_`` variable wins over the value here. After each task ``trim`` hands
the free memory back (``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
TUNING = {
    # mallopt parameter: (value, the environment variable that sets it, which wins)
    _M_MMAP_THRESHOLD: (8 << 20, "MALLOC_MMAP_THRESHOLD_"),
    _M_TRIM_THRESHOLD: (64 << 20, "MALLOC_TRIM_THRESHOLD_"),
    _M_ARENA_MAX: (2, "MALLOC_ARENA_MAX"),
}


def _libc_function(name: str) -> Any:
    """A function of the C library the process already runs on (no search, no ldconfig);
    None where it has no such function (musl has neither of ours)."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int] * (2 if name == "mallopt" else 1)
    function.restype = ctypes.c_int
    return function


_mallopt = _libc_function("mallopt")
_malloc_trim = _libc_function("malloc_trim")


def tune_allocator() -> int:
    """Apply `TUNING` where the operator set no variable of their own (call it at start,
    before the threads); how many settings took (0 where there is no glibc)."""
    if _mallopt is None:
        return 0
    return sum(
        bool(_mallopt(param, value))
        for param, (value, variable) in TUNING.items()
        if variable not in os.environ
    )


def trim() -> None:
    """Hand the free memory inside glibc's heaps back to the system (``malloc_trim(0)``).

    A task frees hundreds of MB in blocks of all sizes across several threads' heaps; glibc
    keeps much of it. Measured with ``bench/soak.py``'s load: 264 MiB after 240 tasks, 169 MiB
    right after one trim (about 20 ms). No-op where there is no glibc."""
    if _malloc_trim is not None:
        _malloc_trim(0)
