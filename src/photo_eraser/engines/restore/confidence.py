"""Step 8, confidence: per image and pixel, whether inverting beats inpainting.

The jackknife errors of the estimate (``jackknife.py``, computed with the fit) plus the image's noise
amplified by ``1/beta`` gives the predicted error of inversion. The predicted error of
inpainting is how far the recovered photo departs from a smooth fill from the mask's
surroundings (what an inpainter can at best reproduce). A pixel is inverted where the first is
small, or small next to the second.
"""

from __future__ import annotations

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
