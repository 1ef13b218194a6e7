"""The dispatch seam."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from photo_eraser.tasks.records import Queued


class Dispatcher(Protocol):
    """Tells the workers about waiting tasks. Called after the tasks are committed; a lost
    call loses no task (the database is the source of truth), it only delays it."""

    republishes: bool
    """Whether the maintenance pass must publish again the waiting tasks the broker never
    confirmed (distributed). Embedded workers read the queue from the database instead."""

    def publish(self, queued: Sequence[Queued]) -> None:
        """Announce these waiting tasks; returns at once (never blocks on the network)."""

    def publish_now(self, queued: Sequence[Queued]) -> list[str]:
        """Announce these tasks and wait until the broker has them; the ids announced."""

    def close(self) -> None:
        """Publish what is pending, if it can, and stop."""
