"""Generated images and masks, one convention: images RGB uint8 HxWx3, masks bool HxW
(True = restore), boxes ``(y0, y1, x0, x1)`` end-exclusive as ``engines.base.mask_bbox``."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like RGB uint8 image (gradients plus mild noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / (37 + seed)) * np.cos(y / 53)
    g = 128 + 90 * np.cos((x + y) / 71)
    b = 64 + 150 * (x / max(1, width))
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG", **kw: object) -> bytes:
    """``pixels`` (RGB uint8 HxWx3, gray uint8 HxW, or a bool mask: True = 255) as a file."""
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    buf = io.BytesIO()
    mode = "L" if pixels.ndim == 2 else "RGB"
    Image.fromarray(pixels, mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)``, end-exclusive: the convention of ``engines.base.mask_bbox``."""


def rect_mask(height: int, width: int, *boxes: Box) -> np.ndarray:
    """A bool ``height`` x ``width`` mask (True = restore) of the ``boxes``; ``encode`` makes
    it a mask file."""
    mask = np.zeros((height, width), bool)
    for y0, y1, x0, x1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def psnr(result: np.ndarray, truth: np.ndarray, where: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio of ``result`` against ``truth`` in dB (8-bit range), over the
    pixels ``where`` is True (all by default)."""
    if where is not None:
        result, truth = result[where], truth[where]
    err = result.astype(np.float64) - truth.astype(np.float64)
    return float(10 * np.log10(255**2 / max(float(np.mean(err**2)), 1e-12)))


def rgba_mask_png(side: int, seed: int) -> bytes:
    """A ``side`` x ``side`` RGBA PNG, transparent but for one painted square (compresses to
    a few hundred KB, decodes to 4 bytes a pixel)."""
    pixels = np.zeros((side, side, 4), np.uint8)
    x = 100 + 37 * seed
    pixels[x : x + 200, x : x + 300] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
