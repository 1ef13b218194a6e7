"""Give freed memory back to the system (glibc), so a burst of large images or masks does not
leave the server holding its peak for good: a fixed mmap threshold for large blocks
(`return_large_blocks_to_os`, at start) and a trim of the heaps after each task (`trim`).

glibc serves blocks above the mmap threshold with their own mappings, returned on free. The
threshold starts at 128 KiB but rises (up to 32 MiB) each time such a block is freed; after the
first decoded image, 25 MB planes then come from per-thread heaps that are seldom trimmed. Six
concurrent 5000x5000 masks took the peak from 393 MiB to 808 MiB that way. A fixed 1 MiB
threshold (as ``MALLOC_MMAP_THRESHOLD_=1048576`` would set) keeps large blocks mapped at the
same speed: they are rare and large, so the extra mmap calls cost nothing measurable.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD = 1 << 20


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


def return_large_blocks_to_os(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where that is not possible
    (not glibc) or the operator set ``MALLOC_MMAP_THRESHOLD_`` (theirs wins)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or _mallopt is None:
        return False
    return bool(_mallopt(_M_MMAP_THRESHOLD, threshold))


def trim() -> None:
    """Hand the free memory inside glibc's heaps back to the system (``malloc_trim(0)``).

    A task frees hundreds of MB in blocks of all sizes across several threads' heaps; glibc
    keeps much of it. Measured with ``bench/soak.py``'s load: 264 MiB after 240 tasks, 169 MiB
    right after one trim (about 20 ms). No-op where there is no glibc."""
    if _malloc_trim is not None:
        _malloc_trim(0)
