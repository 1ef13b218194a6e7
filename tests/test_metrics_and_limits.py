"""Prometheus metrics move with the work, and the limits that keep one client from taking the
server: a cap on unfinished tasks per key (429) and load shedding of creates (503)."""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask, rgba_mask_png
from tests.inprocess import LocalServer


def scrape(server: LocalServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = server.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_scrape_after_a_task_shows_the_counts_moving(
    server: LocalServer, client: ApiClient, image_host: ImageHost
) -> None:
    good = image_host.add("/metrics/a.png", encode(photo(320, 256, seed=4)))
    missing = image_host.url("/metrics/missing.png")
    mask = b64(encode(rect_mask(256, 320, (100, 140, 100, 160))))
    before = scrape(server)
    task_id = client.create_ok([good, missing], mask, priority=7, engine="opencv")
    assert client.wait(task_id)["status"] == "3"
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("photo_eraser_tasks_created_total", priority="7") == 1
    assert moved("photo_eraser_tasks_finished_total", status="complete") == 1
    assert moved("photo_eraser_images_total", engine="opencv", outcome="done") == 1
    assert moved("photo_eraser_images_total", engine="opencv", outcome="failed") == 1
    assert moved("photo_eraser_download_failures_total", reason="http_status") == 1
    for stage in ("download", "decode", "engine", "encode", "store"):
        assert moved("photo_eraser_stage_seconds_count", stage=stage) == 1, stage
    assert moved("photo_eraser_engine_seconds_count", engine="opencv") == 1
    assert moved("photo_eraser_queue_wait_seconds_count") == 1
    assert moved("photo_eraser_task_duration_seconds_count") == 1
    # Gauges computed at scrape time, one series per priority.
    assert all(("photo_eraser_queue_depth", (("priority", str(p)),)) in after for p in range(10))
    assert ("photo_eraser_tasks_running", ()) in after
    assert (
        value(
            after,
            "photo_eraser_build_info",
            python=platform.python_version(),
            version="0.1.0",
        )
        == 1
    )
    # HTTP metrics are by route template: no task id, no key anywhere in a label.
    assert any(name.startswith("http_request") for name, _ in after)
    labels = " ".join(str(lbl) for _, lbl in after)
    assert task_id not in labels and client.http.headers["Authorization"][6:] not in labels


@pytest.fixture
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(
        tmp_path_factory.mktemp("capped"),
        workers=0,
        max_open_tasks_per_key=3,
        max_pending_creates=1,
        rate_limit_per_minute=0,
    ).start()
    yield server
    server.stop()


def test_one_key_cannot_have_more_unfinished_tasks_than_its_cap(capped: LocalServer) -> None:
    shop = capped.new_client("shop")
    other = capped.new_client("other")
    body = (["https://a.example/x.png"], "https://a.example/m.png")
    ids = [shop.create_ok(*body) for _ in range(3)]
    refused = shop.create(*body)
    assert refused.status_code == 429 and refused.json()["code"] == 42902
    assert "already has 3 unfinished tasks" in refused.json()["msg"]
    assert refused.headers["Retry-After"] == "10"
    assert other.create(*body).status_code == 200  # another key is not held back
    assert shop.http.post(f"/v3/pic/rw/close/{ids[0]}").status_code == 200
    assert shop.create(*body).status_code == 200  # a finished task frees a place
    samples = scrape(capped)
    assert value(samples, "photo_eraser_creates_refused_total", cause="open_tasks") == 1
    assert value(samples, "photo_eraser_tasks_finished_total", status="closed") == 1
    # Closing it again changes nothing, and counts nothing.
    assert shop.http.post(f"/v3/pic/rw/close/{ids[0]}").json()["data"]["status"] == "5"
    samples = scrape(capped)
    assert value(samples, "photo_eraser_tasks_finished_total", status="closed") == 1
    shop.close()
    other.close()


def test_creates_past_the_admission_limit_are_shed_with_503(capped: LocalServer) -> None:
    """One create in flight at most: while a large inline mask is decoded, the next is shed."""
    client = capped.new_client("burst")
    slow_mask = b64(rgba_mask_png(5000, seed=2))  # about a second to decode
    first: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: first.append(client.create(["https://a.example/x.png"], slow_mask))
    )
    thread.start()
    admission = capped.app.state.admission
    deadline = time.monotonic() + 30
    while admission.in_flight < 1 and time.monotonic() < deadline:  # the first one is in
        time.sleep(0.005)
    assert admission.in_flight == 1, "the first create never got in"
    shed = client.create(["https://a.example/y.png"], "https://a.example/m.png")
    thread.join()
    assert shed.status_code == 503 and shed.json()["code"] == 50302, shed.text
    assert shed.headers["Retry-After"] == "1"
    assert first[0].status_code == 200, first[0].text  # the one admitted is not harmed
    assert value(scrape(capped), "photo_eraser_creates_refused_total", cause="busy") == 1
    client.close()


def test_http_requests_are_counted_by_route_template_method_and_status_class(
    tmp_path: Path,
) -> None:
    """``http_requests_total`` and ``http_request_duration_seconds`` (README, "Metrics"): the
    handler is the route's template whoever answered (polls are answered beside the router,
    `api.poll`), ``none`` where no route matched; the scrapes are not counted."""
    server = LocalServer(tmp_path, workers=0).start()
    try:
        c = server.new_client("http-metrics")
        task_id = c.create_ok(["http://127.0.0.1:9/a.png"], "http://127.0.0.1:9/m.png")
        before = scrape(server)
        assert c.result(task_id).status_code == 200
        assert c.result(task_id).status_code == 200
        assert server.http.get(f"/v3/pic/rw/result/{task_id}").status_code == 401
        assert c.result("no-such-task").status_code == 404
        assert c.http.post(f"/v3/pic/rw/result/{task_id}").status_code == 405
        assert c.http.get(f"/v3/pic/rw/result/{task_id}/more").status_code == 404
        assert c.http.get("/v3/pic/rw/files/a.png?expires=1&signature=x").status_code == 403
        after = scrape(server)
        c.close()
    finally:
        server.stop()

    def moved(name: str, handler: str, method: str, status: str) -> float:
        labels = {"handler": handler, "method": method, "status": status}
        return value(after, name, **labels) - value(before, name, **labels)

    poll = "/v3/pic/rw/result/{task_id}"
    for name in ("http_requests_total", "http_request_duration_seconds_count"):
        assert moved(name, poll, "GET", "2xx") == 2
        assert moved(name, poll, "GET", "4xx") == 2
        assert moved(name, poll, "POST", "4xx") == 1
        assert moved(name, "none", "GET", "4xx") == 1
        assert moved(name, "/v3/pic/rw/files/{key:path}", "GET", "4xx") == 1
        assert moved(name, "/metrics", "GET", "2xx") == 0
    histogram = "http_request_duration_seconds_bucket"
    assert value(after, histogram, handler=poll, method="GET", status="2xx", le="+Inf") >= 2
    labels = " ".join(str(lbl) for _, lbl in after)
    assert task_id not in labels
