"""Test support: a local image host, a real server process, and generated images."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from photo_eraser.config import Settings
from photo_eraser.service import open_store
from photo_eraser.tasks.store import TaskStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like RGB uint8 image (gradients plus mild noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / (37 + seed)) * np.cos(y / 53)
    g = 128 + 90 * np.cos((x + y) / 71)
    b = 64 + 150 * (x / max(1, width))
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG", **kw: object) -> bytes:
    """``pixels`` (RGB uint8 HxWx3, gray uint8 HxW, or a bool mask: True = 255) as a file."""
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    buf = io.BytesIO()
    mode = "L" if pixels.ndim == 2 else "RGB"
    Image.fromarray(pixels, mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)``, end-exclusive: the convention of ``engines.base.mask_bbox``."""


def rect_mask(height: int, width: int, *boxes: Box) -> np.ndarray:
    """A bool ``height`` x ``width`` mask (True = restore) of the ``boxes``; ``encode`` makes
    it a mask file."""
    mask = np.zeros((height, width), bool)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def psnr(result: np.ndarray, truth: np.ndarray, where: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio of ``result`` against ``truth`` in dB (8-bit range), over the
    pixels ``where`` is True (all by default)."""
    if where is not None:
        result, truth = result[where], truth[where]
    err = result.astype(np.float64) - truth.astype(np.float64)
    return float(10 * np.log10(255**2 / max(float(np.mean(err**2)), 1e-12)))


def rgba_mask_png(side: int, seed: int) -> bytes:
    """A ``side`` x ``side`` RGBA PNG, transparent but for one painted square (compresses to
    a few hundred KB, decodes to 4 bytes a pixel)."""
    pixels = np.zeros((side, side, 4), np.uint8)
    x = 100 + 37 * seed
    pixels[x : x + 200, x : x + 300] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Resource:
    body: bytes
    content_type: str = "image/png"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    gate: threading.Event | None = None


class ImageHost:
    """A real HTTP server on 127.0.0.1 standing in for the customer's image host."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                host.requests.append(self.path)
                res = host.resources.get(self.path)
                if res is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if res.gate is not None:
                    res.gate.wait(30)
                self.send_response(res.status)
                self.send_header("Content-Type", res.content_type)
                self.send_header("Content-Length", str(len(res.body)))
                for k, v in res.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(res.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, path: str, body: bytes, **kw: object) -> str:
        self.resources[path] = Resource(body, **kw)  # type: ignore[arg-type]
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        for res in self.resources.values():
            if res.gate is not None:
                res.gate.set()
        self.server.shutdown()
        self.server.server_close()


class PortTaken(Exception):
    """Another process bound the port between our choosing it and the server binding it."""


class ServerProcess:
    """``photo-eraser serve`` in a child process, as a user would run it."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PHOTO_ERASER_DATA_DIR": str(data_dir),
            "PHOTO_ERASER_ALLOW_PRIVATE_URLS": "1",
            "PHOTO_ERASER_WORKERS": "1",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"

    def start(self) -> ServerProcess:
        """Start and wait for /healthz; retry on another port if ours was taken meanwhile."""
        for _ in range(3):
            try:
                return self._start_once()
            except PortTaken:
                self.port = free_port()
                self.base_url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError("no free port after 3 tries")

    def _start_once(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "photo_eraser", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log_path.read_text()[log_start:]
                if "address already in use" in log:
                    raise PortTaken
                raise RuntimeError(f"server exited: {log[-3000:]}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start in 60 s")

    def stop(self) -> None:
        stop_process(self.proc)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args)

    def create_key(self, name: str = "test") -> tuple[str, str]:
        return create_key(self.env, name)

    def revoke_key(self, appkey: str) -> bool:
        with env_store(self.env) as store:
            return store.revoke_key(appkey)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``photo-eraser ARGS`` with ``env``, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "photo_eraser", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextmanager
def env_store(env: dict[str, str]) -> Iterator[TaskStore]:
    """The task store of the database that ``env`` (``PHOTO_ERASER_*`` variables) names, as
    the ``photo-eraser keys`` commands open it."""
    prefix = "PHOTO_ERASER_"
    values = {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    store = open_store(Settings(**values))
    try:
        yield store
    finally:
        store.engine.dispose()


def create_key(env: dict[str, str], name: str = "test") -> tuple[str, str]:
    """A new key of the database ``env`` names: ``(appkey, appsecret)``, made through the
    store as ``photo-eraser keys create`` makes it (test_cli runs the command itself)."""
    with env_store(env) as store:
        return store.create_key(name)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ApiClient:
    """A thin client of the seed contract, as an integrating customer would write it."""

    def __init__(
        self,
        base_url: str,
        appkey: str,
        appsecret: str,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = base64.b64encode(f"{appkey}:{appsecret}".encode()).decode()
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
            timeout=30,
            transport=transport,
        )

    def create(
        self, images: list[str], mask: str, priority: int = 1, **extra: object
    ) -> httpx.Response:
        return self.http.post(
            "/v3/pic/rw/batch", json={"images": images, "mask": mask, "priority": priority, **extra}
        )

    def create_ok(self, images: list[str], mask: str, priority: int = 1, **extra: object) -> str:
        r = self.create(images, mask, priority, **extra)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["code"] == 0 and body["msg"] == ""
        return str(body["data"]["task_id"])

    def result(self, task_id: str) -> httpx.Response:
        return self.http.get(f"/v3/pic/rw/result/{task_id}")

    def wait(
        self, task_id: str, timeout: float = 60, until: tuple[str, ...] = ("3", "4", "5", "6")
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.result(task_id)
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            if data["status"] in until:
                return dict(data)
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} still {data['status']} after {timeout} s")

    def close(self) -> None:
        self.http.close()
