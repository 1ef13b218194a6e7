"""Queue order, deadlines, crash recovery and the SSRF guard, each on its own server: in this
process (`tests.inprocess`) unless the test needs a process of its own to kill, stop with
SIGTERM, lock out of its data directory or take a lease from (marked ``process``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from harness.server import ServerProcess
from photo_eraser.config import Settings
from photo_eraser.service import open_store
from photo_eraser.tasks.status import TaskStatus
from photo_eraser.tasks.tables import tasks
from tests.inprocess import LocalServer

W, H = 320, 256
MASK = b64(encode(rect_mask(H, W, (100, 130, 100, 160))))


@pytest.fixture
def run_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, **env: str) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / f"data{len(started)}", **env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def local_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start in-process servers (`LocalServer`, settings as keywords); stopped afterwards."""
    started: list[LocalServer] = []

    def start(data_dir: Path | None = None, **settings: object) -> LocalServer:
        server = LocalServer(data_dir or tmp_path / f"data{len(started)}", **settings)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def test_single_worker_takes_priority_9_before_0_and_fifo_within(
    local_server,
    image_host: ImageHost,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    data_dir = tmp_path / "prio"
    accept_only = local_server(data_dir, workers=0)
    appkey, appsecret = accept_only.create_key()
    c = accept_only.client(appkey, appsecret)
    img = encode(photo(W, H))
    order = [("p0-first", 0), ("p0-second", 0), ("p9", 9), ("p5", 5), ("p9-later", 9)]
    ids = {
        name: c.create_ok([image_host.add(f"/prio/{name}.png", img)], MASK, priority=p)
        for name, p in order
    }
    accept_only.stop()
    c.close()

    worker = local_server(data_dir, workers=1)
    c = worker.client(appkey, appsecret)
    for task_id in ids.values():
        assert c.wait(task_id)["status"] == "3"
    fetched = [
        p.split("/")[-1].removesuffix(".png") for p in image_host.requests if p.startswith("/prio/")
    ]
    assert fetched == ["p9", "p9-later", "p5", "p0-first", "p0-second"]
    c.close()


def test_task_past_its_deadline_times_out(local_server, image_host: ImageHost) -> None:  # type: ignore[no-untyped-def]
    server = local_server(task_deadline_seconds=1.5)
    c = server.new_client()
    gate = threading.Event()
    url = image_host.add("/deadline/slow.png", encode(photo(W, H)), gate=gate)
    running = c.create_ok([url], MASK)
    # Held too: once the first is cut at its deadline, the one worker may take this one a few
    # ms before its own deadline, and a small image is done in less.
    other = image_host.add("/deadline/other.png", encode(photo(W, H)), gate=gate)
    waiting = c.create_ok([other], MASK)
    for task_id in (running, waiting):
        data = c.wait(task_id, timeout=30)
        assert data["status"] == "6", data
        assert data["list"][0]["status"] == "4" and "deadline" in data["list"][0]["reason"]
    gate.set()
    c.close()


@pytest.mark.process
def test_kill_9_loses_no_accepted_task(run_server, image_host: ImageHost, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "crash"
    server = run_server(data_dir)
    appkey, appsecret = server.create_key()
    c = ApiClient(server.base_url, appkey, appsecret)
    gate = threading.Event()
    img = encode(photo(W, H))
    in_progress = c.create_ok([image_host.add("/crash/held.png", img, gate=gate)], MASK)
    waiting = c.create_ok([image_host.add("/crash/queued.png", img)], MASK)
    c.wait(in_progress, until=("2",))
    server.kill9()
    c.close()
    gate.set()

    restarted = run_server(data_dir)
    c = ApiClient(restarted.base_url, appkey, appsecret)
    for task_id in (in_progress, waiting):
        data = c.wait(task_id)
        assert data["status"] == "3", data
        assert data["list"][0]["image_result"]
    c.close()


def test_private_addresses_are_refused_by_default(local_server, image_host: ImageHost) -> None:  # type: ignore[no-untyped-def]
    server = local_server(allow_private_urls=False)
    c = server.new_client()
    port = image_host.port
    urls = [
        image_host.add("/ssrf/secret.png", encode(photo(W, H))),
        f"http://localhost:{port}/ssrf/secret.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        f"http://[::1]:{port}/ssrf/secret.png",
        "http://0.0.0.0/x.png",
    ]
    data = c.wait(c.create_ok(urls, MASK))
    assert data["status"] == "4"
    for item in data["list"]:
        assert item["status"] == "4"
        assert "not allowed" in item["reason"], item["reason"]
    assert "/ssrf/secret.png" not in image_host.requests
    c.close()


def test_wait_time_is_an_honest_string(local_server, image_host: ImageHost) -> None:  # type: ignore[no-untyped-def]
    server = local_server(workers=0)
    c = server.new_client()
    img = image_host.add("/wait/a.png", encode(photo(W, H)))
    ids = [c.create_ok([img], MASK) for _ in range(3)]
    waits = [int(c.result(t).json()["data"]["wait_time"]) for t in ids]
    assert waits[0] >= 1 and waits == sorted(waits) and waits[2] > waits[0]
    c.close()


def test_rate_limit_is_429_with_retry_after(local_server, image_host: ImageHost) -> None:  # type: ignore[no-untyped-def]
    server = local_server(rate_limit_per_minute=2, workers=0)
    c = server.new_client()
    url = image_host.add("/rate/a.png", encode(photo(W, H)))
    c.create_ok([url], MASK)
    c.create_ok([url], MASK)
    r = c.create([url], MASK)
    assert r.status_code == 429 and r.json()["code"] == 42901
    assert int(r.headers["Retry-After"]) >= 1
    other = server.new_client("other")
    other.create_ok([url], MASK)  # the limit is per key
    c.close()
    other.close()


def test_public_url_is_the_base_of_result_links(local_server, image_host: ImageHost) -> None:  # type: ignore[no-untyped-def]
    server = local_server(public_url="https://eraser.example.com/")
    c = server.new_client()
    url = image_host.add("/public/a.png", encode(photo(W, H)))
    data = c.wait(c.create_ok([url], MASK))
    link = data["list"][0]["image_result"]
    assert link.startswith("https://eraser.example.com/v3/pic/rw/files/results/")
    local = link.replace("https://eraser.example.com", server.base_url)
    assert server.http.get(local).status_code == 200
    c.close()


def test_truncated_and_oversized_images_fail_alone(local_server, image_host: ImageHost) -> None:  # type: ignore[no-untyped-def]
    server = local_server(max_image_bytes=300_000)
    c = server.new_client()
    jpeg = encode(photo(W, H), "JPEG", quality=90)
    noisy = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    urls = [
        image_host.add("/ugly/truncated.jpg", jpeg[: len(jpeg) // 2], content_type="image/jpeg"),
        image_host.add("/ugly/big.png", encode(noisy)),  # ~1 MB > 300 kB limit
        image_host.add("/ugly/fine.jpg", jpeg, content_type="image/jpeg"),
        image_host.add("/ugly/text.png", b"<html>not an image</html>", content_type="text/html"),
    ]
    data = c.wait(c.create_ok(urls, MASK))
    assert data["status"] == "3"
    reasons = [i["reason"] for i in data["list"]]
    assert [i["status"] for i in data["list"]] == ["4", "4", "3", "4"]
    assert "truncated" in reasons[0] or "corrupt" in reasons[0]
    assert reasons[1].startswith("download failed") and "exceeds" in reasons[1]
    assert "format" in reasons[3]
    c.close()


@pytest.mark.process
def test_clean_shutdown_hands_running_task_back(
    run_server, image_host: ImageHost, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "graceful"
    server = run_server(data_dir, PHOTO_ERASER_MAX_ATTEMPTS="1")
    appkey, appsecret = server.create_key()
    c = ApiClient(server.base_url, appkey, appsecret)
    gate = threading.Event()
    task_id = c.create_ok(
        [image_host.add("/graceful/held.png", encode(photo(W, H)), gate=gate)], MASK
    )
    c.wait(task_id, until=("2",))
    server.stop()  # SIGTERM: the running task goes back to the queue, its attempt not counted
    gate.set()
    c.close()
    restarted = run_server(data_dir, PHOTO_ERASER_MAX_ATTEMPTS="1")
    c = ApiClient(restarted.base_url, appkey, appsecret)
    assert c.wait(task_id)["status"] == "3"
    c.close()


@pytest.mark.process
def test_second_server_on_same_data_dir_refuses_to_start(
    run_server, image_host: ImageHost, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "shared"
    first = run_server(data_dir)
    c = ApiClient(first.base_url, *first.create_key())
    gate = threading.Event()
    task_id = c.create_ok([image_host.add("/twice/held.png", encode(photo(W, H)), gate=gate)], MASK)
    c.wait(task_id, until=("2",))
    with pytest.raises(RuntimeError, match="another photo-eraser server"):
        run_server(data_dir)
    assert c.result(task_id).json()["data"]["status"] == "2"  # untouched by the second start
    gate.set()
    assert c.wait(task_id)["status"] == "3"
    c.close()


@pytest.mark.process
def test_second_server_on_the_same_database_refuses_to_start(
    run_server, image_host: ImageHost, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Two data directories, one database: the second server would take tasks whose inline
    masks are in the first one's blob store and put results where the first cannot serve
    them. It refuses instead; once the first has stopped, it starts."""
    shared = {"PHOTO_ERASER_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}"}
    first = run_server(tmp_path / "one", **shared)
    c = ApiClient(first.base_url, *first.create_key())
    gate = threading.Event()
    task_id = c.create_ok([image_host.add("/lease/held.png", encode(photo(W, H)), gate=gate)], MASK)
    c.wait(task_id, until=("2",))
    with pytest.raises(RuntimeError, match="needs a database of its own"):
        run_server(tmp_path / "two", **shared)
    assert c.result(task_id).json()["data"]["status"] == "2"  # untouched by the second start
    gate.set()
    assert c.wait(task_id)["status"] == "3"
    first.stop()
    c.close()
    second = run_server(tmp_path / "two", **shared)
    assert httpx.get(second.base_url + "/healthz").status_code == 200


@pytest.mark.process
def test_a_server_killed_without_shutdown_restarts_at_once_on_its_data_dir(
    run_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Its leases are held in the name of the host and data directory, so kill -9 and restart
    take its tasks back at once (the data directory's file lock keeps others out)."""
    server = run_server(tmp_path / "crashy")
    server.kill9()
    restarted = run_server(tmp_path / "crashy")
    assert httpx.get(restarted.base_url + "/healthz").status_code == 200


def test_a_task_longer_than_its_lease_keeps_it_and_runs_once(
    local_server, image_host: ImageHost, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The worker renews the lease while it works: a task running over three times its lease
    is not taken back by the maintenance pass."""
    server = local_server(lease_seconds=2)
    c = server.new_client()
    gate = threading.Event()
    task_id = c.create_ok([image_host.add("/renew/held.png", encode(photo(W, H)), gate=gate)], MASK)
    c.wait(task_id, until=("2",))
    time.sleep(7)
    gate.set()
    data = c.wait(task_id)
    assert data["status"] == "3", data
    assert image_host.requests.count("/renew/held.png") == 1
    store = open_store(Settings(data_dir=server.data_dir))
    record = store.get_task(task_id)
    assert record is not None and record.attempts == 1
    c.close()


@pytest.mark.process
def test_a_worker_whose_lease_is_taken_stops_and_writes_nothing(
    run_server, image_host: ImageHost, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Another worker holds the task now (here: by hand, as after a reap and a new claim):
    this one notices at its next renewal and drops the task without handing it back or
    writing a result."""
    server = run_server(PHOTO_ERASER_LEASE_SECONDS="3")
    c = ApiClient(server.base_url, *server.create_key())
    gate = threading.Event()
    task_id = c.create_ok([image_host.add("/taken/held.png", encode(photo(W, H)), gate=gate)], MASK)
    c.wait(task_id, until=("2",))
    store = open_store(Settings(data_dir=server.data_dir))
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(tasks)
            .where(tasks.c.task_id == task_id)
            .values(lease_owner="another-host:1:abc", lease_expires_at=time.time() + 3600)
        )
    log = server.log_path
    deadline = time.monotonic() + 10
    while "task abandoned" not in log.read_text():
        assert time.monotonic() < deadline, "the worker did not notice it lost its lease"
        time.sleep(0.2)
    gate.set()
    time.sleep(1.0)
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.IN_PROGRESS
    assert record.lease_owner == "another-host:1:abc"
    assert [im.result_key for im in record.images] == [None]
    c.close()


def test_a_closed_task_frees_its_worker_at_once_not_at_the_next_renewal(
    local_server, image_host: ImageHost
) -> None:  # type: ignore[no-untyped-def]
    """The one worker holds a task whose download hangs; the client closes it. The worker
    checks its lease at once (not a third of the lease later, 30 s here), drops the task and
    takes the next one."""
    server = local_server(lease_seconds=90, workers=1)
    c = server.new_client()
    gate = threading.Event()
    try:
        held = c.create_ok(
            [image_host.add("/close/held.png", encode(photo(W, H)), gate=gate)], MASK
        )
        c.wait(held, until=("2",))
        queued = c.create_ok([image_host.add("/close/next.png", encode(photo(W, H)))], MASK)
        closed = c.http.post(f"/v3/pic/rw/close/{held}").json()
        assert closed["data"]["status"] == "5", closed
        assert c.wait(queued, timeout=10)["status"] == "3"  # the renewal would be 30 s away
        assert c.result(held).json()["data"]["status"] == "5"
    finally:
        gate.set()
        c.close()
