"""The queue position a poll reports (``TaskStore.queue_position``, read from per-priority
sequence numbers) equals its definition, counted row by row: tasks in progress, plus waiting
tasks of a higher priority, plus waiting tasks of the same priority created earlier. Checked
on SQLite and PostgreSQL after every kind of move a task makes: claims in queue order and by
name (a broker's message), finishing, closing, timing out, being given back (an error of
ours, a clean shutdown), a lease that expired, and recovery after a crash."""

from __future__ import annotations

import random
import time
import uuid

import sqlalchemy as sa

from photo_eraser.tasks.queue import _POSITION
from photo_eraser.tasks.records import ImageRecord, NewTask, TaskRecord
from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.tasks.store import TaskStore
from photo_eraser.tasks.tables import tasks

LEASE = 60.0


def counted(store: TaskStore, task: TaskRecord) -> int:
    """The position by its definition, from every row (what the API always reported)."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(tasks.c.id, tasks.c.status, tasks.c.priority)).all()
    running = sum(1 for r in rows if r.status == TaskStatus.IN_PROGRESS)
    ahead = sum(
        1
        for r in rows
        if r.status == TaskStatus.WAITING
        and (r.priority > task.priority or (r.priority == task.priority and r.id < task.pk))
    )
    return running + ahead


def waiting(store: TaskStore) -> list[TaskRecord]:
    with store.engine.connect() as conn:
        ids = conn.execute(
            sa.select(tasks.c.task_id).where(tasks.c.status == TaskStatus.WAITING)
        ).scalars()
        found = [store.get_task(task_id) for task_id in ids]
    return [t for t in found if t is not None]


def assert_positions_exact(store: TaskStore) -> int:
    """Every waiting task's position equals the counted one; returns how many were checked."""
    queue = waiting(store)
    got = {t.task_id: store.queue_position(t) for t in queue}
    want = {t.task_id: counted(store, t) for t in queue}
    assert got == want
    return len(queue)


def create(
    store: TaskStore, appkey: str, priorities: list[int], deadline: float = 600
) -> list[str]:
    new = [
        NewTask(
            task_id=str(uuid.uuid4()),
            appkey=appkey,
            urls=["http://a.example/0.png"],
            priority=p,
            engine="auto",
            mask_url="http://a.example/m.png",
            mask_key=None,
            deadline_seconds=deadline,
        )
        for p in priorities
    ]
    assert all(store.create_tasks(new))
    return [t.task_id for t in new]


def done() -> list[ImageRecord]:
    return [ImageRecord(0, "u", ImageStatus.DONE, result_key="r0")]


def test_positions_follow_priority_then_age(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    ids = create(store, appkey, [1, 5, 1, 9, 5, 0, 9, 1])
    positions = [store.queue_position(store.get_task(i)) for i in ids]  # type: ignore[arg-type]
    # Queue order: the 9s (ids 3, 6), the 5s (1, 4), the 1s (0, 2, 7), the 0 (5).
    assert positions == [4, 2, 5, 0, 3, 7, 1, 6]
    assert assert_positions_exact(store) == 8


def test_a_task_of_a_priority_with_no_one_else_waiting_is_next(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    [only] = create(store, appkey, [3])
    task = store.get_task(only)
    assert task is not None and store.queue_position(task) == 0


def test_claims_in_queue_order_and_the_running_ones_count(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    ids = create(store, appkey, [2] * 6 + [7] * 3)
    first = store.claim_next("w1", LEASE)
    second = store.claim_next("w1", LEASE)
    assert first is not None and second is not None
    last = store.get_task(ids[5])
    assert last is not None
    # Two running, one 7 and five 2s waiting ahead: (7 - 2 claimed) + 2 running.
    assert store.queue_position(last) == 2 + 1 + 5
    assert store.finish(first.lease, TaskStatus.COMPLETE, "", done())
    assert store.finish(second.lease, TaskStatus.FAILED, "input", ())
    assert store.queue_position(last) == 1 + 5
    assert assert_positions_exact(store) == 7


def test_tasks_leaving_out_of_order_are_not_counted(store: TaskStore) -> None:
    """Closed in the middle of the queue, claimed by name (a broker's message), timed out:
    holes between the head and a task are subtracted, not counted as waiting."""
    appkey, _ = store.create_key("k")
    ids = create(store, appkey, [4] * 8 + [6] * 5)
    assert store.close(ids[2], appkey) is not None
    assert store.close(ids[9], appkey) is not None  # a 6 between the head and the tail
    by_name = store.claim(ids[5], "broker-worker", LEASE)
    assert by_name is not None
    last = store.get_task(ids[7])
    assert last is not None
    # Running 1; 6s waiting: 4 (one closed); 4s ahead of ids[7]: 0,1,3,4,6 = 5.
    assert store.queue_position(last) == 1 + 4 + 5
    assert assert_positions_exact(store) == 10


def test_timed_out_tasks_leave_the_queue(store: TaskStore) -> None:
    appkey, _ = store.create_key("k")
    old = create(store, appkey, [5, 5], deadline=0.01)
    young = create(store, appkey, [5, 5])
    time.sleep(0.05)
    assert len(store.expire_overdue()) == 2
    task = store.get_task(young[1])
    assert task is not None and store.queue_position(task) == 1
    assert all(store.get_task(i).status == TaskStatus.TIMED_OUT for i in old)  # type: ignore[union-attr]
    assert assert_positions_exact(store) == 2


def test_a_task_given_back_keeps_its_place(store: TaskStore) -> None:
    """Requeued after an error of ours, released at shutdown, reaped after its lease expired:
    it goes back where it was (ahead of the tasks created after it), and the running task
    claimed after it is counted once."""
    appkey, _ = store.create_key("k")
    ids = create(store, appkey, [3] * 6)
    a = store.claim_next("a", LEASE)
    b = store.claim_next("b", 0.05)
    c = store.claim_next("c", LEASE)
    assert a is not None and b is not None and c is not None
    assert [a.task_id, b.task_id, c.task_id] == ids[:3]
    assert store.requeue(a.lease, "blob store down")  # ids[0] waits again, at the head
    back = store.get_task(ids[0])
    assert back is not None and store.queue_position(back) == 2  # b and c run
    time.sleep(0.1)
    requeued, failed = store.reap_expired_leases(max_attempts=3)
    assert [q.task_id for q in requeued] == [ids[1]] and failed == 0
    assert store.release(c.lease)
    last = store.get_task(ids[5])
    assert last is not None and store.queue_position(last) == 5
    assert assert_positions_exact(store) == 6


def test_positions_after_crash_recovery(store: TaskStore) -> None:
    """The embedded server crashed holding tasks (leases of ``node#...``): on restart they go
    back to the queue in their old places."""
    appkey, _ = store.create_key("k")
    ids = create(store, appkey, [8, 8, 1, 1, 1])
    for _ in range(3):
        assert store.claim_next("node#old-run", LEASE) is not None
    requeued, failed = store.release_owned("node", max_attempts=3)
    assert sorted(q.task_id for q in requeued) == sorted(ids[:3]) and failed == 0
    positions = [store.queue_position(store.get_task(i)) for i in ids]  # type: ignore[arg-type]
    assert positions == [0, 1, 2, 3, 4]
    assert assert_positions_exact(store) == 5


def test_random_moves_keep_every_position_exact(store: TaskStore) -> None:
    """A few hundred random creates, claims (in order and by name), finishes, closes,
    hand-backs and crash recoveries; after each, every waiting task's position is checked."""
    rng = random.Random(18)
    appkey, _ = store.create_key("k")
    running: list[TaskRecord] = []
    checked = 0
    for step in range(120):
        move = rng.choice(["create", "create", "claim", "claim_name", "finish", "close", "back"])
        if move == "create":
            create(store, appkey, [rng.randrange(10) for _ in range(rng.randint(1, 4))])
        elif move == "claim" and (task := store.claim_next(f"node#{step}", LEASE)):
            running.append(task)
        elif move == "claim_name" and (queue := waiting(store)):
            task = store.claim(rng.choice(queue).task_id, f"broker{step}", LEASE)
            assert task is not None
            running.append(task)
        elif move == "finish" and running:
            task = running.pop(rng.randrange(len(running)))
            status = rng.choice([TaskStatus.COMPLETE, TaskStatus.FAILED])
            assert store.finish(task.lease, status, "", done())
        elif move == "close" and (queue := waiting(store)):
            assert store.close(rng.choice(queue).task_id, appkey) is not None
        elif move == "back" and running:
            task = running.pop(rng.randrange(len(running)))
            assert (
                store.requeue(task.lease, "retry")
                if rng.random() < 0.7
                else store.release(task.lease)
            )
        if step % 40 == 39:  # a crash: the node's leases come back
            store.release_owned("node", max_attempts=99)
            running = [t for t in running if not (t.lease_owner or "").startswith("node#")]
        checked += assert_positions_exact(store)
    assert checked > 200  # the checks did see a queue


def test_the_position_reads_no_table_scan(store: TaskStore) -> None:
    """On SQLite, every step of the position statement is an index search (a scan of the tasks
    would grow with the backlog)."""
    if store.engine.dialect.name != "sqlite":
        return
    appkey, _ = store.create_key("k")
    create(store, appkey, [0, 5, 9])
    with store.engine.connect() as conn:
        compiled = _POSITION.statement.compile(dialect=conn.dialect)
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, (0, 1, 0)).all()
    details = [str(row[-1]) for row in plan]
    assert any("USING COVERING INDEX ix_tasks_queue_seq" in d for d in details), details
    assert not [d for d in details if d.startswith("SCAN t")], details
