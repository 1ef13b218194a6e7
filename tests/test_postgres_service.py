"""The whole service on PostgreSQL: a real server process whose task store is a PostgreSQL
schema of its own, through a task, a kill -9 in the middle of one, and the restart."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from harness.postgres import fresh_schema
from harness.server import ServerProcess

# A server process on PostgreSQL, killed with kill -9 and restarted.
pytestmark = [pytest.mark.process, pytest.mark.services]


def test_tasks_run_and_survive_a_kill_on_postgresql(tmp_path: Path, image_host: ImageHost) -> None:
    good = image_host.add("/pg/a.png", encode(photo(320, 256, seed=6)))
    gate = threading.Event()
    held = image_host.add("/pg/held.png", encode(photo(320, 256, seed=7)), gate=gate)
    mask = b64(encode(rect_mask(256, 320, (100, 140, 100, 160))))
    with fresh_schema() as url:
        env = {"PHOTO_ERASER_DATABASE_URL": url, "PHOTO_ERASER_WORKERS": "1"}
        server = ServerProcess(tmp_path / "data", **env).start()
        try:
            client = ApiClient(server.base_url, *server.create_key("pg"))
            task_id = client.create_ok(
                [good, image_host.url("/pg/missing.png")], mask, engine="opencv"
            )
            data = client.wait(task_id)
            assert data["status"] == "3"
            assert [i["status"] for i in data["list"]] == ["3", "4"]
            assert httpx.get(data["list"][0]["image_result"]).status_code == 200

            interrupted = client.create_ok([held], mask, engine="opencv")
            client.wait(interrupted, until=("2",))
            server.kill9()
            gate.set()
            server.start()  # the same data directory takes its lease back at once
            data = client.wait(interrupted)
            assert data["status"] == "3", data
            client.close()
        finally:
            gate.set()
            server.stop()
