"""Callback deliveries in the task store, on SQLite and PostgreSQL: recorded with the task, due
only once it has a final status, held by one sender at a time under a lease, taken over with
the same delivery id once a lease expires, retried at the time given, never after delivery."""

from __future__ import annotations

import threading
import time
import uuid

from photo_eraser.config import Settings
from photo_eraser.tasks.deliveries import DeliveryClaim
from photo_eraser.tasks.records import NewCallback, NewTask
from photo_eraser.tasks.status import TaskStatus
from photo_eraser.tasks.store import TaskStore
from photo_eraser.webhooks import retry_at

LEASE = 10.0


def _task(store: TaskStore, appkey: str, callback: bool = True) -> tuple[str, str]:
    """A waiting task with a callback; its task id and delivery id."""
    task_id, delivery_id = str(uuid.uuid4()), str(uuid.uuid4())
    hook = NewCallback("http://127.0.0.1:9/hook", "http://api.example", delivery_id)
    [stored] = store.create_tasks(
        [
            NewTask(
                task_id=task_id,
                appkey=appkey,
                urls=["http://a.example/0.png"],
                priority=1,
                engine="auto",
                mask_url="http://a.example/m.png",
                mask_key=None,
                deadline_seconds=60,
                callback=hook if callback else None,
            )
        ]
    )
    assert stored
    return task_id, delivery_id


def _finish(store: TaskStore, task_id: str, status: TaskStatus = TaskStatus.COMPLETE) -> None:
    task = store.claim(task_id, "worker", 60)
    assert task is not None
    assert store.finish(task.lease, status)


def test_a_callback_is_due_once_its_task_has_a_final_status(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id, delivery_id = _task(store, appkey)
    _task(store, appkey, callback=False)  # no callback: never claimed
    record = store.get_task(task_id)
    assert record is not None and record.callback is not None
    assert (record.callback.state, record.callback.attempts) == ("pending", 0)
    assert record.callback.delivery_id == delivery_id
    assert store.claim_deliveries("a", LEASE) == []  # still waiting
    _finish(store, task_id)
    [claim] = store.claim_deliveries("a", LEASE)
    assert (claim.task_id, claim.delivery_id, claim.attempt) == (task_id, delivery_id, 1)
    assert claim.url == "http://127.0.0.1:9/hook" and claim.base_url == "http://api.example"
    assert claim.secret == store.webhook_secret(appkey) and claim.secret is not None
    assert claim.finished_at > 0 and claim.owner == "a"


def test_a_held_callback_goes_to_no_other_sender_until_its_lease_expires(
    store: TaskStore,
) -> None:
    appkey, _ = store.create_key("k")
    task_id, delivery_id = _task(store, appkey)
    _finish(store, task_id, TaskStatus.FAILED)
    now = time.time()
    [first] = store.claim_deliveries("a", LEASE, now=now)
    assert store.claim_deliveries("b", LEASE, now=now + LEASE - 1) == []
    # Sender "a" died mid-send: its lease expires, "b" sends again under the same id.
    [second] = store.claim_deliveries("b", LEASE, now=now + LEASE + 1)
    assert (second.delivery_id, second.attempt) == (delivery_id, 2)
    assert not store.delivery_succeeded(first, 200)  # a's late outcome lands nowhere
    assert store.delivery_succeeded(second, 204)
    record = store.get_task(task_id)
    assert record is not None and record.callback is not None
    assert (record.callback.state, record.callback.attempts) == ("delivered", 2)
    assert record.callback.last_status_code == 204 and record.callback.ended_at is not None
    assert store.claim_deliveries("c", LEASE, now=now + 10 * LEASE) == []  # never again


def test_a_restarted_server_frees_the_callbacks_its_predecessor_held(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    mine, theirs = _task(store, appkey), _task(store, appkey)
    for task_id, _ in (mine, theirs):
        _finish(store, task_id)
    now = time.time()
    [held] = store.claim_deliveries("host:/data:id#callbacks:dead", LEASE, limit=1, now=now)
    [other] = store.claim_deliveries("other-host:1:x", LEASE, now=now)
    assert {held.task_id, other.task_id} == {mine[0], theirs[0]}
    assert store.release_deliveries("host:/data:id#callbacks:") == 1
    [again] = store.claim_deliveries("host:/data:id#callbacks:new", LEASE, now=now + 1)
    assert (again.delivery_id, again.attempt) == (held.delivery_id, 2)
    assert store.claim_deliveries("x", LEASE, now=now + 1) == []  # the other's lease stands


def test_a_failed_attempt_is_due_again_at_its_retry_time_or_given_up(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id, _ = _task(store, appkey)
    _finish(store, task_id, TaskStatus.CLOSED)
    now = time.time()
    [claim] = store.claim_deliveries("a", LEASE, now=now)
    assert store.delivery_failed(claim, 500, "HTTP 500", retry_at=now + 30)
    assert store.claim_deliveries("a", LEASE, now=now + 29) == []
    [again] = store.claim_deliveries("a", LEASE, now=now + 31)
    assert again.attempt == 2
    assert store.delivery_failed(again, None, "timed out", retry_at=None)
    record = store.get_task(task_id)
    assert record is not None and record.callback is not None
    callback = record.callback
    assert (callback.state, callback.attempts, callback.last_error) == ("failed", 2, "timed out")
    assert callback.last_status_code is None
    assert store.claim_deliveries("a", LEASE, now=now + 10_000) == []


def test_concurrent_senders_never_hold_one_callback_together(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    expected = set()
    for _ in range(24):
        task_id, delivery_id = _task(store, appkey)
        _finish(store, task_id)
        expected.add(delivery_id)
    claimed: list[list[DeliveryClaim]] = [[] for _ in range(4)]
    sizes: list[int] = []
    start = threading.Barrier(4)

    def sender(i: int) -> None:
        start.wait()
        for _ in range(6):
            batch = store.claim_deliveries(f"s{i}", LEASE, limit=3)
            sizes.append(len(batch))
            claimed[i] += batch

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [c.delivery_id for batch in claimed for c in batch]
    assert sorted(ids) == sorted(expected)  # each once, none lost
    assert max(sizes) == 3  # never more than asked for
    assert all(c.attempt == 1 for batch in claimed for c in batch)


def test_rotating_a_webhook_secret_signs_the_next_attempt_with_it(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id, _ = _task(store, appkey)
    _finish(store, task_id)
    old = store.webhook_secret(appkey)
    new = store.rotate_webhook_secret(appkey)
    assert new is not None and new != old and new.startswith("whsec_")
    [claim] = store.claim_deliveries("a", LEASE)
    assert claim.secret == new
    assert store.revoke_key(appkey)
    assert store.rotate_webhook_secret(appkey) is None  # not for a revoked key


def test_the_backoff_doubles_up_to_its_cap_and_stops_at_the_retry_time() -> None:
    s = Settings(
        webhook_backoff_seconds=10,
        webhook_backoff_max_seconds=60,
        webhook_retry_seconds=300,
    )
    pauses = []
    for attempt in range(1, 6):
        due = retry_at(s, attempt, finished_at=1000.0, now=1000.0)
        assert due is not None
        pauses.append(due - 1000.0)
    for pause, base in zip(pauses, (10, 20, 40, 60, 60), strict=True):
        assert base <= pause <= base * 1.1  # up to 10% jitter
    assert retry_at(s, 3, finished_at=1000.0, now=1000.0 + 265) is None  # 265 + 40 > 300
    assert retry_at(s, 1, finished_at=1000.0, now=1000.0 + 280) is not None  # 280 + 11 < 300
