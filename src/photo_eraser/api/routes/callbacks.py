"""The callback a task created with ``callback_url`` sends, described in the OpenAPI document
(its ``webhooks`` section); the sending is in `photo_eraser.webhooks`."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header

from photo_eraser.api.schemas import Result
from photo_eraser.webhooks import ATTEMPT_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER


def document(app: FastAPI) -> None:
    """Add the callback to ``app``'s OpenAPI document."""

    @app.webhooks.post(
        "task-finished",
        summary="Callback: the task has a final status",
        operation_id="task_finished",
        response_description="any 2xx is a delivery (the answer's body is not read)",
    )
    def task_finished(
        body: Result,
        signature: Annotated[
            str,
            Header(
                alias=SIGNATURE_HEADER,
                description='t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>." + body>, keyed '
                "with the key's webhook secret",
            ),
        ],
        delivery: Annotated[
            str,
            Header(
                alias=DELIVERY_HEADER,
                description="the same on every attempt of one task's callback: drop repeats",
            ),
        ],
        attempt: Annotated[
            int, Header(alias=ATTEMPT_HEADER, description="1 on the first attempt, then 2, ...")
        ],
    ) -> None:
        """Extension ``callback_url``: POSTed to that URL once the task is complete, failed,
        closed or timed out. The body is the result route's envelope plus ``data.task_id``. A
        2xx answer is a delivery; anything else (redirects included) is retried with
        exponential backoff until the retry time has passed (at least once; see
        docs/webhooks.md)."""
