"""Hostile requests found by attacking the running service: each is answered with the
documented 4xx envelope, never a 500, and never breaks the kept-alive connection."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import pytest
import uvicorn
from fastapi import FastAPI

from harness.client import ApiClient
from harness.server import free_port
from photo_eraser.api.errors import InternalErrorMiddleware
from tests.inprocess import LocalServer

FUTURE = int(time.time()) + 3600


def exchange(port: int, requests: list[bytes]) -> list[tuple[int, dict]]:
    """Send ``requests`` one after another on ONE connection; (status, JSON body) of each.

    Fails if the server closes the connection before every request is answered."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rb")
        for request in requests:
            sock.sendall(request)
            answers.append(read_response(stream))
    return answers


def read_response(stream: BinaryIO) -> tuple[int, dict]:
    """(status, JSON body) of one response; fails if the server closed the connection or
    said it will."""
    status_line = stream.readline()
    assert status_line, "the server closed the connection"
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
        assert name.lower() != "connection" or "close" not in value.lower(), line
    return int(status_line.split()[1]), json.loads(stream.read(length)) if length else {}


def http(
    method: str, path: str, headers: dict[str, bytes] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    lines += [name.encode() + b": " + value for name, value in (headers or {}).items()]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"", b""]
    return b"\r\n".join(lines) + body


def basic(client: ApiClient) -> bytes:
    return client.http.headers["Authorization"].encode()


HEALTH = http("GET", "/healthz")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_non_ascii_signature_is_403_and_keeps_the_connection(
    server: LocalServer, method: str
) -> None:
    path = f"/v3/pic/rw/files/results/x/0.png?expires={FUTURE}&signature=%C3%A9"
    request = http(method, path)
    if method == "HEAD":  # no body to read: check the status alone, then the next request
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request)
            assert sock.recv(65536).split(b"\r\n", 1)[0].endswith(b"403 Forbidden")
        return
    (status, body), (health, _) = exchange(server.port, [request, HEALTH])
    assert (status, body["code"], health) == (403, 40301, 200)


@pytest.mark.parametrize("value", [b"Basic \xc3\xa9\xc3\xa9", b"\xff\xfe", b"Basic YTpi\xe9"])
def test_non_ascii_authorization_is_401(server: LocalServer, value: bytes) -> None:
    request = http("GET", "/v3/pic/rw/result/abc", {"Authorization": value})
    (status, body), (health, _) = exchange(server.port, [request, HEALTH])
    assert status == 401 and body["code"] in (40101, 40102)
    assert health == 200


@pytest.mark.parametrize("depth", [40, 900, 2000, 100_000])
def test_deeply_nested_json_is_400(server: LocalServer, client: ApiClient, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    for raw in (nested, b'{"images": ' + nested + b', "mask": "x", "priority": 1}'):
        request = http("POST", "/v3/pic/rw/batch", {"Authorization": basic(client)}, raw)
        (status, body), (health, _) = exchange(server.port, [request, HEALTH])
        assert (status, body["code"], health) == (400, 40002, 200), body
        assert "nested deeper" in body["msg"]


def test_shallow_brackets_in_strings_do_not_count(client: ApiClient) -> None:
    """Positive control for the depth check: brackets inside strings are data, not nesting."""
    mask = "https://a.example/" + "[" * 100 + ".png"
    r = client.create(["https://a.example/x.png"], mask)
    assert r.status_code == 200, r.text


def test_duplicate_keys_are_400(client: ApiClient) -> None:
    body = b'{"images": ["https://a.example/x.png"], "mask": "https://a.example/m.png", '
    r = client.http.post("/v3/pic/rw/batch", content=body + b'"priority": 99, "priority": 1}')
    assert r.status_code == 400 and r.json()["code"] == 40002
    assert "'priority' more than once" in r.json()["msg"]
    nested = b'{"images": ["https://a.example/x.png"], "mask": "m", "priority": 1, "x": {"a": 1, "a": 2}}'
    assert client.http.post("/v3/pic/rw/batch", content=nested).status_code == 400


@pytest.mark.parametrize("port", ["99999", "0", "65536"])
def test_invalid_ports_are_400(client: ApiClient, port: str) -> None:
    r = client.create([f"https://a.example:{port}/x.png"], "https://a.example/m.png")
    assert r.status_code == 400 and r.json()["msg"].startswith("images.0: port")
    r = client.create(["https://a.example/x.png"], f"https://a.example:{port}/m.png")
    assert r.status_code == 400 and r.json()["msg"].startswith("mask: port")
    # Positive control: the highest valid port is accepted.
    assert client.create(["https://a.example:65535/x.png"], "https://a.example/m.png").is_success


def test_trailing_slash_is_a_404_envelope_not_a_redirect(
    server: LocalServer, client: ApiClient
) -> None:
    request = http(
        "POST", "/v3/pic/rw/batch/", {"Authorization": basic(client), "Host": b"evil.example"}
    )
    (status, body), (health, _) = exchange(server.port, [request, HEALTH])
    assert (status, body["code"], health) == (404, 40401, 200)
    assert "evil.example" not in json.dumps(body)


@pytest.fixture
def crashing_server() -> Iterator[int]:
    """A real uvicorn serving an app whose route raises, behind our middleware."""
    app = FastAPI()
    app.add_middleware(InternalErrorMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/ok")
    async def ok() -> dict[str, int]:
        return {"code": 0}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def test_an_internal_error_is_a_500_envelope_and_keeps_the_connection(crashing_server: int) -> None:
    (status, body), (after, ok) = exchange(
        crashing_server, [http("GET", "/boom"), http("GET", "/ok")]
    )
    assert status == 500 and body == {
        "code": 50001,
        "msg": "internal error; the request may be retried",
        "data": {},
    }
    assert (after, ok) == (200, {"code": 0})


def test_basic_credentials_with_non_utf8_are_401(server: LocalServer) -> None:
    token = base64.b64encode(b"\xff\xfe:\xff").decode()
    request = http("GET", "/v3/pic/rw/result/x", {"Authorization": f"Basic {token}".encode()})
    [(status, body)] = exchange(server.port, [request])
    assert (status, body["code"]) == (401, 40102)


@pytest.mark.parametrize(
    ("raw", "msg"),
    [
        (b'{"images": [], "x": [' + b"[]," * 5000 + b"[]]}", "more than 4096 values"),
        ('{"images": ["https://a.example/x.png"]}'.encode("utf-16"), "not UTF-8"),
        # Valid UTF-8 (NULs between the letters), but not JSON any more.
        ('{"images": ["https://a.example/x.png"]}'.encode("utf-32-le"), "not valid JSON"),
        (b'\xef\xbb\xbf{"priority": 1}', "not valid JSON"),  # a byte-order mark
        (b'{"images": ["https://a.example/x.png"], "mask": "m", "priority": 1, "x": NaN}', "NaN"),
        (b'{"priority": Infinity}', "Infinity is not a JSON value"),
    ],
    ids=["many-values", "utf-16", "utf-32", "bom", "nan", "infinity"],
)
def test_bodies_json_does_not_allow_are_400(client: ApiClient, raw: bytes, msg: str) -> None:
    r = client.http.post("/v3/pic/rw/batch", content=raw)
    assert r.status_code == 400 and r.json()["code"] == 40002, r.text
    assert msg in r.json()["msg"]


@pytest.fixture(scope="module")
def narrow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, ApiClient]]:
    """Two creates handled at once at most, and one second for a body to arrive."""
    server = LocalServer(
        tmp_path_factory.mktemp("narrow"),
        listen=True,
        workers=0,
        max_pending_creates=2,
        body_timeout_seconds=1,
    ).start()
    client = server.new_client("narrow")
    yield server, client
    client.close()
    server.stop()


def test_slow_bodies_hold_no_place_and_time_out(narrow: tuple[LocalServer, ApiClient]) -> None:
    """Four clients trickle their bodies; others' creates still pass, and the slow ones get a
    408 once the body timeout is up."""
    server, client = narrow
    head = http("POST", "/v3/pic/rw/batch", {"Authorization": basic(client)}, b"x" * 80)
    slow = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(head[: len(head) - 75])  # the headers and five bytes of the body
        slow.append(sock)
    try:
        ok = client.create(["https://a.example/x.png"], "https://a.example/m.png")
        assert ok.status_code == 200, ok.text
        for sock in slow:
            status, body = read_response(sock.makefile("rb"))
            assert (status, body["code"]) == (408, 40801)
    finally:
        for sock in slow:
            sock.close()


def test_a_client_that_leaves_mid_body_is_not_an_internal_error(
    narrow: tuple[LocalServer, ApiClient],
) -> None:
    server, client = narrow
    head = http("POST", "/v3/pic/rw/batch", {"Authorization": basic(client)}, b"x" * 80)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head[: len(head) - 75])
    time.sleep(0.5)
    log = server.log_text()
    assert "unhandled error" not in log and "Traceback" not in log
    assert client.create(["https://a.example/x.png"], "https://a.example/m.png").is_success


BIG_BODY = (
    b'{"images": ["https://a.example/x.png"], "priority": 1, "mask": "' + b"A" * 700_000 + b'"}'
)
"""A 700 KB create body; its mask does not decode, so once read in full it is a 400."""


@pytest.fixture
def budget_server(tmp_path: Path) -> Iterator[Callable[..., LocalServer]]:
    """Start a server with the given body limits (no workers); stopped after the test."""
    started: list[LocalServer] = []

    def start(buffer_mb: int, body_bytes: int) -> LocalServer:
        server = LocalServer(
            tmp_path / f"data{len(started)}",
            listen=True,
            workers=0,
            max_body_buffer_mb=buffer_mb,
            max_body_bytes=body_bytes,
            # One key may hold one upload at least: keep uploads within the body size too.
            max_image_bytes=body_bytes // 2,
        )
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@contextmanager
def trickling(server: LocalServer, client: ApiClient) -> Iterator[list[tuple[int, dict]]]:
    """`BIG_BODY` sent but for its last ten bytes while the block runs, so the server holds it
    in the budget; then the rest, and its answer is put in the list yielded."""
    request = http("POST", "/v3/pic/rw/batch", {"Authorization": basic(client)}, BIG_BODY)
    answer: list[tuple[int, dict]] = []
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request[:-10])
        time.sleep(0.3)
        yield answer
        sock.sendall(request[-10:])
        answer.append(read_response(sock.makefile("rb")))


def test_bodies_held_at_once_are_bounded(budget_server: Callable[..., LocalServer]) -> None:
    """Bodies in memory at once are bounded in all (1 MB here) and per key (at least one body,
    here also 1 MB as the budget is small). While one 700 KB upload is still arriving, a second
    of that key gets 503; once the first is done the bytes are given back."""
    server = budget_server(buffer_mb=1, body_bytes=1_000_000)
    client = server.new_client("budget")
    with trickling(server, client) as first:
        second = client.http.post("/v3/pic/rw/batch", content=BIG_BODY)
        assert second.status_code == 503 and second.json()["code"] == 50302, second.text
        assert second.headers["Retry-After"] == "1"
    [(status, answer)] = first
    assert status == 400 and answer["msg"].startswith("mask:")  # the body was read
    again = client.http.post("/v3/pic/rw/batch", content=BIG_BODY)
    assert again.status_code == 400  # not 503: the first gave its bytes back
    client.close()


def test_one_key_cannot_take_the_whole_body_budget(
    budget_server: Callable[..., LocalServer],
) -> None:
    """A 4 MB budget, 1 MB bodies: one key may hold a quarter (1 MB). While it trickles one
    upload, its next is refused, and another key's passes."""
    server = budget_server(buffer_mb=4, body_bytes=1 << 20)
    greedy = server.new_client("greedy")
    other = server.new_client("other")
    with trickling(server, greedy):
        refused = greedy.http.post("/v3/pic/rw/batch", content=BIG_BODY)
        assert refused.status_code == 503, refused.text
        assert "this key is sending" in refused.json()["msg"]
        assert other.http.post("/v3/pic/rw/batch", content=BIG_BODY).status_code == 400
    greedy.close()
    other.close()
