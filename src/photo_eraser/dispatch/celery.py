"""Distributed dispatch: Celery on RabbitMQ.

A message carries only the task id; the database is the source of truth (a worker claims the
row and drops a message whose task is no longer waiting, so a duplicate message is harmless).
One durable classic queue with ``x-max-priority=10``: RabbitMQ delivers priority 9 before 0
and FIFO within a priority. Messages are persistent and every publish waits for the broker's
confirm; workers acknowledge a message only after the task finished (``acks_late``) and take
one message at a time (prefetch 1), so a worker that dies mid-task has its message redelivered.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence

from celery import Celery
from kombu import Exchange, Queue

from photo_eraser.config import Settings
from photo_eraser.groups import next_group
from photo_eraser.tasks.records import Queued
from photo_eraser.tasks.store import TaskStore

log = logging.getLogger(__name__)

QUEUE = "photo_eraser.tasks"
RUN_TASK = "photo_eraser.run_task"
MAX_PRIORITY = 9
PUBLISH_GROUP = 500
"""Tasks published (then recorded in one statement) at most per round of the thread."""
CLOCK_MARGIN = 5.0
"""Seconds by which the hosts' clocks may disagree without a task being left unpublished."""
PUBLISH_TIMEOUT = 5.0
"""Seconds a publish may wait for the broker (to send, and for its confirm)."""


def make_celery(settings: Settings) -> Celery:
    """The Celery app of the API processes and the workers (the same settings on both)."""
    if not settings.broker_url:
        raise ValueError("PHOTO_ERASER_BROKER_URL is required in distributed mode")
    app = Celery("photo_eraser", broker=settings.broker_url, set_as_current=False)
    exchange = Exchange(QUEUE, type="direct", durable=True)
    app.conf.update(
        task_queues=[
            Queue(
                QUEUE,
                exchange,
                routing_key=QUEUE,
                durable=True,
                queue_arguments={"x-max-priority": MAX_PRIORITY + 1, "x-queue-type": "classic"},
            )
        ],
        task_default_queue=QUEUE,
        task_default_exchange=QUEUE,
        task_default_routing_key=QUEUE,
        task_queue_max_priority=MAX_PRIORITY + 1,
        task_default_delivery_mode="persistent",
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        broker_heartbeat=30,
        # A publish that cannot reach the broker fails fast; the task stays waiting with no
        # message and the maintenance pass publishes it again.
        task_publish_retry=False,
    )
    return app


class CeleryDispatcher:
    """Publishes from a thread of its own, so a slow or absent broker never holds up a create
    (the task is already committed; the maintenance pass publishes what this one could not)."""

    republishes = True

    def __init__(self, app: Celery, store: TaskStore) -> None:
        self.app = app
        self.store = store
        self._pending: queue.Queue[Queued | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="dispatch", daemon=True)
        self._thread.start()
        self._last_error = 0.0

    def publish(self, queued: Sequence[Queued]) -> None:
        for q in queued:
            self._pending.put(q)

    def publish_now(self, queued: Sequence[Queued]) -> list[str]:
        """Publish each (waiting for the broker's confirm) and record it; the ids published.
        Stops at the first failure: the rest stay for the next maintenance pass."""
        done: list[str] = []
        started = time.time()
        try:
            for q in queued:
                self.app.send_task(
                    RUN_TASK,
                    args=[q.task_id],
                    priority=max(0, min(MAX_PRIORITY, q.priority)),
                    queue=QUEUE,
                    retry=False,
                    # A broker that stops answering (a memory or disk alarm blocks publishers)
                    # must not hold this thread, or the maintenance pass, for ever.
                    timeout=PUBLISH_TIMEOUT,
                    confirm_timeout=PUBLISH_TIMEOUT,
                )
                done.append(q.task_id)
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_error > 60:  # the broker is away: say so once a minute
                self._last_error = now
                log.error(
                    "publishing tasks to the broker failed; they wait for the next try",
                    extra={"error": str(exc), "unpublished": len(queued) - len(done)},
                )
        finally:
            if done:
                # A margin for clocks: a give-back stamped by a worker whose clock lags
                # must still count as after this publish (a duplicate is harmless, a task
                # left with no message is not).
                self.store.mark_dispatched(done, published_at=started - CLOCK_MARGIN)
        return done

    def closed(self, task_id: str) -> None:
        """The worker is in another process: it finds out at its next lease renewal."""

    def watch_close(self, task_id: str) -> asyncio.Event | None:
        return None

    def unwatch_close(self, task_id: str, event: asyncio.Event) -> None:
        pass

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            group, stopping = next_group(self._pending, PUBLISH_GROUP)
            if not group:
                continue
            try:
                self.publish_now(group)
            except Exception:  # recording failed: the maintenance pass publishes again
                log.exception("recording published tasks failed")
