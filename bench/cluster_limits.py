"""Cluster limits: how many tasks per second PostgreSQL, RabbitMQ and the S3 store each carry,
measured one at a time through the project's own code, on this machine.

    .venv/bin/python bench/cluster_limits.py [--seconds 6] [--warmup 1] [--poll-seconds 4]
        [--count-tasks 200] [--messages 3000] [--objects 100]

1. **PostgreSQL** (a fresh schema, migrated; `TaskStore` on an engine built like
   ``create_db_engine``, with ``pool_size = T + 2``). One task's life as the cluster writes it:
   ``create_tasks`` (1 task, 5 image URLs, an inline-mask key, ``max_open_per_key`` at its
   default of 1000, as the intake passes it) -> ``mark_dispatched`` -> ``claim(task_id)`` ->
   ``set_images`` (5 images processing) -> ``finish(COMPLETE)`` (5 images done with result
   keys), in a loop from T = 1, 4, 16 threads sharing the store, each thread with an API key of
   its own. Every call must succeed (a refused claim or write stops the run). ``--warmup`` s
   unmeasured, then ``--seconds`` s: calls completed in that window count. Then the
   transactions one task costs: ``xact_commit`` and ``xact_rollback`` of the database in
   ``pg_stat_database`` before and after ``--count-tasks`` tasks from one thread, on an engine
   of its own that is disposed of before the second reading (a backend flushes its counters
   when it exits). Every client of that database counts, so this runs twice. Reads end in a
   rollback (the pool resets a connection on return), writes in a commit. Then one poll of
   ``GET /v3/pic/rw/result`` on a waiting task: ``verify_key`` + ``get_task`` +
   ``recent_durations`` + ``live_slots`` + ``queue_position``, with 100 other tasks waiting,
   one worker's heartbeat and the finished tasks of the first part in the tables.
2. **RabbitMQ** (a fresh vhost): `CeleryDispatcher.publish_now` of ``--messages`` task ids
   (persistent, publisher confirms, one at a time as the code does; the tasks exist in a fresh
   schema, so its closing ``mark_dispatched`` updates them all; its time is shown apart). One
   message published first opens the connection and declares the queue (not timed). Then a
   plain kombu consumer (prefetch 1, an ack per message, as a Celery worker with
   ``acks_late``) drains the queue; every task id must come back exactly once.
3. **The object store**: SeaweedFS ``weed mini`` (harness.s3server) on this machine, an
   `S3BlobStore` as the service builds it; ``--objects`` objects of 1 and 4 MiB of
   ``os.urandom`` bytes, put then read back (and compared) from 1 and 8 threads. Five objects
   are put and read first (not timed); each run's objects are deleted after it (not timed).

Every row gives the CPU used in its window as a share of the whole machine (100 % = every
core busy): this process, the service's processes (every process named ``postgres``,
``beam.smp`` or ``weed``, including other clients' backends) and the whole machine from
/proc/stat. All three services and this benchmark share the same cores, so each figure is a
floor for that service on this machine, not its ceiling on a host of its own.

Services: those of the cluster tests (harness.postgres, harness.rabbit, harness.s3server); without
one it says which and exits with status 2. The schemas, the vhost and the weed process are
removed whatever happens; everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import (  # noqa: E402
    code_line,
    first_line,
    load_average,
    machine_line,
    pct,
    version,
)
from harness.postgres import base_url, fresh_schema  # noqa: E402
from harness.rabbit import fresh_vhost  # noqa: E402
from harness.s3server import running_s3, weed_binary  # noqa: E402
from photo_eraser.config import Settings  # noqa: E402
from photo_eraser.dispatch.celery import QUEUE, CeleryDispatcher, make_celery  # noqa: E402
from photo_eraser.storage import mask_key, result_key  # noqa: E402
from photo_eraser.storage.s3 import S3BlobStore  # noqa: E402
from photo_eraser.tasks.db import migrate  # noqa: E402
from photo_eraser.tasks.records import ImageRecord, NewTask, Queued  # noqa: E402
from photo_eraser.tasks.status import ImageStatus, TaskStatus  # noqa: E402
from photo_eraser.tasks.store import TaskStore  # noqa: E402

IMAGES_PER_TASK = 5
MAX_OPEN_PER_KEY = Settings.model_fields["max_open_tasks_per_key"].default
LEASE_SECONDS = 60.0
HEARTBEAT_WINDOW = 30.0  # what the API passes to live_slots (6 heartbeats of 5 s)
LIFECYCLE_THREADS = (1, 4, 16)
POLL_THREADS = (1, 16)
S3_THREADS = (1, 8)
S3_SIZES = (1 << 20, 4 << 20)
STEPS = ("create", "mark_dispatched", "claim", "set_images", "finish")
CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def emit(line: str = "") -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# CPU accounting: this process, the service's processes, the whole machine.


@dataclass
class CpuSample:
    wall: float
    bench: float
    service: float
    busy_ticks: int
    total_ticks: int


def _ticks_of(comm: str) -> int:
    """utime + stime of every live process named ``comm``, in clock ticks."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            text = Path(entry.path, "stat").read_text()
            name = text[text.index("(") + 1 : text.rindex(")")]
            if name == comm:
                fields = text.rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
    return total


def cpu_sample(comm: str) -> CpuSample:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is counted in user already
    return CpuSample(
        time.perf_counter(), time.process_time(), _ticks_of(comm) / CLK_TCK, total - idle, total
    )


def cpu_shares(a: CpuSample, b: CpuSample) -> str:
    """'bench / service / machine' in % of all cores over the interval."""
    capacity = max(1e-9, (b.wall - a.wall) * CORES)
    machine = 100 * (b.busy_ticks - a.busy_ticks) / max(1, b.total_ticks - a.total_ticks)
    bench = 100 * (b.bench - a.bench) / capacity
    service = 100 * max(0.0, b.service - a.service) / capacity
    return f"{bench:.0f} / {service:.0f} / {machine:.0f}"


# ---------------------------------------------------------------------------------------------
# Running a call in a loop from several threads for a fixed window.


@dataclass
class Window:
    threads: int
    seconds: float
    count: int
    latencies: list[float]
    steps: dict[str, list[float]]
    cpu: str

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


def run_window(
    threads: int,
    warmup: float,
    seconds: float,
    make_call: Callable[[int], Callable[[], dict[str, float]]],
    comm: str,
) -> Window:
    """Each of ``threads`` threads runs its call in a loop; calls that complete within the
    ``seconds`` after ``warmup`` count. A call returns its steps' durations."""
    calls = [make_call(i) for i in range(threads)]
    start = time.perf_counter() + 0.05
    w0, w1 = start + warmup, start + warmup + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    steps: dict[str, list[float]] = {}
    errors: list[BaseException] = []

    def loop(call: Callable[[], dict[str, float]]) -> None:
        mine: list[tuple[float, dict[str, float]]] = []
        try:
            while time.perf_counter() < start:
                time.sleep(0.001)
            while (t := time.perf_counter()) < w1 and not errors:
                parts = call()
                done = time.perf_counter()
                if w0 <= done < w1:
                    mine.append((done - t, parts))
        except BaseException as exc:
            errors.append(exc)
        with lock:
            for latency, parts in mine:
                latencies.append(latency)
                for name, value in parts.items():
                    steps.setdefault(name, []).append(value)

    workers = [threading.Thread(target=loop, args=(c,), daemon=True) for c in calls]
    for w in workers:
        w.start()
    time.sleep(max(0.0, w0 - time.perf_counter()))
    before = cpu_sample(comm)
    time.sleep(max(0.0, w1 - time.perf_counter()))
    after = cpu_sample(comm)
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return Window(threads, seconds, len(latencies), latencies, steps, cpu_shares(before, after))


def timed_steps() -> tuple[dict[str, float], Callable[[str], None]]:
    """A dict of step durations and a function that closes the current step under a name."""
    out: dict[str, float] = {}
    last = [time.perf_counter()]

    def mark(name: str) -> None:
        now = time.perf_counter()
        out[name] = now - last[0]
        last[0] = now

    return out, mark


# ---------------------------------------------------------------------------------------------
# 1. PostgreSQL


def pg_engine(url: str, threads: int) -> sa.Engine:
    """As `create_db_engine` builds it (pre-ping), with a pool for ``threads`` threads."""
    return sa.create_engine(url, pool_pre_ping=True, pool_size=threads + 2)


def new_task(task_id: str, appkey: str, priority: int) -> NewTask:
    return NewTask(
        task_id=task_id,
        appkey=appkey,
        urls=[f"https://images.example/{task_id}/{i}.jpg" for i in range(IMAGES_PER_TASK)],
        priority=priority,
        engine="opencv",
        mask_url=None,
        mask_key=mask_key(task_id),
        deadline_seconds=3600.0,
    )


def lifecycle(store: TaskStore, appkey: str, owner: str, n: int) -> dict[str, float]:
    """One task from create to finish, as the API process and a worker write it."""
    out, mark = timed_steps()
    task_id = str(uuid.uuid4())
    stored = store.create_tasks([new_task(task_id, appkey, n % 10)], MAX_OPEN_PER_KEY)
    if stored != [True]:
        raise RuntimeError(f"create_tasks refused the task: {stored}")
    mark("create")
    store.mark_dispatched([task_id], published_at=time.time())
    mark("mark_dispatched")
    task = store.claim(task_id, owner, LEASE_SECONDS)
    if task is None or len(task.images) != IMAGES_PER_TASK:
        raise RuntimeError(f"claim of {task_id} returned {task}")
    mark("claim")
    processing = [ImageRecord(im.idx, im.url, ImageStatus.PROCESSING) for im in task.images]
    if not store.set_images(task.lease, processing):
        raise RuntimeError(f"set_images of {task_id} refused")
    mark("set_images")
    done = [
        ImageRecord(
            im.idx,
            im.url,
            ImageStatus.DONE,
            result_key=result_key(task_id, im.idx, "jpg"),
            method="opencv",
        )
        for im in task.images
    ]
    if not store.finish(task.lease, TaskStatus.COMPLETE, "", done):
        raise RuntimeError(f"finish of {task_id} refused")
    mark("finish")
    return out


def lifecycle_calls(store: TaskStore) -> Callable[[int], Callable[[], dict[str, float]]]:
    def make(i: int) -> Callable[[], dict[str, float]]:
        appkey, _ = store.create_key(f"bench-{i}")
        owner = f"bench-worker-{i}"
        counter = iter(range(1 << 62))
        return lambda: lifecycle(store, appkey, owner, next(counter))

    return make


@dataclass
class Poller:
    store: TaskStore
    appkey: str
    appsecret: str
    task_id: str

    def poll(self) -> dict[str, float]:
        """What ``GET /v3/pic/rw/result/{id}`` asks the store for a waiting task."""
        out, mark = timed_steps()
        if not self.store.verify_key(self.appkey, self.appsecret):
            raise RuntimeError("verify_key refused the bench key")
        mark("verify_key")
        task = self.store.get_task(self.task_id, self.appkey)
        if task is None or task.status != TaskStatus.WAITING:
            raise RuntimeError(f"the polled task is gone or not waiting: {task}")
        mark("get_task")
        self.store.recent_durations()
        mark("recent_durations")
        self.store.live_slots(HEARTBEAT_WINDOW)
        mark("live_slots")
        self.store.queue_position(task)
        mark("queue_position")
        return out


def xact_counts(admin: sa.Engine, database: str) -> tuple[int, int]:
    """(xact_commit, xact_rollback) of ``database``, read on a connection of its own."""
    with admin.connect() as conn:
        row = conn.execute(
            sa.text("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = :d"),
            {"d": database},
        ).one()
    return int(row[0]), int(row[1])


@dataclass
class Counted:
    label: str
    n: int
    commits: int
    rollbacks: int
    seconds: float
    client: dict[str, int]
    """Pool checkouts, COMMITs and ROLLBACKs SQLAlchemy made in the counted calls."""


def count_transactions(
    url: str,
    admin: sa.Engine,
    database: str,
    label: str,
    n: int,
    setup_and_call: Callable[[TaskStore], Callable[[], object]],
) -> Counted:
    """Transactions of ``n`` calls from one thread on an engine of its own (with its set-up:
    the engine's first connection, the call's own set-up; the row with 0 calls shows those)."""
    time.sleep(0.3)  # backends of engines disposed of just before have exited and flushed
    c0, r0 = xact_counts(admin, database)
    engine = pg_engine(url, 1)
    client = dict.fromkeys(("checkout", "commit", "rollback"), 0)
    for name in client:
        sa.event.listen(engine, name, functools.partial(_count, client, name))
    try:
        call = setup_and_call(TaskStore(engine))
        client.update(dict.fromkeys(client, 0))
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        seconds = time.perf_counter() - t0
        counted = dict(client)
    finally:
        engine.dispose()
    time.sleep(0.3)
    c1, r1 = xact_counts(admin, database)
    return Counted(label, n, c1 - c0, r1 - r0, seconds, counted)


def _count(counts: dict[str, int], name: str, *_args: object) -> None:
    counts[name] += 1


def postgres_part(args: argparse.Namespace) -> dict[str, float]:
    lifecycle_windows: list[Window] = []
    poll_windows: list[Window] = []
    counted: list[Counted] = []
    database = sa.engine.make_url(base_url()).database or "test"
    admin = sa.create_engine(base_url(), poolclass=sa.pool.NullPool)
    with fresh_schema() as url:
        setup = pg_engine(url, 1)
        migrate(setup)
        setup.dispose()
        for threads in LIFECYCLE_THREADS:
            engine = pg_engine(url, threads)
            store = TaskStore(engine)
            window = run_window(
                threads, args.warmup, args.seconds, lifecycle_calls(store), "postgres"
            )
            engine.dispose()
            lifecycle_windows.append(window)
            emit(f"  lifecycle T={threads}: {window.per_second:.0f} tasks/s")

        counted.append(
            count_transactions(
                url, admin, database, "set-up only (0 calls)", 0, lambda s: lifecycle_calls(s)(0)
            )
        )
        for run in (1, 2):
            counted.append(
                count_transactions(
                    url,
                    admin,
                    database,
                    f"lifecycle, run {run}",
                    args.count_tasks,
                    lambda store: lifecycle_calls(store)(0),
                )
            )

        # The poll: a waiting task behind 100 others, one worker alive.
        engine = pg_engine(url, max(POLL_THREADS))
        store = TaskStore(engine)
        appkey, appsecret = store.create_key("poller")
        waiting = [new_task(str(uuid.uuid4()), appkey, i % 10) for i in range(100)]
        target = new_task(str(uuid.uuid4()), appkey, 0)
        store.create_tasks([*waiting, target])
        store.beat("bench-worker", 4)
        poller = Poller(store, appkey, appsecret, target.task_id)
        for threads in POLL_THREADS:
            window = run_window(
                threads, args.warmup, args.poll_seconds, lambda _i: poller.poll, "postgres"
            )
            poll_windows.append(window)
            emit(f"  poll T={threads}: {window.per_second:.0f} polls/s")
        engine.dispose()
        counted.append(
            count_transactions(
                url,
                admin,
                database,
                "poll",
                args.count_tasks,
                lambda s: Poller(s, appkey, appsecret, target.task_id).poll,
            )
        )
    admin.dispose()

    emit()
    emit(
        "### 1a. Task lifecycle (create -> mark_dispatched -> claim -> set_images -> finish; "
        f"{IMAGES_PER_TASK} images per task)"
    )
    emit()
    emit(
        "| threads | tasks | window s | tasks/s | images/s | p50 ms | p99 ms "
        "| CPU % bench / postgres / machine |"
    )
    emit("|---:|---:|---:|---:|---:|---:|---:|---|")
    for w in lifecycle_windows:
        emit(
            f"| {w.threads} | {w.count} | {w.seconds:g} | {w.per_second:.0f} "
            f"| {w.per_second * IMAGES_PER_TASK:.0f} | {pct(w.latencies, 50) * 1000:.1f} "
            f"| {pct(w.latencies, 99) * 1000:.1f} | {w.cpu} |"
        )
    emit()
    emit("Median ms per store call in the same runs:")
    emit()
    emit("| threads | " + " | ".join(STEPS) + " |")
    emit("|---:|" + "---:|" * len(STEPS))
    for w in lifecycle_windows:
        cells = [f"{statistics.median(w.steps[s]) * 1000:.2f}" for s in STEPS]
        emit(f"| {w.threads} | " + " | ".join(cells) + " |")

    emit()
    emit(
        f"### 1b. Transactions per call (pg_stat_database of database `{database}`, "
        "one thread; other clients of that database add to the count)"
    )
    emit()
    emit(
        "| what | calls | xact_commit | xact_rollback | commits/call | rollbacks/call "
        "| client per call: checkouts (pre-ping) / COMMIT / ROLLBACK | calls/s |"
    )
    emit("|---|---:|---:|---:|---:|---:|---|---:|")
    for c in counted:
        if c.n == 0:
            emit(f"| {c.label} | 0 | {c.commits} | {c.rollbacks} | - | - | - | - |")
            continue
        client = " / ".join(f"{c.client[k] / c.n:.2f}" for k in ("checkout", "commit", "rollback"))
        emit(
            f"| {c.label} | {c.n} | {c.commits} | {c.rollbacks} | {c.commits / c.n:.2f} "
            f"| {c.rollbacks / c.n:.2f} | {client} | {c.n / c.seconds:.0f} |"
        )
    emit()
    emit(
        "The server counts each pool pre-ping (psycopg sends an empty query in autocommit) as "
        "a committed transaction, each COMMIT and each ROLLBACK; after a ROLLBACK, psycopg also "
        "sends `DEALLOCATE ALL` (one more commit) when statements had been prepared since the "
        "last one (after 5 executions). What is left is other clients of the database and this "
        "benchmark's set-up (the 0-call row)."
    )

    poll_steps = ("verify_key", "get_task", "recent_durations", "live_slots", "queue_position")
    emit()
    emit(
        "### 1c. One poll of GET /v3/pic/rw/result on a waiting task (verify_key + get_task + "
        "recent_durations + live_slots + queue_position; 100 tasks ahead in the queue)"
    )
    emit()
    emit(
        "| threads | polls | window s | polls/s | p50 ms | p99 ms "
        "| CPU % bench / postgres / machine | "
        + " | ".join(f"{s} ms (median)" for s in poll_steps)
        + " |"
    )
    emit("|---:|---:|---:|---:|---:|---:|---|" + "---:|" * len(poll_steps))
    for w in poll_windows:
        cells = [f"{statistics.median(w.steps[s]) * 1000:.2f}" for s in poll_steps]
        emit(
            f"| {w.threads} | {w.count} | {w.seconds:g} | {w.per_second:.0f} "
            f"| {pct(w.latencies, 50) * 1000:.1f} | {pct(w.latencies, 99) * 1000:.1f} "
            f"| {w.cpu} | " + " | ".join(cells) + " |"
        )
    return {
        "tasks_per_s": max(w.per_second for w in lifecycle_windows),
        "polls_per_s": max(w.per_second for w in poll_windows),
    }


# ---------------------------------------------------------------------------------------------
# 2. RabbitMQ


class TimedStore(TaskStore):
    """The store, timing the dispatcher's ``mark_dispatched`` apart from its publishes."""

    mark_seconds = 0.0

    def mark_dispatched(self, task_ids: Sequence[str], published_at: float) -> None:
        t = time.perf_counter()
        super().mark_dispatched(task_ids, published_at)
        self.mark_seconds += time.perf_counter() - t


def rabbit_part(args: argparse.Namespace) -> dict[str, float]:
    from kombu import Connection, Consumer

    n = args.messages
    with fresh_schema() as db_url, fresh_vhost() as broker_url:
        engine = pg_engine(db_url, 1)
        migrate(engine)
        store = TimedStore(engine)
        appkey, _ = store.create_key("bench")
        tasks = [new_task(str(uuid.uuid4()), appkey, i % 10) for i in range(n)]
        for start in range(0, n, 500):
            store.create_tasks(tasks[start : start + 500])
        app = make_celery(Settings(broker_url=broker_url, database_url=db_url))
        dispatcher = CeleryDispatcher(app, store)
        try:
            warm = str(uuid.uuid4())
            if dispatcher.publish_now([Queued(warm, 0)]) != [warm]:
                raise RuntimeError("the first publish failed (see the log above)")
            store.mark_seconds = 0.0
            before = cpu_sample("beam.smp")
            t0 = time.perf_counter()
            done = dispatcher.publish_now([Queued(t.task_id, t.priority) for t in tasks])
            publish_seconds = time.perf_counter() - t0
            publish_cpu = cpu_shares(before, cpu_sample("beam.smp"))
            mark_seconds = store.mark_seconds
            if len(done) != n:
                raise RuntimeError(f"published {len(done)} of {n} (see the log above)")
        finally:
            dispatcher.close()
            app.close()
        with engine.connect() as conn:
            marked = conn.execute(
                sa.text("SELECT count(*) FROM tasks WHERE dispatched_at IS NOT NULL")
            ).scalar_one()
        engine.dispose()

        expected = {warm, *(t.task_id for t in tasks)}
        seen: list[str] = []
        queue = app.amqp.queues[QUEUE]
        with Connection(broker_url) as conn:
            channel = conn.channel()

            def on_message(body: Any, message: Any) -> None:
                task_args, _kwargs, _embed = body  # Celery message protocol 2
                seen.append(task_args[0])
                message.ack()

            with Consumer(
                channel, queues=[queue], callbacks=[on_message], accept=["json"], prefetch_count=1
            ):
                before = cpu_sample("beam.smp")
                t0 = time.perf_counter()
                last = t0
                while len(seen) < len(expected):
                    try:
                        conn.drain_events(timeout=5)
                    except TimeoutError:
                        break
                    last = time.perf_counter()
                consume_seconds = last - t0
                consume_cpu = cpu_shares(before, cpu_sample("beam.smp"))
    if len(seen) != len(expected) or set(seen) != expected:
        raise RuntimeError(
            f"consumed {len(seen)} messages ({len(set(seen))} distinct) of {len(expected)} "
            "published"
        )

    publish_rate = n / publish_seconds
    consume_rate = len(seen) / consume_seconds
    emit()
    emit(
        f"### 2. RabbitMQ: {n} task ids through CeleryDispatcher.publish_now (persistent, "
        "publisher confirms, one at a time), then drained by one kombu consumer (prefetch 1, "
        "ack each)"
    )
    emit()
    emit(
        "| step | messages | seconds | messages/s | ms/message | CPU % bench / beam.smp / machine |"
    )
    emit("|---|---:|---:|---:|---:|---|")
    emit(
        f"| publish_now (all) | {n} | {publish_seconds:.2f} | {publish_rate:.0f} "
        f"| {1000 / publish_rate:.2f} | {publish_cpu} |"
    )
    emit(
        f"| of which the closing mark_dispatched ({marked} rows marked) | {n} "
        f"| {mark_seconds:.2f} | - | {1000 * mark_seconds / n:.3f} | - |"
    )
    emit(
        f"| consume + ack | {len(seen)} | {consume_seconds:.2f} | {consume_rate:.0f} "
        f"| {1000 / consume_rate:.2f} | {consume_cpu} |"
    )
    emit()
    emit(
        f"Every task id came back exactly once ({len(seen)} messages, the first one published "
        "before the timed part included)."
    )
    return {"publish_per_s": publish_rate, "consume_per_s": consume_rate}


# ---------------------------------------------------------------------------------------------
# 3. The object store


@dataclass
class Transfer:
    size: int
    threads: int
    objects: int
    put_seconds: float
    get_seconds: float
    put_latencies: list[float] = field(default_factory=list)
    get_latencies: list[float] = field(default_factory=list)
    put_cpu: str = ""
    get_cpu: str = ""


def transfer(store: S3BlobStore, payloads: list[bytes], threads: int) -> Transfer:
    """Put every payload from ``threads`` threads, then read each back and compare; the
    objects are deleted afterwards (not timed)."""
    size = len(payloads[0])
    folder = f"bench/{size}-{threads}"
    run = Transfer(size, threads, len(payloads), 0.0, 0.0)

    def put(i: int) -> None:
        t = time.perf_counter()
        store.put(f"{folder}/{i}.bin", payloads[i])
        run.put_latencies.append(time.perf_counter() - t)

    def get(i: int) -> None:
        t = time.perf_counter()
        blob = store.open(f"{folder}/{i}.bin")
        if blob is None:
            raise RuntimeError(f"{folder}/{i}.bin is missing after its put")
        with blob.file:
            data = blob.file.read()
        run.get_latencies.append(time.perf_counter() - t)
        if data != payloads[i]:
            raise RuntimeError(f"{folder}/{i}.bin came back with other bytes")

    with ThreadPoolExecutor(threads) as pool:
        before = cpu_sample("weed")
        t0 = time.perf_counter()
        list(pool.map(put, range(len(payloads))))
        run.put_seconds = time.perf_counter() - t0
        middle = cpu_sample("weed")
        t0 = time.perf_counter()
        list(pool.map(get, range(len(payloads))))
        run.get_seconds = time.perf_counter() - t0
        run.put_cpu = cpu_shares(before, middle)
        run.get_cpu = cpu_shares(middle, cpu_sample("weed"))
    store.delete_prefix(folder)
    return run


def s3_part(args: argparse.Namespace) -> dict[str, float]:
    results: list[Transfer] = []
    with (
        tempfile.TemporaryDirectory(prefix="cluster-limits-") as tmp,
        running_s3(Path(tmp)) as server,
    ):
        weed_version = first_line([server.weed, "version"]).removeprefix("version ")
        for name, value in server.env().items():
            if name.startswith("AWS_"):
                os.environ[name] = value  # boto3's credential chain, as the service reads it
        bucket = server.make_bucket()
        store = S3BlobStore(bucket, endpoint_url=server.endpoint_url)
        warm = os.urandom(1 << 20)
        for i in range(5):
            store.put(f"warm/{i}.bin", warm)
            blob = store.open(f"warm/{i}.bin")
            assert blob is not None
            with blob.file:
                blob.file.read()
        store.delete_prefix("warm")

        for size in S3_SIZES:
            payloads = [os.urandom(size) for _ in range(args.objects)]
            for threads in S3_THREADS:
                run = transfer(store, payloads, threads)
                results.append(run)
                emit(
                    f"  S3 {size >> 20} MiB T={threads}: put {args.objects / run.put_seconds:.0f}"
                    f"/s, get {args.objects / run.get_seconds:.0f}/s"
                )

    emit()
    emit(
        f"### 3. Object store: SeaweedFS `weed mini` {weed_version}, S3BlobStore put then "
        f"open + read (bytes compared), {args.objects} objects of os.urandom bytes per row"
    )
    emit()
    emit(
        "| object | threads | op | seconds | objects/s | MiB/s | p50 ms | p99 ms "
        "| CPU % bench / weed / machine |"
    )
    emit("|---:|---:|---|---:|---:|---:|---:|---:|---|")
    limits: dict[str, float] = {}
    for r in results:
        for op, seconds, lat, cpu in (
            ("put", r.put_seconds, r.put_latencies, r.put_cpu),
            ("get", r.get_seconds, r.get_latencies, r.get_cpu),
        ):
            rate = r.objects / seconds
            limits[f"{op}_{r.size >> 20}_{r.threads}"] = rate
            emit(
                f"| {r.size >> 20} MiB | {r.threads} | {op} | {seconds:.2f} | {rate:.1f} "
                f"| {rate * r.size / (1 << 20):.0f} | {pct(lat, 50) * 1000:.1f} "
                f"| {pct(lat, 99) * 1000:.1f} | {cpu} |"
            )
    return limits


# ---------------------------------------------------------------------------------------------
# What it adds up to


def summary(pg: dict[str, float], mq: dict[str, float], s3: dict[str, float]) -> None:
    emit()
    emit(
        "### Where each would saturate (derived from the tables above; each service measured "
        "alone, sharing the cores with this process)"
    )
    emit()
    emit("| service | from | tasks/s | images/s (5 per task) |")
    emit("|---|---|---:|---:|")

    def row(service: str, source: str, tasks_per_s: float) -> None:
        emit(f"| {service} | {source} | {tasks_per_s:.0f} | {tasks_per_s * IMAGES_PER_TASK:.0f} |")

    life, polls = pg["tasks_per_s"], pg["polls_per_s"]
    row("PostgreSQL", "task lifecycle, best thread count", life)
    for per_task in (5, 20):
        both = 1 / (1 / life + per_task / polls)
        row("PostgreSQL", f"lifecycle + {per_task} polls per task (best rates)", both)
    mq_rate = min(mq["publish_per_s"], mq["consume_per_s"])
    row("RabbitMQ", "one message per task: min(publish, consume)", mq_rate)
    for mib in (1, 4):
        threads = max(S3_THREADS)
        per_task = (
            IMAGES_PER_TASK / s3[f"put_{mib}_{threads}"]
            + IMAGES_PER_TASK / s3[f"get_{mib}_{threads}"]
        )
        row(
            "S3 (SeaweedFS)",
            f"{IMAGES_PER_TASK} results of {mib} MiB put + read once, {threads} threads",
            1 / per_task,
        )


# ---------------------------------------------------------------------------------------------
# What it ran on


def postgres_lines() -> list[str]:
    engine = sa.create_engine(base_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            settings = {
                name: str(conn.execute(sa.text(f"SHOW {name}")).scalar_one())
                for name in ("server_version", "synchronous_commit", "fsync", "shared_buffers")
            }
    except sa.exc.OperationalError as exc:
        return [f"PostgreSQL: unreachable ({str(exc.orig).strip().splitlines()[0]})"]
    finally:
        engine.dispose()
    return [
        f"PostgreSQL {settings['server_version']} at {base_url().split('@')[-1]}, "
        f"synchronous_commit={settings['synchronous_commit']}, fsync={settings['fsync']}, "
        f"shared_buffers={settings['shared_buffers']}"
    ]


def versions_line() -> str:
    v = version
    return (
        f"python: {platform.python_implementation()} {platform.python_version()}; "
        f"SQLAlchemy {v('SQLAlchemy')}, psycopg {v('psycopg')}, celery {v('celery')}, "
        f"kombu {v('kombu')}, boto3 {v('boto3')}"
    )


def command(args: argparse.Namespace) -> str:
    argv = [".venv/bin/python", "bench/cluster_limits.py"]
    defaults = vars(build_parser().parse_args([]))
    for name, value in vars(args).items():
        if value != defaults[name]:
            argv += [f"--{name.replace('_', '-')}", f"{value:g}"]
    return shlex.join(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured, per thread count")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured, per thread count")
    parser.add_argument("--poll-seconds", type=float, default=4.0, help="measured, per poll run")
    parser.add_argument("--count-tasks", type=int, default=200, help="tasks per transaction count")
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--objects", type=int, default=100, help="per object size and threads")
    return parser


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    emit("# Cluster limits: PostgreSQL task store, RabbitMQ dispatch, S3 object store")
    emit()
    emit(f"- {machine_line()}")
    emit(f"- load average at start: {load_average()}")
    emit(f"- {code_line()}")
    emit(f"- {versions_line()}")
    for line in postgres_lines():
        emit(f"- {line}")
    emit(f"- RabbitMQ {first_line(['rabbitmqctl', '-q', 'version'])} at 127.0.0.1:5672")
    weed = weed_binary()
    weed_version = first_line([weed, "version"]).removeprefix("version ") if weed else "missing"
    emit(f"- SeaweedFS {weed_version} (`weed mini`, started by this benchmark; {weed})")
    emit(f"- command: {command(args)}")
    emit(
        "- CPU columns: share of all cores in the measured window (100 % = every core busy): "
        "this process / the service's processes by name (all of them) / the whole machine"
    )
    emit()
    emit("Progress:")
    pg = postgres_part(args)
    mq = rabbit_part(args)
    s3 = s3_part(args)
    summary(pg, mq, s3)
    emit()
    emit(f"load average at end: {load_average()}")
    emit(f"run time: {time.monotonic() - started:.0f} s")
    return 0


def main() -> int:
    args = build_parser().parse_args()
    if min(args.seconds, args.poll_seconds) <= 0 or args.warmup < 0:
        raise SystemExit("--seconds and --poll-seconds must be positive, --warmup >= 0")
    if min(args.count_tasks, args.messages, args.objects) < 1:
        raise SystemExit("--count-tasks, --messages and --objects must be at least 1")
    try:
        return run(args)
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        print(f"cannot run the benchmark: a service is missing: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
