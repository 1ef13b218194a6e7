"""Per-edge work in chunks of edges: bounded memory, and the chunks side by side on threads.

The free fit's steps (ratio fits, robust means of gradients, their reweighting) are independent
from one edge to the next: every reduction runs over the images or the channels of one edge.
So they run on a chunk of edges at a time, and the working set is a few arrays of one chunk
(``CHUNK_BYTES`` each) per thread instead of a few 3 x images x edges arrays (about 120 MB
each for 20 images and a 250,000-pixel grid). numpy's sorts and sums release the GIL, so the
chunks run on the task's image threads. The results are those of one pass over all edges, bit
for bit: each edge sees the same operations in the same order (``tests/test_restore_parts.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

CHUNK_BYTES = 4 << 20
"""Largest 3 x images x edges float32 array of one chunk: its working set is a few of them.
(8 MB took 30 MB more at the peak of a 20 x 12 MP task, at the same speed.)"""


class EdgeChunks:
    """The edges (``0..edges-1``) in chunks whose 3 x ``images`` x chunk float32 arrays hold at
    most ``chunk_bytes``; ``map`` runs work on each, ``threads`` at a time."""

    def __init__(
        self, edges: int, images: int, threads: int = 1, chunk_bytes: int = CHUNK_BYTES
    ) -> None:
        size = max(1, chunk_bytes // (3 * 4 * max(images, 1)))
        self.edges = edges
        self.slices = [slice(s, min(edges, s + size)) for s in range(0, edges, size)]
        if not self.slices:
            self.slices = [slice(0, 0)]
        self.threads = max(1, threads)

    def on_threads(self, threads: int) -> EdgeChunks:
        """The same chunks, run ``threads`` at a time."""
        other = copy.copy(self)
        other.threads = max(1, threads)
        return other

    def map(self, work: Callable[[slice], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        """``work`` on every chunk; its arrays (edges on the last axis) joined in edge order.

        The joined arrays are laid out in memory as the first chunk's (as ``np.concatenate``
        lays out chunks of one layout), whichever chunk finishes first: a last chunk of one
        edge is both C- and Fortran-ordered and must not decide. Each chunk's arrays are copied
        in as soon as they are done, so the chunks' results and the joined arrays are not all
        held at once."""
        if len(self.slices) == 1:
            return work(self.slices[0])
        first = work(self.slices[0])
        joined = [np.empty_like(a, shape=a.shape[:-1] + (self.edges,)) for a in first]

        def put(edges: slice, arrays: tuple[np.ndarray, ...]) -> None:
            for out, a in zip(joined, arrays, strict=True):
                out[..., edges] = a

        put(self.slices[0], first)
        del first
        in_threads(lambda edges: put(edges, work(edges)), self.slices[1:], self.threads)
        return tuple(joined)


def in_threads(work: Callable[[T], R], items: Sequence[T], threads: int) -> list[R]:
    """``work`` on every item, ``threads`` at a time, the results in the items' order. For
    independent work whose arrays release the GIL (numpy, OpenCV): the results are the same
    whatever ``threads`` is, as each item's work is the same."""
    if threads <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(threads, len(items)), "restore") as pool:
        return list(pool.map(work, items))


def cut(a: np.ndarray, edges: slice, rows: np.ndarray | None = None) -> np.ndarray:
    """The edges ``edges`` (last axis) of ``a``, for the images ``rows`` (first axis) if given,
    as a copy laid out in memory like ``a`` (or ``a[rows]``): numpy sums a C-ordered and a
    Fortran-ordered array in different orders, so a chunk keeps the layout the whole had."""
    if rows is None:
        return a[..., edges].copy(order="K")
    # Indexing the rows of the chunk makes the copy (not the rows of the whole, which copied
    # all their edges for every chunk): C-ordered, as ``a[rows]`` is.
    return a[..., edges][rows]
