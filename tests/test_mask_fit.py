"""How the one mask is placed on images of other sizes: ``mask_fit`` (stretch, contain,
anchor + ``mask_anchor``), ``mask_dilate`` and ``mask_invert``. Unit tests of `place_mask`,
the store's round trip, and the create call end to end (in-process server)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from photo_eraser.imaging import MaskPlacement, fit_mask, place_mask
from photo_eraser.imaging.mask import ANCHORS
from photo_eraser.tasks.records import NewTask
from photo_eraser.tasks.store import TaskStore


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _bbox(m: np.ndarray) -> tuple[int, int, int, int]:
    """y0, y1, x0, x1 of the marked pixels (end exclusive)."""
    ys, xs = np.nonzero(m)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


# A 40x30 landscape mask: a 6x4 logo 2 px from the bottom-right corner.
LOGO = _box(30, 40, 24, 28, 32, 38)


# ---- place_mask --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(30, 40), (60, 80), (80, 60), (17, 93), (5, 5)])
def test_defaults_are_exactly_fit_mask(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((30, 40)) > 0.7
    assert np.array_equal(place_mask(mask, *shape), fit_mask(mask, *shape))
    assert np.array_equal(place_mask(mask, *shape, MaskPlacement()), fit_mask(mask, *shape))
    assert place_mask(mask, 30, 40) is mask  # same size: the mask itself, as fit_mask


def test_anchor_bottom_right_keeps_the_corner_on_landscape_and_portrait() -> None:
    placement = MaskPlacement(fit="anchor", anchor="bottom-right")
    # Landscape, twice the size: the margin (2 px) doubles too.
    assert _bbox(place_mask(LOGO, 60, 80, placement)) == (48, 56, 64, 76)
    # Portrait with the same short side (60): the same scale, the same corner and margins.
    portrait = place_mask(LOGO, 80, 60, placement)
    assert portrait.shape == (80, 60)
    assert _bbox(portrait) == (80 - 12, 80 - 4, 60 - 16, 60 - 4)
    # Stretched instead, the logo would be squeezed and no longer 12 px wide.
    y0, y1, x0, x1 = _bbox(place_mask(LOGO, 80, 60))
    assert x1 - x0 != 12


AXES = {  # anchor: (vertical, horizontal) place, 0 = start, 1 = middle, 2 = end
    "top-left": (0, 0),
    "top": (0, 1),
    "top-right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom-left": (2, 0),
    "bottom": (2, 1),
    "bottom-right": (2, 2),
}


@pytest.mark.parametrize("anchor", ANCHORS)
def test_each_anchor(anchor: str) -> None:
    """A full 10x10 mask scaled 3x to 30x30: on a 40x30 portrait image it moves vertically
    (0, 5 or 10 px down), on a 30x40 landscape one horizontally."""
    full = np.ones((10, 10), bool)
    placement = MaskPlacement(fit="anchor", anchor=anchor)  # type: ignore[arg-type]
    v, h = AXES[anchor]
    portrait = place_mask(full, 40, 30, placement)
    assert portrait.sum() == 30 * 30
    assert _bbox(portrait) == (5 * v, 5 * v + 30, 0, 30)
    landscape = place_mask(full, 30, 40, placement)
    assert landscape.sum() == 30 * 30
    assert _bbox(landscape) == (0, 30, 5 * h, 5 * h + 30)


def test_anchor_cuts_off_what_falls_outside() -> None:
    # A landscape mask on a portrait image, scaled by the short sides: wider than the image.
    wide = _box(30, 40, 0, 30, 0, 5) | _box(30, 40, 0, 30, 35, 40)  # a bar at each end
    placed = place_mask(wide, 40, 30, MaskPlacement(fit="anchor", anchor="left"))
    assert placed.shape == (40, 30)
    # Scale 1: the mask's 40 columns from x = 0; the right bar (35..40) is cut off.
    assert _bbox(placed) == (5, 35, 0, 5)


def test_contain_fits_inside_and_centres() -> None:
    full = np.ones((30, 40), bool)
    placed = place_mask(full, 80, 60, MaskPlacement(fit="contain"))  # portrait image
    # Scale min(60/40, 80/30) = 1.5: 45 x 60, centred vertically.
    assert _bbox(placed) == (17, 62, 0, 60)
    assert placed.sum() == 45 * 60
    landscape = place_mask(full, 60, 100, MaskPlacement(fit="contain"))
    assert _bbox(landscape) == (0, 60, 10, 90)


def test_dilate_grows_by_that_many_pixels() -> None:
    dot = _box(50, 50, 25, 26, 25, 26)
    grown = place_mask(dot, 50, 50, MaskPlacement(dilate=5))
    assert _bbox(grown) == (20, 31, 20, 31)
    assert grown[25, 20] and grown[20, 25] and not grown[20, 20]  # a disc, not a square
    box = place_mask(LOGO, 60, 80, MaskPlacement(fit="anchor", anchor="bottom-right", dilate=3))
    assert _bbox(box) == (45, 59, 61, 79)  # dilated after fitting: pixels of the image


def test_invert_swaps_marked_and_unmarked() -> None:
    placed = place_mask(LOGO, 60, 80, MaskPlacement(fit="anchor", anchor="bottom-right"))
    inverted = place_mask(
        LOGO, 60, 80, MaskPlacement(fit="anchor", anchor="bottom-right", invert=True)
    )
    assert np.array_equal(inverted, ~placed)
    stretched = place_mask(LOGO, 30, 40, MaskPlacement(invert=True))
    assert np.array_equal(stretched, ~LOGO)
    assert LOGO.sum() == 24  # the input is never written to


def test_invert_after_dilate() -> None:
    dot = _box(20, 20, 10, 11, 10, 11)
    out = place_mask(dot, 20, 20, MaskPlacement(dilate=2, invert=True))
    assert not out[10, 12] and out[10, 13]


def test_bad_placements_are_refused() -> None:
    with pytest.raises(ValueError):
        MaskPlacement(dilate=65)
    with pytest.raises(ValueError):
        MaskPlacement(fit="cover")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MaskPlacement(anchor="middle")  # type: ignore[arg-type]


# ---- the store ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "placement",
    [
        None,
        MaskPlacement(),
        MaskPlacement(fit="anchor", anchor="bottom-right", dilate=4, invert=True),
        MaskPlacement(fit="contain"),
    ],
)
def test_store_keeps_the_placement(store: TaskStore, placement: MaskPlacement | None) -> None:
    appkey, _ = store.create_key("k")
    task_id = str(uuid.uuid4())
    new = NewTask(task_id, appkey, ["http://a.example/1.png"], 1, "auto", "http://a.example/m.png", None, 60, placement=placement)  # fmt: skip
    assert store.create_tasks([new]) == [True]
    record = store.get_task(task_id)
    assert record is not None
    assert record.placement == (placement or MaskPlacement())
    with store.engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT mask_fit, mask_dilate FROM tasks").one()
    if placement is None or placement.is_default:
        assert tuple(row) == (None, None)  # stored as older tasks are


# ---- the API -----------------------------------------------------------------------------

RED = (255, 0, 0)
MASK_W, MASK_H = 400, 300  # the mask: landscape, a logo 20 px from the bottom-right corner
LOGO_BOX = (240, 280, 300, 380)  # y0, y1, x0, x1 in the mask


def _logo_photo(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    img = photo(width, height, seed=5)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = RED
    return img


# Scale = image short side / 300 = 2 for both; the logo keeps 40 px margins (20 x 2).
LANDSCAPE = (800, 600, (480, 560, 600, 760))  # width, height, logo box on the image
PORTRAIT = (600, 800, (680, 760, 400, 560))


@pytest.fixture(scope="module")
def assets(image_host: ImageHost) -> dict[str, str]:
    out = {"mask_b64": b64(encode(rect_mask(MASK_H, MASK_W, LOGO_BOX), "PNG"))}
    for name, (w, h, box) in (("landscape", LANDSCAPE), ("portrait", PORTRAIT)):
        out[name] = image_host.add(f"/fit/{name}.png", encode(_logo_photo(w, h, box), "PNG"))
    return out


def _assert_logo_restored(out: np.ndarray, width: int, height: int, box: tuple[int, ...]) -> None:
    y0, y1, x0, x1 = box
    original = _logo_photo(width, height, (y0, y1, x0, x1))
    outside = np.ones((height, width), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], original[outside])  # untouched outside the logo
    red = np.abs(out[y0:y1, x0:x1].astype(int) - np.array(RED)).sum(axis=-1) < 30
    assert red.mean() < 0.05  # the logo is gone


def test_anchored_mask_lands_on_the_same_corner_of_landscape_and_portrait(
    client: ApiClient, assets: dict[str, str]
) -> None:
    body = {
        "images": [assets["landscape"], assets["portrait"]],
        "mask": assets["mask_b64"],
        "priority": 1,
        "engine": "opencv",
        "mask_fit": "anchor",
        "mask_anchor": "bottom-right",
    }
    r = client.create_body(body)
    assert r.status_code == 200, r.text
    data = client.wait(r.json()["data"]["task_id"])
    assert data["status"] == "3", data
    for item, (w, h, box) in zip(data["list"], (LANDSCAPE, PORTRAIT), strict=True):
        assert item["status"] == "3", item
        _assert_logo_restored(client.result_pixels(item["image_result"]), w, h, box)


def test_stretched_mask_misses_the_portrait_logo(client: ApiClient, assets: dict[str, str]) -> None:
    """The default, for contrast: stretched to the portrait image, the mask is elsewhere."""
    body = {"images": [assets["portrait"]], "mask": assets["mask_b64"], "priority": 1}
    r = client.create_body({**body, "engine": "opencv"})
    assert r.status_code == 200, r.text
    data = client.wait(r.json()["data"]["task_id"])
    assert data["status"] == "3", data
    w, h, (y0, y1, x0, x1) = PORTRAIT
    out = client.result_pixels(data["list"][0]["image_result"])
    red = np.abs(out[y0:y1, x0:x1].astype(int) - np.array(RED)).sum(axis=-1) < 30
    assert red.mean() > 0.2  # stretched 1.5x wide, 2.7x high: it covers only part of it


def test_dilated_anchored_mask_restores_a_larger_logo(
    client: ApiClient, assets: dict[str, str], image_host: ImageHost
) -> None:
    # The logo 8 px larger on each side than the mask's (scaled) box: dilation covers it.
    w, h, (y0, y1, x0, x1) = LANDSCAPE
    bigger = (y0 - 8, y1 + 8, x0 - 8, x1 + 8)
    url = image_host.add("/fit/bigger.png", encode(_logo_photo(w, h, bigger), "PNG"))
    body = {
        "images": [url],
        "mask": assets["mask_b64"],
        "priority": 1,
        "engine": "opencv",
        "mask_fit": "anchor",
        "mask_anchor": "bottom-right",
        "mask_dilate": 12,
    }
    r = client.create_body(body)
    assert r.status_code == 200, r.text
    data = client.wait(r.json()["data"]["task_id"])
    assert data["status"] == "3", data
    out = client.result_pixels(data["list"][0]["image_result"])
    by0, by1, bx0, bx1 = bigger
    red = np.abs(out[by0:by1, bx0:bx1].astype(int) - np.array(RED)).sum(axis=-1) < 30
    assert red.mean() < 0.05
    original = _logo_photo(w, h, bigger)
    assert np.array_equal(out[: by0 - 13], original[: by0 - 13])  # far from it: untouched


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"mask_fit": "cover"}, "mask_fit"),
        ({"mask_fit": 1}, "mask_fit"),
        ({"mask_fit": "anchor", "mask_anchor": "middle"}, "mask_anchor"),
        ({"mask_anchor": "top-left"}, "mask_anchor"),
        ({"mask_fit": "contain", "mask_anchor": "top-left"}, "mask_anchor"),
        ({"mask_dilate": 65}, "mask_dilate"),
        ({"mask_dilate": -1}, "mask_dilate"),
        ({"mask_dilate": 3.0}, "mask_dilate"),
        ({"mask_dilate": "3"}, "mask_dilate"),
        ({"mask_invert": "yes"}, "mask_invert"),
        ({"mask_invert": 1}, "mask_invert"),
    ],
)
def test_bad_values_are_400s_naming_the_field(
    client: ApiClient, assets: dict[str, str], extra: dict[str, object], field: str
) -> None:
    body = {"images": [assets["landscape"]], "mask": assets["mask_b64"], "priority": 1}
    r = client.create_body({**body, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["msg"].startswith(f"{field}:"), r.json()


def test_fractional_rectangles_only_stretch(client: ApiClient, assets: dict[str, str]) -> None:
    body = {"images": [assets["landscape"]], "rectangles": [[0.1, 0.1, 0.2, 0.2]], "priority": 1}
    r = client.create_body({**body, "mask_fit": "contain"})
    assert r.status_code == 400, r.text
    assert r.json()["msg"].startswith("mask_fit:")
    r = client.create_body({**body, "rect_basis": [400, 300], "mask_fit": "contain"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("fit", ["contain", "anchor"])
def test_a_mask_of_the_image_size_is_kept_whatever_the_fit(fit: str) -> None:
    rng = np.random.default_rng(2)
    mask = rng.random((30, 40)) > 0.7
    for anchor in ANCHORS:
        placement = MaskPlacement(fit=fit, anchor=anchor)  # type: ignore[arg-type]
        assert np.array_equal(place_mask(mask, 30, 40, placement), mask)


def test_a_thin_mask_scaled_far_beyond_the_image_costs_only_the_image() -> None:
    # Scaled by the short sides (1 -> 5000), this mask would be 25 million px wide: only the
    # part on the image is sampled.
    thin = np.zeros((1, 5000), bool)
    thin[0, 2500] = True
    placed = place_mask(thin, 5000, 5000, MaskPlacement(fit="anchor", anchor="center"))
    assert placed.shape == (5000, 5000)
    # Mask column 2500 of 0..4999 spans the right half of the centred, 5000x scaled mask.
    assert placed[:, 2500:].all() and not placed[:, :2500].any()


@pytest.mark.parametrize("k", [2, 3, 5])
def test_an_integer_scale_repeats_each_mask_pixel(k: int) -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((7, 13)) > 0.5
    expected = np.repeat(np.repeat(mask, k, axis=0), k, axis=1)
    for fit in ("contain", "anchor"):
        placed = place_mask(mask, 7 * k, 13 * k, MaskPlacement(fit=fit))  # type: ignore[arg-type]
        assert np.array_equal(placed, expected)
