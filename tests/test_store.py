"""The task store on a real SQLite file: atomic claims, crash recovery, deadlines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from photo_eraser.config import Settings
from photo_eraser.service import open_store
from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.tasks.store import TaskRecord, TaskStore
from tests.postgres import fresh_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    """The same store on SQLite (the embedded default) and on PostgreSQL."""
    if request.param == "sqlite":
        yield open_store(Settings(data_dir=tmp_path))
        return
    with fresh_schema() as url:
        store = open_store(Settings(data_dir=tmp_path, database_url=url))
        yield store
        store.engine.dispose()


def new_task(
    store: TaskStore,
    appkey: str,
    priority: int = 1,
    deadline: float = 60,
    inline_mask: bytes | None = None,
    images: int = 2,
) -> str:
    """A task over ``images`` URLs, with a mask URL unless ``inline_mask`` is given."""
    return store.create_task(
        appkey=appkey,
        urls=[f"http://a.example/{i}.png" for i in range(images)],
        priority=priority,
        engine="auto",
        mask_url=None if inline_mask else "http://a.example/m.png",
        mask_data=inline_mask,
        deadline_seconds=deadline,
    )


def test_concurrent_claims_never_take_a_task_twice(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    created = {new_task(store, appkey, priority=i % 10) for i in range(60)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        while (task := store.claim_next()) is not None:
            with lock:
                claimed.append(task.task_id)

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(created)


def test_recovery_requeues_then_gives_up(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    for attempt in (1, 2):
        task = store.claim_next()
        assert task is not None and task.task_id == task_id and task.attempts == attempt
        assert store.recover_interrupted(max_attempts=2) == ((1, 0) if attempt == 1 else (0, 1))
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.FAILED
    assert all(
        im.status == ImageStatus.FAILED and "interrupted" in im.reason for im in record.images
    )


def test_overdue_tasks_time_out_and_stay_out(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey, deadline=0.01)
    time.sleep(0.02)
    [pk] = store.expire_overdue()
    assert store.claim_next() is None
    assert not store.finish(pk, TaskStatus.COMPLETE)  # a late worker cannot overwrite it
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.TIMED_OUT


def test_keys_verify_only_while_active(store: TaskStore) -> None:
    appkey, secret = store.create_key("k")
    assert store.verify_key(appkey, secret)
    assert not store.verify_key(appkey, secret + "x")
    assert not store.verify_key("pe_unknown", secret)
    assert store.revoke_key(appkey)
    assert not store.verify_key(appkey, secret)
    assert not store.revoke_key(appkey)


def test_tasks_belong_to_their_key(store: TaskStore) -> None:
    a, _ = store.create_key("a")
    b, _ = store.create_key("b")
    task_id = new_task(store, a)
    assert store.get_task(task_id, a) is not None
    assert store.get_task(task_id, b) is None
    assert store.close(task_id, b) is None
    assert store.close(task_id, a).status == TaskStatus.CLOSED


def test_expired_results_and_inline_masks_are_deleted(tmp_path: Path) -> None:
    from photo_eraser.service import Service
    from photo_eraser.tasks.store import ImageRecord

    service = Service(Settings(data_dir=tmp_path, result_ttl_seconds=0))
    store = service.store
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey, inline_mask=b"mask bytes", images=1)
    task = store.claim_next()
    assert task is not None
    key = f"results/{task_id}/0.png"
    service.blobs.put(key, b"result")
    store.set_images(
        task.pk, [ImageRecord(0, "http://a.example/0.png", ImageStatus.DONE, result_key=key)]
    )
    assert store.finish(task.pk, TaskStatus.COMPLETE)
    time.sleep(0.01)
    service._delete_expired_results()
    assert service.blobs.open(key) is None
    record = store.get_task(task_id)
    assert record is not None and record.images[0].result_key is None and record.mask_data is None
    assert record.status == TaskStatus.COMPLETE
    assert "retention" in record.images[0].reason


def test_result_files_nobody_recorded_are_deleted_after_the_retention(tmp_path: Path) -> None:
    """A worker that loses its task (closed, timed out, killed) between writing a result file
    and recording it leaves a file the database does not know: it goes with its task's folder.
    Folders of tasks still running stay."""
    from photo_eraser.service import Service

    service = Service(Settings(data_dir=tmp_path, result_ttl_seconds=0))
    store = service.store
    appkey, _ = store.create_key("k")
    closed, running = new_task(store, appkey), new_task(store, appkey)
    assert store.claim_next() is not None and store.claim_next() is not None
    service.blobs.put(f"results/{closed}/0.png", b"written, then the task was closed")
    service.blobs.put(f"results/{running}/0.png", b"still being worked on")
    service.blobs.put("results/00000000-0000-4000-8000-000000000000/0.png", b"no such task")
    (tmp_path / "blobs" / "results" / "lost+found").mkdir()  # not ours: left alone
    assert store.close(closed, appkey).status == TaskStatus.CLOSED
    time.sleep(0.01)
    service._delete_expired_results()
    assert sorted(service.blobs.folders("results")) == sorted(["lost+found", running])
    assert service.blobs.size(f"results/{running}/0.png") is not None


def test_late_worker_writes_nothing_to_a_closed_task(store: TaskStore) -> None:
    from photo_eraser.tasks.store import ImageRecord

    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    task = store.claim_next()
    assert task is not None
    assert store.close(task_id, appkey).status == TaskStatus.CLOSED
    late = [ImageRecord(i, "u", ImageStatus.DONE, result_key="k") for i in range(2)]
    assert not store.set_images(task.pk, late)
    store.release(task.pk)  # a shutdown after the close must not revive it either
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.CLOSED
    assert [(im.status, im.reason) for im in record.images] == [
        (ImageStatus.FAILED, "task closed by client")
    ] * 2


def test_a_close_racing_a_claim_still_closes(store: TaskStore) -> None:
    """A worker claims the task between the close's read and its write (seen over HTTP in 2 of
    53 tries): the close must still win, and the worker's verdict must be refused."""
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    claimed: list[TaskRecord | None] = []
    hook = _before_first_write(store, lambda: claimed.append(store.claim_next()))
    sa.event.listen(store.engine, "before_cursor_execute", hook)
    try:
        assert store.close(task_id, appkey).status == TaskStatus.CLOSED
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", hook)
    assert claimed and claimed[0] is not None and claimed[0].task_id == task_id
    assert not store.finish(claimed[0].pk, TaskStatus.COMPLETE)
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.CLOSED
    assert {im.status for im in record.images} == {ImageStatus.FAILED}


def _before_first_write(store: TaskStore, action: Callable[[], object]) -> Callable[..., None]:
    """An event hook that runs ``action`` (on another connection) just before the next write
    statement: between a read and the write that depends on it."""
    done: list[object] = []

    def hook(conn, cursor, statement: str, *_) -> None:  # noqa: ANN001
        if not done and statement.lstrip().upper().startswith("UPDATE"):
            done.append(True)
            action()

    return hook


def test_progress_racing_a_close_writes_nothing(store: TaskStore) -> None:
    """A close lands between the worker's status check and its image writes: the images must
    not turn done (with live result links) on a closed task."""
    from photo_eraser.tasks.store import ImageRecord

    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    task = store.claim_next()
    assert task is not None
    hook = _before_first_write(store, lambda: store.close(task_id, appkey))
    done = [ImageRecord(i, "u", ImageStatus.DONE, result_key=f"k{i}") for i in range(2)]
    sa.event.listen(store.engine, "before_cursor_execute", hook)
    try:
        assert not store.set_images(task.pk, done)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", hook)
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.CLOSED
    assert [(im.status, im.result_key) for im in record.images] == [(ImageStatus.FAILED, None)] * 2


def test_orphan_requeue_racing_a_close_leaves_the_closed_task_alone(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    assert store.claim_next() is not None
    hook = _before_first_write(store, lambda: store.close(task_id, appkey))
    sa.event.listen(store.engine, "before_cursor_execute", hook)
    try:
        # Not held by this process and no progress "for a second from now": an orphan.
        assert store.requeue_orphans(owned=set(), stale_seconds=-1.0) == 0
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", hook)
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.CLOSED
    assert [(im.status, im.reason) for im in record.images] == [
        (ImageStatus.FAILED, "task closed by client")
    ] * 2


def test_finish_writes_the_images_with_the_status_or_nothing(store: TaskStore) -> None:
    from photo_eraser.tasks.store import ImageRecord

    appkey, _ = store.create_key("k")
    done = [ImageRecord(i, "u", ImageStatus.DONE, result_key=f"k{i}") for i in range(2)]
    first, second = new_task(store, appkey), new_task(store, appkey)
    a, b = store.claim_next(), store.claim_next()
    assert a is not None and b is not None
    assert store.finish(a.pk, TaskStatus.COMPLETE, "", done)
    assert store.close(second, appkey).status == TaskStatus.CLOSED
    assert not store.finish(b.pk, TaskStatus.COMPLETE, "", done)
    kept, closed = store.get_task(first), store.get_task(second)
    assert kept is not None and kept.status == TaskStatus.COMPLETE
    assert [im.result_key for im in kept.images] == ["k0", "k1"]
    assert closed is not None and [im.result_key for im in closed.images] == [None, None]


def test_closing_a_finished_task_keeps_its_verdict(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    task = store.claim_next()
    assert task is not None and store.finish(task.pk, TaskStatus.FAILED, "bad input")
    assert store.close(task_id, appkey).status == TaskStatus.FAILED
    record = store.get_task(task_id)
    assert (
        record is not None and record.status == TaskStatus.FAILED and record.reason == "bad input"
    )


def test_orphaned_in_progress_task_is_requeued(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    new_task(store, appkey)
    task = store.claim_next()
    assert task is not None
    assert store.requeue_orphans(owned={task.pk}, stale_seconds=0) == 0  # a worker holds it
    assert store.requeue_orphans(owned=set(), stale_seconds=3600) == 0  # still fresh
    time.sleep(0.01)
    assert store.requeue_orphans(owned=set(), stale_seconds=0) == 1
    again = store.claim_next()
    assert again is not None and again.pk == task.pk and again.attempts == 2


def test_an_orphan_out_of_attempts_fails_instead_of_looping(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    for attempt in (1, 2):
        task = store.claim_next()
        assert task is not None and task.attempts == attempt
        time.sleep(0.01)
        assert store.requeue_orphans(owned=set(), stale_seconds=0, max_attempts=2) == 1
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.FAILED
    assert record.reason == "processing was interrupted 2 times; giving up"
    assert {im.status for im in record.images} == {ImageStatus.FAILED}


def test_inline_masks_of_failed_tasks_are_dropped(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey, inline_mask=b"mask", images=1)
    task = store.claim_next()
    assert task is not None and store.finish(task.pk, TaskStatus.FAILED, "x")
    assert store.forget_masks(before=time.time() + 1) == 1
    record = store.get_task(task_id)
    assert record is not None and record.mask_data is None


def test_requeued_task_shows_its_images_waiting_again(store: TaskStore) -> None:
    from photo_eraser.tasks.store import ImageRecord

    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    task = store.claim_next()
    assert task is not None
    store.set_images(task.pk, [ImageRecord(i, "u", ImageStatus.PROCESSING) for i in range(2)])
    store.requeue(task.pk, "internal error; retrying")
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.WAITING
    assert [im.status for im in record.images] == [ImageStatus.WAITING] * 2


def test_the_serving_lease_is_held_by_one_server_at_a_time(store: TaskStore) -> None:
    now = time.time()
    assert store.acquire_lease("host-a:/data", 30.0, now) is None
    assert store.acquire_lease("host-b:/data", 30.0, now + 1) == "host-a:/data"
    assert store.acquire_lease("host-a:/data", 30.0, now + 2) is None  # its own restart
    assert store.renew_lease("host-a:/data")
    assert not store.renew_lease("host-b:/data")
    # Not renewed for longer than the stale limit: another server may take it over...
    assert store.acquire_lease("host-b:/data", 30.0, time.time() + 31) is None
    assert not store.renew_lease("host-a:/data")  # ...and the old holder learns it lost it
    store.release_lease("host-a:/data")  # not its lease any more: nothing happens
    assert store.acquire_lease("host-a:/data", 30.0) == "host-b:/data"
    store.release_lease("host-b:/data")
    assert store.acquire_lease("host-a:/data", 30.0) is None


def test_a_server_that_lost_the_lease_writes_nothing_to_tasks(store: TaskStore) -> None:
    """Server A's worker is still under way when B takes the database over, re-queues A's
    task at recovery and claims it: whatever A writes then (progress, result, hand-back) must
    not land on B's run, nor may A claim anything more."""
    from photo_eraser.tasks.store import ImageRecord

    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    other = new_task(store, appkey)
    assert store.acquire_lease("a", 120.0) is None
    store.owner = "a"
    mine = store.claim_next()
    assert mine is not None and mine.task_id == task_id
    b = TaskStore(store.engine)
    assert b.acquire_lease("b", 120.0, now=time.time() + 3600) is None
    b.owner = "b"
    assert b.recover_interrupted(max_attempts=3) == (1, 0)
    theirs = b.claim_next()
    assert theirs is not None and theirs.task_id == task_id
    done = [ImageRecord(i, "u", ImageStatus.DONE, result_key=f"a{i}") for i in range(2)]
    assert not store.set_images(mine.pk, done)
    assert not store.finish(mine.pk, TaskStatus.COMPLETE, "", done)
    store.release(mine.pk)
    store.requeue(mine.pk, "internal error; retrying")
    assert store.claim_next() is None  # the other task stays for B
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.IN_PROGRESS
    assert [im.result_key for im in record.images] == [None, None]
    theirs_done = [ImageRecord(i, "u", ImageStatus.DONE, result_key=f"b{i}") for i in range(2)]
    assert b.finish(theirs.pk, TaskStatus.COMPLETE, "", theirs_done)
    assert b.claim_next() is not None and b.get_task(other) is not None
