"""The CPU part of a task, shared by the service and the offline ``erase`` command:
decoded images + one mask -> engine -> encoded results."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from photo_eraser.engines.base import Box, Engine, Restored
from photo_eraser.imaging import (
    DEFAULT_MAX_SIDE,
    LOSSLESS_FORMATS,
    DecodedImage,
    EncodedImage,
    ImageLimits,
    MaskPlacement,
    decode_image,
    decode_mask,
    encode_image,
    place_mask,
)


@dataclass
class RestoredImage:
    encoded: EncodedImage
    restored: Restored


@dataclass
class StageTimes:
    """Seconds spent per stage, for logs and the benchmark. Stages of images handled in
    parallel add up: the sums are work, not wall time."""

    seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed


class FittedMasks:
    """A task's mask fitted to each image size it meets (batches are mostly one size: the
    mask is resized once). Safe to share between the threads of one task."""

    def __init__(self, mask: np.ndarray, placement: MaskPlacement | None = None) -> None:
        self.mask = mask
        self.placement = placement
        self._fitted: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def for_size(self, height: int, width: int) -> np.ndarray:
        """The mask for an image of this size (read-only: images of one size share it)."""
        with self._lock:
            fitted = self._fitted.get((height, width))
        if fitted is None:
            fitted = place_mask(self.mask, height, width, self.placement)
            fitted.flags.writeable = False
            with self._lock:
                fitted = self._fitted.setdefault((height, width), fitted)
        return fitted


def erase_one(
    image: DecodedImage,
    masks: FittedMasks,
    engine: Engine,
    *,
    jpeg_quality: int,
    times: StageTimes | None = None,
) -> RestoredImage:
    """One image of a per-image engine from decoded pixels to encoded result. The decoded
    pixels are handed to the engine (written in place)."""
    times = times if times is not None else StageTimes()
    t = time.perf_counter()
    mask = masks.for_size(image.height, image.width)
    times.add("mask", t)
    t = time.perf_counter()
    [restored] = engine.restore(
        [image.pixels], [mask], in_place=True, lossless=[image.format in LOSSLESS_FORMATS]
    )
    times.add("engine", t)
    return encode_result(image, restored, jpeg_quality=jpeg_quality, times=times, consume=True)


def restore_batch(
    images: Sequence[DecodedImage],
    masks: FittedMasks,
    engine: Engine,
    *,
    times: StageTimes | None = None,
) -> list[Restored]:
    """Restore the whole batch at once (the engine may look at every image). The decoded
    arrays are handed over: the engine may write into them."""
    times = times if times is not None else StageTimes()
    t = time.perf_counter()
    fitted = [masks.for_size(im.height, im.width) for im in images]
    times.add("mask", t)
    t = time.perf_counter()
    restored = engine.restore(
        [im.pixels for im in images],
        fitted,
        in_place=True,
        lossless=[im.format in LOSSLESS_FORMATS for im in images],
    )
    times.add("engine", t)
    return restored


@dataclass
class HeldPart:
    """An image of a batch held as the part its engine needs (``Engine.window``) and its
    encoded bytes: the image is decoded again to put the restored part back and encode it, so
    a batch holds parts, not whole decoded images."""

    payload: bytes
    part: np.ndarray
    """The pixels of ``box`` (a copy: the whole decoded image is let go)."""
    box: Box
    height: int
    width: int
    format: str

    @property
    def origin(self) -> tuple[int, int]:
        return self.box[0], self.box[2]


def hold_part(image: DecodedImage, payload: bytes, box: Box) -> HeldPart:
    """Keep the pixels of ``box`` of a decoded image (and its bytes), not the image."""
    y0, y1, x0, x1 = box
    part = image.pixels[y0:y1, x0:x1].copy()
    return HeldPart(payload, part, box, image.height, image.width, image.format)


def restore_parts(
    held: Sequence[HeldPart],
    masks: FittedMasks,
    engine: Engine,
    *,
    times: StageTimes | None = None,
) -> list[Restored]:
    """``restore_batch`` on the held parts (``Engine.restore_parts``): the same pixels there."""
    times = times if times is not None else StageTimes()
    t = time.perf_counter()
    fitted = [masks.for_size(h.height, h.width) for h in held]
    times.add("mask", t)
    t = time.perf_counter()
    restored = engine.restore_parts(
        [h.part for h in held],
        fitted,
        [h.origin for h in held],
        lossless=[h.format in LOSSLESS_FORMATS for h in held],
    )
    times.add("engine", t)
    return restored


def encode_part(
    held: HeldPart,
    restored: Restored,
    limits: ImageLimits,
    *,
    jpeg_quality: int,
    times: StageTimes | None = None,
) -> RestoredImage:
    """The held image decoded again (the decoder gives the same pixels each time), its restored
    part put back, encoded as ``encode_result`` does."""
    t = time.perf_counter()
    image = decode_image(held.payload, limits)
    if times is not None:
        times.add("decode", t)
    if (image.height, image.width) != (held.height, held.width):
        raise RuntimeError("an image decoded to another size the second time")
    y0, y1, x0, x1 = held.box
    image.pixels[y0:y1, x0:x1] = restored.image
    whole = Restored(image.pixels, restored.method, restored.recovered_share, restored.report)
    return encode_result(image, whole, jpeg_quality=jpeg_quality, times=times, consume=True)


def encode_result(
    image: DecodedImage,
    restored: Restored,
    *,
    jpeg_quality: int,
    times: StageTimes | None = None,
    consume: bool = False,
) -> RestoredImage:
    """The restored pixels of ``image`` encoded in its format, with its profile and alpha;
    ``consume``: the pixels are not used afterwards (see `encode_image`)."""
    t = time.perf_counter()
    encoded = encode_image(
        restored.image,
        image.format,
        icc_profile=image.icc_profile,
        alpha=image.alpha,
        jpeg_quality=jpeg_quality,
        consume=consume,
    )
    if times is not None:
        times.add("encode", t)
    return RestoredImage(encoded, restored)


def restore_images(
    images: Sequence[DecodedImage],
    mask: np.ndarray,
    engine: Engine,
    *,
    jpeg_quality: int,
    times: StageTimes | None = None,
    placement: MaskPlacement | None = None,
) -> list[RestoredImage]:
    """Fit the mask to each image (as ``placement`` says; default: stretched), restore the
    whole batch at once, encode each result."""
    times = times if times is not None else StageTimes()
    restored = restore_batch(images, FittedMasks(mask, placement), engine, times=times)
    return [
        encode_result(im, r, jpeg_quality=jpeg_quality, times=times)
        for im, r in zip(images, restored, strict=True)
    ]


class MaskCache:
    """Decoded masks by content hash: shops send the same mask with every task, so it is
    decoded once (checked at creation, reused by the worker). Arrays are read-only."""

    def __init__(
        self,
        max_bytes: int,
        size: int = 32,
        max_held: int = 128 << 20,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        concurrent: int = 2,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_side = max_side
        self.size = size
        self.max_held = max_held
        """Bytes of decoded masks kept at most (a 5000x5000 mask holds 25 MB)."""
        self._decoding = threading.BoundedSemaphore(concurrent)
        """Decodes at once: each may briefly take 4 bytes a pixel (150 MB at 5000x5000), and
        every create request with an inline mask decodes it, so they wait their turn."""
        self._held = 0
        self._masks: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def decode(self, data: bytes) -> np.ndarray:
        """Like `decode_mask` (raises `MaskError` alike), served from the cache when seen."""
        digest = hashlib.sha256(data).digest()
        with self._lock:
            if digest in self._masks:
                self._masks.move_to_end(digest)
                return self._masks[digest]
        with self._decoding:
            mask = decode_mask(data, self.max_bytes, max_side=self.max_side)
        mask.flags.writeable = False
        with self._lock:
            if digest not in self._masks:
                self._masks[digest] = mask
                self._held += mask.nbytes
            while self._masks and (len(self._masks) > self.size or self._held > self.max_held):
                self._held -= self._masks.popitem(last=False)[1].nbytes
        return mask
