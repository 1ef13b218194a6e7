"""The task store on a real SQLite file and on PostgreSQL: claims under leases, what a worker
that lost its lease may still write (nothing), crash recovery, deadlines, retention, and the
state a cluster shares (dispatch bookkeeping, worker slots, the rate limit, the maintenance
lock)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa

from photo_eraser.tasks.records import ImageRecord, NewTask, TaskRecord
from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.tasks.store import TaskStore

LEASE = 60.0


def new_task(
    store: TaskStore,
    appkey: str,
    priority: int = 1,
    deadline: float = 60,
    mask_key: str | None = None,
    images: int = 2,
) -> str:
    """A task over ``images`` URLs, with a mask URL unless ``mask_key`` is given."""
    task_id = str(uuid.uuid4())
    [stored] = store.create_tasks(
        [
            NewTask(
                task_id=task_id,
                appkey=appkey,
                urls=[f"http://a.example/{i}.png" for i in range(images)],
                priority=priority,
                engine="auto",
                mask_url=None if mask_key else "http://a.example/m.png",
                mask_key=mask_key,
                deadline_seconds=deadline,
            )
        ]
    )
    assert stored
    return task_id


def claim(store: TaskStore, owner: str = "w1", lease: float = LEASE) -> TaskRecord:
    task = store.claim_next(f"{owner}:{uuid.uuid4().hex[:6]}", lease)
    assert task is not None
    return task


def done(prefix: str = "k") -> list[ImageRecord]:
    return [ImageRecord(i, "u", ImageStatus.DONE, result_key=f"{prefix}{i}") for i in range(2)]


def test_concurrent_claims_never_take_a_task_twice(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    created = {new_task(store, appkey, priority=i % 10) for i in range(60)}
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(n: int) -> None:
        while (task := store.claim_next(f"w{n}", LEASE)) is not None:
            with lock:
                claimed.append(task.task_id)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(created)


def test_two_workers_racing_for_the_same_200_tasks_never_take_one_twice(
    store: TaskStore,
) -> None:
    """Each worker has a connection pool of its own (as two hosts would) and claims every task
    by name, as duplicate broker messages would make it; in opposite orders, so they meet."""
    appkey, _ = store.create_key("k")
    ids = [new_task(store, appkey, images=1) for _ in range(200)]
    won: dict[str, list[str]] = {"a": [], "b": []}

    def worker(name: str, order: list[str]) -> None:
        own = TaskStore(sa.create_engine(store.engine.url, connect_args=_connect_args(store)))
        try:
            for task_id in order:
                if own.claim(task_id, name, LEASE) is not None:
                    won[name].append(task_id)
        finally:
            own.engine.dispose()

    threads = [
        threading.Thread(target=worker, args=("a", ids)),
        threading.Thread(target=worker, args=("b", ids[::-1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won["a"] + won["b"]) == sorted(ids)  # every task once, none twice
    assert won["a"] and won["b"]  # both got some: they did race


def _connect_args(store: TaskStore) -> dict[str, object]:
    return {"timeout": 30} if store.engine.dialect.name == "sqlite" else {}


def test_a_named_task_is_claimed_once_and_only_while_waiting(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    first = store.claim(task_id, "a", LEASE)
    assert first is not None and first.lease_owner == "a" and first.attempts == 1
    assert store.claim(task_id, "b", LEASE) is None  # a duplicate message: dropped
    assert store.claim(str(uuid.uuid4()), "b", LEASE) is None  # unknown task
    assert store.finish(first.lease, TaskStatus.COMPLETE, "", done())
    assert store.claim(task_id, "b", LEASE) is None  # finished


def test_an_expired_lease_is_reaped_and_its_worker_writes_nothing_more(store: TaskStore) -> None:
    """Worker A stalls past its lease (a host that vanished and came back): the maintenance
    pass re-queues the task, B claims it; nothing A writes then (progress, result, hand-back,
    renewal) may land on B's run."""
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    a = claim(store, "a", lease=0.05)
    assert store.reap_expired_leases(max_attempts=3) == ([], 0)  # not expired yet
    time.sleep(0.1)
    requeued, failed = store.reap_expired_leases(max_attempts=3)
    assert [q.task_id for q in requeued] == [task_id] and failed == 0
    b = claim(store, "b")
    assert b.task_id == task_id and b.attempts == 2
    assert not store.renew(a.lease, LEASE)
    assert not store.is_held(a.lease)
    assert not store.set_images(a.lease, done("a"))
    assert not store.finish(a.lease, TaskStatus.COMPLETE, "", done("a"))
    assert not store.release(a.lease)
    assert not store.requeue(a.lease, "internal error; retrying")
    assert store.renew(b.lease, LEASE) and store.is_held(b.lease)
    assert store.finish(b.lease, TaskStatus.COMPLETE, "", done("b"))
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.COMPLETE
    assert [im.result_key for im in record.images] == ["b0", "b1"]


def test_a_renewed_lease_is_not_reaped(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    new_task(store, appkey)
    task = claim(store, lease=0.2)
    time.sleep(0.1)
    assert store.renew(task.lease, 0.5)
    time.sleep(0.15)  # past the first lease, within the renewed one
    assert store.reap_expired_leases(max_attempts=3) == ([], 0)
    assert store.is_held(task.lease)


def test_lost_workers_tasks_are_requeued_then_given_up(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    for attempt in (1, 2):
        task = claim(store, lease=0.01)
        assert task.task_id == task_id and task.attempts == attempt
        time.sleep(0.02)
        requeued, failed = store.reap_expired_leases(max_attempts=2)
        assert (len(requeued), failed) == ((1, 0) if attempt == 1 else (0, 1))
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.FAILED
    assert record.reason == "processing was interrupted 2 times; giving up"
    assert all(
        im.status == ImageStatus.FAILED and "interrupted" in im.reason for im in record.images
    )


def test_a_restarted_server_takes_back_only_its_own_tasks(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    mine, theirs = new_task(store, appkey, priority=9), new_task(store, appkey)
    assert store.claim_next("host:/data:id#w0:1", LEASE) is not None
    other = store.claim_next("host:/other:id#w0:1", LEASE)
    assert other is not None and other.task_id == theirs
    requeued, failed = store.release_owned("host:/data:id", max_attempts=3)
    assert [q.task_id for q in requeued] == [mine] and failed == 0
    assert store.is_held(other.lease)


def test_overdue_tasks_time_out_and_stay_out(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    running_id = new_task(store, appkey, deadline=0.05)
    running = claim(store)
    waiting_id = new_task(store, appkey, deadline=0.05)
    time.sleep(0.06)
    assert len(store.expire_overdue()) == 2
    assert store.claim_next("w", LEASE) is None
    assert not store.finish(running.lease, TaskStatus.COMPLETE)  # a late worker changes nothing
    for task_id in (running_id, waiting_id):
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
    closing = store.close(task_id, a)
    assert closing is not None and closing.status == TaskStatus.CLOSED


def test_the_open_task_cap_per_key_is_exact_under_concurrent_creates(store: TaskStore) -> None:
    """API processes store creates concurrently: the cap must still hold exactly."""
    appkey, _ = store.create_key("k")
    stored: list[bool] = []
    lock = threading.Lock()

    def create() -> None:
        task = NewTask(
            str(uuid.uuid4()), appkey, ["http://a.example/1.png"], 1, "auto", "u", None, 60
        )
        result = store.create_tasks([task], max_open_per_key=5)
        with lock:
            stored.extend(result)

    threads = [threading.Thread(target=create) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stored.count(True) == 5
    assert sum(store.queue_counts()[0].values()) == 5


def test_late_worker_writes_nothing_to_a_closed_task(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    task = claim(store)
    closing = store.close(task_id, appkey)
    assert closing is not None and closing.status == TaskStatus.CLOSED
    assert not store.set_images(task.lease, done())
    assert not store.release(task.lease)  # a shutdown after the close must not revive it
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.CLOSED
    assert [(im.status, im.reason) for im in record.images] == [
        (ImageStatus.FAILED, "task closed by client")
    ] * 2


def _before_first_write(store: TaskStore, action: Callable[[], object]) -> Callable[..., None]:
    """An event hook that runs ``action`` (on another connection) just before the next write
    statement: between a read and the write that depends on it."""
    fired: list[object] = []

    def hook(conn, cursor, statement: str, *_) -> None:  # noqa: ANN001
        if not fired and statement.lstrip().upper().startswith("UPDATE"):
            fired.append(True)
            action()

    return hook


def test_a_close_racing_a_claim_still_closes(store: TaskStore) -> None:
    """A worker claims the task between the close's read and its write (seen over HTTP in 2 of
    53 tries): the close must still win, and the worker's verdict must be refused."""
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    claimed: list[TaskRecord | None] = []
    hook = _before_first_write(store, lambda: claimed.append(store.claim_next("w", LEASE)))
    sa.event.listen(store.engine, "before_cursor_execute", hook)
    try:
        closing = store.close(task_id, appkey)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", hook)
    assert closing is not None and closing.status == TaskStatus.CLOSED
    assert claimed and claimed[0] is not None and claimed[0].task_id == task_id
    assert not store.finish(claimed[0].lease, TaskStatus.COMPLETE)
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.CLOSED
    assert {im.status for im in record.images} == {ImageStatus.FAILED}


def test_progress_racing_a_close_writes_nothing(store: TaskStore) -> None:
    """A close lands between the worker's check and its image writes: the images must not
    turn done (with live result links) on a closed task."""
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    task = claim(store)
    hook = _before_first_write(store, lambda: store.close(task_id, appkey))
    sa.event.listen(store.engine, "before_cursor_execute", hook)
    try:
        assert not store.set_images(task.lease, done())
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", hook)
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.CLOSED
    assert [(im.status, im.result_key) for im in record.images] == [(ImageStatus.FAILED, None)] * 2


def test_reaping_racing_a_close_leaves_the_closed_task_alone(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    claim(store, lease=0.01)
    time.sleep(0.02)
    hook = _before_first_write(store, lambda: store.close(task_id, appkey))
    sa.event.listen(store.engine, "before_cursor_execute", hook)
    try:
        assert store.reap_expired_leases(max_attempts=3) == ([], 0)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", hook)
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.CLOSED
    assert [(im.status, im.reason) for im in record.images] == [
        (ImageStatus.FAILED, "task closed by client")
    ] * 2


def test_finish_writes_the_images_with_the_status_or_nothing(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    first, second = new_task(store, appkey), new_task(store, appkey)
    a, b = claim(store), claim(store)
    assert store.finish(a.lease, TaskStatus.COMPLETE, "", done())
    closing = store.close(second, appkey)
    assert closing is not None and closing.status == TaskStatus.CLOSED
    assert not store.finish(b.lease, TaskStatus.COMPLETE, "", done())
    kept, closed = store.get_task(first), store.get_task(second)
    assert kept is not None and kept.status == TaskStatus.COMPLETE
    assert [im.result_key for im in kept.images] == ["k0", "k1"]
    assert closed is not None and [im.result_key for im in closed.images] == [None, None]


def test_closing_a_finished_task_keeps_its_verdict(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    task = claim(store)
    assert store.finish(task.lease, TaskStatus.FAILED, "bad input")
    closing = store.close(task_id, appkey)
    assert closing is not None and closing.status == TaskStatus.FAILED
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.FAILED
    assert record.reason == "bad input"


def test_requeued_task_shows_its_images_waiting_again(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    task = claim(store)
    store.set_images(task.lease, [ImageRecord(i, "u", ImageStatus.PROCESSING) for i in range(2)])
    assert store.requeue(task.lease, "internal error; retrying")
    record = store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.WAITING
    assert record.lease_owner is None and record.attempts == 1
    assert [im.status for im in record.images] == [ImageStatus.WAITING] * 2


def test_a_release_at_shutdown_does_not_count_the_attempt(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    new_task(store, appkey)
    task = claim(store)
    assert store.release(task.lease)
    assert claim(store).attempts == 1


def test_tasks_with_no_confirmed_message_are_found_for_publishing(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    low, high = new_task(store, appkey, priority=0), new_task(store, appkey, priority=9)
    published = new_task(store, appkey)
    store.mark_dispatched([published], published_at=time.time())
    assert store.undispatched(before=time.time() - 60) == []  # too young yet
    found = store.undispatched(before=time.time() + 1)
    assert [q.task_id for q in found] == [high, low]
    assert [q.priority for q in found] == [9, 0]
    # A re-queued task needs a message again.
    task = store.claim(published, "w", LEASE)
    assert task is not None and store.requeue(task.lease, "retrying")
    assert published not in {q.task_id for q in store.undispatched(time.time() - 1)}  # a pause
    assert published in {q.task_id for q in store.undispatched(time.time() + 1)}


def test_a_task_given_back_while_its_publish_was_confirmed_still_needs_a_message(
    store: TaskStore,
) -> None:
    """The dispatcher publishes, a worker takes the message at once, fails on something of
    ours and gives the task back; only then does the dispatcher record its (old) publish."""
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    published_at = time.time()
    task = store.claim(task_id, "w", LEASE)
    assert task is not None and store.requeue(task.lease, "object store down; retrying")
    store.mark_dispatched([task_id], published_at=published_at)
    assert task_id in {q.task_id for q in store.undispatched(time.time() + 1)}


def test_a_task_still_waiting_long_after_its_message_gets_another(store: TaskStore) -> None:
    """A message lost past the broker's confirm (a purged queue): the safety net."""
    appkey, _ = store.create_key("k")
    task_id = new_task(store, appkey)
    store.mark_dispatched([task_id], published_at=time.time())
    assert store.undispatched(time.time() + 1, dispatched_before=time.time() - 60) == []
    again = store.undispatched(time.time() + 1, dispatched_before=time.time() + 1)
    assert [q.task_id for q in again] == [task_id]


def test_live_slots_count_recent_heartbeats_only(store: TaskStore) -> None:
    assert store.live_slots(within=30) == 0
    store.beat("host-a:1", 1)
    store.beat("host-a:2", 1)
    store.beat("embedded", 4)
    assert store.live_slots(within=30) == 6
    store.forget_worker("embedded")
    assert store.live_slots(within=30) == 2
    time.sleep(0.02)
    assert store.live_slots(within=0.01) == 0
    assert store.forget_silent_workers(silent_for=0.01) == 2
    assert store.forget_silent_workers(silent_for=0.01) == 0


def test_the_shared_rate_limit_refills_continuously(store: TaskStore) -> None:
    assert [store.take_token("a", 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = store.take_token("a", 3)
    assert 0 < wait <= 20  # one token comes back every 20 s
    assert store.take_token("b", 3) == 0.0  # per key


def test_the_maintenance_lock_is_held_by_one_at_a_time(store: TaskStore) -> None:
    with store.exclusive("maintenance") as first:
        assert first
        if store.engine.dialect.name == "postgresql":
            other = TaskStore(sa.create_engine(store.engine.url))
            try:
                with other.exclusive("maintenance") as second:
                    assert not second
                with other.exclusive("something else") as unrelated:
                    assert unrelated
            finally:
                other.engine.dispose()
    with store.exclusive("maintenance") as again:
        assert again


def test_the_serving_lock_is_shared_by_a_cluster_and_exclusive_for_a_server(
    store: TaskStore,
) -> None:
    other = TaskStore(sa.create_engine(store.engine.url, connect_args=_connect_args(store)))
    try:
        api_a = store.hold("serving", shared=True)
        api_b = other.hold("serving", shared=True)
        assert api_a is not None and api_b is not None  # API processes share it
        assert other.hold("serving", shared=False) is None  # no embedded server beside them
        api_a.release()
        api_b.release()
        server = store.hold("serving", shared=False)
        assert server is not None
        assert other.hold("serving", shared=True) is None  # no API process beside it
        assert other.hold("serving", shared=False) is None  # nor a second server
        server.release()
        again = other.hold("serving", shared=False)
        assert again is not None
        again.release()
    finally:
        other.engine.dispose()


def test_recent_durations_are_the_newest_complete_and_failed_runs(store: TaskStore) -> None:
    from photo_eraser.tasks.store import _RECENT_RUNS, RECENT_RUNS
    from photo_eraser.tasks.tables import tasks

    statuses = [TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CLOSED, TaskStatus.TIMED_OUT]
    appkey, _ = store.create_key("k")
    ids = [new_task(store, appkey) for _ in range(2 * RECENT_RUNS + 8)]
    with store.engine.begin() as conn:
        for n, task_id in enumerate(ids):  # task n ran n + 1 seconds and finished at 1000 + n
            conn.execute(
                tasks.update()
                .where(tasks.c.task_id == task_id)
                .values(
                    status=int(statuses[n % 4]),
                    started_at=1000.0 + n - (n + 1),
                    finished_at=1000.0 + n,
                    queue_seq=None,
                )
            )
    wanted = [float(n + 1) for n in reversed(range(len(ids))) if n % 4 < 2][:RECENT_RUNS]
    assert store.recent_durations() == wanted
    if store.engine.dialect.name == "sqlite":  # each status walks the index, no full sort
        sql = str(
            _RECENT_RUNS.statement.compile(store.engine, compile_kwargs={"literal_binds": True})
        )
        with store.engine.connect() as conn:
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
        searches = [step for step in plan if step.startswith("SEARCH tasks")]
        assert searches == ["SEARCH tasks USING INDEX ix_tasks_status_finished_at (status=?)"] * 2
