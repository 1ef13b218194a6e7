"""Taking work from a queue in groups: what waits together is handled together (one commit,
one round of publishes), by one thread that ends at a ``None`` in the queue."""

from __future__ import annotations

import queue
from typing import TypeVar

T = TypeVar("T")


def next_group(waiting: queue.Queue[T | None], limit: int) -> tuple[list[T], bool]:
    """Wait for one item, then take every other one waiting now, up to ``limit``; and whether
    a ``None`` (stop) was taken, after the items before it."""
    group: list[T] = []
    item = waiting.get()
    while True:
        if item is None:
            return group, True
        group.append(item)
        if len(group) >= limit:
            return group, False
        try:
            item = waiting.get_nowait()
        except queue.Empty:
            return group, False
