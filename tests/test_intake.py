"""Task intake on a real SQLite file: creates arriving together share one commit, the queue is
bounded, and nothing it accepted is lost at shutdown."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness.postgres import fresh_schema
from photo_eraser.config import Settings
from photo_eraser.service import open_store
from photo_eraser.tasks.intake import IntakeClosed, IntakeFull, TaskIntake
from photo_eraser.tasks.records import NewTask
from photo_eraser.tasks.store import TaskStore


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    global APPKEY
    if request.param == "sqlite":
        store = open_store(Settings(data_dir=tmp_path))
        APPKEY, _ = store.create_key("intake")
        yield store
        return
    with fresh_schema() as url:
        store = open_store(Settings(data_dir=tmp_path, database_url=url))
        APPKEY, _ = store.create_key("intake")
        yield store
        store.engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> TaskStore:
    global APPKEY
    store = open_store(Settings(data_dir=tmp_path))
    APPKEY, _ = store.create_key("intake")
    return store


APPKEY = "pe_test"


def new(priority: int = 1) -> NewTask:
    return NewTask(
        str(uuid.uuid4()),
        APPKEY,
        ["http://a.example/1.png"],
        priority,
        "auto",
        "http://a.example/m",
        None,
        60,
    )


def count_commits(store: TaskStore) -> list[int]:
    commits = [0]

    @sa.event.listens_for(store.engine, "commit")
    def _commit(_conn: sa.Connection) -> None:
        commits[0] += 1

    return commits


def test_concurrent_creates_share_commits_and_all_are_stored(store: TaskStore) -> None:
    intake = TaskIntake(store)
    commits = count_commits(store)

    async def burst() -> list[str]:
        return await asyncio.gather(*(intake.submit(new(priority=i % 10)) for i in range(300)))

    intake.start()
    try:
        ids = asyncio.run(burst())
    finally:
        intake.stop()
    assert len(set(ids)) == 300
    assert all(store.get_task(i) is not None for i in ids)
    assert [store.get_task(i).priority for i in ids[:10]] == list(range(10))  # type: ignore[union-attr]
    # One commit per create would be 300; they arrived together, so far fewer.
    assert 1 <= commits[0] <= 30, commits[0]


def test_a_full_intake_refuses_at_once_and_stores_what_it_took(
    sqlite_store: TaskStore, tmp_path: Path
) -> None:
    """The writer is held by another connection's write lock; the queue fills up."""
    store = sqlite_store
    intake = TaskIntake(store, max_pending=5, max_batch=1)
    locker = sqlite3.connect(tmp_path / "photo-eraser.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # the database's write lock, held by someone else

    async def flood() -> tuple[list[asyncio.Task[str]], int]:
        waiting = [asyncio.create_task(intake.submit(new()))]
        await asyncio.sleep(0.3)  # the writer takes it and waits for the lock
        waiting += [asyncio.create_task(intake.submit(new())) for _ in range(5)]
        await asyncio.sleep(0)  # these five fill the queue
        refused = 0
        for _ in range(10):
            try:
                await intake.submit(new())
            except IntakeFull:
                refused += 1
        locker.execute("ROLLBACK")  # the lock goes away: the queue drains
        await asyncio.gather(*waiting)
        return waiting, refused

    intake.start()
    try:
        waiting, refused = asyncio.run(flood())
    finally:
        intake.stop()
        locker.close()
    assert refused == 10
    assert all(store.get_task(t.result()) is not None for t in waiting)


def test_stop_stores_what_is_queued_then_refuses(store: TaskStore) -> None:
    intake = TaskIntake(store)

    async def submit_then_stop() -> list[str]:
        pending = [asyncio.ensure_future(intake.submit(new())) for _ in range(50)]
        await asyncio.sleep(0)  # all fifty are queued
        await asyncio.to_thread(intake.stop)
        return list(await asyncio.gather(*pending))

    intake.start()
    ids = asyncio.run(submit_then_stop())
    assert all(store.get_task(i) is not None for i in ids)

    async def after() -> None:
        await intake.submit(new())

    with pytest.raises(IntakeClosed):
        asyncio.run(after())


def test_one_bad_task_does_not_fail_the_others_of_its_group(store: TaskStore) -> None:
    intake = TaskIntake(store)
    bad = NewTask(
        str(uuid.uuid4()), "pe_no_such_key", ["http://a.example/1.png"], 1, "auto", None, None, 60
    )

    async def mixed() -> list[str | BaseException]:
        return await asyncio.gather(
            intake.submit(new()), intake.submit(bad), intake.submit(new()), return_exceptions=True
        )

    intake.start()
    try:
        first, failed, third = asyncio.run(mixed())
    finally:
        intake.stop()
    assert isinstance(failed, sa.exc.IntegrityError)
    assert store.get_task(str(first)) is not None and store.get_task(str(third)) is not None
