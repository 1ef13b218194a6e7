"""``photo-eraser`` as a user runs it: the server and the CLI in processes of their own, and
keys made in the database they use."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from photo_eraser.config import Settings
from photo_eraser.service import open_store
from photo_eraser.tasks.store import TaskStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortTaken(Exception):
    """Another process bound the port between our choosing it and the server binding it."""


class EnvCommands:
    """The CLI and the key store of the service an environment (``self.env``) points at."""

    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.env, *args)

    def create_key(self, name: str = "test") -> tuple[str, str]:
        return create_key(self.env, name)

    def revoke_key(self, appkey: str) -> bool:
        with env_store(self.env) as store:
            return store.revoke_key(appkey)


class ServerProcess(EnvCommands):
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
            # Never a download from the internet in a test: a test that wants the auto-pull
            # passes PHOTO_ERASER_AUTO_PULL=1 with a manifest on a local server.
            "PHOTO_ERASER_AUTO_PULL": "0",
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


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``photo-eraser ARGS`` with ``env``, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "photo_eraser", *args],
        env={"PHOTO_ERASER_AUTO_PULL": "0", **env},
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
