"""Step 9, three lossless images: the batch's exact fit and the one-image fits (``single.py``)
both recover them; each image keeps the pixels of the one that leaves less of the mark's
outline.

With three images the exact fit (step 6) is good at a mark's anti-aliased outline (text, thin
logos), where the one-image model, one colour and one opacity over the mark's body, is
weakest. Over a large solid body it is the other way round: three images pin the opacity down
to a few per cent only, while one colour and one opacity fit it almost exactly. A wrong
opacity, colour or matte leaves a step at the mark's outline in the inverted photo, so each
image takes the recovery with the less edge energy there, and the other one fills its gaps
(pixels only that one found confident). Measured on the one-to-three-image grid: see
docs/restore-history.md.
"""

from __future__ import annotations

import cv2
import numpy as np

from photo_eraser.engines.restore.arrays import outline
from photo_eraser.engines.restore.estimate import Recovery
from photo_eraser.engines.restore.grid import Frame


def better_of_two(
    image: np.ndarray, frame: Frame, batch: Recovery, single: Recovery, min_change: float
) -> tuple[Recovery, bool]:
    """One image's recovery from two over the same box (image coordinates): the pixels of the
    one that leaves less edge energy at the mark's outline where it is usable, the other's
    where only that one is. ``min_change``: the least change (grey levels summed over the
    channels) that marks a pixel as under the mark. Also says whether the batch's pixels won."""
    if batch.box != single.box:
        raise ValueError("the two recoveries must cover the same box")
    y0, y1, x0, x1 = batch.box
    observed = frame.cut(image, y0, y1, x0, x1)
    usable = batch.usable | single.usable
    batch_pixels = _with_gaps(batch, single)
    single_pixels = _with_gaps(single, batch)
    # The same band for both: the outlines of what either inversion changed.
    band = _moved_outline(batch_pixels, observed, usable, min_change)
    band |= _moved_outline(single_pixels, observed, usable, min_change)
    band[[0, -1], :] = False  # the Sobel kernel reaches beyond the box there
    band[:, [0, -1]] = False
    batch_energy = _edge_energy(batch_pixels, observed, usable, band)
    batch_won = batch_energy <= _edge_energy(single_pixels, observed, usable, band)
    return Recovery(batch.box, batch_pixels if batch_won else single_pixels, usable), batch_won


def _with_gaps(main: Recovery, gaps: Recovery) -> np.ndarray:
    """``main``'s pixels, and ``gaps``' where only that one is usable (its unmarked pixels
    included: they are kept as they are, as every recovery keeps them)."""
    pixels = main.pixels.copy()
    take = gaps.usable & ~main.usable
    pixels[take] = gaps.pixels[take]
    return pixels


def _moved_outline(
    pixels: np.ndarray, observed: np.ndarray, usable: np.ndarray, min_change: float
) -> np.ndarray:
    """The outline (one pixel either side) of the pixels the inversion moved: the mark's."""
    return outline(usable & (np.abs(pixels.astype(np.int16) - observed).sum(axis=-1) > min_change))


def _edge_energy(
    pixels: np.ndarray, observed: np.ndarray, usable: np.ndarray, band: np.ndarray
) -> float:
    """Squared Sobel gradients summed over ``band``, with the recovered pixels where usable
    and the observed ones elsewhere."""
    crop = np.where(usable[..., None], pixels, observed).astype(np.float32)
    gx = cv2.Sobel(crop, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(crop, cv2.CV_32F, 0, 1)
    return float((gx**2 + gy**2).sum(axis=-1)[band].sum())
