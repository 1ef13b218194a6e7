"""Step 8, confidence: per image and pixel, whether inverting beats inpainting.

The blend is re-estimated without each half of the batch (each image, in small batches); how
much the recovered pixels move is a jackknife estimate of their error. Adding the image's noise
amplified by ``1/beta`` gives the predicted error of inversion. The predicted error of
inpainting is how far the recovered photo departs from a smooth fill from the mask's
surroundings (what an inpainter can at best reproduce). A pixel is inverted where the first is
small, or small next to the second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from photo_eraser.engines.restore.arrays import (
    ROUNDING_NOISE,
    channel_mean,
    local_mean,
    noise_level,
    within,
)
from photo_eraser.engines.restore.estimate import Blend
from photo_eraser.engines.restore.params import ConfidenceParams
from photo_eraser.engines.restore.solver import GridSolver


def jackknife_groups(n: int, p: ConfidenceParams) -> list[np.ndarray]:
    """Image groups to leave out in turn: halves for larger batches, single images otherwise."""
    if n >= p.halves_from:
        return [np.arange(0, n, 2), np.arange(1, n, 2)]
    return [np.array([i]) for i in range(n)]


def jackknife_errors(
    values: np.ndarray,
    inv_betas: Sequence[np.ndarray],
    offsets: Sequence[np.ndarray],
    solver: GridSolver,
) -> np.ndarray:
    """Each image's standard error of its recovered photo (N x H x W, grey levels RMS over
    channels), from the fits without each group: ``1/beta`` (M) and ``u`` (3 x M) of each.

    ``values``: the batch on the solver's nodes (3 x N x M).
    """
    g = len(inv_betas)
    if g == 2:
        # Two groups: both deviations from the mean are half the difference.
        dev = values * (inv_betas[0] - inv_betas[1]) - (offsets[0] - offsets[1])[:, None, :]
        var = np.einsum("cnm,cnm->nm", dev, dev) / 12.0
    else:
        mean_ib, mean_u = np.mean(inv_betas, axis=0), np.mean(offsets, axis=0)
        var = np.zeros(values.shape[1:], dtype=np.float32)
        for ib, ug in zip(inv_betas, offsets, strict=True):
            dev = values * (ib - mean_ib) - (ug - mean_u)[:, None, :]
            var += np.einsum("cnm,cnm->nm", dev, dev) / 3.0
        var *= (g - 1) / g
    return np.stack([solver.scatter(np.sqrt(v), 0.0) for v in var])


@dataclass(frozen=True)
class _FillStep:
    """One pass of the smooth fill: blur width, known pixels, pixels it fills."""

    sigma: float
    known: np.ndarray
    fill: np.ndarray
    density: np.ndarray


class InversionGate:
    """Decides, per image, which grid pixels of the mask are inverted rather than inpainted.

    ``domain``: the mask on the grid; ``valid``: grid pixels on every image (see
    ``GridSolver``). The smooth fill's passes and where the images' noise is measured (off the
    mask, away from the grid's border) are the same for every image, so they are set up once.
    """

    def __init__(self, domain: np.ndarray, valid: np.ndarray, p: ConfidenceParams) -> None:
        self.p = p
        outside = ~within(domain, 1)
        outside[:1], outside[-1:], outside[:, :1], outside[:, -1:] = False, False, False, False
        self.outside = outside & valid
        self.plan = _fill_plan(domain, valid)

    def invertible(self, crop: np.ndarray, blend: Blend, errors: np.ndarray) -> np.ndarray:
        """Grid pixels (HxW bool) where inverting is predicted to beat inpainting in one image:
        ``crop`` its pixels on the grid, ``errors`` its jackknife errors."""
        grey = channel_mean(crop)
        # After an exact fit the images are lossless: rounding to whole grey levels is the only
        # noise added after the mark (the photo's own fine texture is not noise here).
        noise = ROUNDING_NOISE if blend.exact else noise_level(grey, self.outside)
        inv_err2 = local_mean(errors**2) + (noise / blend.beta) ** 2
        # The blend is linear per channel, so the grey recovered photo is the inverted grey.
        recovered = grey / blend.beta - channel_mean(blend.u)
        detail2 = local_mean((recovered - self._smooth_fill(recovered)) ** 2)
        fill_err2 = np.maximum(detail2 - inv_err2, 0.0)
        return inv_err2 <= np.maximum(self.p.max_error**2, self.p.error_ratio**2 * fill_err2)

    def _smooth_fill(self, image: np.ndarray) -> np.ndarray:
        """A smooth fill of the mask (grey HxW) from the pixels around it (normalised
        convolution at growing widths)."""
        out = image.copy()
        for step in self.plan:
            num = cv2.GaussianBlur(out * step.known, (0, 0), step.sigma)
            out[step.fill] = num[step.fill] / step.density[step.fill]
        return out


def _fill_plan(domain: np.ndarray, valid: np.ndarray) -> list[_FillStep]:
    """The passes filling ``domain`` from the ``valid`` pixels outside it (masks only)."""
    steps = []
    known = (~domain & valid).astype(np.float32)
    for sigma in (3.0, 9.0, 27.0):
        density = cv2.GaussianBlur(known, (0, 0), sigma)
        fill = domain & (density > 0.05)
        steps.append(_FillStep(sigma, known, fill, density))
        known = np.where(fill, 1.0, known).astype(np.float32)
        domain = domain & ~fill
        if not domain.any():
            break
    return steps
