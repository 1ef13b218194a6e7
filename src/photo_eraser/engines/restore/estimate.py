"""What an estimate of the batch's mark is: the blend on the grid, and the images behind it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from photo_eraser.engines.restore.solver import GridSolver

Fit = Literal["exact", "refined", "free"]
"""Which fit produced a blend: the exact-blend fit (step 6), the free fit refined with texture
weights (step 5), or the free fit alone (steps 3-4)."""


@dataclass(frozen=True)
class Blend:
    """The mark as ``J = c + beta * I`` on the grid: ``beta = 1 - alpha`` (HxW) and
    ``u = alpha * W / beta`` (HxWx3), so ``c = beta * u``.

    ``spread`` (HxW) is a rough, independent ``beta``: each pixel's spread over the batch
    relative to the surroundings' (near 0 under an opaque mark).
    """

    beta: np.ndarray
    u: np.ndarray
    spread: np.ndarray
    fit: Fit = "free"

    @property
    def exact(self) -> bool:
        """Whether the exact-blend fit (one smooth colour, lossless images) was used."""
        return self.fit == "exact"

    def invert(self, crop: np.ndarray) -> np.ndarray:
        """The photo under the watermark for one grid crop (float32, not clipped)."""
        return crop / self.beta[..., None] - self.u

    @property
    def offset(self) -> np.ndarray:
        """``c = alpha * W`` (HxWx3), the additive part of the blend."""
        return self.u * self.beta[..., None]


@dataclass
class Recovery:
    """The inverted pixels of one image over a box of it (image coordinates), and where they
    may be used; the other masked pixels go to the fallback inpainter."""

    box: tuple[int, int, int, int]
    pixels: np.ndarray
    usable: np.ndarray


@dataclass(frozen=True)
class Estimate:
    """The batch's mark estimated on a solver's domain from the images that carry it."""

    images: list[int]
    """Indices (in the batch) of the images the estimate used."""
    stack: np.ndarray
    """Their crops on the grid (N x H x W x 3, float32)."""
    blend: Blend
    errors: np.ndarray
    """Each image's jackknife standard error of its recovered photo (N x H x W, grey levels)."""
    solver: GridSolver
    """The domain (the mask, or the part of it narrowed to the mark) and its Poisson solver."""
    exact_gave_way: bool = False
    """Whether an exact fit that found no mark gave way to the free fit (step 6)."""
