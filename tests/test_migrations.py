"""Upgrading a database that has tasks in it, on SQLite and on PostgreSQL: from 0004 (one
server lease, inline masks in the task row) to the newest schema, nothing is lost and what was
in progress is taken back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from harness.postgres import fresh_schema
from photo_eraser.imaging import MaskPlacement
from photo_eraser.tasks.db import MIGRATIONS, create_db_engine, migrate
from photo_eraser.tasks.status import ImageStatus, TaskStatus
from photo_eraser.tasks.store import TaskStore


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    with fresh_schema() as pg:
        yield pg


def alembic(engine: sa.Engine, action: str, revision: str) -> None:
    """Run ``alembic <action> <revision>`` (``upgrade`` / ``downgrade``) on the database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def insert_old_key(conn: sa.Connection, created_at: float) -> None:
    """Key ``pe_old``, written with the columns every version has (as an older one did)."""
    conn.execute(
        sa.text(
            "INSERT INTO api_keys (appkey, name, secret_sha256, created_at) "
            "VALUES ('pe_old', 'old', :h, :created_at)"
        ),
        {"h": "0" * 64, "created_at": created_at},
    )


def test_an_upgrade_keeps_every_task_and_takes_back_the_running_ones(url: str) -> None:
    engine = create_db_engine(url)
    alembic(engine, "upgrade", "0004")
    now = time.time()
    with engine.begin() as conn:
        insert_old_key(conn, now)
        for pk, status in ((1, TaskStatus.IN_PROGRESS), (2, TaskStatus.COMPLETE)):
            conn.execute(
                sa.text(
                    "INSERT INTO tasks (id, task_id, appkey, status, priority, engine, mask_data, "
                    "attempts, reason, created_at, deadline_at, started_at, heartbeat_at) VALUES "
                    "(:pk, :tid, 'pe_old', :st, 1, 'auto', :mask, 1, '', :now, :dl, :now, :now)"
                ),
                {
                    "pk": pk,
                    "tid": f"00000000-0000-4000-8000-00000000000{pk}",
                    "st": int(status),
                    "mask": b"old inline mask",
                    "now": now,
                    "dl": now + 3600,
                },
            )
            conn.execute(
                sa.text(
                    "INSERT INTO task_images (task_pk, idx, url, status, reason) "
                    "VALUES (:pk, 0, 'http://a.example/0.png', :st, '')"
                ),
                {"pk": pk, "st": int(ImageStatus.PROCESSING)},
            )
    migrate(engine)
    store = TaskStore(engine)
    running = store.get_task("00000000-0000-4000-8000-000000000001")
    done = store.get_task("00000000-0000-4000-8000-000000000002")
    assert running is not None and done is not None
    assert len(running.images) == 1 and len(done.images) == 1  # not cascaded away
    assert running.mask_data == b"old inline mask"  # still readable by the worker
    assert running.placement == MaskPlacement()  # 0007: older tasks keep the stretched mask
    requeued, failed = store.reap_expired_leases(max_attempts=3)
    assert [q.task_id for q in requeued] == [running.task_id] and failed == 0
    engine.dispose()


def test_0008_adds_the_webhook_deliveries_and_goes_back(url: str) -> None:
    engine = create_db_engine(url)
    alembic(engine, "upgrade", "0007")
    with engine.begin() as conn:  # a key made before callbacks existed
        insert_old_key(conn, 0)
    alembic(engine, "upgrade", "0008")
    inspector = sa.inspect(engine)
    assert "webhook_deliveries" in inspector.get_table_names()
    assert "webhook_secret" in {c["name"] for c in inspector.get_columns("api_keys")}
    assert {i["name"] for i in inspector.get_indexes("webhook_deliveries")} >= {
        "ix_webhook_deliveries_due"
    }
    store = TaskStore(engine)
    assert store.webhook_secret("pe_old") is None  # until rotated
    assert (store.rotate_webhook_secret("pe_old") or "").startswith("whsec_")
    alembic(engine, "downgrade", "0007")
    inspector = sa.inspect(engine)
    assert "webhook_deliveries" not in inspector.get_table_names()
    assert "webhook_secret" not in {c["name"] for c in inspector.get_columns("api_keys")}


def test_0009_numbers_the_queue_in_its_order_and_goes_back(url: str) -> None:
    """Unfinished tasks get their priority's numbers in queue order (by id), finished ones none;
    the counters continue from there, and positions read from them equal the counted ones."""
    engine = create_db_engine(url)
    alembic(engine, "upgrade", "0008")
    now = time.time()
    rows = [  # (id, status, priority)
        (1, TaskStatus.COMPLETE, 5),
        (2, TaskStatus.WAITING, 5),
        (3, TaskStatus.IN_PROGRESS, 2),
        (4, TaskStatus.WAITING, 2),
        (5, TaskStatus.CLOSED, 2),
        (6, TaskStatus.WAITING, 5),
        (7, TaskStatus.WAITING, 2),
    ]
    with engine.begin() as conn:
        insert_old_key(conn, now)
        for pk, status, priority in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO tasks (id, task_id, appkey, status, priority, engine, attempts, "
                    "reason, created_at, deadline_at) VALUES "
                    "(:pk, :tid, 'pe_old', :st, :pr, 'auto', 0, '', :now, :dl)"
                ),
                {
                    "pk": pk,
                    "tid": f"00000000-0000-4000-8000-00000000000{pk}",
                    "st": int(status),
                    "pr": priority,
                    "now": now,
                    "dl": now + 3600,
                },
            )
    alembic(engine, "upgrade", "0009")
    with engine.connect() as conn:
        seqs = dict(conn.execute(sa.text("SELECT id, queue_seq FROM tasks")).all())
        counters = dict(conn.execute(sa.text("SELECT priority, last_seq FROM queue_seqs")).all())
    assert seqs == {1: None, 2: 1, 3: 1, 4: 2, 5: None, 6: 2, 7: 3}
    assert counters == {p: {2: 3, 5: 2}.get(p, 0) for p in range(10)}
    store = TaskStore(engine)
    for pk, want in ((2, 1), (6, 2), (4, 3), (7, 4)):  # 1 running + the waiting ahead
        task = store.get_task(f"00000000-0000-4000-8000-00000000000{pk}")
        assert task is not None and store.queue_position(task) == want
    alembic(engine, "downgrade", "0008")
    assert "queue_seq" not in {c["name"] for c in sa.inspect(engine).get_columns("tasks")}
    assert "queue_seqs" not in sa.inspect(engine).get_table_names()
    alembic(engine, "upgrade", "head")
    engine.dispose()


def test_0007_adds_the_mask_placement_and_goes_back(url: str) -> None:
    engine = create_db_engine(url)
    alembic(engine, "upgrade", "0007")
    columns = {c["name"] for c in sa.inspect(engine).get_columns("tasks")}
    placement = {"mask_fit", "mask_anchor", "mask_dilate", "mask_invert"}
    assert placement <= columns
    alembic(engine, "downgrade", "0006")
    columns = {c["name"] for c in sa.inspect(engine).get_columns("tasks")}
    assert not placement & columns
    engine.dispose()


def test_0006_adds_the_idempotency_keys_and_goes_back(url: str) -> None:
    engine = create_db_engine(url)
    alembic(engine, "upgrade", "0005")
    assert "idempotency_keys" not in sa.inspect(engine).get_table_names()
    migrate(engine)
    inspector = sa.inspect(engine)
    assert "idempotency_keys" in inspector.get_table_names()
    pk = inspector.get_pk_constraint("idempotency_keys")
    assert sorted(pk["constrained_columns"]) == ["appkey", "idempotency_key"]
    alembic(engine, "downgrade", "0005")
    assert "idempotency_keys" not in sa.inspect(engine).get_table_names()
    alembic(engine, "upgrade", "head")
    engine.dispose()


@pytest.mark.process
def test_processes_starting_together_migrate_one_after_the_other(url: str) -> None:
    """Four processes (as API processes and workers started at once) on a new database."""
    code = "import sys; from photo_eraser.tasks.db import create_db_engine, migrate; "
    code += "migrate(create_db_engine(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outcomes = [(p.wait(60), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in outcomes] == [0, 0, 0, 0], [err[-2000:] for _, err in outcomes]
