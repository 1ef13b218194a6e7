"""The poll (``GET /v3/pic/rw/result/{task_id}``) after it was made cheap: its answer is the
same bytes as before, and a key it remembers (``PHOTO_ERASER_KEY_CACHE_SECONDS``) is refused
within that bound once revoked, at once when revoked through the same process."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness.client import ApiClient
from photo_eraser.api.errors import Code, envelope
from photo_eraser.api.presenters import result_data
from photo_eraser.runtime import DEFAULT_TASK_SECONDS
from photo_eraser.tasks.db import create_db_engine
from photo_eraser.tasks.nowait import NoWaitReads, WouldWait
from photo_eraser.tasks.prepared import Prepared
from photo_eraser.tasks.records import ImageRecord
from photo_eraser.tasks.status import ImageStatus, TaskStatus
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


def test_every_kind_of_answer_is_what_the_documented_route_renders(tmp_path: Path) -> None:
    """The poll is answered by `api.poll` (its JSON written straight), not by the route's
    models: its bytes equal the route's rendering (``ResultData`` dumped without Nones, in a
    ``JSONResponse``) for finished tasks with links, methods, recovered shares, failure
    reasons, a detected mask and a callback's state, and for waiting ones."""
    with accept_only(tmp_path) as server:
        assert server.store is not None and server.app is not None
        service = server.app.state.service
        appkey, appsecret = server.create_key("poller")
        client = server.client(appkey, appsecret)
        callback = "http://127.0.0.1:9/hook"
        done = client.create_ok([IMAGE] * 4, "auto", priority=5, callback_url=callback)
        failed = client.create_ok([IMAGE], MASK, priority=9)
        outcomes = {
            done: (
                TaskStatus.COMPLETE,
                [
                    ImageRecord(0, IMAGE, ImageStatus.DONE, "", f"{done}/0.png", "opencv"),
                    ImageRecord(
                        1, IMAGE, ImageStatus.DONE, "", f"{done}/1.jpg", "restore", 0.98765
                    ),
                    ImageRecord(2, IMAGE, ImageStatus.DONE, "", f"{done}/2.jpg", "restore", 0.0),
                    ImageRecord(3, IMAGE, ImageStatus.FAILED, "image is 40x30 px: too small"),
                ],
            ),
            failed: (TaskStatus.FAILED, [ImageRecord(0, IMAGE, ImageStatus.FAILED, 'é " \\ 🙂')]),
        }
        for _ in outcomes:
            claimed = server.store.claim_next("test", 60)
            assert claimed is not None and claimed.lease is not None
            status, images = outcomes[claimed.task_id]
            assert server.store.finish(claimed.lease, status, "", images)
        waiting = client.create_ok([IMAGE, IMAGE], MASK, priority=2)
        for task_id in (waiting, done, failed):
            answered = client.result(task_id)
            polled = server.store.poll(task_id, appkey, heartbeat_window=60)
            assert polled is not None
            task, outlook = polled
            data = result_data(task, service, server.base_url + "/", outlook)
            expected = envelope(Code.OK, data=data.model_dump(exclude_none=True))
            assert answered.status_code == expected.status_code == 200
            assert answered.content == expected.body, task_id
            assert answered.headers["content-type"] == expected.headers["content-type"]
        shown = client.result(done).json()["data"]
        assert shown["list"][1]["recovered_share"] == 0.988  # a positive control: all shown
        assert shown["list"][0]["image_result"].startswith(server.base_url + "/v3/pic/rw/files/")
        assert shown["detected_mask"] and shown["callback"]["status"] == "pending"
        assert client.result(failed).json()["data"]["list"][0]["reason"] == 'é " \\ 🙂'
        client.close()


def test_errors_of_a_poll_are_the_routes_envelopes(tmp_path: Path) -> None:
    """Credentials and unknown tasks are answered with the route's envelopes; a database
    failure is handed to the route itself, whose handler answers 503 (and answers again once
    the database is back)."""
    with accept_only(tmp_path) as server:
        client, _appkey, task_id = waiting_task(server)
        no_key = server.http.get(f"/v3/pic/rw/result/{task_id}")
        assert (no_key.status_code, no_key.json()["code"]) == (401, 40101)
        wrong = server.http.get(
            f"/v3/pic/rw/result/{task_id}", headers={"Authorization": "Basic eHg6eXk="}
        )
        assert (wrong.status_code, wrong.json()["code"]) == (401, 40102)
        unknown = client.result("no-such-task")
        assert unknown.status_code == 404
        assert unknown.content == b'{"code":40401,"msg":"task no-such-task not found","data":{}}'
        assert client.result(task_id).status_code == 200  # the key is remembered now
        assert server.store is not None
        with server.store.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE tasks RENAME TO tasks_away")
        try:
            away = client.result(task_id)
            assert away.status_code == 503, away.text
            assert away.json()["code"] == 50301 and away.headers["retry-after"] == "5"
        finally:
            with server.store.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE tasks_away RENAME TO tasks")
        assert client.result(task_id).status_code == 200
        assert "task database unavailable" in server.log_text()
        client.close()


def test_a_read_that_would_wait_for_a_lock_is_refused_at_once(tmp_path: Path) -> None:
    """`NoWaitReads` (a poll's reads on the event loop, SQLite) never waits for a lock: with
    the database locked by a writer (a rollback-journal database, where a writer locks
    readers out; in WAL mode it never does), it raises `WouldWait` at once, and the caller
    takes its thread hop, where the pool's connections wait up to their busy timeout."""
    path = tmp_path / "journal.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("CREATE TABLE t (x INTEGER)")
    setup.execute("INSERT INTO t VALUES (1)")
    setup.close()
    reads = NoWaitReads(sa.create_engine(f"sqlite:///{path}"))

    def read(conn: sa.Connection) -> int:
        return int(conn.exec_driver_sql("SELECT x FROM t").scalar_one())

    assert reads.run(read) == 1  # a positive control
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(WouldWait):
            reads.run(read)
        assert time.monotonic() - started < 0.1
    finally:
        locker.execute("COMMIT")
        locker.close()
    assert reads.run(read) == 1
    reads.close()
    reads.engine.dispose()


def test_a_task_without_a_queue_number_is_answered_as_before(tmp_path: Path) -> None:
    """A waiting task stored before queue numbers (migration 0009) has its position counted
    over the backlog: never on the event loop; the answer is the same."""
    with accept_only(tmp_path) as server:
        client, _appkey, task_id = waiting_task(server)
        ahead = client.create_ok([IMAGE], MASK, priority=9)
        assert ahead and server.store is not None
        numbered = client.result(task_id).content
        with server.store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE tasks SET queue_seq = NULL WHERE task_id = ?", (task_id,))
        record = server.store.get_task(task_id)
        assert record is not None and record.queue_seq is None
        assert client.result(task_id).content == numbered
        assert b'"wait_time":"10"' in numbered  # one task ahead: (1 + 1) x 5 s
        client.close()


def test_the_loops_own_connection_has_no_busy_timeout_and_the_pools_keep_theirs(
    tmp_path: Path,
) -> None:
    """Its busy timeout is 0, also once a failed one was replaced; the store's stay at 30 s."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'x.db'}")
    reads = NoWaitReads(engine)
    assert NoWaitReads.possible(engine)
    assert not NoWaitReads.possible(create_db_engine("sqlite://"))

    def timeout(conn: sa.Connection) -> int:
        return int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one())

    assert reads.run(timeout) == 0
    with pytest.raises(sa.exc.OperationalError, match="no_such_table"):
        reads.run(lambda conn: conn.exec_driver_sql("SELECT * FROM no_such_table").all())
    assert reads.run(timeout) == 0  # a new one
    reads.close()
    with engine.connect() as conn:
        assert timeout(conn) == 30000
    engine.dispose()
