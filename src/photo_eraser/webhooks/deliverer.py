"""The callbacks' delivery loop: every API process (and the embedded server) runs one. Each
pass claims the due callbacks under a lease in the store (`tasks.deliveries`), sends them at
once, and records each outcome: delivered (a 2xx), due again after a backoff, or given up once
the retry time after the task's end has passed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

from photo_eraser.config import Settings
from photo_eraser.metrics import Metrics
from photo_eraser.tasks.deliveries import DeliveryClaim
from photo_eraser.tasks.records import TaskRecord
from photo_eraser.tasks.store import TaskStore
from photo_eraser.webhooks.sender import Answer, WebhookSender
from photo_eraser.webhooks.signature import (
    ATTEMPT_HEADER,
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)

log = logging.getLogger(__name__)

BATCH = 16
"""Callbacks claimed, and sent at once, per pass."""
LEASE_MARGIN = 5.0
"""Seconds a claim's lease outlasts one attempt's timeout (reading the task, recording the
outcome). A sender killed mid-send is replaced once its lease expires."""

RenderBody = Callable[[TaskRecord, str], Awaitable[bytes]]
"""The callback body of a finished task, its result links on the given base URL."""


def retry_at(settings: Settings, attempt: int, finished_at: float, now: float) -> float | None:
    """When attempt ``attempt + 1`` is due after attempt ``attempt`` failed at ``now``: a pause
    of the backoff doubled per attempt (plus up to 10% jitter, so callbacks that failed together
    do not come back together), capped; None once that would pass the retry time."""
    pause = min(
        settings.webhook_backoff_max_seconds,
        settings.webhook_backoff_seconds * 2 ** min(attempt - 1, 60),
    )
    due = now + pause * (1 + 0.1 * random.random())
    if due > finished_at + settings.webhook_retry_seconds:
        return None
    return due


class Deliverer:
    """Sends the due callbacks of the whole store, from this process, every poll period."""

    def __init__(
        self,
        settings: Settings,
        store: TaskStore,
        sender: WebhookSender,
        render: RenderBody,
        metrics: Metrics,
        owner_prefix: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sender = sender
        self.render = render
        self.metrics = metrics
        prefix = owner_prefix or f"{socket.gethostname()}:{os.getpid()}"
        self.owner = f"{prefix}:{uuid.uuid4().hex[:8]}"
        """Its leases' owner: unique to this deliverer (a restarted process is another)."""

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a full batch is followed at once by the next one."""
        while not stop.is_set():
            try:
                sent = await self.deliver_due()
            except Exception:
                log.exception("callback pass failed")
                sent = 0
            if sent < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.settings.webhook_poll_seconds)

    async def deliver_due(self) -> int:
        """One pass: claim the due callbacks and send them; how many were claimed."""
        lease = self.settings.webhook_timeout_seconds + LEASE_MARGIN
        claims = await asyncio.to_thread(self.store.claim_deliveries, self.owner, lease, BATCH)
        if claims:
            await asyncio.gather(*(self._deliver(c) for c in claims))
        return len(claims)

    async def _deliver(self, claim: DeliveryClaim) -> None:
        extra = {
            "task_id": claim.task_id,
            "delivery_id": claim.delivery_id,
            "attempt": claim.attempt,
        }
        try:
            answer = await self._attempt(claim)
        except Exception as exc:  # ours (the store, the body): a failed attempt, retried later
            log.exception("callback attempt failed on our side", extra=extra)
            answer = Answer(None, f"internal error: {type(exc).__name__}")
        now = time.time()
        if answer.delivered:
            assert answer.status_code is not None
            kept = await asyncio.to_thread(self.store.delivery_succeeded, claim, answer.status_code)
            outcome = "delivered"
        else:
            assert answer.error is not None
            due = retry_at(self.settings, claim.attempt, claim.finished_at, now)
            kept = await asyncio.to_thread(
                self.store.delivery_failed, claim, answer.status_code, answer.error, due
            )
            outcome = "retry" if due is not None else "failed"
        self.metrics.callback_attempts.labels(outcome).inc()
        level = logging.INFO if outcome != "retry" else logging.WARNING
        log.log(
            level,
            f"callback {outcome}",
            extra={**extra, "status_code": answer.status_code, "error": answer.error, "kept": kept},
        )

    async def _attempt(self, claim: DeliveryClaim) -> Answer:
        if claim.secret is None:
            return Answer(
                None, "the key has no webhook secret (photo-eraser keys rotate-webhook-secret)"
            )
        task = await asyncio.to_thread(self.store.get_task, claim.task_id)
        if task is None:
            return Answer(None, "the task is gone")
        body = await self.render(task, claim.base_url)
        headers = {
            SIGNATURE_HEADER: signature_header(claim.secret, int(time.time()), body),
            DELIVERY_HEADER: claim.delivery_id,
            ATTEMPT_HEADER: str(claim.attempt),
        }
        return await self.sender.post(claim.url, body, headers)
