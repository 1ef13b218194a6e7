"""A full disk: the server says so (503 naming disk space, /healthz degraded), a task that
could not save its results fails with that reason, and the log says it once, not per poll.

The data directory is a small tmpfs mounted for the test (needs root, as in CI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import b64, encode, rect_mask
from harness.server import ServerProcess

# Server processes on a tmpfs that only root can mount.
pytestmark = [pytest.mark.process, pytest.mark.services]

MiB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB filesystem of its own, removed after the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        if os.environ.get("PHOTO_ERASER_REQUIRE_SERVICES") == "1":
            pytest.fail("the disk-full tests need root to mount a tmpfs, and CI runs as root")
        pytest.skip("mounting a small tmpfs for the disk-full tests needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount_point)], check=True
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def serve_on(small_disk: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start a server whose data directory is on the small disk (its log is not); stopped
    after the test."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        server = ServerProcess(small_disk / "data", **env)
        server.log_path = small_disk.parent / "server.log"  # keep the log off the full disk
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until only about ``leave`` bytes are free; return the filler file."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def log_lines(server: ServerProcess, word: str) -> list[dict]:
    lines = [json.loads(x) for x in server.log_path.read_text().splitlines() if x.startswith("{")]
    return [x for x in lines if word in json.dumps(x)]


def test_low_disk_is_degraded_and_refuses_new_tasks_until_space_is_freed(
    small_disk: Path, serve_on: Callable[..., ServerProcess]
) -> None:
    server = serve_on(PHOTO_ERASER_WORKERS="0", PHOTO_ERASER_MIN_FREE_DISK_MB="16")
    client = ApiClient(server.base_url, *server.create_key("disk"))
    body = (["https://a.example/x.png"], "https://a.example/m.png")
    assert client.create(*body).status_code == 200  # positive control
    filler = fill(small_disk, leave=8 * MiB)
    threading.Event().wait(1.2)  # the free space is read at most once a second
    for _ in range(20):  # clients keep polling and creating
        health = httpx.get(server.base_url + "/healthz")
        refused = client.create(*body)
    assert health.status_code == 503, health.text
    assert health.json()["data"]["status"] == "degraded"
    assert "MB free on the data directory" in health.json()["msg"]
    assert refused.status_code == 503 and refused.json()["code"] == 50303
    assert "not accepting new tasks" in refused.json()["msg"]
    assert "MB free" in refused.json()["msg"] and refused.headers["Retry-After"] == "60"
    filler.unlink()
    deadline = 50
    while httpx.get(server.base_url + "/healthz").status_code != 200 and deadline:
        threading.Event().wait(0.1)
        deadline -= 1
    assert client.create(*body).status_code == 200
    client.close()


def test_a_task_that_cannot_save_its_results_fails_naming_the_disk(
    small_disk: Path, image_host: ImageHost, serve_on: Callable[..., ServerProcess]
) -> None:
    """With the reserve off (0) the disk really fills: the result does not fit."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)  # PNG of ~5.5 MB
    gate = threading.Event()
    url = image_host.add("/disk/noise.png", encode(noise, "PNG"), gate=gate)
    mask = b64(encode(rect_mask(1200, 1600, (100, 200, 100, 300)), "PNG"))
    server = serve_on(
        PHOTO_ERASER_WORKERS="1", PHOTO_ERASER_MIN_FREE_DISK_MB="0", PHOTO_ERASER_MAX_ATTEMPTS="1"
    )
    try:
        client = ApiClient(server.base_url, *server.create_key("disk"))
        task_id = client.create_ok([url], mask, engine="opencv")
        client.wait(task_id, until=("2",))  # downloading: held at the gate
        fill(small_disk, leave=1 * MiB)  # room for the database, not for the result
        gate.set()
        data = client.wait(task_id, timeout=60)
        assert data["status"] == "4", data
        assert data["list"][0]["reason"] == "the server's disk is full: results not saved"
        errors = log_lines(server, "disk full")
        assert len(errors) == 1, errors
        assert "exc" not in errors[0]  # the cause, not a traceback
        client.close()
    finally:
        gate.set()


def test_the_same_error_is_logged_once_per_interval(
    small_disk: Path, serve_on: Callable[..., ServerProcess]
) -> None:
    """Workers poll for tasks every second; with the disk low each poll would log a line."""
    server = serve_on(PHOTO_ERASER_WORKERS="2", PHOTO_ERASER_MIN_FREE_DISK_MB="16")
    fill(small_disk, leave=8 * MiB)
    threading.Event().wait(4)  # two workers x 4 polls
    warnings = log_lines(server, "disk space low")
    assert len(warnings) == 1, warnings
    assert "MB free" in warnings[0]["disk"]


def test_creates_on_a_full_disk_are_503_and_nothing_accepted_is_lost(
    small_disk: Path, serve_on: Callable[..., ServerProcess]
) -> None:
    """With the reserve off the database itself runs out of space: each create is either
    stored (200, and readable afterwards) or a 503 naming the disk, never a 500."""
    server = serve_on(
        PHOTO_ERASER_WORKERS="0",
        PHOTO_ERASER_MIN_FREE_DISK_MB="0",
        PHOTO_ERASER_RATE_LIMIT_PER_MINUTE="0",
    )
    client = ApiClient(server.base_url, *server.create_key("disk"))
    rng = np.random.default_rng(1)
    # Inline masks of noise do not compress: each task adds ~300 KB to the database.
    mask = b64(encode(rng.integers(0, 2, (600, 600), dtype=np.uint8) * 255, "PNG"))
    filler = fill(small_disk, leave=2 * MiB)
    accepted, statuses = [], []
    for _ in range(40):
        r = client.create(["https://a.example/x.png"], mask)
        statuses.append(r.status_code)
        if r.status_code == 200:
            accepted.append(r.json()["data"]["task_id"])
        else:
            assert r.status_code == 503, r.text
            assert (
                r.json()["msg"]
                == "the server's disk is full: the task was not stored; retry in 60 s"
            )
    assert 503 in statuses and accepted, statuses
    filler.unlink()
    for task_id in accepted:
        assert client.result(task_id).status_code == 200
    client.close()
