"""The poll (``GET /v3/pic/rw/result/{task_id}``) answered beside FastAPI's machinery.

Clients poll every open task every few seconds: it is the request the server answers most.
Through the whole stack a poll cost about 0.75 ms of CPU, of which the task's reads were a
fifth; the rest was routing, dependency solving, response models and middleware (see the
poll section of docs/performance.md). This middleware answers the plain case itself: a GET
of that path, credentials checked by `auth.authenticate` (the key cache, a thread hop only
when the key is not remembered), the task read by `Runtime.poll` (one thread hop), the
answer serialised straight from `presenters.result_fields`.

It answers exactly what the documented route (`routes.tasks.get_result`, which stays the
reference and the OpenAPI operation) answers, byte for byte (``tests/test_poll.py``):
- an `ApiError` (missing or invalid credentials, no such task) is rendered by `envelope`,
  as the app's handler renders it;
- any other exception (the database away, a disk full, a bug) and any request not exactly
  of that shape (another method, a sub-path, a ``root_path``) is handed to the app, before
  anything was sent: the route does the work again and its handlers answer (503, 507, 500).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from photo_eraser.api.auth import authenticate
from photo_eraser.api.errors import ApiError, Code, envelope
from photo_eraser.api.presenters import result_fields

if TYPE_CHECKING:
    from photo_eraser.runtime import Runtime

PREFIX = "/v3/pic/rw/result/"
_HEADERS = [(b"content-type", b"application/json")]


class PollRoute:
    """Pure ASGI middleware answering polls; everything else goes to ``app``. ``route`` is
    the documented route, left in the scope as the router would (the ``handler`` label of
    `http_metrics`)."""

    def __init__(self, app: ASGIApp, *, service: Runtime, route: BaseRoute) -> None:
        self.app = app
        self.service = service
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        task_id = path[len(PREFIX) :]
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or not path.startswith(PREFIX)
            or not task_id
            or "/" in task_id
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        try:
            status, body = await self._answer(scope, task_id)
        except ApiError as exc:
            scope["route"] = self.route
            await envelope(exc.code, exc.msg, headers=exc.headers)(scope, receive, send)
            return
        except Exception:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        headers = [(b"content-length", str(len(body)).encode()), *_HEADERS]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, task_id: str) -> tuple[int, bytes]:
        """The status and body of a poll; raises `ApiError` as the route does."""
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":  # the first, as Starlette's ``Headers.get``
                authorization = value.decode("latin-1")
                break
        service = self.service
        appkey = await authenticate(authorization, service.store)
        polled = await service.poll(task_id, appkey)
        if polled is None:
            raise ApiError(Code.NOT_FOUND, f"task {task_id} not found")
        task, outlook = polled

        def base() -> str:
            return service.settings.public_url or str(Request(scope).base_url)

        data = result_fields(task, service, base, outlook)
        return Code.OK.http_status, _json({"code": int(Code.OK), "msg": "", "data": data})


def _json(content: object) -> bytes:
    """As Starlette's ``JSONResponse.render``, which `envelope` answers with."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")
