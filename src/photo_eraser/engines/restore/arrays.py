"""Small array operations the steps share (grid arrays: float32 HxW or HxWx3, bool HxW)."""

from __future__ import annotations

import cv2
import numpy as np

ROUNDING_NOISE = float(np.sqrt(1 / 12))
"""Standard deviation (grey levels) of rounding to whole levels."""


def batch_median(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.median`` along a short axis; sorting is several times faster than partitioning here."""
    s = np.sort(a, axis=axis)
    n = a.shape[axis]
    return (np.take(s, (n - 1) // 2, axis=axis) + np.take(s, n // 2, axis=axis)) * 0.5


def channel_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis of 3 colour channels; equal to ``a.mean(axis=-1)`` and many
    times faster (numpy reduces a short last axis slowly)."""
    return (a[..., 0] + a[..., 1] + a[..., 2]) / a.dtype.type(3)


def within(pixels: np.ndarray, radius: int) -> np.ndarray:
    """Pixels at most ``radius`` away (in x and in y) from the given ones (HxW bool)."""
    size = 2 * radius + 1
    return cv2.dilate(pixels.astype(np.uint8), np.ones((size, size), np.uint8)) > 0


def outline(marked: np.ndarray) -> np.ndarray:
    """Pixels next to both marked and unmarked ones (HxW bool; ``marked`` HxW bool): the
    outline, one pixel on either side."""
    return (
        cv2.morphologyEx(marked.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    )


def local_mean(a: np.ndarray) -> np.ndarray:
    """5x5 box average (the scale the invert-or-inpaint decision is taken at)."""
    return cv2.blur(a, (5, 5))


def noise_level(grey: np.ndarray, where: np.ndarray, min_pixels: int = 1) -> float:
    """Noise standard deviation (grey levels) over ``where`` (Immerkaer 1996), clamped to
    [0.5, 4]; 2 where fewer than ``min_pixels`` pixels are given."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    lap = np.abs(cv2.filter2D(grey, -1, kernel))
    if where.sum() < min_pixels:
        return 2.0
    sigma = float(np.sqrt(np.pi / 2) / 6 * lap[where].mean())
    return min(4.0, max(0.5, sigma))
