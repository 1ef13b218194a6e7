"""Database engine creation and schema migration (Alembic, run on every start)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def create_db_engine(url: str) -> sa.Engine:
    """Create an engine; SQLite gets WAL mode, full fsync and a busy timeout."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite begins a transaction at the first write of one (not at a read): the
            # stores write first where a read must not go stale (see TaskStore.set_images).
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


MIGRATION_LOCK = 0x5048_4552
"""PostgreSQL advisory lock taken while migrating: processes of a cluster that start together
migrate one after the other (the later ones find nothing left to do)."""


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _sqlite_file_lock(engine), engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # Alembic's batch mode rebuilds a table by copy and DROP; with foreign keys on,
            # SQLite's DROP would first delete the rows that reference it (ON DELETE CASCADE).
            # The pragma works only outside a transaction.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()  # SQLAlchemy's own autobegun transaction (SQLite has none yet)
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration broke foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


@contextmanager
def _sqlite_file_lock(engine: sa.Engine) -> Iterator[None]:
    """Hold a lock file beside a SQLite database: two processes migrating it at once would
    both see a table missing and both create it (pysqlite begins no transaction before DDL).
    PostgreSQL uses `MIGRATION_LOCK` instead."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
