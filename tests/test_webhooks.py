"""Callbacks (``callback_url``) end to end: the real app in-process, a real HTTP receiver on
loopback that checks each signature with the SDK's `verify_webhook`, retries after a 500,
redirects not followed, the retry time, bad values refused at create; and, in the process
tier, a server killed with SIGKILL while a retry is in flight."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from harness.receiver import CallbackReceiver
from harness.server import ServerProcess, env_store
from photo_eraser.client import (
    BadRequestError,
    Client,
    TaskStatus,
    WebhookVerificationError,
    verify_webhook,
)
from photo_eraser.tasks.tables import api_keys
from tests.inprocess import LocalServer

FAST = {
    "webhook_backoff_seconds": 0.3,
    "webhook_poll_seconds": 0.05,
    "webhook_timeout_seconds": 3.0,
}
"""Retries in tenths of a second, so the tests wait little."""

W, H = 320, 256


@pytest.fixture(scope="module")
def assets(image_host: ImageHost) -> dict[str, str]:
    return {
        "image": image_host.add("/hooks/a.png", encode(photo(W, H, seed=5), "PNG")),
        "mask": b64(encode(rect_mask(H, W, (100, 140, 100, 200)), "PNG")),
    }


@pytest.fixture(scope="module")
def hooks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("hooks"), listen=True, **FAST).start()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    r = CallbackReceiver()
    yield r
    r.close()


def _key(server: LocalServer, name: str = "hooks") -> tuple[ApiClient, str]:
    """A client of a new key, and the key's webhook secret."""
    client, _, secret = _new_key(server, name)
    return client, secret


def _new_key(server: LocalServer, name: str = "hooks") -> tuple[ApiClient, str, str]:
    """A client of a new key, the appkey, and the key's webhook secret."""
    appkey, appsecret = server.create_key(name)
    assert server.store is not None
    secret = server.store.webhook_secret(appkey)
    assert secret is not None and secret.startswith("whsec_")
    return server.client(appkey, appsecret), appkey, secret


def _create(client: ApiClient, assets: dict[str, str], callback_url: object) -> str:
    return client.create_ok(
        [assets["image"]], assets["mask"], engine="opencv", callback_url=callback_url
    )


def _callback_state(client: ApiClient, task_id: str, until: str, timeout: float = 30) -> dict:
    """The result's ``data.callback`` once its status is ``until``."""
    deadline = time.monotonic() + timeout
    while True:
        data = client.result(task_id).json()["data"]
        if data["callback"]["status"] == until or time.monotonic() > deadline:
            assert data["callback"]["status"] == until, data["callback"]
            return dict(data["callback"])
        time.sleep(0.05)


def test_a_finished_task_posts_its_signed_result(
    hooks_server: LocalServer, assets: dict[str, str], receiver: CallbackReceiver
) -> None:
    client, secret = _key(hooks_server)
    task_id = _create(client, assets, receiver.url)
    pending = client.result(task_id).json()["data"]["callback"]
    assert pending["status"] in ("pending", "delivered") and pending["delivery_id"]

    [got] = receiver.wait_for(1)
    event = verify_webhook(secret, got.headers, got.body)
    assert event.result.task_id == task_id and event.result.status is TaskStatus.COMPLETE
    assert event.attempt == 1 and got.headers["content-type"] == "application/json"
    assert abs(event.timestamp - got.at) < 5
    state = _callback_state(client, task_id, "delivered")
    assert state == {
        "status": "delivered",
        "attempts": 1,
        "delivery_id": event.delivery_id,
        "last_status_code": 200,
    }
    # The body is the result route's envelope, with the task_id and without the callback.
    result = client.result(task_id).json()
    body = json.loads(got.body)
    assert body["code"] == 0 and body["data"]["task_id"] == task_id
    assert "callback" not in body["data"]
    assert body["data"]["list"] == result["data"]["list"]
    assert body["data"]["list"][0]["image_result"].startswith("http://127.0.0.1")
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook("whsec_not-the-secret", got.headers, got.body)


def test_a_500_is_retried_with_the_same_delivery_id(
    hooks_server: LocalServer, assets: dict[str, str], receiver: CallbackReceiver
) -> None:
    receiver.script = [500, 200]
    client, secret = _key(hooks_server)
    task_id = _create(client, assets, receiver.url)
    first, second = receiver.wait_for(2)
    events = [verify_webhook(secret, r.headers, r.body) for r in (first, second)]
    assert events[0].delivery_id == events[1].delivery_id  # the receiver can drop a repeat
    assert [e.attempt for e in events] == [1, 2]
    assert second.at - first.at >= FAST["webhook_backoff_seconds"]
    state = _callback_state(client, task_id, "delivered")
    assert state["attempts"] == 2 and state["last_status_code"] == 200
    assert state["delivery_id"] == events[0].delivery_id
    time.sleep(0.5)  # no third attempt after the delivery
    assert len(receiver.received) == 2


def test_a_closed_task_gets_its_callback_too(
    hooks_server: LocalServer,
    image_host: ImageHost,
    assets: dict[str, str],
    receiver: CallbackReceiver,
) -> None:
    import threading

    gate = threading.Event()
    slow = image_host.add("/hooks/slow.png", encode(photo(W, H, seed=6), "PNG"), gate=gate)
    client, secret = _key(hooks_server)
    try:
        task_id = client.create_ok([slow], assets["mask"], callback_url=receiver.url)
        time.sleep(0.3)
        assert receiver.received == []  # not before a final status
        closed = client.http.post(f"/v3/pic/rw/close/{task_id}").json()
        assert closed["data"]["status"] == "5"
        [got] = receiver.wait_for(1)
    finally:
        gate.set()
    event = verify_webhook(secret, got.headers, got.body)
    assert event.result.task_id == task_id and event.result.status is TaskStatus.CLOSED


def test_a_redirect_is_not_followed_and_the_retry_time_ends_the_retries(
    tmp_path: Path, assets: dict[str, str], receiver: CallbackReceiver
) -> None:
    receiver.script = [307] * 50
    settings = {**FAST, "webhook_retry_seconds": 2.0}
    with _server(tmp_path, **settings) as server:
        client, _ = _key(server)
        task_id = _create(client, assets, receiver.url)
        state = _callback_state(client, task_id, "failed")
    assert state["last_status_code"] == 307
    assert state["last_error"] == "HTTP 307: redirects are not followed"
    # Pauses of 0.3, 0.6, 1.2 s: the third would end past 2 s after the task finished.
    assert 2 <= state["attempts"] <= 4 and len(receiver.received) == state["attempts"]
    assert all(r.path == "/hook" for r in receiver.received)


def test_a_receiver_that_is_down_is_a_failed_attempt(
    hooks_server: LocalServer, assets: dict[str, str], receiver: CallbackReceiver
) -> None:
    url = receiver.url
    receiver.close()  # nothing listens there now
    client, _ = _key(hooks_server)
    task_id = _create(client, assets, url)
    deadline = time.monotonic() + 20
    while True:
        state = client.result(task_id).json()["data"]["callback"]
        if state["attempts"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert state["status"] == "pending" and state["attempts"] >= 2
    assert state["last_error"] == "could not connect to 127.0.0.1"
    assert "last_status_code" not in state


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://127.0.0.1/hook", "callback_url: only http and https URLs are accepted"),
        ("http://user:pw@127.0.0.1/hook", "callback_url: URLs with credentials"),
        ("http://127.0.0.1/" + "a" * 2048, "callback_url: URL longer than 2048 characters"),
        ("not a url", "callback_url: "),
        (123, "callback_url: Input should be a valid string"),
        ("", "callback_url: "),
    ],
)
def test_a_bad_callback_url_is_a_400_naming_it(
    hooks_server: LocalServer, assets: dict[str, str], value: object, message: str
) -> None:
    client, _ = _key(hooks_server)
    r = client.create([assets["image"]], assets["mask"], callback_url=value)
    assert r.status_code == 400 and r.json()["code"] == 40001, r.text
    assert r.json()["msg"].startswith(message), r.json()["msg"]


def test_a_private_callback_address_is_refused_unless_allowed(
    tmp_path: Path, assets: dict[str, str]
) -> None:
    with _server(tmp_path, workers=0, allow_private_urls=False) as server:
        client, _ = _key(server)
        for url, address in (
            ("http://127.0.0.1:9/hook", "127.0.0.1"),
            ("http://10.1.2.3/hook", "10.1.2.3"),
            ("http://[::1]/hook", "::1"),
            ("http://169.254.169.254/latest", "169.254.169.254"),
            ("http://localhost/hook", ""),
        ):
            r = client.create(["http://93.184.215.14/a.png"], assets["mask"], callback_url=url)
            assert r.status_code == 400, r.text
            msg = r.json()["msg"]
            assert msg.startswith(f"callback_url: address {address}"), msg
            assert "is not allowed (private/loopback)" in msg


def test_a_key_without_a_webhook_secret_gets_one_by_rotation(
    hooks_server: LocalServer, assets: dict[str, str], receiver: CallbackReceiver
) -> None:
    client, appkey, old = _new_key(hooks_server)
    store = hooks_server.store
    assert store is not None
    with store.engine.begin() as conn:  # as a key made before callbacks existed
        conn.execute(
            api_keys.update().where(api_keys.c.appkey == appkey).values(webhook_secret=None)
        )
    r = client.create([assets["image"]], assets["mask"], callback_url=receiver.url)
    assert r.status_code == 400 and r.json()["msg"].startswith("callback_url: "), r.text
    assert "rotate-webhook-secret" in r.json()["msg"]
    new = store.rotate_webhook_secret(appkey)
    assert new is not None and new != old
    task_id = _create(client, assets, receiver.url)
    [got] = receiver.wait_for(1)
    assert verify_webhook(new, got.headers, got.body).result.task_id == task_id
    with pytest.raises(WebhookVerificationError):
        verify_webhook(old, got.headers, got.body)
    assert store.rotate_webhook_secret("pe_unknown") is None


def test_the_sdk_passes_callback_url_through_and_checks_its_form(
    hooks_server: LocalServer, assets: dict[str, str], receiver: CallbackReceiver
) -> None:
    appkey, appsecret = hooks_server.create_key("sdk")
    assert hooks_server.store is not None
    secret = hooks_server.store.webhook_secret(appkey)
    assert secret is not None
    with Client(hooks_server.base_url, appkey, appsecret) as sdk:
        for bad in ("ftp://127.0.0.1/hook", 7, "http://127.0.0.1/" + "a" * 2048):
            with pytest.raises(BadRequestError, match="^callback_url: "):
                sdk.submit([assets["image"]], assets["mask"], callback_url=bad)
        task = sdk.submit(
            [assets["image"]], assets["mask"], engine="opencv", callback_url=receiver.url
        )
        result = task.wait(30)
    [got] = receiver.wait_for(1)
    event = verify_webhook([secret + "-old", secret], got.headers, got.body)  # while rotating
    assert event.result.task_id == task.id and result.status is TaskStatus.COMPLETE


def test_verify_webhook_refuses_what_it_should() -> None:
    from photo_eraser.webhooks import signature_header

    body = json.dumps({"code": 0, "msg": "", "data": {"task_id": "t1", "status": "3"}}).encode()
    now = 1_800_000_000
    headers = {
        "X-PhotoEraser-Signature": signature_header("whsec_s", now, body),
        "X-PhotoEraser-Delivery": "d1",
        "X-PhotoEraser-Attempt": "3",
    }
    event = verify_webhook("whsec_s", headers, body, now=now + 299)
    assert (event.delivery_id, event.attempt, event.timestamp) == ("d1", 3, now)
    assert event.result.task_id == "t1" and event.result.status is TaskStatus.COMPLETE
    lower = {k.lower(): v for k, v in headers.items()}
    assert verify_webhook("whsec_s", lower, body, now=now).delivery_id == "d1"
    refused = {
        "the signature does not match": [
            ("whsec_other", headers, body, now),
            ("whsec_s", headers, body + b" ", now),
            (
                "whsec_s",
                {**headers, "X-PhotoEraser-Signature": f"t={now + 1},v1=" + "0" * 64},
                body,
                now,
            ),
        ],
        "more than 300 s": [
            ("whsec_s", headers, body, now + 301),
            ("whsec_s", headers, body, now - 301),
        ],
        "no X-PhotoEraser-Signature": [("whsec_s", {}, body, now)],
        "malformed": [
            ("whsec_s", {**headers, "X-PhotoEraser-Signature": "v1=abc"}, body, now),
            ("whsec_s", {**headers, "X-PhotoEraser-Signature": f"t={now}"}, body, now),
        ],
    }
    for reason, cases in refused.items():
        for secret, hdrs, raw, at in cases:
            with pytest.raises(WebhookVerificationError, match=reason):
                verify_webhook(secret, hdrs, raw, now=at)
    signed_junk = {"X-PhotoEraser-Signature": signature_header("whsec_s", now, b"[1]")}
    with pytest.raises(WebhookVerificationError, match="not a callback body"):
        verify_webhook("whsec_s", signed_junk, b"[1]", now=now)


@pytest.mark.process
def test_a_callback_survives_a_kill_9_mid_retry(tmp_path: Path, assets: dict[str, str]) -> None:
    """The first attempt gets a 500; the retry is held unanswered and the server is killed
    with SIGKILL meanwhile; the restarted server sends it again with the same delivery id, at
    once (it frees the leases of the data directory's dead server, as it takes back its
    tasks), not only once the lease has expired."""
    receiver = CallbackReceiver([500, "hold", 200])
    timeout = 10.0
    env = {
        "PHOTO_ERASER_WEBHOOK_BACKOFF_SECONDS": "0.5",
        "PHOTO_ERASER_WEBHOOK_POLL_SECONDS": "0.1",
        "PHOTO_ERASER_WEBHOOK_TIMEOUT_SECONDS": str(timeout),
    }
    server = ServerProcess(tmp_path / "data", **env).start()
    try:
        appkey, appsecret = server.create_key("kill9")
        with env_store(server.env) as store:
            secret = store.webhook_secret(appkey)
        assert secret is not None
        client = ApiClient(server.base_url, appkey, appsecret)
        task_id = _create(client, assets, receiver.url)
        receiver.wait_for(2)  # the retry is in flight now
        server.kill9()
        restarted_at = time.time()
        server.start()
        deliveries = receiver.wait_for(3, timeout=30)
        events = [verify_webhook(secret, r.headers, r.body) for r in deliveries]
        assert {e.delivery_id for e in events} == {events[0].delivery_id}
        assert [e.attempt for e in events] == [1, 2, 3]
        assert all(e.result.task_id == task_id for e in events)
        assert deliveries[2].at > restarted_at
        # Before the dead server's lease (timeout + 5 s from the retry's claim) expired.
        assert deliveries[2].at - deliveries[1].at < timeout + 5
        client = ApiClient(server.base_url, appkey, appsecret)
        state = _callback_state(client, task_id, "delivered")
        assert state["attempts"] == 3 and state["delivery_id"] == events[0].delivery_id
    finally:
        receiver.close()
        server.stop()


def _server(tmp_path: Path, **settings: object) -> LocalServer:
    """A server of its own (settings the shared one does not have); use it with ``with``."""
    return _Running(tmp_path / "own", **settings)


class _Running(LocalServer):
    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def test_the_openapi_document_describes_the_callback(hooks_server: LocalServer) -> None:
    doc = hooks_server.http.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "callback_url" in schemas["CreateTaskRequest"]["properties"]
    assert set(schemas["CallbackState"]["properties"]) == {
        "status",
        "attempts",
        "delivery_id",
        "last_status_code",
        "last_error",
    }
    hook = doc["webhooks"]["task-finished"]["post"]
    assert {p["name"] for p in hook["parameters"]} == {
        "X-PhotoEraser-Signature",
        "X-PhotoEraser-Delivery",
        "X-PhotoEraser-Attempt",
    }
    body = hook["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Result"}
