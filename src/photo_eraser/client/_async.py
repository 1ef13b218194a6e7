"""The asyncio client: ``AsyncClient`` and the ``AsyncTask`` handles it returns (the same
requests, parsers and retry decisions as ``Client``, from ``_wire``)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from photo_eraser.client._errors import NO_ANSWER, PhotoEraserError, TimeoutExceeded
from photo_eraser.client._http import (
    DEFAULT_TIMEOUT,
    content_of,
    data_of,
    httpx_args,
    on_answer,
    on_transport_error,
)
from photo_eraser.client._models import Erased, TaskResult, TaskStatus
from photo_eraser.client._wire import (
    Request,
    RetryPolicy,
    Source,
    Wire,
    parse_closed,
    parse_result,
    parse_task_id,
    parse_upload,
    poll_delay,
    result_names,
    source_name,
    to_upload,
)


class AsyncClient:
    """``Client`` for asyncio: the same arguments and methods, as coroutines.

    ``timeout``: seconds (or an ``httpx.Timeout``) per connect, read and write of a request.
    ``retry``: how 429, 5xx and connection failures are retried. ``min_poll`` /
    ``max_poll``: bounds on the server's ``wait_time`` between polls. ``transport``: an httpx
    transport (proxies, tests)."""

    def __init__(
        self,
        base_url: str,
        appkey: str,
        appsecret: str,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        min_poll: float = 0.2,
        max_poll: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.min_poll = min_poll
        self.max_poll = max_poll
        self._wire = Wire(appkey, appsecret)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport)
        self._rng = random.Random()

    async def submit(
        self,
        images: Sequence[Source],
        mask: Source,
        priority: int = 5,
        engine: str | None = "auto",
        **extensions: Any,
    ) -> AsyncTask:
        """Create a task. Local files (and bytes) among ``images`` and ``mask`` are uploaded
        first; ``extensions`` are sent as extra JSON fields."""
        # Every source is checked before any is uploaded.
        plans = [to_upload(s, "image", f"images.{i}") for i, s in enumerate(images)]
        mask_plan = to_upload(mask, "mask", "mask")
        urls = [
            str(s) if p is None else await self._upload(p, "image")
            for s, p in zip(images, plans, strict=True)
        ]
        mask_value = str(mask) if mask_plan is None else await self._upload(mask_plan, "mask")
        request = self._wire.create(urls, mask_value, priority, engine, extensions)
        task_id = parse_task_id(await self._call(request))
        return AsyncTask(self, task_id, [source_name(s) for s in images])

    def task(self, task_id: str) -> AsyncTask:
        """A handle on a task created earlier (by this process or another)."""
        return AsyncTask(self, task_id, [])

    async def upload(self, source: Source, kind: str = "image") -> str:
        """Upload a local file (or bytes) through ``POST /v3/pic/rw/upload``; returns the
        signed link to name in a task of this key. ``kind``: ``image`` or ``mask``."""
        found = to_upload(source, kind, "source")
        if found is None:
            raise ValueError(f"not a local file: {source!r}")
        return await self._upload(found, kind)

    async def erase(
        self,
        images: Sequence[Source],
        mask: Source,
        out_dir: str | Path,
        *,
        priority: int = 5,
        engine: str | None = "auto",
        timeout: float | None = None,
        **extensions: Any,
    ) -> Erased:
        """``submit``, ``wait`` and ``download`` in one call."""
        task = await self.submit(images, mask, priority, engine, **extensions)
        try:
            result = await task.wait(timeout)
            return Erased(result, await task.download(out_dir))
        finally:
            task.close()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _upload(self, found: Path | bytes, kind: str) -> str:
        body = found if isinstance(found, bytes) else await asyncio.to_thread(found.read_bytes)
        return parse_upload(await self._call(self._wire.upload(body, kind)))

    async def _call(self, request: Request) -> dict[str, Any]:
        return data_of(await self._send(request))

    async def _fetch(self, url: str) -> bytes:
        return content_of(await self._send(Wire.download(url)))

    async def _send(self, request: Request) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(**httpx_args(request))
            except httpx.TransportError as exc:
                delay, error = on_transport_error(self.retry, attempt, request, exc)
                if delay is None:
                    raise error from exc
            else:
                if response.status_code == 200:
                    return response
                delay = on_answer(self.retry, attempt, request, response)
                if delay is None:
                    return response
            await asyncio.sleep(delay)
            attempt += 1


class AsyncTask:
    """``Task`` for asyncio. ``close()`` releases this handle (the task goes on on the
    server); ``cancel()`` asks the server to close the task itself."""

    def __init__(self, client: AsyncClient, task_id: str, sources: list[str]) -> None:
        self.id = task_id
        self.sources = sources
        self._client: AsyncClient | None = client
        self._last: TaskResult | None = None

    async def refresh(self) -> TaskResult:
        """Poll once: the task's state now."""
        self._last = parse_result(
            self.id, await self._owner._call(self._owner._wire.result(self.id))
        )
        return self._last

    async def result(self) -> TaskResult:
        """The task's result: the final one once seen, else polled now."""
        if self._last is not None and self._last.finished:
            return self._last
        return await self.refresh()

    async def wait(
        self,
        timeout: float | None = None,
        *,
        on_poll: Callable[[TaskResult], None] | None = None,
    ) -> TaskResult:
        """Poll until the task has finished (complete, failed, closed or timed out),
        sleeping by the server's ``wait_time`` with jitter; ``on_poll`` sees every answer.
        Raises ``TimeoutExceeded`` after ``timeout`` seconds (``None``: no limit)."""
        client = self._owner
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = await self.refresh()
            if on_poll is not None:
                on_poll(result)
            if result.finished:
                return result
            delay = poll_delay(
                result.wait_time,
                min_interval=client.min_poll,
                max_interval=client.max_poll,
                rng=client._rng,
            )
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutExceeded(
                        NO_ANSWER, f"task {self.id} still {result.status.name} after {timeout} s"
                    )
                delay = min(delay, left)
            await asyncio.sleep(delay)

    async def download(self, out_dir: str | Path) -> list[Path | None]:
        """Write each done image into ``out_dir`` (made if missing), named after its input;
        returns the files in input order, ``None`` for images without a result."""
        result = await self.result()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files: list[Path | None] = []
        for image, name in zip(
            result.images, result_names(self.sources, result.images), strict=True
        ):
            if name is None:
                files.append(None)
                continue
            target = out / name
            content = await self._owner._fetch(image.url)
            await asyncio.to_thread(target.write_bytes, content)
            files.append(target)
        return files

    async def cancel(self) -> TaskStatus:
        """Close the task on the server (this server's ``POST /v3/pic/rw/close/{task_id}``,
        an extension of the contract): unfinished images fail, status becomes ``5``. A
        finished task stays as it is; its status is returned."""
        data = await self._owner._call(self._owner._wire.close(self.id))
        return parse_closed(data)

    def close(self) -> None:
        """Release this handle. The seed contract has no call to close or delete a task, so
        nothing is sent: the handle drops its client and cached result, and further use of
        it raises. (``cancel()`` is the server-side close.)"""
        self._client = None
        self._last = None

    async def __aenter__(self) -> AsyncTask:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def _owner(self) -> AsyncClient:
        if self._client is None:
            raise PhotoEraserError(NO_ANSWER, f"task handle {self.id} is closed")
        return self._client
