"""A PostgreSQL schema of its own for a test: the machine's server (127.0.0.1:5432, trust auth,
database ``test``) unless ``PHOTO_ERASER_TEST_POSTGRES_URL`` names another.

Without a reachable server the test is skipped with the reason, except where
``PHOTO_ERASER_REQUIRE_SERVICES=1`` (``.ci/run`` sets it): there a skip would hide that the
PostgreSQL store went untested, so it fails."""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PREFIX = "pe_test_"
STALE_SECONDS = 3600
"""Schemas of runs that died (kill -9, a CI timeout) are dropped once this old."""


def base_url() -> str:
    return os.environ.get("PHOTO_ERASER_TEST_POSTGRES_URL", DEFAULT_URL)


def services_required() -> bool:
    return os.environ.get("PHOTO_ERASER_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    if services_required():
        pytest.fail(f"PostgreSQL is required here (PHOTO_ERASER_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(f"no PostgreSQL for this test ({reason}); set PHOTO_ERASER_TEST_POSTGRES_URL")


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL whose connections use a new, empty schema; the schema is dropped afterwards."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed")
    url = base_url()
    # Pre-ping: a test may restart the server, leaving the pool's connection dead.
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    schema = f"{PREFIX}{int(time.time())}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            _drop_stale(conn)
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        unavailable(f"{url.split('@')[-1]}: {str(exc.orig).strip().splitlines()[0]}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        _drop(admin, schema)
        admin.dispose()


def _drop(admin: sa.Engine, schema: str) -> None:
    """Drop ``schema``; warn instead of hanging or failing the test if something holds it."""
    try:
        with admin.connect() as conn:
            conn.execute(sa.text("SET lock_timeout = '5s'"))
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    except sa.exc.DBAPIError as exc:
        warnings.warn(f"could not drop test schema {schema}: {exc.orig}", stacklevel=2)


def _drop_stale(conn: sa.Connection) -> None:
    names = conn.execute(
        sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"), {"p": PREFIX + "%"}
    ).scalars()
    cutoff = time.time() - STALE_SECONDS
    for name in names:
        stamp = name.removeprefix(PREFIX).split("_", 1)[0]
        if stamp.isdigit() and int(stamp) < cutoff:
            conn.execute(sa.text("SET lock_timeout = '5s'"))
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
