"""A task's images in parallel through the real in-process server: results in input order,
failures of one image kept to it, at most a bounded number of images downloaded at once,
results stored as each image is done (the opencv engine streams), boxes drawn on the first
image that decoded, and a task closed mid-way writing no verdict over the close."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from photo_eraser.tasks.status import TaskStatus
from photo_eraser.tasks.tables import tasks
from tests.inprocess import LocalServer

W, H = 320, 256
BOX = (100, 130, 100, 160)
MASK = b64(encode(rect_mask(H, W, BOX)))


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[LocalServer] = []

    def start(**settings: object) -> LocalServer:
        s = LocalServer(tmp_path / f"data{len(started)}", **settings)
        started.append(s.start())
        return s

    yield start
    for s in started:
        s.stop()


def results_on_disk(server: LocalServer, task_id: str) -> list[str]:
    folder = server.data_dir / "blobs" / "results" / task_id
    return (
        sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        if folder.is_dir()
        else []
    )


@pytest.mark.parametrize("engine", ["opencv", "auto"])
def test_results_keep_input_order_and_failures_stay_with_their_image(
    server,
    image_host: ImageHost,
    engine: str,  # type: ignore[no-untyped-def]
) -> None:
    s = server(image_threads=3)
    c = s.new_client()
    urls, expected = [], []
    for i in range(12):
        w, h = (W, H) if i % 3 else (2 * W, 2 * H)  # two sizes: the mask is fitted to each
        img = photo(w, h, seed=i)
        if i == 4:
            urls.append(image_host.add(f"/order/{engine}/{i}.png", b"", status=404))
            expected.append(None)
        elif i == 7:
            data = encode(img, "JPEG", quality=90)
            urls.append(image_host.add(f"/order/{engine}/{i}.jpg", data[: len(data) // 2]))
            expected.append(None)
        else:
            fmt = "JPEG" if i % 2 else "PNG"
            data = encode(img, fmt, quality=95)
            urls.append(image_host.add(f"/order/{engine}/{i}", data))
            expected.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    data = c.wait(c.create_ok(urls, MASK, engine=engine), timeout=120)
    assert data["status"] == "3", data
    for i, (item, img) in enumerate(zip(data["list"], expected, strict=True)):
        if img is None:
            assert item["status"] == "4", (i, item)
            assert ("404" in item["reason"]) if i == 4 else ("truncated" in item["reason"])
            continue
        assert item["status"] == "3", (i, item)
        out = c.result_pixels(item["image_result"])
        assert out.shape == img.shape  # image i's result, not another's
        h, w = img.shape[:2]
        scale = h // H
        y0, y1, x0, x1 = (v * scale for v in BOX)
        outside = np.ones((h, w), bool)
        outside[y0 - 2 * scale : y1 + 2 * scale, x0 - 2 * scale : x1 + 2 * scale] = False
        diff = np.abs(out.astype(int) - img.astype(int))[outside]
        if i % 2 == 0:
            assert diff.max() == 0, i  # PNG: exact outside the mask
        else:  # JPEG: close to this image, far from the other images of its size
            own = diff.mean()
            others = [
                np.abs(out.astype(int) - o.astype(int))[outside].mean()
                for j, o in enumerate(expected)
                if o is not None and j != i and o.shape == img.shape
            ]
            assert own < 1.5 and own < min(others) / 3, (i, own, others)
    c.close()


def test_downloads_are_bounded_and_results_are_stored_as_images_finish(
    server,
    image_host: ImageHost,  # type: ignore[no-untyped-def]
) -> None:
    """One image thread: two images in flight at most. Images 0 and 1 are held at their host,
    so image 2 is not requested; once image 1 comes, images 1 to 5 are restored and stored one
    by one while image 0 is still held."""
    s = server(image_threads=1)
    c = s.new_client()
    gates = [threading.Event(), threading.Event()]
    img = encode(photo(W, H))
    urls = [image_host.add(f"/bound/{i}.png", img, gate=gates[i]) for i in range(2)]
    urls += [image_host.add(f"/bound/{i}.png", img) for i in range(2, 6)]
    task_id = c.create_ok(urls, MASK, engine="opencv")
    deadline = time.monotonic() + 20
    while "/bound/1.png" not in image_host.requests:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    requested = {p for p in image_host.requests if p.startswith("/bound/")}
    assert requested == {"/bound/0.png", "/bound/1.png"}
    gates[1].set()
    wanted = [f"{i}.png" for i in range(1, 6)]
    while results_on_disk(s, task_id) != wanted:
        assert time.monotonic() < deadline, results_on_disk(s, task_id)
        time.sleep(0.05)
    assert c.result(task_id).json()["data"]["status"] == "2"  # image 0 still held
    gates[0].set()
    data = c.wait(task_id)
    assert [item["status"] for item in data["list"]] == ["3"] * 6
    assert results_on_disk(s, task_id) == [f"{i}.png" for i in range(6)]
    c.close()


def test_pixel_boxes_are_drawn_on_the_first_image_that_decoded(
    server,
    image_host: ImageHost,  # type: ignore[no-untyped-def]
) -> None:
    """Image 0 is broken and image 1 (the size the boxes are drawn on) is held back: image 2,
    twice as large, must wait for image 1 and get the box stretched from its size."""
    s = server(image_threads=3)
    c = s.new_client()
    gate = threading.Event()
    small, large = photo(W, H, seed=1), photo(2 * W, 2 * H, seed=2)
    urls = [
        image_host.add("/boxes/0.png", b"not an image"),
        image_host.add("/boxes/1.png", encode(small), gate=gate),
        image_host.add("/boxes/2.png", encode(large)),
    ]
    y0, y1, x0, x1 = BOX
    body = {"images": urls, "rectangles": [[x0, y0, x1 - x0, y1 - y0]], "priority": 1}
    r = c.http.post("/v3/pic/rw/batch", json={**body, "engine": "opencv"})
    assert r.status_code == 200, r.text
    task_id = r.json()["data"]["task_id"]
    time.sleep(1.0)
    assert results_on_disk(s, task_id) == []  # image 2 waits for image 1's size
    gate.set()
    data = c.wait(task_id)
    assert [item["status"] for item in data["list"]] == ["4", "3", "3"], data
    out = c.result_pixels(data["list"][2]["image_result"])
    box = np.zeros(large.shape[:2], bool)
    box[2 * y0 : 2 * y1, 2 * x0 : 2 * x1] = True
    assert not np.array_equal(out[box], large[box])  # restored where the stretched box is
    outside = ~np.pad(box[2:-2, 2:-2], 2, constant_values=False)
    rim = np.zeros_like(box)
    rim[2 * y0 - 4 : 2 * y1 + 4, 2 * x0 - 4 : 2 * x1 + 4] = True
    assert np.array_equal(out[~rim & outside], large[~rim & outside])
    c.close()


def test_a_task_closed_mid_way_stays_closed(server, image_host: ImageHost) -> None:  # type: ignore[no-untyped-def]
    s = server(image_threads=2)
    c = s.new_client()
    gate = threading.Event()
    img = encode(photo(W, H))
    urls = [
        image_host.add(f"/closed/{i}.png", img, gate=gate if i == 2 else None) for i in range(5)
    ]
    task_id = c.create_ok(urls, MASK, engine="opencv")
    deadline = time.monotonic() + 20
    while "/closed/2.png" not in image_host.requests:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = c.http.post(f"/v3/pic/rw/close/{task_id}")
    assert r.status_code == 200 and r.json()["data"]["status"] == "5"
    gate.set()
    time.sleep(1.0)
    data = c.wait(task_id)
    assert data["status"] == "5"
    # The images restored before the close do not turn the task into a finished one.
    assert all(item["status"] == "4" and item["image_result"] == "" for item in data["list"])
    c.close()


def test_a_lease_lost_mid_task_stops_every_image_and_records_nothing(
    server,
    image_host: ImageHost,  # type: ignore[no-untyped-def]
) -> None:
    """Two images done, two held at their host when another worker takes the task: the
    images in flight are cancelled, and no verdict of this worker reaches the database."""
    s = server(image_threads=2, lease_seconds=3)
    c = s.new_client()
    gate = threading.Event()
    img = encode(photo(W, H))
    urls = [image_host.add(f"/lease/{i}.png", img, gate=gate if i >= 2 else None) for i in range(4)]
    task_id = c.create_ok(urls, MASK, engine="opencv")
    deadline = time.monotonic() + 20
    while results_on_disk(s, task_id) != ["0.png", "1.png"]:
        assert time.monotonic() < deadline, results_on_disk(s, task_id)
        time.sleep(0.05)
    assert s.store is not None
    with s.store.engine.begin() as conn:
        conn.execute(
            sa.update(tasks)
            .where(tasks.c.task_id == task_id)
            .values(lease_owner="another-host:1:abc", lease_expires_at=time.time() + 3600)
        )
    while "task abandoned" not in s.log_text():
        assert time.monotonic() < deadline, "the worker did not notice it lost its lease"
        time.sleep(0.1)
    gate.set()
    time.sleep(1.0)
    record = s.store.get_task(task_id)
    assert record is not None and record.status == TaskStatus.IN_PROGRESS
    assert record.lease_owner == "another-host:1:abc"
    assert [im.result_key for im in record.images] == [None] * 4
    assert results_on_disk(s, task_id) == ["0.png", "1.png"]  # the held ones never came
    c.close()
