"""The poll (``GET /v3/pic/rw/result/{task_id}``) after it was made cheap: its answer is the
same bytes as before, and a key it remembers (``PHOTO_ERASER_KEY_CACHE_SECONDS``) is refused
within that bound once revoked, at once when revoked through the same process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness.client import ApiClient
from photo_eraser.runtime import DEFAULT_TASK_SECONDS
from photo_eraser.tasks.db import create_db_engine
from photo_eraser.tasks.prepared import Prepared
from tests.inprocess import LocalServer

IMAGE = "http://127.0.0.1:9/never-fetched.png"
MASK = "http://127.0.0.1:9/mask.png"


@contextmanager
def accept_only(tmp_path: Path, key_cache_seconds: float = 5.0) -> Iterator[LocalServer]:
    """A server with no worker (tasks stay waiting) and the given key cache."""
    server = LocalServer(tmp_path, workers=0, key_cache_seconds=key_cache_seconds).start()
    try:
        yield server
    finally:
        server.stop()


def waiting_task(server: LocalServer) -> tuple[ApiClient, str, str]:
    """A new key's client, the key, and a task of it that stays waiting."""
    appkey, appsecret = server.create_key("poller")
    client = server.client(appkey, appsecret)
    return client, appkey, client.create_ok([IMAGE], MASK)


def test_the_answer_is_the_same_bytes_as_before(tmp_path: Path) -> None:
    """What the seed client reads, byte for byte: waiting tasks of mixed priorities, each
    ``wait_time`` from the tasks ahead of it counted by the definition (no worker: one slot
    assumed; no task finished yet: 5 s each)."""
    with accept_only(tmp_path) as server:
        client = server.client(*server.create_key("seed"))
        _answers_as_before(client)
        client.close()


def _answers_as_before(client: ApiClient) -> None:
    priorities = [3, 9, 3, 0, 5, 9, 3]
    ids = [client.create_ok([IMAGE, IMAGE], MASK, priority=p) for p in priorities]
    for i, (task_id, p) in enumerate(zip(ids, priorities, strict=True)):
        ahead = sum(1 for j, q in enumerate(priorities) if q > p or (q == p and j < i))
        wait = (ahead + 1) * int(DEFAULT_TASK_SECONDS)
        image = b'{"image_result":"","status":"1","reason":""}'
        expected = b'{"code":0,"msg":"","data":{"status":"1","wait_time":"%d","list":[%s,%s]}}' % (
            wait,
            image,
            image,
        )
        r = client.result(task_id)
        assert r.status_code == 200 and r.content == expected
        assert r.headers["content-type"] == "application/json"
    closed = client.http.post(f"/v3/pic/rw/close/{ids[0]}")
    assert closed.status_code == 200
    after_close = client.result(ids[-1]).json()["data"]["wait_time"]
    assert after_close == str(5 * int(DEFAULT_TASK_SECONDS))  # the 9s, the 5, one 3 left ahead


def test_a_key_read_recently_is_trusted_and_a_revocation_here_is_at_once(
    tmp_path: Path,
) -> None:
    """Within the cache's time a revocation made elsewhere (the CLI, another API process) is
    not seen yet; one made through the server's own store is, at once. A wrong secret for a
    remembered key is refused (the secret's hash is remembered, not a verdict)."""
    with accept_only(tmp_path, key_cache_seconds=60) as server:
        elsewhere, appkey_a, task_a = waiting_task(server)
        here, appkey_b, task_b = waiting_task(server)
        assert elsewhere.result(task_a).status_code == 200
        assert here.result(task_b).status_code == 200
        wrong = server.client(appkey_a, "not-the-secret")
        assert wrong.result(task_a).status_code == 401
        assert server.revoke_key(appkey_a)  # through another store, as the CLI does
        assert elsewhere.result(task_a).status_code == 200  # remembered: within the 60 s
        assert server.app is not None
        assert server.app.state.service.store.sync.revoke_key(appkey_b)
        refused = here.result(task_b)
        assert refused.status_code == 401 and refused.json()["code"] == 40102
        for c in (elsewhere, here, wrong):
            c.close()


def test_a_revocation_elsewhere_is_seen_within_the_bound(tmp_path: Path) -> None:
    with accept_only(tmp_path, key_cache_seconds=1.0) as server:
        client, appkey, task_id = waiting_task(server)
        assert client.result(task_id).status_code == 200  # read from the database: remembered
        assert server.revoke_key(appkey)
        revoked_at = time.monotonic()
        while (r := client.result(task_id)).status_code == 200:
            assert time.monotonic() - revoked_at < 1.0 + 2.0, "still accepted past the bound"
            time.sleep(0.05)
        assert r.status_code == 401 and r.json()["code"] == 40102
        client.close()


def test_without_the_cache_a_revocation_is_seen_at_once(tmp_path: Path) -> None:
    with accept_only(tmp_path, key_cache_seconds=0) as server:
        client, appkey, task_id = waiting_task(server)
        assert client.result(task_id).status_code == 200
        assert server.revoke_key(appkey)
        assert client.result(task_id).status_code == 401
        client.close()


def test_a_driver_error_is_raised_as_sqlalchemys(tmp_path: Path) -> None:
    """The poll's reads go to the DBAPI cursor; a failure still arrives as SQLAlchemy's
    ``OperationalError`` (what the API answers with 503 "database unavailable")."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert Prepared(sa.text("SELECT 1 AS one")).rows(conn)[0].one == 1  # a positive control
        with pytest.raises(sa.exc.OperationalError, match="no_such_table"):
            Prepared(sa.text("SELECT * FROM no_such_table")).rows(conn)
    engine.dispose()
