"""The restore engine's memory bounds give the same pixels: the estimate's per-edge work in
chunks (any size, on any number of threads), and a batch restored from the parts of its images
that ``Engine.window`` names, through the engine, the pipeline and the real worker."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from harness.imagehost import ImageHost
from harness.images import b64, encode
from photo_eraser.engines.base import Engine, EngineSetup, Restored
from photo_eraser.engines.fill import TextureAwareFill
from photo_eraser.engines.opencv import OpenCVEngine
from photo_eraser.engines.patchmatch import PatchMatchEngine, unavailable_reason
from photo_eraser.engines.registry import EngineRegistry
from photo_eraser.engines.restore import WatermarkRecoveryEngine
from photo_eraser.engines.restore.edges import EdgeChunks, cut, in_threads
from photo_eraser.imaging import ImageLimits, decode_image
from photo_eraser.pipeline import (
    FittedMasks,
    encode_part,
    hold_part,
    restore_images,
    restore_parts,
)
from tests import watermarks as wm
from tests.inprocess import LocalServer

H, W = 288, 400
MARK = (110, 220)


def batch(
    n: int, top: int, left: int, *, fmt: str = "jpeg", seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` photos of H x W with one logo stamped at (top, left), and its mask."""
    cov = np.zeros((H, W), np.float32)
    cov[top : top + MARK[0], left : left + MARK[1]] = wm.logo_coverage(*MARK)
    photos = wm.crops(n, H, W, seed=seed)
    images = wm.stamp(photos, 0.5 * cov, wm.gradient_colour(H, W))
    if fmt == "jpeg":
        images = [wm.jpeg(im, 90) for im in images]
    return images, wm.tight_mask(cov)


def fallback() -> Engine:
    """``auto``'s fill (PatchMatch reaches furthest), or Telea where PatchMatch cannot load."""
    if unavailable_reason(EngineSetup(Path("."))) is None:
        return TextureAwareFill(OpenCVEngine(), PatchMatchEngine())
    return OpenCVEngine()


def digest(results: list[Restored]) -> str:
    h = hashlib.sha256()
    for r in results:
        h.update(np.ascontiguousarray(r.image).tobytes())
        h.update(f"|{r.method}|{r.recovered_share}|".encode())
    return h.hexdigest()


def test_edge_chunks_cover_every_edge_once_in_order() -> None:
    chunks = EdgeChunks(edges=1001, images=7, threads=3, chunk_bytes=3 * 4 * 7 * 100)
    assert [s.stop - s.start for s in chunks.slices] == [100] * 10 + [1]
    (joined,) = chunks.map(lambda s: (np.arange(s.start, s.stop),))
    assert np.array_equal(joined, np.arange(1001))


@pytest.mark.parametrize("order", ["C", "F"])
def test_joined_chunks_are_laid_out_as_concatenate_lays_them_out(order: str) -> None:
    """Later sums over the images run in the order the memory layout gives: the joined arrays
    must be laid out exactly as joining the chunks with ``np.concatenate`` lays them out."""
    chunks = EdgeChunks(edges=1001, images=7, threads=3, chunk_bytes=3 * 4 * 7 * 100)

    def work(edges: slice) -> tuple[np.ndarray, ...]:
        n = edges.stop - edges.start
        start = float(edges.start)
        per_image = np.asarray(
            start + np.arange(7 * n, dtype=np.float32).reshape(7, n), order=order
        )
        per_channel = np.asarray(start + np.arange(3 * 7 * n).reshape(3, 7, n), order=order)
        return per_image, per_channel

    joined = chunks.map(work)
    expected = [
        np.concatenate(parts, axis=-1) for parts in zip(*map(work, chunks.slices), strict=True)
    ]
    for got, want in zip(joined, expected, strict=True):
        assert np.array_equal(got, want)
        assert got.strides == want.strides


def test_a_one_edge_last_chunk_does_not_decide_the_layout() -> None:
    """A chunk of one edge is both C- and Fortran-ordered: if it finished first and shaped the
    joined array, Fortran-ordered results would be joined in C order."""
    chunks = EdgeChunks(edges=101, images=7, threads=2, chunk_bytes=3 * 4 * 7 * 100)
    assert [s.stop - s.start for s in chunks.slices] == [100, 1]

    def work(edges: slice) -> tuple[np.ndarray, ...]:
        if edges.start == 0:
            time.sleep(0.05)  # the one-edge chunk finishes first
        n = edges.stop - edges.start
        return (np.asfortranarray(np.ones((7, n), np.float32)),)

    (joined,) = chunks.map(work)
    (want,) = [
        np.concatenate(parts, axis=-1) for parts in zip(*map(work, chunks.slices), strict=True)
    ]
    assert joined.strides == want.strides == (4, 28)


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_chunk_of_some_images_is_laid_out_as_those_images_of_the_whole(order: str) -> None:
    whole = np.asarray(np.arange(20 * 500, dtype=np.float32).reshape(20, 500), order=order)
    rows, edges = np.arange(1, 20, 2), slice(100, 350)
    got = cut(whole, edges, rows)
    want = whole[rows][..., edges].copy(order="K")
    assert np.array_equal(got, want)
    assert got.strides == want.strides
    got[...] = -1  # a copy, not a view of the whole
    assert whole.min() >= 0


def test_work_in_threads_comes_back_in_the_items_order() -> None:
    def slow_first(i: int) -> int:
        time.sleep(0.05 if i == 0 else 0.0)
        return i * i

    assert in_threads(slow_first, range(6), threads=3) == [i * i for i in range(6)]


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_the_estimate_in_small_chunks_on_threads_gives_the_same_output(fmt: str) -> None:
    images, mask = batch(8, 90, 90, fmt=fmt, seed=1)
    lossless = [fmt == "png"] * len(images)
    whole = WatermarkRecoveryEngine(OpenCVEngine()).restore(images, [mask] * 8, lossless=lossless)
    chunked = WatermarkRecoveryEngine(OpenCVEngine(), threads=3, chunk_bytes=4000).restore(
        images, [mask] * 8, lossless=lossless
    )
    assert whole[0].recovered_share  # the estimate ran and inverted pixels
    assert digest(chunked) == digest(whole)


@pytest.mark.parametrize(("top", "left"), [(89, 90), (30, 170)])  # inside; at two edges
def test_parts_of_the_images_give_the_pixels_of_the_whole_images(top: int, left: int) -> None:
    images, mask = batch(8, top, left, seed=2)
    engine = WatermarkRecoveryEngine(fallback())
    box = engine.window(mask, len(images))
    assert box is not None
    y0, y1, x0, x1 = box
    assert (y1 - y0) * (x1 - x0) < 0.75 * H * W  # a part, not the image
    whole = engine.restore(images, [mask] * 8)
    parts = [im[y0:y1, x0:x1].copy() for im in images]
    got = engine.restore_parts(parts, [mask] * 8, [(y0, x0)] * 8)
    assert whole[0].recovered_share
    for w, g, im in zip(whole, got, images, strict=True):
        assert np.array_equal(g.image, w.image[y0:y1, x0:x1])
        assert (g.method, g.recovered_share) == (w.method, w.recovered_share)
        outside = np.ones((H, W), bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(w.image[outside], im[outside])


def test_a_part_smaller_than_the_window_is_refused() -> None:
    images, mask = batch(6, 89, 90, seed=3)
    engine = WatermarkRecoveryEngine(OpenCVEngine())
    box = engine.window(mask, len(images))
    assert box is not None
    y0, y1, x0, x1 = box
    parts = [im[y0 + 20 : y1, x0:x1].copy() for im in images]
    with pytest.raises(ValueError, match="beyond the part"):
        engine.restore_parts(parts, [mask] * 6, [(y0 + 20, x0)] * 6)


def test_few_images_or_a_fallback_without_reach_need_whole_images() -> None:
    images, mask = batch(3, 89, 90)
    assert WatermarkRecoveryEngine(OpenCVEngine()).window(mask, 3) is None
    assert WatermarkRecoveryEngine(OpenCVEngine()).window(mask, 4) is not None

    class Anywhere(OpenCVEngine):  # a fill that may read anywhere in the image
        def __init__(self) -> None:
            super().__init__()
            self.reach = None

    assert WatermarkRecoveryEngine(Anywhere()).window(mask, 8) is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_the_pipeline_on_held_parts_encodes_the_same_bytes(fmt: str) -> None:
    images, mask = batch(6, 30, 170, seed=4)
    payloads = [encode(im, fmt, quality=92) for im in images]
    engine = WatermarkRecoveryEngine(fallback())
    expected = restore_images([decode_image(p) for p in payloads], mask, engine, jpeg_quality=95)
    masks = FittedMasks(mask)
    box = engine.window(mask, len(images))
    assert box is not None
    held = [hold_part(decode_image(p), p, box) for p in payloads]
    assert held[0].part.nbytes < 0.75 * images[0].nbytes
    restored = restore_parts(held, masks, engine)
    for h, r, e in zip(held, restored, expected, strict=True):
        got = encode_part(h, r, ImageLimits(), jpeg_quality=95)
        assert got.encoded.data == e.encoded.data
        assert got.restored.method == e.restored.method


def test_the_worker_restores_a_batch_from_parts_as_from_whole_images(
    tmp_path: Path, image_host: ImageHost
) -> None:
    """A task of one size through the real server (``auto``: the parts path) gives the pixels
    of the same engine on the whole decoded images."""
    images, mask = batch(6, 30, 170, fmt="png", seed=5)
    payloads = [encode(im, "PNG") for im in images]
    engine = EngineRegistry(tmp_path / "models").get("auto")
    whole = [decode_image(p).pixels for p in payloads]
    expected = engine.restore(whole, [mask] * 6, lossless=[True] * 6)
    assert expected[0].recovered_share
    server = LocalServer(tmp_path / "data", image_threads=2).start()
    try:
        c = server.new_client()
        urls = [image_host.add(f"/parts/{i}.png", p) for i, p in enumerate(payloads)]
        data = c.wait(c.create_ok(urls, b64(encode(mask)), engine="auto"))
        assert data["status"] == "3", data
        for item, e in zip(data["list"], expected, strict=True):
            assert item["status"] == "3", item
            assert np.array_equal(c.result_pixels(item["image_result"]), e.image)
        c.close()
    finally:
        server.stop()
