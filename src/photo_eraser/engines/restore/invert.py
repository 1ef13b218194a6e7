"""Inverting the blend on an image: ``I = (J - c) / beta``, with the grid's maps resampled onto
the image's own pixels over the mask's box."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from photo_eraser.engines.restore.grid import Placement
from photo_eraser.engines.restore.single import SingleRecovery


@dataclass
class Recovery:
    """The inverted pixels of one image and where they may be used (image coordinates, over
    the mask's bounding box)."""

    box: tuple[int, int, int, int]
    pixels: np.ndarray
    usable: np.ndarray


def invert_on_image(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    placement: Placement,
    beta: np.ndarray,
    offset: np.ndarray,
    usable: np.ndarray,
) -> Recovery:
    """Invert the blend over the mask's box of one image, with grid maps resampled onto it."""
    y0, y1, x0, x1 = box
    size = (x1 - x0, y1 - y0)
    m = placement.image_to_grid(y0, x0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    # Off the grid nothing is known: those pixels are not usable (the fallback fills them).
    b = cv2.warpAffine(beta, m, size, flags=flags, borderValue=1.0)
    c = cv2.warpAffine(offset, m, size, flags=flags, borderValue=(0.0, 0.0, 0.0))
    ok = cv2.warpAffine(usable.astype(np.float32), m, size, flags=flags, borderValue=0.0)
    crop = image[y0:y1, x0:x1].astype(np.float32)
    pixels = np.clip(np.rint((crop - c) / b[..., None]), 0, 255).astype(np.uint8)
    return Recovery(box=box, pixels=pixels, usable=ok > 0.999)


def from_single(rec: SingleRecovery, box: tuple[int, int, int, int]) -> Recovery:
    """A one-image recovery (over its padded box) cut to the mask's box."""
    y0, y1, x0, x1 = box
    ry0, _, rx0, _ = rec.box
    sl = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
    return Recovery(box=box, pixels=rec.pixels[sl], usable=rec.usable[sl])
