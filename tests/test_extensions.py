"""Extensions of the create call: ``sync`` (wait for the result) and ``rectangles`` (a mask
drawn from boxes). The seed contract's answers stay as they were when neither is given."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from tests.inprocess import LocalServer

W, H = 400, 300
BOX = (120, 160, 150, 250)  # y0, y1, x0, x1
RECT_PX = [150, 120, 100, 40]  # the same box as x, y, w, h
RED = (255, 0, 0)


def _marked_photo(scale: int = 1) -> np.ndarray:
    """A photo with a solid red block where BOX is (times ``scale``): restored, the block must
    be gone."""
    img = photo(W * scale, H * scale, seed=3)
    y0, y1, x0, x1 = (v * scale for v in BOX)
    img[y0:y1, x0:x1] = RED
    return img


@pytest.fixture(scope="module")
def assets(image_host: ImageHost) -> dict[str, str]:
    return {
        "png": image_host.add("/ext/a.png", encode(_marked_photo(), "PNG")),
        "png2x": image_host.add("/ext/a2x.png", encode(_marked_photo(2), "PNG")),
        "mask_b64": b64(encode(rect_mask(H, W, BOX), "PNG")),
    }


def _restored(client: ApiClient, body: dict[str, object]) -> np.ndarray:
    r = client.create_body({"priority": 1, "engine": "opencv", **body})
    assert r.status_code == 200, r.text
    data = client.wait(r.json()["data"]["task_id"])
    assert data["status"] == "3", data
    return client.result_pixels(data["list"][0]["image_result"])


def _assert_box_restored(
    out: np.ndarray, y0: int, y1: int, x0: int, x1: int, scale: int = 1
) -> None:
    original = _marked_photo(scale)
    outside = np.ones((H * scale, W * scale), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], original[outside])  # untouched outside the box
    inside = out[y0:y1, x0:x1].astype(int)
    red = np.abs(inside - np.array(RED)).sum(axis=-1) < 30
    assert red.mean() < 0.05  # the red block is gone


# ---- sync --------------------------------------------------------------------------------


def test_sync_answers_the_finished_result(client: ApiClient, assets: dict[str, str]) -> None:
    body = {"images": [assets["png"]], "mask": assets["mask_b64"], "priority": 1}
    r = client.create_body({**body, "engine": "opencv", "sync": 30})
    assert r.status_code == 200, r.text
    envelope = r.json()
    assert envelope["code"] == 0 and envelope["msg"] == ""
    data = envelope["data"]
    assert set(data) == {"task_id", "result"}
    result = data["result"]
    assert result["status"] == "3" and result["wait_time"] == "0"
    [item] = result["list"]
    assert item["status"] == "3" and item["method"] == "opencv"
    # The same shape and content as the result route answers.
    assert client.result(data["task_id"]).json()["data"] == result
    _assert_box_restored(client.result_pixels(item["image_result"]), *BOX)


def test_without_sync_the_answer_is_the_seed_one(client: ApiClient, assets: dict[str, str]) -> None:
    for extra in ({}, {"sync": 0}):
        r = client.create_body(
            {"images": [assets["png"]], "mask": assets["mask_b64"], "priority": 1, **extra}
        )
        assert r.status_code == 200, r.text
        assert list(r.json()["data"]) == ["task_id"]


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """No workers: a task stays waiting."""
    local = LocalServer(tmp_path_factory.mktemp("idle"), workers=0).start()
    yield local
    local.stop()


def test_sync_too_short_answers_only_the_task_id(
    idle_server: LocalServer, assets: dict[str, str]
) -> None:
    client = idle_server.new_client()
    started = time.monotonic()
    r = client.create_body(
        {"images": [assets["png"]], "mask": assets["mask_b64"], "priority": 1, "sync": 1}
    )
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert list(r.json()["data"]) == ["task_id"]
    assert 0.9 <= took < 10
    assert client.result(r.json()["data"]["task_id"]).json()["data"]["status"] == "1"


@pytest.mark.parametrize("value", [-1, 31, 1.5, "2", True, None])
def test_bad_sync_is_a_400_naming_it(
    client: ApiClient, assets: dict[str, str], value: object
) -> None:
    r = client.create_body(
        {"images": [assets["png"]], "mask": assets["mask_b64"], "priority": 1, "sync": value},
    )
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 40001 and r.json()["msg"].startswith("sync")


# ---- rectangles --------------------------------------------------------------------------


def test_rectangles_in_pixels_restore_the_box_as_a_mask_would(
    client: ApiClient, assets: dict[str, str]
) -> None:
    by_rect = _restored(
        client, {"images": [assets["png"]], "rectangles": [RECT_PX], "rect_basis": [W, H]}
    )
    by_mask = _restored(client, {"images": [assets["png"]], "mask": assets["mask_b64"]})
    _assert_box_restored(by_rect, *BOX)
    assert np.array_equal(by_rect, by_mask)


def test_pixel_rectangles_without_basis_are_pixels_of_the_first_image(
    client: ApiClient, assets: dict[str, str]
) -> None:
    r = client.create_body(
        {
            "images": [assets["png"], assets["png2x"]],
            "rectangles": [RECT_PX],
            "priority": 1,
            "engine": "opencv",
        },
    )
    data = client.wait(task_id_of(r))
    assert [item["status"] for item in data["list"]] == ["3", "3"], data
    first, second = (client.result_pixels(item["image_result"]) for item in data["list"])
    by_mask = _restored(client, {"images": [assets["png"]], "mask": assets["mask_b64"]})
    assert np.array_equal(first, by_mask)
    # The second image, twice as large: the mask is stretched to it as any mask is.
    _assert_box_restored(second, *(v * 2 for v in BOX), scale=2)


def test_pixel_rectangles_outside_the_first_image_fail_the_task(
    client: ApiClient, assets: dict[str, str]
) -> None:
    body = {"images": [assets["png"]], "rectangles": [[W + 10, 10, 20, 20]], "priority": 1}
    data = client.wait(task_id_of(client.create_body(body)))
    assert data["status"] == "4"
    assert "mask unusable" in data["list"][0]["reason"] and "400x300" in data["list"][0]["reason"]


def task_id_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["task_id"])


def test_rectangles_scale_from_their_basis(client: ApiClient, assets: dict[str, str]) -> None:
    # The box at half size on a basis of half the image: stretched, it is the same box.
    half = [v / 2 for v in RECT_PX]
    out = _restored(
        client, {"images": [assets["png"]], "rectangles": [half], "rect_basis": [W // 2, H // 2]}
    )
    _assert_box_restored(out, *BOX)


def test_rectangles_as_fractions(client: ApiClient, assets: dict[str, str]) -> None:
    x, y, w, h = RECT_PX
    fractions = [x / W, y / H, w / W, h / H]
    out = _restored(client, {"images": [assets["png"]], "rectangles": [fractions]})
    # Drawn at 1000x1000 and stretched: the edges may move by up to one basis pixel outwards.
    y0, y1, x0, x1 = BOX
    _assert_box_restored(out, y0 - 1, y1 + 1, x0 - 1, x1 + 1)
    assert not np.array_equal(out[y0:y1, x0:x1], _marked_photo()[y0:y1, x0:x1])


@pytest.mark.parametrize("which", ["both", "neither"])
def test_mask_and_rectangles_exactly_one(
    client: ApiClient, assets: dict[str, str], which: str
) -> None:
    body: dict[str, object] = {"images": [assets["png"]], "priority": 1}
    if which == "both":
        body |= {"mask": assets["mask_b64"], "rectangles": [[0.1, 0.1, 0.2, 0.2]]}
    r = client.create_body(body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 40001
    assert r.json()["msg"].startswith("mask, rectangles:") and which in r.json()["msg"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"rectangles": []}, "rectangles"),
        ({"rectangles": [[1, 2, 3]]}, "rectangles.0"),
        ({"rectangles": [[1, 2, 3, 4, 5]]}, "rectangles.0"),
        ({"rectangles": [[-1, 2, 3, 4]], "rect_basis": [W, H]}, "rectangles.0.0"),
        ({"rectangles": [["1", 2, 3, 4]]}, "rectangles.0.0"),
        ({"rectangles": [[0.1, 0.1, 0.2, 0.2]] * 51}, "rectangles"),
        ({"rectangles": "0,0,1,1"}, "rectangles"),
        ({"rectangles": [[10, 10, 0, 50]]}, "rectangles"),  # empty, pixels of the 1st image
        ({"rectangles": [[10, 10, 50, 50]], "rect_basis": [W]}, "rect_basis"),
        ({"rectangles": [[10, 10, 50, 50]], "rect_basis": [0, H]}, "rect_basis.0"),
        ({"rectangles": [[10, 10, 50, 50]], "rect_basis": [W, 5001]}, "rect_basis.1"),
        ({"rectangles": [[W + 10, 10, 5, 5]], "rect_basis": [W, H]}, "rectangles"),  # outside
        ({"rectangles": [[10, 10, 0, 5]], "rect_basis": [W, H]}, "rectangles"),  # empty
    ],
)
def test_bad_rectangles_are_a_400_naming_the_field(
    client: ApiClient, assets: dict[str, str], extra: dict[str, object], field: str
) -> None:
    r = client.create_body({"images": [assets["png"]], "priority": 1, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 40001
    assert r.json()["msg"].startswith(f"{field}:") or r.json()["msg"].startswith(f"{field}."), (
        r.json()
    )
