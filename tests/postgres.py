"""A PostgreSQL schema of its own for a test: the machine's server (127.0.0.1:5432, trust auth,
database ``test``) unless ``PHOTO_ERASER_TEST_POSTGRES_URL`` names another.

Without a reachable server the test is skipped with the reason, except in CI (``CI`` set),
where a skip would hide that the PostgreSQL store went untested: there it fails."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def base_url() -> str:
    return os.environ.get("PHOTO_ERASER_TEST_POSTGRES_URL", DEFAULT_URL)


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is needed in CI: {reason}")
    pytest.skip(f"no PostgreSQL for this test ({reason}); set PHOTO_ERASER_TEST_POSTGRES_URL")


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL whose connections use a new, empty schema; the schema is dropped afterwards."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        unavailable("psycopg is not installed")
    url = base_url()
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    schema = f"pe_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        unavailable(f"{url.split('@')[-1]}: {str(exc.orig).strip().splitlines()[0]}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
