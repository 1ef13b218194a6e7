"""The ``Idempotency-Key`` extension of the create call: through the API (in-process server),
in the store on SQLite and on PostgreSQL, its migration, and its sweep by the retention pass."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from photo_eraser.config import Settings
from photo_eraser.dispatch import InProcessDispatcher
from photo_eraser.maintenance import Maintenance
from photo_eraser.metrics import Metrics
from photo_eraser.runtime import open_store
from photo_eraser.storage import LocalBlobStore
from photo_eraser.tasks.idempotency import IDEMPOTENCY_TTL_SECONDS, Idempotency, IdempotencyTaken
from photo_eraser.tasks.records import NewTask
from photo_eraser.tasks.store import TaskStore
from photo_eraser.tasks.tables import idempotency_keys, tasks
from tests.inprocess import LocalServer

DAY = IDEMPOTENCY_TTL_SECONDS


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """No workers: the tasks made here only need to exist."""
    local = LocalServer(tmp_path_factory.mktemp("idem"), workers=0).start()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def body(image_host: ImageHost) -> dict[str, object]:
    url = image_host.add("/idem/a.png", encode(photo(300, 300), "PNG"))
    mask = b64(encode(rect_mask(300, 300, (10, 50, 10, 50)), "PNG"))
    return {"images": [url], "mask": mask, "priority": 1}


def create(client: ApiClient, body: dict[str, object], key: str | None) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.http.post("/v3/pic/rw/batch", content=json.dumps(body), headers=headers)


def task_id_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["task_id"])


def tasks_of(server: LocalServer, client: ApiClient) -> int:
    assert server.store is not None
    appkey = client_keys[id(client)]
    with server.store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(tasks).where(tasks.c.appkey == appkey)
            ).scalar_one()
        )


client_keys: dict[int, str] = {}


def new_client(server: LocalServer) -> ApiClient:
    appkey, secret = server.create_key("idem")
    c = server.client(appkey, secret)
    client_keys[id(c)] = appkey
    return c


def test_same_key_and_body_answer_the_same_task(idle: LocalServer, body: dict[str, object]) -> None:
    client = new_client(idle)
    first = task_id_of(create(client, body, "order-1"))
    again = task_id_of(create(client, body, "order-1"))
    assert again == first
    assert tasks_of(idle, client) == 1
    assert client.result(first).status_code == 200
    # Positive control: without a key, or with another one, each create is a new task.
    assert task_id_of(create(client, body, None)) != first
    assert task_id_of(create(client, body, "order-2")) != first
    assert tasks_of(idle, client) == 3


def test_same_key_other_body_is_a_409(idle: LocalServer, body: dict[str, object]) -> None:
    client = new_client(idle)
    first = task_id_of(create(client, body, "k"))
    r = create(client, {**body, "priority": 2}, "k")
    assert r.status_code == 409, r.text
    envelope = r.json()
    assert envelope["code"] == 40901 and envelope["data"] == {}
    assert envelope["msg"].startswith("Idempotency-Key:") and first in envelope["msg"]
    assert tasks_of(idle, client) == 1


def test_keys_of_different_appkeys_are_independent(
    idle: LocalServer, body: dict[str, object]
) -> None:
    a, b = new_client(idle), new_client(idle)
    ta = task_id_of(create(a, body, "shared"))
    tb = task_id_of(create(b, {**body, "priority": 3}, "shared"))  # another body: no 409
    assert ta != tb
    assert b.result(ta).status_code == 404  # and neither sees the other's task


def test_after_24_hours_a_key_makes_a_new_task(idle: LocalServer, body: dict[str, object]) -> None:
    client = new_client(idle)
    first = task_id_of(create(client, body, "daily"))
    assert idle.store is not None
    with idle.store.engine.begin() as conn:
        conn.execute(
            idempotency_keys.update()
            .where(idempotency_keys.c.appkey == client_keys[id(client)])
            .values(created_at=time.time() - DAY - 1)
        )
    second = task_id_of(create(client, {**body, "priority": 4}, "daily"))  # no 409 either
    assert second != first
    assert task_id_of(create(client, {**body, "priority": 4}, "daily")) == second


def test_concurrent_duplicates_end_with_one_task(
    idle: LocalServer, body: dict[str, object]
) -> None:
    client = new_client(idle)
    answers: list[httpx.Response] = []
    start = threading.Barrier(8)

    def send() -> None:
        start.wait()
        answers.append(create(client, body, "race"))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {task_id_of(r) for r in answers}
    assert len(answers) == 8 and len(ids) == 1
    assert tasks_of(idle, client) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9"])
def test_bad_key_is_a_400_naming_the_header(
    idle: LocalServer, body: dict[str, object], key: str
) -> None:
    client = new_client(idle)
    headers = {"Idempotency-Key": key.encode("utf-8")}
    r = client.http.post("/v3/pic/rw/batch", content=json.dumps(body), headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 40001 and r.json()["msg"].startswith("Idempotency-Key:")


# ---- The store, on SQLite and PostgreSQL --------------------------------------------------


def new_task(appkey: str, idem: Idempotency | None) -> NewTask:
    return NewTask(
        task_id=str(uuid.uuid4()),
        appkey=appkey,
        urls=["http://a.example/0.png"],
        priority=1,
        engine="auto",
        mask_url="http://a.example/m.png",
        mask_key=None,
        deadline_seconds=60,
        idempotency=idem,
    )


def test_store_one_task_per_key(store: TaskStore) -> None:
    appkey, _ = store.create_key("a")
    other, _ = store.create_key("b")
    idem = Idempotency("k", "0" * 64)
    first = new_task(appkey, idem)
    assert store.create_tasks([first]) == [True]
    with pytest.raises(IdempotencyTaken):
        store.create_tasks([new_task(appkey, idem)])
    remembered = store.remembered(appkey, "k")
    assert remembered is not None and remembered.task_id == first.task_id
    assert store.remembered(other, "k") is None
    assert store.create_tasks([new_task(other, idem)]) == [True]  # per appkey
    # In a group, the duplicate fails the transaction (the intake then stores one by one).
    with pytest.raises(sa.exc.IntegrityError):
        store.create_tasks([new_task(appkey, None), new_task(appkey, idem)])
    # Expired: ignored, then replaced by the next create, then swept.
    later = time.time() + DAY + 1
    assert store.remembered(appkey, "k", now=later) is None
    with store.engine.begin() as conn:
        conn.execute(idempotency_keys.update().values(created_at=time.time() - DAY - 1))
    second = new_task(appkey, idem)
    assert store.create_tasks([second]) == [True]
    remembered = store.remembered(appkey, "k")
    assert remembered is not None and remembered.task_id == second.task_id
    assert store.forget_idempotency_keys(time.time() - DAY) == 1  # the other appkey's
    assert store.remembered(appkey, "k") is not None


def test_the_retention_pass_sweeps_expired_keys(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path))
    appkey, _ = store.create_key("a")
    store.create_tasks([new_task(appkey, Idempotency("old", "0" * 64))])
    store.create_tasks([new_task(appkey, Idempotency("new", "0" * 64))])
    with store.engine.begin() as conn:
        conn.execute(
            idempotency_keys.update()
            .where(idempotency_keys.c.idempotency_key == "old")
            .values(created_at=time.time() - DAY - 1)
        )
    settings = Settings(data_dir=tmp_path)
    blobs = LocalBlobStore(tmp_path / "blobs")
    Maintenance(
        settings, store, blobs, InProcessDispatcher(), Metrics(store.queue_counts)
    ).delete_expired()
    with store.engine.connect() as conn:
        left = conn.execute(sa.select(idempotency_keys.c.idempotency_key)).scalars().all()
    assert left == ["new"]
