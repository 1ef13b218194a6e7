"""Callbacks in a cluster (PostgreSQL, RabbitMQ, S3): the API processes deliver them, each
callback held by one process at a time under a lease in the store; when the API process
sending a retry is killed with SIGKILL mid-request, another one sends it, with the same
delivery id, once the lease has expired."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness.cluster import running_cluster
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from harness.receiver import CallbackReceiver
from harness.s3server import S3Server
from harness.server import env_store
from photo_eraser.client import TaskStatus, verify_webhook
from photo_eraser.tasks.tables import webhook_deliveries

pytestmark = [pytest.mark.process, pytest.mark.services]


def test_an_api_process_killed_mid_retry_leaves_the_callback_to_another(
    tmp_path: Path, s3: S3Server, image_host: ImageHost
) -> None:
    image = image_host.add("/cluster-hooks/a.png", encode(photo(320, 256, seed=8), "PNG"))
    mask = b64(encode(rect_mask(256, 320, (100, 140, 100, 200)), "PNG"))
    receiver = CallbackReceiver([500, "hold", 200])
    env = {
        "PHOTO_ERASER_WEBHOOK_BACKOFF_SECONDS": "0.5",
        "PHOTO_ERASER_WEBHOOK_POLL_SECONDS": "0.1",
        "PHOTO_ERASER_WEBHOOK_TIMEOUT_SECONDS": "2",
    }
    try:
        with running_cluster(tmp_path / "cluster", s3, **env) as cluster:
            cluster.up(apis=2, workers=1)
            appkey, appsecret = cluster.create_key("hooks")
            with env_store(cluster.env) as store:
                secret = store.webhook_secret(appkey)
            assert secret is not None
            client = cluster.client(appkey, appsecret)
            task_id = client.create_ok([image], mask, engine="opencv", callback_url=receiver.url)
            receiver.wait_for(2, timeout=60)  # the retry is held, unanswered
            with env_store(cluster.env) as store, store.engine.connect() as conn:
                owner = conn.execute(sa.select(webhook_deliveries.c.lease_owner)).scalar_one()
            pid = int(owner.split(":")[-2])  # host:pid:random
            [sender] = [a for a in cluster.apis if a.proc is not None and a.proc.pid == pid]
            sender.kill9()
            deliveries = receiver.wait_for(3, timeout=60)
            events = [verify_webhook(secret, r.headers, r.body) for r in deliveries]
            assert {e.delivery_id for e in events} == {events[0].delivery_id}
            assert [e.attempt for e in events] == [1, 2, 3]
            assert events[2].result.task_id == task_id
            assert events[2].result.status is TaskStatus.COMPLETE
            deadline = time.monotonic() + 30
            while True:
                state = client.result(task_id).json()["data"]["callback"]
                if state["status"] == "delivered" or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert state["status"] == "delivered" and state["attempts"] == 3
            time.sleep(1)
            assert len(receiver.received) == 3  # the survivor sent it once, not twice
    finally:
        receiver.close()
