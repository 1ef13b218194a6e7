"""HTTP metrics by route: ``http_requests_total`` and ``http_request_duration_seconds``.

Labels: ``handler`` (the route's template, e.g. ``/v3/pic/rw/result/{task_id}``, never the
path itself, so never a task id; ``none`` where no route matched), ``method``, and ``status``
as its class (``2xx``, ``4xx``, ...). The names, labels and buckets are those
prometheus-fastapi-instrumentator gave them, which this replaces: it matched the path
against every route a second time and built a request and a response object per request,
about 7 % of a poll's CPU. Here the template is the route the router itself chose (it leaves
it in the scope as ``route``).
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NO_ROUTE = "none"
EXCLUDED = frozenset({"/metrics"})
"""Handlers not counted: the scrapes themselves."""


class HttpMetrics:
    """Pure ASGI middleware counting and timing every HTTP request (an exception counts as a
    500 and is re-raised); the outermost of the app's own middleware."""

    def __init__(self, app: ASGIApp, *, requests: Counter, duration: Histogram) -> None:
        self.app = app
        self.requests = requests
        self.duration = duration

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # Set by the router (Starlette's and FastAPI's both) on the request's own scope,
            # which the middleware inside pass down as it is.
            handler = getattr(scope.get("route"), "path", None) or NO_ROUTE
            if handler not in EXCLUDED:
                labels = (handler, scope["method"], f"{str(int(status))[0]}xx")
                self.requests.labels(*labels).inc()
                self.duration.labels(*labels).observe(max(time.perf_counter() - start, 0.0))
