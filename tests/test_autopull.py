"""The server's model auto-pull, against a local HTTP server holding a stand-in LaMa model
(an ONNX model built here) named by a test manifest. Nothing leaves the machine."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import onnx
import pytest

from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from harness.server import ServerProcess, free_port
from photo_eraser.models.manager import MANIFEST_ENV, PART_SUFFIX
from tests.inprocess import LocalServer
from tests.test_lama import build_model

W, H = 400, 300
BOX = (100, 160, 150, 250)  # y0, y1, x0, x1
FILE = "lama_fp32.onnx"


def stand_in(path: Path, padding: int = 0) -> bytes:
    """A working stand-in model; ``padding`` bytes of metadata make it big enough to be cut."""
    build_model(path, kind="fill", size=(64, 64))
    if padding:
        model = onnx.load(path)
        entry = model.metadata_props.add()
        entry.key, entry.value = "padding", "x" * padding
        onnx.save(model, path)
    return path.read_bytes()


@dataclass
class ModelHost:
    """A local HTTP server of one file, with HTTP Range; it can stop mid-body."""

    body: bytes
    hold_after: int | None = None
    """Send this many body bytes, then hold the connection until ``release`` is set."""
    ranges: list[str | None] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""


@pytest.fixture
def model_host() -> Iterator[Callable[[bytes], ModelHost]]:
    servers: list[tuple[ThreadingHTTPServer, ModelHost]] = []

    def start(body: bytes) -> ModelHost:
        state = ModelHost(body)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        state.url = f"http://127.0.0.1:{httpd.server_address[1]}/{FILE}"
        servers.append((httpd, state))
        return state

    yield start
    for httpd, state in servers:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()


def _handler(state: ModelHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            requested = self.headers.get("Range")
            state.ranges.append(requested)
            start = int(requested.removeprefix("bytes=").split("-")[0]) if requested else 0
            self.send_response(206 if requested else 200)
            if requested:
                total = len(state.body)
                self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
            body = state.body[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.hold_after is not None:
                self.wfile.write(body[: state.hold_after])
                self.wfile.flush()
                state.held.set()
                state.release.wait(60)
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


def write_manifest(path: Path, url: str, body: bytes, sha: str | None = None) -> Path:
    entry = {
        "file": FILE,
        "size": len(body),
        "sha256": sha or hashlib.sha256(body).hexdigest(),
        "license": "test",
        "url": url,
    }
    path.write_text(json.dumps({"lama": entry}))
    return path


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def lama_available(server: LocalServer) -> bool:
    return bool(server.http.get("/healthz").json()["data"]["engines"]["lama"])


def restore_one(server: LocalServer, image_host: ImageHost, name: str) -> dict[str, str]:
    """Restore one photo with ``auto``; the finished item."""
    client = server.new_client()
    url = image_host.add(f"/autopull/{name}.png", encode(photo(W, H, seed=7)))
    data = client.wait(client.create_ok([url], b64(encode(rect_mask(H, W, BOX))), engine="auto"))
    client.close()
    assert data["status"] == "3", data
    item: dict[str, str] = data["list"][0]
    return item


def test_serve_pulls_lama_logs_progress_and_auto_uses_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model_host: Callable[[bytes], ModelHost],
    image_host: ImageHost,
) -> None:
    body = stand_in(tmp_path / "stand_in.onnx", padding=300_000)
    host = model_host(body)
    monkeypatch.setenv(MANIFEST_ENV, str(write_manifest(tmp_path / "m.json", host.url, body)))
    server = LocalServer(tmp_path / "data", auto_pull=True).start()
    try:
        wait_for(lambda: lama_available(server), "the model to be installed")
        installed = tmp_path / "data" / "models" / FILE
        assert installed.read_bytes() == body
        assert not (installed.parent / (FILE + PART_SUFFIX)).exists()
        logs = server.log_text()
        assert "model auto-pull started" in logs
        assert "model download progress" in logs
        wait_for(lambda: "model auto-pull installed" in server.log_text(), "the installed line")
        item = restore_one(server, image_host, "after")
        assert "lama" in item["method"], item  # one image: restore hands the mask to LaMa
        assert host.ranges == [None]  # one download, from the start
    finally:
        server.stop()

    # The next start finds the model installed: nothing is downloaded again.
    again = LocalServer(tmp_path / "data", auto_pull=True).start()
    try:
        assert lama_available(again) and "model auto-pull" not in again.log_text()
    finally:
        again.stop()
    assert host.ranges == [None]


def test_offline_logs_one_line_and_serves_with_the_weight_free_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_host: ImageHost
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/{FILE}"  # nothing listens there
    body = b"never served"
    monkeypatch.setenv(MANIFEST_ENV, str(write_manifest(tmp_path / "m.json", nowhere, body)))
    server = LocalServer(tmp_path / "data", auto_pull=True).start()
    try:
        wait_for(lambda: "model auto-pull failed" in server.log_text(), "the failure line")
        failed = [line for line in server.log_text().splitlines() if "auto-pull failed" in line]
        assert len(failed) == 1 and failed[0].startswith("WARNING"), failed
        assert "Traceback" not in server.log_text()
        assert not lama_available(server)
        item = restore_one(server, image_host, "offline")
        assert item["method"] in ("opencv", "patchmatch"), item
    finally:
        server.stop()


def test_auto_pull_off_downloads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_host: Callable[[bytes], ModelHost]
) -> None:
    body = stand_in(tmp_path / "stand_in.onnx")
    host = model_host(body)
    monkeypatch.setenv(MANIFEST_ENV, str(write_manifest(tmp_path / "m.json", host.url, body)))
    server = LocalServer(tmp_path / "data").start()  # the harness's default: off
    try:
        assert not lama_available(server)
        assert "auto-pull" not in server.log_text()
    finally:
        server.stop()
    assert host.ranges == []
    # The positive control: the same setup with the auto-pull on downloads.
    server = LocalServer(tmp_path / "data", auto_pull=True).start()
    try:
        wait_for(lambda: lama_available(server), "the model to be installed")
    finally:
        server.stop()
    assert host.ranges == [None]


def test_a_download_that_fails_its_checksum_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_host: Callable[[bytes], ModelHost]
) -> None:
    body = stand_in(tmp_path / "stand_in.onnx")
    host = model_host(body)
    manifest = write_manifest(tmp_path / "m.json", host.url, body, sha="0" * 64)
    monkeypatch.setenv(MANIFEST_ENV, str(manifest))
    server = LocalServer(tmp_path / "data", auto_pull=True).start()
    try:
        wait_for(lambda: "model auto-pull failed" in server.log_text(), "the failure line")
        assert "failed verification" in server.log_text()
        models = tmp_path / "data" / "models"
        assert not (models / FILE).exists() and not (models / (FILE + PART_SUFFIX)).exists()
        assert not lama_available(server)
        assert host.ranges == [None]
    finally:
        server.stop()


@pytest.mark.process
def test_a_server_killed_mid_pull_resumes_the_download_on_restart(
    tmp_path: Path, model_host: Callable[[bytes], ModelHost]
) -> None:
    body = stand_in(tmp_path / "stand_in.onnx", padding=400_000)
    host = model_host(body)
    host.hold_after = 250_000
    manifest = write_manifest(tmp_path / "m.json", host.url, body)
    env = {"PHOTO_ERASER_AUTO_PULL": "1", MANIFEST_ENV: str(manifest)}
    part = tmp_path / "data" / "models" / (FILE + PART_SUFFIX)
    server = ServerProcess(tmp_path / "data", **env).start()
    try:
        assert host.held.wait(30), "the download never started"
        # Past the file object's buffer: some of the bytes sent are on disk.
        wait_for(lambda: part.exists() and part.stat().st_size > 200_000, "the part file")
        server.kill9()
    finally:
        server.stop()
    kept = part.stat().st_size
    assert 0 < kept <= 250_000
    host.hold_after = None
    host.release.set()

    server = ServerProcess(tmp_path / "data", **env).start()
    try:
        health = lambda: httpx.get(server.base_url + "/healthz").json()["data"]  # noqa: E731
        wait_for(lambda: health()["engines"]["lama"] is True, "the model after the restart")
        installed = tmp_path / "data" / "models" / FILE
        assert (
            hashlib.sha256(installed.read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()
        )
        assert not part.exists()
        assert host.ranges == [None, f"bytes={kept}-"]  # resumed where the part file ended
        log = server.log_path.read_text()
        assert "model download progress" in log and "model auto-pull installed" in log
    finally:
        server.stop()
