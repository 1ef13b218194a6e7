"""The Python SDK (``photo_eraser.client``) against the real server (``LocalServer`` on a real
socket), sync and async; its retries against the server's own rate limit and against a small
stand-in that answers 503/500/429 on demand (the service does not, cheaply)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from photo_eraser.client import (
    NO_ANSWER,
    AsyncClient,
    AuthError,
    BadRequestError,
    Client,
    ImageStatus,
    NotFoundError,
    PhotoEraserError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    TaskStatus,
    TimeoutExceeded,
)
from tests.inprocess import LocalServer

W, H = 320, 256
BOX = (100, 140, 120, 200)


def sdk(server: LocalServer) -> Client:
    """A client with a new key of ``server``, polling at least twice a second."""
    appkey, appsecret = server.create_key("sdk")
    return Client(server.base_url, appkey, appsecret, min_poll=0.05, max_poll=0.5)


def files(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    pixels = photo(W, H, seed=3)
    image = tmp_path / "shop photo.png"
    image.write_bytes(encode(pixels))
    mask = tmp_path / "mask.png"
    mask.write_bytes(encode(rect_mask(H, W, BOX)))
    return image, mask, pixels


def outside_unchanged(path: Path, original: np.ndarray) -> bool:
    restored = np.asarray(Image.open(path).convert("RGB"))
    keep = ~rect_mask(H, W, BOX)
    return restored.shape == original.shape and bool((restored[keep] == original[keep]).all())


def test_submit_wait_result_download(
    server: LocalServer, image_host: ImageHost, tmp_path: Path
) -> None:
    pixels = photo(W, H, seed=1)
    good = image_host.add("/sdk/a.png", encode(pixels))
    missing = image_host.url("/sdk/missing.png")
    with sdk(server) as client:
        task = client.submit([good, missing], b64(encode(rect_mask(H, W, BOX))), engine="opencv")
        result = task.wait(timeout=60)
        assert result.status is TaskStatus.COMPLETE and result.finished
        first, second = result.images
        assert first.ok and first.status is ImageStatus.DONE and first.method == "opencv"
        assert first.reason == "" and first.url.startswith(server.base_url)
        assert second.status is ImageStatus.FAILED and "404" in second.reason and not second.url
        assert task.result() is result  # the final answer is kept, not polled again
        out = task.download(tmp_path / "out")
        assert out == [tmp_path / "out" / "a.png", None]
        assert outside_unchanged(tmp_path / "out" / "a.png", pixels)
        task.close()
        with pytest.raises(PhotoEraserError, match="closed"):
            task.result()


def test_erase_uploads_local_files_first(server: LocalServer, tmp_path: Path) -> None:
    image, mask, pixels = files(tmp_path)
    with sdk(server) as client:
        # A Path and a str naming a file: both uploaded (the server cannot read our disk).
        erased = client.erase([image, str(image)], str(mask), tmp_path / "out", engine="opencv")
    assert erased.result.status is TaskStatus.COMPLETE
    names = [p.name if p else None for p in erased.files]
    assert names == ["shop photo-0.png", "shop photo-1.png"]
    assert all(p is not None and outside_unchanged(p, pixels) for p in erased.files)


def test_async_client(server: LocalServer, tmp_path: Path) -> None:
    image, mask, pixels = files(tmp_path)
    appkey, appsecret = server.create_key("sdk-async")

    async def main() -> None:
        async with AsyncClient(
            server.base_url, appkey, appsecret, min_poll=0.05, max_poll=0.5
        ) as c:
            async with await c.submit([image], mask, priority=9) as task:
                result = await task.wait(timeout=60)
                assert result.status is TaskStatus.COMPLETE
                (only,) = result.images
                assert only.ok and only.method
                share = only.recovered_share
                assert share is None or 0.0 <= share <= 1.0
                (path,) = await task.download(tmp_path / "async")
                assert path is not None and outside_unchanged(path, pixels)
            # The mask as bytes: uploaded as a mask.
            erased = await c.erase([image], mask.read_bytes(), tmp_path / "erase", engine="opencv")
            assert erased.files == [tmp_path / "erase" / "shop photo.png"]
            with pytest.raises(NotFoundError) as info:
                await c.task("00000000-0000-4000-8000-000000000000").result()
            assert info.value.code == 40401
        async with AsyncClient(server.base_url, appkey, "wrong") as bad:
            with pytest.raises(AuthError) as info2:
                await bad.submit(["https://example.com/a.png"], mask)
            assert info2.value.code == 40102 and info2.value.status_code == 401

    asyncio.run(main())


def test_errors_carry_code_and_msg(server: LocalServer, image_host: ImageHost) -> None:
    url = image_host.add("/sdk/e.png", encode(photo(W, H)))
    mask = b64(encode(rect_mask(H, W, BOX)))
    appkey, _ = server.create_key("sdk-err")
    with Client(server.base_url, appkey, "not-the-secret") as bad, pytest.raises(AuthError) as auth:
        bad.submit([url], mask)
    assert auth.value.code == 40102 and auth.value.msg
    with sdk(server) as client:
        with pytest.raises(BadRequestError) as bad_request:
            client.submit([url], mask, priority=10)
        assert bad_request.value.code == 40001
        assert bad_request.value.msg.startswith("priority")
        with pytest.raises(NotFoundError):
            client.task("no-such-task").result()
        # An image neither a URL nor a file: refused before anything is sent.
        with pytest.raises(BadRequestError) as not_a_file:
            client.submit([url, "no/such/file.png"], mask)
        assert not_a_file.value.code == NO_ANSWER
        assert not_a_file.value.msg.startswith("images.1: not an http(s) URL nor a file")
        # Extensions the server does not know are passed through and ignored by it.
        task = client.submit([url], mask, engine="opencv", not_an_extension={"x": 1})
        assert task.wait(60).status is TaskStatus.COMPLETE


def test_wait_timeout_then_cancel(tmp_path: Path, image_host: ImageHost) -> None:
    idle = LocalServer(tmp_path / "idle", listen=True, workers=0).start()  # nothing runs
    try:
        url = image_host.add("/sdk/w.png", encode(photo(W, H)))
        with sdk(idle) as client:
            task = client.submit([url], b64(encode(rect_mask(H, W, BOX))))
            started = time.monotonic()
            with pytest.raises(TimeoutExceeded) as info:
                task.wait(timeout=0.5)
            assert isinstance(info.value, TimeoutError) and info.value.code == NO_ANSWER
            assert 0.4 < time.monotonic() - started < 5
            assert task.result().status is TaskStatus.WAITING
            assert task.cancel() is TaskStatus.CLOSED
            closed = task.wait(timeout=5)
            assert closed.status is TaskStatus.CLOSED
            assert closed.images[0].reason == "task closed by client"
    finally:
        idle.stop()


def test_the_servers_rate_limit_is_waited_out(tmp_path: Path, image_host: ImageHost) -> None:
    limited = LocalServer(tmp_path / "rl", listen=True, workers=0, rate_limit_per_minute=60)
    limited.start()
    try:
        url = image_host.add("/sdk/r.png", encode(photo(W, H)))
        mask = b64(encode(rect_mask(H, W, BOX)))
        appkey, appsecret = limited.create_key("sdk-rl")
        raw = limited.client(appkey, appsecret)
        for _ in range(200):  # the key's whole bucket, until the server says 429
            if raw.create([url], mask).status_code == 429:
                break
        else:
            pytest.fail("the rate limit never answered 429")
        raw.close()
        # Retry-After is 1 s here: waited out (how long is the stand-in tests' to measure:
        # a token may come back between the 429 above and this request).
        with Client(limited.base_url, appkey, appsecret) as client:
            assert client.submit([url], mask).id
    finally:
        limited.stop()


def test_the_servers_open_task_cap_is_raised_past_max_wait(
    tmp_path: Path, image_host: ImageHost
) -> None:
    capped = LocalServer(tmp_path / "cap", listen=True, workers=0, max_open_tasks_per_key=1)
    capped.start()
    try:
        url = image_host.add("/sdk/c.png", encode(photo(W, H)))
        mask = b64(encode(rect_mask(H, W, BOX)))
        appkey, appsecret = capped.create_key("sdk-cap")
        with Client(capped.base_url, appkey, appsecret, retry=RetryPolicy(max_wait=5)) as client:
            first = client.submit([url], mask)
            started = time.monotonic()
            with pytest.raises(RateLimitedError) as info:
                client.submit([url], mask)
            # Retry-After: 10 is longer than max_wait: raised at once, not slept on.
            assert info.value.code == 42902 and info.value.retry_after == 10
            assert time.monotonic() - started < 3
            assert first.cancel() is TaskStatus.CLOSED  # the slot is free again
            assert client.submit([url], mask).id
    finally:
        capped.stop()


class StandIn:
    """A real HTTP server answering each request with the next of a script of
    ``(status, headers, body)`` (the last one repeats), recording what it was sent."""

    def __init__(self, script: list[tuple[int, dict[str, str], dict]], delay: float = 0) -> None:
        self.script = script
        self.seen: list[tuple[str, str, float, bytes]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                stand_in.seen.append((self.command, self.path, time.monotonic(), body))
                index = min(len(stand_in.seen), len(stand_in.script)) - 1
                status, headers, payload = stand_in.script[index]
                if delay:
                    time.sleep(delay)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[list[StandIn]]:
    made: list[StandIn] = []
    yield made
    for s in made:
        s.close()


def envelope(code: int, msg: str = "", **data: object) -> dict:
    return {"code": code, "msg": msg, "data": data}


CREATED = (200, {}, envelope(0, task_id="t-1"))
DONE = (200, {}, envelope(0, status="3", wait_time="0", list=[]))
BUSY = (503, {"Retry-After": "1"}, envelope(50302, "too many creates in flight"))


def test_503_retried_after_retry_after_with_extensions_passed(stand_in: list[StandIn]) -> None:
    s = StandIn([BUSY, CREATED])
    stand_in.append(s)
    with Client(s.url, "k", "s") as client:
        task = client.submit(
            ["https://shop.example/a.png"],
            "https://shop.example/m.png",
            priority=2,
            sync=True,
            rectangles=[[1, 2, 3, 4]],
        )
    assert task.id == "t-1" and len(s.seen) == 2
    assert s.seen[1][2] - s.seen[0][2] >= 1.0  # Retry-After: 1 honoured
    body = json.loads(s.seen[1][3])
    assert body == {
        "images": ["https://shop.example/a.png"],
        "mask": "https://shop.example/m.png",
        "priority": 2,
        "engine": "auto",
        "sync": True,
        "rectangles": [[1, 2, 3, 4]],
    }


def test_retries_are_bounded_and_creates_not_replayed_after_500(stand_in: list[StandIn]) -> None:
    policy = RetryPolicy(max_retries=2, backoff=0.01)
    always_busy = StandIn([(503, {}, envelope(50301, "database unreachable"))])
    broken = StandIn([(500, {}, envelope(50001, "internal error")), DONE])
    stand_in += [always_busy, broken]
    with Client(always_busy.url, "k", "s", retry=policy) as client:
        with pytest.raises(ServerError) as info:
            client.task("t-1").result()
        assert info.value.code == 50301 and len(always_busy.seen) == 3
    with Client(broken.url, "k", "s", retry=policy) as client:
        # A create answered 500 may have made the task: not sent again.
        with pytest.raises(ServerError) as info:
            client.submit(["https://shop.example/a.png"], "https://shop.example/m.png")
        assert info.value.code == 50001 and len(broken.seen) == 1
        assert client.task("t-1").result().status is TaskStatus.COMPLETE  # a poll is retried
        assert len(broken.seen) == 2


def test_request_timeout_and_refused_connection(stand_in: list[StandIn]) -> None:
    slow = StandIn([DONE], delay=1.0)
    stand_in.append(slow)
    policy = RetryPolicy(max_retries=1, backoff=0.01)
    with (
        Client(slow.url, "k", "s", timeout=0.2, retry=policy) as client,
        pytest.raises(TimeoutExceeded),
    ):
        client.task("t-1").result()
    assert len(slow.seen) == 2  # a poll is replayable: tried twice
    with Client("http://127.0.0.1:9", "k", "s", retry=policy) as client:
        with pytest.raises(ServerError) as info:
            client.task("t-1").result()
        assert info.value.code == NO_ANSWER


def test_async_429_retried(stand_in: list[StandIn]) -> None:
    s = StandIn([(429, {"Retry-After": "1"}, envelope(42901, "rate limit")), DONE])
    stand_in.append(s)

    async def main() -> None:
        async with AsyncClient(s.url, "k", "s") as client:
            result = await client.task("t-1").wait(timeout=10)
        assert result.status is TaskStatus.COMPLETE

    asyncio.run(main())
    assert len(s.seen) == 2 and s.seen[1][2] - s.seen[0][2] >= 1.0


def test_wait_sleeps_by_the_servers_wait_time(stand_in: list[StandIn]) -> None:
    waiting = (200, {}, envelope(0, status="1", wait_time="1", list=[]))
    s = StandIn([waiting, waiting, DONE])
    stand_in.append(s)
    seen: list[TaskStatus] = []
    with Client(s.url, "k", "s", min_poll=0.01) as client:
        result = client.task("t-1").wait(timeout=10, on_poll=lambda r: seen.append(r.status))
    assert result.status is TaskStatus.COMPLETE
    assert seen == [TaskStatus.WAITING, TaskStatus.WAITING, TaskStatus.COMPLETE]
    gaps = [b[2] - a[2] for a, b in zip(s.seen, s.seen[1:], strict=False)]
    assert all(1.0 <= gap < 2.0 for gap in gaps), gaps  # wait_time plus up to 20 % jitter


def test_retry_after_longer_than_max_wait_is_raised_at_once(stand_in: list[StandIn]) -> None:
    s = StandIn([(429, {"Retry-After": "120"}, envelope(42902, "too many open tasks"))])
    stand_in.append(s)
    with Client(s.url, "k", "s") as client, pytest.raises(RateLimitedError) as info:
        client.submit(["https://shop.example/a.png"], "https://shop.example/m.png")
    assert info.value.code == 42902 and info.value.retry_after == 120
    assert len(s.seen) == 1
