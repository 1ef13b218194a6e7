"""The shared pipeline pieces: mask cache, and restore_images on real decoded images."""

from __future__ import annotations

import numpy as np
import pytest

from harness.images import encode, photo, rect_mask
from photo_eraser.engines.opencv import OpenCVEngine
from photo_eraser.imaging import MaskError, decode_image
from photo_eraser.pipeline import MaskCache, restore_images


def test_mask_cache_decodes_each_mask_once_and_guards_it() -> None:
    cache = MaskCache(max_bytes=10**7, size=2)
    a, b, c = (encode(rect_mask(300, 300, (i, i + 20, i, i + 20))) for i in (1, 50, 100))
    first = cache.decode(a)
    assert cache.decode(a) is first
    with pytest.raises(ValueError):
        first[0, 0] = True  # shared between tasks: read-only
    cache.decode(b)
    cache.decode(c)  # evicts a (least recently used)
    assert cache.decode(a) is not first
    assert np.array_equal(cache.decode(a), first)
    with pytest.raises(MaskError):
        cache.decode(b"not an image")


def test_mask_cache_bounds_the_memory_it_holds() -> None:
    cache = MaskCache(max_bytes=10**7, max_held=2 * 300 * 300)  # room for two 300x300 masks
    masks = [encode(rect_mask(300, 300, (i, i + 20, i, i + 20))) for i in range(4)]
    decoded = [cache.decode(m) for m in masks]
    assert cache.decode(masks[3]) is decoded[3] and cache.decode(masks[2]) is decoded[2]
    assert cache.decode(masks[0]) is not decoded[0]  # evicted to stay within max_held


def test_restore_images_fits_mask_and_keeps_format() -> None:
    decoded = [
        decode_image(encode(photo(400, 300, seed=s), fmt)) for s, fmt in ((1, "PNG"), (2, "JPEG"))
    ]
    originals = [d.pixels.copy() for d in decoded]
    mask = MaskCache(10**7).decode(encode(rect_mask(150, 200, (10, 20, 10, 30))))  # half size
    results = restore_images(decoded, mask, OpenCVEngine(), jpeg_quality=95)
    assert [r.encoded.extension for r in results] == ["png", "jpg"]
    png = decode_image(results[0].encoded.data).pixels
    full = rect_mask(300, 400, (20, 40, 20, 60))
    assert np.array_equal(png[~full], originals[0][~full])
    assert not np.array_equal(png[full], originals[0][full])


class _HintRecorder(OpenCVEngine):
    """Telea, remembering the lossless hints it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.lossless: list[bool] | None = None

    def restore(self, images, masks, *, in_place=False, lossless=None):
        self.lossless = list(lossless) if lossless is not None else None
        return super().restore(images, masks, in_place=in_place)


def test_restore_images_tells_the_engine_which_inputs_were_lossless() -> None:
    decoded = [
        decode_image(encode(photo(300, 300, seed=s), fmt))
        for s, fmt in ((1, "PNG"), (2, "JPEG"), (3, "BMP"))
    ]
    mask = MaskCache(10**7).decode(encode(rect_mask(300, 300, (10, 20, 10, 30))))
    engine = _HintRecorder()
    restore_images(decoded, mask, engine, jpeg_quality=95)
    assert engine.lossless == [True, False, True]
