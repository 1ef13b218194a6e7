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

from photo_eraser.engines.base import Engine, Restored
from photo_eraser.imaging import (
    DEFAULT_MAX_SIDE,
    LOSSLESS_FORMATS,
    DecodedImage,
    EncodedImage,
    MaskPlacement,
    decode_mask,
    encode_image,
    place_mask,
)
from photo_eraser.imaging.detect import Detection, DetectParams, detect_watermark


@dataclass
class RestoredImage:
    encoded: EncodedImage
    restored: Restored


@dataclass
class StageTimes:
    """Seconds spent per stage, for logs and the benchmark."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


def detect_mask(images: Sequence[np.ndarray], params: DetectParams | None = None) -> Detection:
    """The watermark ``images`` share (``"mask": "auto"``): a mask in the largest image's
    frame, stretched onto each image like a given mask, or why none was found."""
    return detect_watermark(images, params)


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
    t = time.perf_counter()
    fitted: dict[tuple[int, int], np.ndarray] = {}  # batches are mostly one size: resize once
    for im in images:
        shape = (im.height, im.width)
        if shape not in fitted:
            fitted[shape] = place_mask(mask, *shape, placement)
    masks = [fitted[(im.height, im.width)] for im in images]
    times.add("mask", t)
    t = time.perf_counter()
    # The decoded arrays are ours and not used again: let the engine write into them.
    restored = engine.restore(
        [im.pixels for im in images],
        masks,
        in_place=True,
        lossless=[im.format in LOSSLESS_FORMATS for im in images],
    )
    times.add("engine", t)
    t = time.perf_counter()
    out = [
        RestoredImage(
            encode_image(
                r.image,
                im.format,
                icc_profile=im.icc_profile,
                alpha=im.alpha,
                jpeg_quality=jpeg_quality,
            ),
            r,
        )
        for im, r in zip(images, restored, strict=True)
    ]
    times.add("encode", t)
    return out


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
