"""The real server in the test process: ``create_app`` on a real data directory (SQLite, local
blobs), its lifespan (workers, maintenance pass) running on an event loop of its own thread.

Requests go through ``httpx.ASGITransport`` (``LocalServer.http``, ``LocalServer.client``);
with ``listen=True`` the same app is also served by uvicorn on a real socket of 127.0.0.1, for
tests of what only a connection shows (keep-alive, slow bodies). Nothing of ours is replaced:
what differs from ``photo-eraser serve`` is only that no new interpreter starts (about 2 s
each). Tests that need a process of their own (kill -9, SIGTERM, the data directory's lock,
lease loss, the CLI) use ``helpers.ServerProcess`` and are marked ``process``."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI

from harness.client import ApiClient
from photo_eraser.api.app import create_app
from photo_eraser.config import Settings
from photo_eraser.service import open_store
from photo_eraser.tasks.store import TaskStore

T = TypeVar("T")

TIMEOUT = 60.0
"""Seconds a request, a start or a stop may take before the test fails."""


class StartFailed(RuntimeError):
    """The app's lifespan refused to start (its message is the server's traceback)."""


class LocalServer:
    """``photo-eraser serve`` on ``data_dir``, in this process. ``settings`` are fields of
    ``Settings`` (``workers=0``, ``lease_seconds=2``, ...); as ``ServerProcess`` does, it
    allows loopback downloads (the image host is on 127.0.0.1), runs one worker and never
    auto-pulls a model unless told otherwise."""

    def __init__(self, data_dir: Path, *, listen: bool = False, **settings: Any) -> None:
        self.data_dir = data_dir
        self.settings = Settings(
            data_dir=data_dir,
            **{"allow_private_urls": True, "workers": 1, "auto_pull": False, **settings},
        )
        self.listen = listen
        self.port = 0
        self.base_url = "http://127.0.0.1"
        self.store: TaskStore | None = None
        self.app: FastAPI | None = None
        self.http: httpx.Client = httpx.Client()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lifespan: _Lifespan | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._serving: asyncio.Future[None] | None = None
        self._logs = _LogCapture()

    def start(self) -> LocalServer:
        """Open the store, build the app and run its startup (raises ``StartFailed`` if the
        service refuses to start)."""
        self.store = open_store(self.settings)
        self._logs.attach()
        self._thread.start()
        try:
            self.app = create_app(self.settings)
            lifespan = _Lifespan(self.app)
            self._run(lifespan.startup())
            self._lifespan = lifespan
            if self.listen:
                self._serve()
        except BaseException:
            self.stop()
            raise
        self.http = httpx.Client(
            base_url=self.base_url, transport=_LoopTransport(self.app, self._loop), timeout=30
        )
        return self

    def stop(self) -> None:
        """Stop serving, run the app's shutdown (running tasks are handed back) and end the
        loop; safe to call twice."""
        self.http.close()
        if self._thread.is_alive():
            if self._uvicorn is not None:
                self._run(self._stop_serving())
                self._uvicorn = None
            if self._lifespan is not None:
                self._run(self._lifespan.shutdown())
                self._lifespan = None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()
        if self.store is not None:
            self.store.engine.dispose()
            self.store = None
        self._logs.detach()

    def create_key(self, name: str = "test") -> tuple[str, str]:
        """A new key, made through the store as ``photo-eraser keys create`` makes it."""
        assert self.store is not None, "start() first"
        return self.store.create_key(name)

    def revoke_key(self, appkey: str) -> bool:
        """As ``photo-eraser keys revoke`` does, while the server runs."""
        assert self.store is not None, "start() first"
        return self.store.revoke_key(appkey)

    def client(self, appkey: str, appsecret: str) -> ApiClient:
        """A client of the API through ``httpx.ASGITransport``."""
        assert self.app is not None, "start() first"
        transport = _LoopTransport(self.app, self._loop)
        return ApiClient(self.base_url, appkey, appsecret, transport=transport)

    def new_client(self, name: str = "test") -> ApiClient:
        return self.client(*self.create_key(name))

    def log_text(self) -> str:
        """What the service logged while it ran (records with their tracebacks)."""
        return self._logs.text()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    async def _stop_serving(self) -> None:
        """As on SIGTERM: uvicorn stops taking connections and finishes those it has."""
        assert self._uvicorn is not None
        self._uvicorn.should_exit = True
        if self._serving is not None:
            await self._serving

    def _serve(self) -> None:
        assert self.app is not None
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        # As `photo-eraser serve` runs it, but the lifespan is ours (it is running already).
        config = uvicorn.Config(self.app, lifespan="off", log_config=None, access_log=False)
        self._uvicorn = uvicorn.Server(config)

        async def serve() -> None:
            assert self._uvicorn is not None
            self._serving = asyncio.ensure_future(self._uvicorn.serve(sockets=[sock]))
            while not self._uvicorn.started:
                if self._serving.done():
                    self._serving.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)

        self._run(serve())


class _Lifespan:
    """The ASGI lifespan protocol spoken to the app, as a server speaks it (ASGITransport
    does not)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        self._task = asyncio.create_task(self._call(scope))
        await self._exchange("startup")

    async def shutdown(self) -> None:
        await self._exchange("shutdown")
        if self._task is not None:
            await self._task

    async def _call(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._to_app.get, self._from_app.put)
        except BaseException as exc:  # the app re-raises after sending "failed"
            await self._from_app.put({"type": "raised", "message": repr(exc)})

    async def _exchange(self, phase: str) -> None:
        await self._to_app.put({"type": f"lifespan.{phase}"})
        message = await self._from_app.get()
        if message["type"] != f"lifespan.{phase}.complete":
            raise StartFailed(message.get("message", message["type"]))


class _LoopTransport(httpx.BaseTransport):
    """A sync httpx transport: each request goes through ``httpx.ASGITransport`` on the
    server's event loop (where the app's workers run), and its body is read there."""

    def __init__(self, app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
        self._asgi = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()

        async def send() -> tuple[int, httpx.Headers, bytes]:
            inner = httpx.Request(
                request.method, request.url, headers=request.headers, content=body
            )
            response = await self._asgi.handle_async_request(inner)
            content = await response.aread()
            return response.status_code, response.headers, content

        future = asyncio.run_coroutine_threadsafe(send(), self._loop)
        status, headers, content = future.result(TIMEOUT)
        return httpx.Response(status, headers=headers, content=content, request=request)


class _LogCapture(logging.Handler):
    """The records of ``photo_eraser`` and uvicorn while a server runs, at INFO and above."""

    LOGGERS = ("photo_eraser", "uvicorn.error")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self._lines: list[str] = []
        self._levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self._lines.append(self.format(record))

    def attach(self) -> None:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(self)

    def detach(self) -> None:
        for name, level in self._levels.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.setLevel(level)
        self._levels.clear()

    def text(self) -> str:
        return "\n".join(self._lines)
