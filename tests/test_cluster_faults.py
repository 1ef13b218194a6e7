"""The cluster under faults, each on a fresh cluster (PostgreSQL schema, RabbitMQ vhost, S3
bucket of its own): priority order across the cluster, duplicate messages, and the processes
and servers it depends on going away. Each test counts the tasks accepted against those
completed and checks that no result is duplicated or half-written."""

from __future__ import annotations

import io
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from harness.client import ApiClient
from harness.cluster import Cluster, running_cluster
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from harness.s3server import S3Server
from photo_eraser.config import Settings
from photo_eraser.runtime import open_store
from photo_eraser.tasks.records import NewTask
from photo_eraser.tasks.store import TaskStore

# API and worker processes on PostgreSQL, RabbitMQ and SeaweedFS.
pytestmark = [pytest.mark.process, pytest.mark.services]

W, H = 320, 256
MASK = b64(encode(rect_mask(H, W, (100, 130, 100, 160))))
FAST = {
    "PHOTO_ERASER_LEASE_SECONDS": "3",
    "PHOTO_ERASER_REPUBLISH_AFTER_SECONDS": "1",
}


@pytest.fixture
def cluster(tmp_path: Path, s3: S3Server) -> Iterator[Cluster]:
    with running_cluster(tmp_path / "cluster", s3, **FAST) as c:
        yield c


def store_of(cluster: Cluster) -> TaskStore:
    url = cluster.env["PHOTO_ERASER_DATABASE_URL"]
    return open_store(Settings(data_dir=cluster.root / "probe", database_url=url))


def result_objects(cluster: Cluster, task_id: str) -> list[str]:
    listed = cluster.s3.client().list_objects_v2(
        Bucket=cluster.bucket, Prefix=f"cluster/results/{task_id}/"
    )
    return sorted(o["Key"] for o in listed.get("Contents", []))


def assert_all_completed_once(
    cluster: Cluster, client: ApiClient, task_ids: list[str], timeout: float = 120
) -> None:
    """Every accepted task completed, with one whole result per image in the store."""
    for task_id in task_ids:
        data = client.wait(task_id, timeout=timeout)
        assert data["status"] == "3", (data, cluster.logs())
        [item] = data["list"]
        r = httpx.get(item["image_result"], timeout=30)
        assert r.status_code == 200
        assert Image.open(io.BytesIO(r.content)).size == (W, H)  # whole, decodable
        assert result_objects(cluster, task_id) == [f"cluster/results/{task_id}/0.png"]


def hosted(image_host: ImageHost, name: str, seed: int = 0, **kw: object) -> str:
    return image_host.add(
        f"/cluster/{name}-{uuid.uuid4().hex[:6]}.png", encode(photo(W, H, seed)), **kw
    )


def test_one_worker_runs_9_before_0_and_fifo_within_a_priority(
    cluster: Cluster, image_host: ImageHost
) -> None:
    cluster.add_api()
    client = cluster.client(*cluster.create_key())
    priorities = [(0, 9, 5, 1, 9, 0, 3)[i % 7] for i in range(50)]
    created = [
        client.create_ok([hosted(image_host, f"p{i}")], MASK, priority=p, engine="opencv")
        for i, p in enumerate(priorities)
    ]
    store = store_of(cluster)
    deadline = time.monotonic() + 30
    while store.undispatched(before=time.time() + 60):  # every message is on the broker
        assert time.monotonic() < deadline, "tasks were not published"
        time.sleep(0.2)
    cluster.add_worker(concurrency=1)
    for task_id in created:
        assert client.wait(task_id, timeout=120)["status"] == "3"
    started = {}
    for task_id in created:
        record = store.get_task(task_id)
        assert record is not None and record.started_at is not None
        started[task_id] = record.started_at
    ran = sorted(created, key=started.__getitem__)
    expected = [created[i] for i in sorted(range(50), key=lambda i: (-priorities[i], i))]
    assert ran == expected
    client.close()


def test_duplicate_messages_never_run_a_task_twice(cluster: Cluster, image_host: ImageHost) -> None:
    """Every task published twice more (as after redeliveries and republishing), two workers
    of two slots each racing for them: each task runs exactly once."""
    cluster.add_api()
    client = cluster.client(*cluster.create_key())
    urls = [hosted(image_host, f"dup{i}") for i in range(16)]
    created = [client.create_ok([u], MASK, engine="opencv") for u in urls]
    from photo_eraser.dispatch.celery import CeleryDispatcher, make_celery
    from photo_eraser.tasks.records import Queued

    store = store_of(cluster)
    settings = Settings(broker_url=cluster.env["PHOTO_ERASER_BROKER_URL"])
    extra = CeleryDispatcher(make_celery(settings), store)
    again = [Queued(t, 1) for t in created]
    assert len(extra.publish_now(again + again)) == 32
    extra.close()
    cluster.up(apis=0, workers=2, concurrency=2)
    deadline = time.monotonic() + 20
    while store.live_slots(within=30) != 4:  # what wait_time divides the queue by
        assert time.monotonic() < deadline, store.live_slots(within=30)
        time.sleep(0.2)
    assert_all_completed_once(cluster, client, created)
    assert all(store.get_task(t).attempts == 1 for t in created)  # type: ignore[union-attr]
    for url in urls:
        assert image_host.requests.count(url.removeprefix(image_host.url(""))) == 1
    client.close()


def test_a_worker_killed_mid_task_has_its_task_finished_by_another(
    cluster: Cluster, image_host: ImageHost
) -> None:
    _, [doomed] = cluster.up()
    client = cluster.client(*cluster.create_key())
    gate = threading.Event()
    held = client.create_ok([hosted(image_host, "held", gate=gate)], MASK, engine="opencv")
    others = [client.create_ok([hosted(image_host, f"k{i}")], MASK) for i in range(3)]
    client.wait(held, until=("2",))
    doomed.kill9()  # the host vanishes: its message and its lease are left behind
    gate.set()
    cluster.add_worker()
    assert_all_completed_once(cluster, client, [held, *others])
    record = store_of(cluster).get_task(held)
    assert record is not None and record.attempts == 2
    client.close()


def test_a_worker_stopped_mid_task_finishes_it_first(
    cluster: Cluster, image_host: ImageHost
) -> None:
    _, [worker] = cluster.up()
    client = cluster.client(*cluster.create_key())
    gate = threading.Event()
    held = client.create_ok([hosted(image_host, "graceful", gate=gate)], MASK, engine="opencv")
    client.wait(held, until=("2",))
    stopping = threading.Thread(target=worker.stop)
    stopping.start()
    time.sleep(2)  # the worker has the signal and waits for its task
    assert worker.alive
    gate.set()
    stopping.join()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log()[-2000:]
    assert_all_completed_once(cluster, client, [held])
    record = store_of(cluster).get_task(held)
    assert record is not None and record.attempts == 1
    client.close()


def test_an_api_process_killed_loses_nothing_it_accepted(
    cluster: Cluster, image_host: ImageHost
) -> None:
    [first, _second], _ = cluster.up(apis=2)
    client = cluster.client(*cluster.create_key())
    accepted: list[str] = []
    for i in range(10):
        if i == 4:
            first.kill9()
        try:
            r = client.create([hosted(image_host, f"api{i}")], MASK, engine="opencv")
        except httpx.TransportError:
            continue  # not accepted: the client would retry
        assert r.status_code == 200, r.text
        accepted.append(r.json()["data"]["task_id"])
    assert len(accepted) >= 9
    assert_all_completed_once(cluster, client, accepted)
    client.close()


def test_tasks_created_while_rabbitmq_is_down_run_once_it_is_back(
    cluster: Cluster, image_host: ImageHost
) -> None:
    cluster.add_api()
    client = cluster.client(*cluster.create_key())
    before = [client.create_ok([hosted(image_host, f"rb{i}")], MASK) for i in range(3)]
    _rabbitmqctl("stop_app")
    try:
        during = [client.create_ok([hosted(image_host, f"rd{i}")], MASK) for i in range(3)]
        time.sleep(2)  # publishes fail meanwhile
    finally:
        _rabbitmqctl("start_app")
    _wait_for_broker()
    cluster.add_worker()
    assert_all_completed_once(cluster, client, before + during)
    client.close()


def test_tasks_survive_postgresql_going_away_and_coming_back(
    cluster: Cluster, image_host: ImageHost
) -> None:
    """While the database is down, requests get a 503 envelope (never a 500) and accepted
    tasks wait; once it is back, every one of them completes."""
    cluster.up()
    client = cluster.client(*cluster.create_key())
    created = [client.create_ok([hosted(image_host, f"pg{i}")], MASK) for i in range(6)]
    _pg_ctl("stop")
    try:
        for r in (client.result(created[0]), client.create([hosted(image_host, "pg-x")], MASK)):
            assert r.status_code == 503, r.text
            assert r.json()["code"] == 50301 and "database" in r.json()["msg"]
            assert r.headers["Retry-After"]
    finally:
        _pg_ctl("start")
    created += [_create_retrying(client, hosted(image_host, f"pg-after{i}")) for i in range(3)]
    assert_all_completed_once(cluster, client, created)
    client.close()


def _pg_ctl(action: str) -> None:
    subprocess.run(
        f"pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main {action}",
        shell=True,
        check=True,
        timeout=120,
    )


def test_the_object_store_away_for_a_while(cluster: Cluster, image_host: ImageHost) -> None:
    """Creates that must store a mask are refused with a reason (503); a task that cannot save
    its results is held, with the reason, until the store is back, then runs again once,
    spending no attempt; result links answer 503 meanwhile."""
    cluster.up()
    client = cluster.client(*cluster.create_key())
    before = client.wait(client.create_ok([hosted(image_host, "s3-before")], MASK))
    link = before["list"][0]["image_result"]
    mask_url = image_host.add(
        f"/cluster/mask-{uuid.uuid4().hex[:6]}.png", encode(rect_mask(H, W, (100, 130, 100, 160)))
    )
    store = store_of(cluster)
    with cluster.s3.down():
        refused = client.create([hosted(image_host, "s3-inline")], MASK)
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert body["code"] == 50301 and "object store is unavailable" in body["msg"]
        assert refused.headers["Retry-After"]
        task_id = client.create_ok([hosted(image_host, "s3-url")], mask_url)
        deadline = time.monotonic() + 60
        while "object store" not in (store.get_task(task_id).reason or ""):  # type: ignore[union-attr]
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.3)
        time.sleep(7)  # the worker holds the task and waits for the store
        gone = httpx.get(link, timeout=30)
        assert gone.status_code == 503 and gone.json()["code"] == 50301, gone.text
        assert "object store" in gone.json()["msg"] and gone.headers["Retry-After"]
        record = store.get_task(task_id)
        assert record is not None and record.status.finished is False
        files = httpx.get(
            cluster.base_url + "/v3/pic/rw/files/results/x/0.png?expires=1&signature=x"
        )
        assert files.status_code == 403  # the link is checked before the store is asked
    assert_all_completed_once(cluster, client, [task_id])
    record = store.get_task(task_id)
    assert record is not None and record.attempts == 1  # the store's outage cost none
    downloads = [p for p in image_host.requests if "/cluster/s3-url-" in p]
    assert len(downloads) == 2  # the run that failed, and the one after the store came back
    client.close()


def test_a_task_committed_but_never_published_is_run(
    cluster: Cluster, image_host: ImageHost
) -> None:
    """The gap between commit and publish (an API process dying there), made by storing
    tasks straight into the database: the maintenance pass publishes them."""
    cluster.up()
    appkey, appsecret = cluster.create_key()
    client = cluster.client(appkey, appsecret)
    store = store_of(cluster)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    stored = store.create_tasks(
        [
            NewTask(
                t,
                appkey,
                [hosted(image_host, f"gap{i}")],
                1,
                "opencv",
                hosted(image_host, "m"),
                None,
                600,
            )
            for i, t in enumerate(ids)
        ]
    )
    assert all(stored)
    assert_all_completed_once(cluster, client, ids)
    client.close()


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, timeout=120, capture_output=True)


def _wait_for_broker() -> None:
    deadline = time.monotonic() + 60
    while subprocess.run(["rabbitmqctl", "-q", "await_startup"], capture_output=True).returncode:
        assert time.monotonic() < deadline, "RabbitMQ did not come back"
        time.sleep(0.5)


def _create_retrying(client: ApiClient, url: str) -> str:
    """Create, retrying while the database is still coming back (503 or a dropped link)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            r = client.create([url], MASK)
            if r.status_code == 200:
                return str(r.json()["data"]["task_id"])
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API did not recover from the restart"
        time.sleep(0.5)


def test_result_links_can_be_presigned_urls_of_the_object_store(
    tmp_path: Path, s3: S3Server, image_host: ImageHost
) -> None:
    with running_cluster(
        tmp_path / "presigned", s3, PHOTO_ERASER_S3_PUBLIC_URL=s3.endpoint_url, **FAST
    ) as cluster:
        cluster.up()
        client = cluster.client(*cluster.create_key())
        data = client.wait(client.create_ok([hosted(image_host, "presigned")], MASK))
        assert data["status"] == "3", data
        url = data["list"][0]["image_result"]
        assert url.startswith(s3.endpoint_url) and "X-Amz-Signature=" in url
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (W, H)
        tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        assert httpx.get(tampered, timeout=30).status_code == 403
        client.close()
