"""``"mask": "auto"``: the watermark a batch shares is found and restored, through the public
API (the in-process app, images served by a local host), the offline CLI and the SDK; a batch
without one fails with a reason the user can act on and changes nothing."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import encode, psnr
from photo_eraser.cli import main as cli
from photo_eraser.client import Client, TaskStatus
from photo_eraser.imaging.detect import DetectParams, detect_watermark
from tests import watermarks as wm
from tests.inprocess import LocalServer

H, W = 270, 360  # above the 256 px minimum, small enough to stay fast
ALPHA = 0.5


def _text() -> np.ndarray:
    return wm.text_coverage(H, W)


def _batch(n: int, seed: int, coverage: np.ndarray | None = None) -> tuple[list, list]:
    """``n`` photos and the same photos with a white text mark at opacity 0.5."""
    photos = wm.crops(n, H, W, seed=seed)
    cov = _text() if coverage is None else coverage
    return photos, wm.stamp(photos, ALPHA * cov, wm.solid_colour((255, 255, 255), H, W))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _host(image_host: ImageHost, name: str, images: list[np.ndarray]) -> list[str]:
    return [image_host.add(f"/detect/{name}/{i}.png", encode(im)) for i, im in enumerate(images)]


def _png(url: str) -> np.ndarray:
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)))


# ---- the detector on its own ------------------------------------------------------------


def test_detector_finds_the_shared_text_and_nothing_in_clean_batches() -> None:
    _, stamped = _batch(8, seed=5)
    found = detect_watermark(stamped)
    assert found.mask is not None and found.shape == (H, W)
    assert _iou(found.mask, wm.tight_mask(_text())) >= 0.75
    assert 0 < found.confidence <= 1 and found.reason == ""
    # Positive control above, the same photos without the mark here.
    for seed in (20, 21, 22):
        clean = detect_watermark([wm.jpeg(p) for p in wm.crops(8, H, W, seed=seed)])
        assert clean.mask is None and clean.confidence == 0
        assert clean.reason == "no shared watermark found in 8 images; send a mask"


def test_detector_does_not_take_copies_of_one_photo_for_a_mark() -> None:
    """Everything is shared there: no part of it stands out as a watermark would."""
    photo = wm.crops(1, H, W, seed=3)[0]
    found = detect_watermark([wm.jpeg(photo, q) for q in (85, 88, 90, 92, 95)])
    assert found.mask is None
    assert found.reason == "no shared watermark found in 5 images; send a mask"


def test_detector_drops_traced_parts_far_weaker_than_the_mark() -> None:
    """Photo clutter traced beside the mark scores far lower than the mark's own parts."""
    from photo_eraser.imaging.detect import _strong_parts

    edges = np.zeros((40, 80), bool)
    edges[5:15, 5:30] = edges[25:35, 5:30] = True  # two parts of the mark
    edges[10:30, 50:70] = True  # clutter
    score = np.where(edges, 10.0, 0.0)
    score[10:30, 50:70] = 1.0
    kept = _strong_parts(edges, score, 0.5)
    assert kept[5:15, 5:30].all() and kept[25:35, 5:30].all()
    assert not kept[10:30, 50:70].any()
    assert _strong_parts(edges, score, 0.05).sum() == edges.sum()  # a lower bar keeps it


def test_detector_rank_is_the_batch_order_statistic() -> None:
    """The per-pixel rank over the batch (a selection network, for speed) gives exactly what
    ``np.partition`` gives, for every batch size and rank, ties included, and leaves the
    caller's arrays as they were unless told it may write over them."""
    from photo_eraser.imaging.detect import _rank

    rng = np.random.default_rng(5)
    for n in range(1, 34):
        stack = rng.normal(size=(n, 6, 7)).astype(np.float32)
        stack[:, 0] = np.round(stack[:, 0])  # ties
        before = stack.copy()
        for share in (0.0, 0.3, 0.5, 1.0):
            k = min(n - 1, int(np.floor(share * (n - 1) + 0.5)))
            assert np.array_equal(_rank(stack, share), np.partition(before, k, axis=0)[k])
        assert np.array_equal(stack, before)
        upper_median = np.partition(before, n // 2, axis=0)[n // 2]
        assert np.array_equal(_rank(list(stack.copy()), 0.5, overwrite=True), upper_median)


def _grey_crops(n: int, seed: int) -> list[np.ndarray]:
    """``n`` crops of scikit-image's grey photos (busy textures among them), as RGB."""
    from skimage import data

    rng = np.random.default_rng(seed)
    greys = [data.camera(), data.brick(), data.grass(), data.gravel(), data.moon()]
    out = []
    for g in greys[:n]:
        y, x = int(rng.integers(0, g.shape[0] - H + 1)), int(rng.integers(0, g.shape[1] - W + 1))
        out.append(np.ascontiguousarray(np.stack([g[y : y + H, x : x + W]] * 3, axis=-1)))
    return out


def test_detector_finds_a_coloured_mark_over_grey_textures_in_four_images() -> None:
    """A red logo over grass, gravel and brick: its edges are no stronger than the textures',
    but it is the batch's only colour. The colour whitening and the signed agreement find it
    where the energy and orientation alone (the old score) did not."""
    photos = _grey_crops(4, seed=0)
    logo = wm.logo_coverage(H, W)
    stamped = [
        wm.jpeg(s) for s in wm.stamp(photos, 0.45 * logo, wm.solid_colour((220, 30, 40), H, W))
    ]
    found = detect_watermark(stamped)
    assert found.mask is not None
    assert _iou(found.mask, wm.tight_mask(logo)) >= 0.8
    # The same score without the colour cues misses it: the test exercises them.
    assert not detect_watermark(stamped, DetectParams(colour_gain=1, signed=0)).found
    # Negative control: the same grey photos, unmarked.
    assert not detect_watermark([wm.jpeg(p) for p in photos]).found


def test_detected_mask_follows_the_marks_outline() -> None:
    """The outline rebuilt from the batch's median gradient, widened by the 2 px margin,
    matches a mask painted 2 px around the mark closer than the traced edges do."""
    _, stamped = _batch(8, seed=5)
    stamped = [wm.jpeg(s) for s in stamped]
    truth = wm.tight_mask(_text())
    outlined = detect_watermark(stamped).mask
    traced = detect_watermark(stamped, DetectParams(outline=0, margin=1)).mask
    assert outlined is not None and traced is not None
    assert _iou(outlined, truth) >= 0.9
    assert _iou(outlined, truth) > _iou(traced, truth)


def test_detector_needs_four_images() -> None:
    _, stamped = _batch(4, seed=5)
    assert detect_watermark(stamped).found  # positive control: four carry it clearly
    found = detect_watermark(stamped[:3])
    assert found.mask is None
    assert found.reason.startswith("no shared watermark found in 3 images; send a mask")
    assert "at least 4 images" in found.reason


# ---- the service -------------------------------------------------------------------------


def test_auto_mask_finds_the_mark_and_restores_it(client: ApiClient, image_host: ImageHost) -> None:
    photos, stamped = _batch(8, seed=5)
    urls = _host(image_host, "text", stamped)
    task_id = client.create_ok(urls, "auto", engine="restore")
    data = client.wait(task_id)
    assert data["status"] == "3", data
    detected = _png(data["detected_mask"]) > 0
    truth = wm.tight_mask(_text())
    assert detected.shape == (H, W) and _iou(detected, truth) >= 0.75
    for item, photo, before in zip(data["list"], photos, stamped, strict=True):
        assert item["status"] == "3" and item["method"].startswith("restore"), item
        after = _png(item["image_result"])
        # The mark is gone: far closer to the photo than the stamped image was.
        assert psnr(after, photo, truth) > psnr(before, photo, truth) + 10
        assert np.array_equal(after[~detected], before[~detected])  # nothing else changed


def test_auto_mask_on_a_batch_without_a_mark_fails_with_the_reason(
    client: ApiClient, image_host: ImageHost
) -> None:
    urls = _host(image_host, "clean", [wm.jpeg(p) for p in wm.crops(6, H, W, seed=21)])
    data = client.wait(client.create_ok(urls, "auto", engine="restore"))
    assert data["status"] == "4", data
    assert "detected_mask" not in data
    for item in data["list"]:
        assert item["status"] == "4" and item["image_result"] == ""
        assert item["reason"] == "no shared watermark found in 6 images; send a mask"


def test_auto_mask_counts_only_the_images_read(client: ApiClient, image_host: ImageHost) -> None:
    """Two of five images cannot be downloaded: they keep their own reason; the three read are
    too few to find a mark, and say so."""
    _, stamped = _batch(3, seed=5)
    urls = _host(image_host, "few", stamped)
    missing = [image_host.url("/detect/few/missing-a.png"), image_host.url("/detect/few/b.png")]
    data = client.wait(client.create_ok(urls + missing, "auto"))
    assert data["status"] == "4", data
    read, failed = data["list"][:3], data["list"][3:]
    for item in read:
        assert item["reason"].startswith("no shared watermark found in 3 images; send a mask")
        assert "at least 4 images" in item["reason"]
    for item in failed:
        assert item["status"] == "4" and item["reason"].startswith("download failed"), item


def test_auto_mask_with_images_of_two_sizes(client: ApiClient, image_host: ImageHost) -> None:
    """Half the batch at twice the size, the mark scaled with it: one mask, in the largest
    image's frame, stretched onto each image."""
    coverage2 = cv2.resize(_text(), (2 * W, 2 * H), interpolation=cv2.INTER_LINEAR)
    white2 = wm.solid_colour((255, 255, 255), 2 * H, 2 * W)
    small_photos, small = _batch(4, seed=8)
    big_photos = [
        cv2.resize(p, (2 * W, 2 * H), interpolation=cv2.INTER_CUBIC)
        for p in wm.crops(4, H, W, seed=7)
    ]
    big = wm.stamp(big_photos, ALPHA * coverage2, white2)
    photos, stamped = small_photos + big_photos, small + big
    data = client.wait(client.create_ok(_host(image_host, "mixed", stamped), "auto"))
    assert data["status"] == "3", data
    detected = _png(data["detected_mask"]) > 0
    assert detected.shape == (2 * H, 2 * W)
    assert _iou(detected, wm.tight_mask(coverage2)) >= 0.7
    for item, photo, before in zip(data["list"], photos, stamped, strict=True):
        truth = wm.tight_mask(coverage2 if photo.shape[0] == 2 * H else _text())
        after = _png(item["image_result"])
        assert after.shape == before.shape
        assert psnr(after, photo, truth) > psnr(before, photo, truth) + 6, item


def test_auto_mask_with_a_mark_shifted_by_a_few_pixels(
    client: ApiClient, image_host: ImageHost
) -> None:
    photos = wm.crops(8, H, W, seed=6)
    coverages = [np.roll(_text(), (k % 3 - 1) * 2, axis=1) for k in range(8)]
    white = wm.solid_colour((255, 255, 255), H, W)
    stamped = [wm.stamp([p], ALPHA * c, white)[0] for p, c in zip(photos, coverages, strict=True)]
    data = client.wait(client.create_ok(_host(image_host, "shifted", stamped), "auto"))
    assert data["status"] == "3", data
    detected = _png(data["detected_mask"]) > 0
    for item, photo, before, cov in zip(data["list"], photos, stamped, coverages, strict=True):
        truth = wm.tight_mask(cov)
        assert (detected & truth).sum() >= 0.95 * truth.sum()  # each image's mark is covered
        after = _png(item["image_result"])
        assert psnr(after, photo, truth) > psnr(before, photo, truth) + 6, item


@pytest.mark.parametrize(
    ("extra", "images", "field"),
    [
        ({}, 3, "mask: auto finds the watermark the images share and needs at least 4 images"),
        ({"mask_fit": "contain"}, 4, "mask_fit: not with mask auto"),
        ({"mask_invert": True}, 4, "mask_invert: not with mask auto"),
        ({"rectangles": [[0, 0, 10, 10]]}, 4, "mask, rectangles: give exactly one"),
    ],
)
def test_auto_mask_refusals_name_the_field(
    client: ApiClient, image_host: ImageHost, extra: dict, images: int, field: str
) -> None:
    urls = [image_host.url(f"/detect/text/{i}.png") for i in range(images)]
    r = client.create(urls, "auto", **extra)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == 40001 and body["msg"].startswith(field), body


# ---- the CLI and the SDK -------------------------------------------------------------------


@pytest.fixture
def stamped_files(tmp_path: Path) -> Iterator[tuple[list[Path], list[np.ndarray]]]:
    photos, stamped = _batch(6, seed=9)
    paths = []
    for i, im in enumerate(stamped):
        path = tmp_path / f"shot{i}.png"
        path.write_bytes(encode(im))
        paths.append(path)
    yield paths, photos


def test_cli_erase_mask_auto(tmp_path: Path, stamped_files: tuple) -> None:
    paths, photos = stamped_files
    out = tmp_path / "out"
    args = ["erase", "--mask", "auto", *map(str, paths), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--engine", "restore", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "detected mask ->" in result.output
    detected = np.asarray(Image.open(out / "detected-mask.png")) > 0
    truth = wm.tight_mask(_text())
    assert _iou(detected, truth) >= 0.7
    after = np.asarray(Image.open(out / "shot0.png").convert("RGB"))
    before = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert psnr(after, photos[0], truth) > psnr(before, photos[0], truth) + 10


def test_cli_erase_mask_auto_without_a_mark_writes_nothing(tmp_path: Path) -> None:
    paths = []
    for i, im in enumerate(wm.crops(5, H, W, seed=22)):
        paths.append(tmp_path / f"clean{i}.png")
        paths[-1].write_bytes(encode(im))
    out = tmp_path / "out"
    args = ["erase", "--mask", "auto", *map(str, paths), "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "no shared watermark found in 5 images; send a mask" in result.output
    assert not out.exists()


def test_cli_erase_mask_must_be_a_file_or_auto(tmp_path: Path, stamped_files: tuple) -> None:
    paths, _ = stamped_files
    args = ["erase", "--mask", str(tmp_path / "nope.png"), str(paths[0]), "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no such file" in result.output


def test_sdk_submits_mask_auto(server: LocalServer, tmp_path: Path, stamped_files: tuple) -> None:
    paths, _ = stamped_files
    appkey, appsecret = server.create_key("sdk-detect")
    with Client(server.base_url, appkey, appsecret, min_poll=0.05, max_poll=0.5) as sdk:
        result = sdk.submit(paths, "auto", engine="restore").wait(timeout=120)
        assert result.status is TaskStatus.COMPLETE, result
        assert result.detected_mask is not None
        assert httpx.get(result.detected_mask, timeout=30).status_code == 200
