"""A RabbitMQ virtual host of its own for a test run: the machine's broker (127.0.0.1:5672,
guest/guest), the vhost made and deleted with ``rabbitmqctl``; or the vhost named by
``PHOTO_ERASER_TEST_BROKER_URL`` (then used as it is, and purged by the tests that need it).

Without a broker the test is skipped with the reason, except where
``PHOTO_ERASER_REQUIRE_SERVICES=1`` (``.ci/run`` sets it): there it fails."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest

HOST, PORT = "127.0.0.1", 5672
PREFIX = "pe_test_"
STALE_SECONDS = 3600
"""Virtual hosts of runs that died (kill -9, a CI timeout) are deleted once this old."""


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("PHOTO_ERASER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"RabbitMQ is required here (PHOTO_ERASER_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(f"no RabbitMQ for this test ({reason}); set PHOTO_ERASER_TEST_BROKER_URL")


@contextmanager
def fresh_vhost() -> Iterator[str]:
    """An ``amqp://`` URL on a new, empty virtual host; the vhost is deleted afterwards."""
    given = os.environ.get("PHOTO_ERASER_TEST_BROKER_URL")
    if given:
        yield given
        return
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError as exc:
        unavailable(f"{HOST}:{PORT}: {exc}")
    if shutil.which("rabbitmqctl") is None:
        unavailable("rabbitmqctl is not on the PATH (needed to make a vhost per run)")
    vhost = f"{PREFIX}{int(time.time())}_{uuid.uuid4().hex[:8]}"
    _delete_stale()
    _ctl("add_vhost", vhost)
    _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{HOST}:{PORT}/{vhost}"
    finally:
        _ctl("delete_vhost", vhost, check=False)


def _ctl(*args: str, check: bool = True) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        unavailable(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()[:300]}")
    return done.stdout


def _delete_stale() -> None:
    cutoff = time.time() - STALE_SECONDS
    for name in _ctl("list_vhosts", "name", check=False).split():
        stamp = name.removeprefix(PREFIX).split("_", 1)[0]
        if name.startswith(PREFIX) and stamp.isdigit() and int(stamp) < cutoff:
            _ctl("delete_vhost", name, check=False)
