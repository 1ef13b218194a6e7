"""The weight-free fill of ``auto``: Telea where the surroundings are smooth, PatchMatch where
they have texture to continue, chosen per connected group of masked pixels.

Why this rule (``bench/fills.py``, docs/engines.md): on smooth surroundings Telea is 1.3 dB
better than PatchMatch (which copies JPEG grain into the hole) at a hundredth of the cost; on
texture Telea's fill is a smear (gradient ratio to the truth 0.4-0.7) where PatchMatch keeps
0.8-0.9 at about the same PSNR. Width did not change the verdict over the masks users paint (3
to 70 pixels wide), so there only the texture decides.

``restore``'s residue is another kind of mask: small groups left inside the pixels it
recovered (``bench/residue.py``). There a group whose every pixel is within 3 px of its border
goes to Telea: on the 20 x 1080p task batch that gave +0.9 dB over texture alone at the same
texture ratio (0.85) and 37-46 % less fill CPU; on smaller batches the same quality at 5-22 %
less.
No user-painted group of ``bench/fills.py`` is that thin, so its verdicts are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from photo_eraser.engines.base import (
    Engine,
    InpaintingEngine,
    Restored,
    mask_bbox,
)

RING = 10
"""How far around a group its texture is measured."""
RING_GAP = 3
"""Pixels next to the mask left out of the ring: JPEG halos of the mark and the mask's own
edge sit there and read as texture on a smooth sky."""
SMOOTH_TEXTURE = 12.0
"""Mean Sobel gradient magnitude (grey levels, 3x3 Sobel) in the ring below which a group is
smooth: Telea fills it. Measured: ``bench/fills.py --sweep``."""
THIN_GROUP = 3.0
"""Groups whose every pixel is at most this far from the group's border (``group_width``) go
to Telea whatever their texture. Swept on ``restore``'s residue (``bench/residue.py``): 3 had
the best PSNR on the task batch (4 was cheaper and 0.2 dB lower; 6 lost 1.3 dB)."""


def group_width(group: np.ndarray) -> float:
    """The largest (Euclidean) distance of a pixel of ``group`` (bool) to the
    nearest pixel outside it: 1 for a line one pixel wide, about half the width of a stroke."""
    padded = np.pad(group.view(np.uint8), 1)
    return float(cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).max())


def texture_energy(grey: np.ndarray, ring: np.ndarray) -> float:
    """Mean gradient magnitude of ``grey`` (float32) over the pixels of ``ring``."""
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    values = np.hypot(gx, gy)[ring]
    return float(values.mean()) if values.size else 0.0


def ring_around(group: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The pixels between ``RING_GAP`` and ``RING`` away from ``group`` and not within
    ``RING_GAP`` of any masked pixel (both bool arrays of one shape)."""
    outer = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RING + 1, 2 * RING + 1))
    inner = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RING_GAP + 1, 2 * RING_GAP + 1))
    near_group = cv2.dilate(group.view(np.uint8), outer) > 0
    near_mask = cv2.dilate(mask.view(np.uint8), inner) > 0
    return near_group & ~near_mask


def split_by_texture(
    image: np.ndarray,
    mask: np.ndarray,
    threshold: float = SMOOTH_TEXTURE,
    thin: float = THIN_GROUP,
) -> tuple[np.ndarray, np.ndarray]:
    """``(smooth, textured)``: the mask's groups whose ring texture is below ``threshold`` or
    whose width (``group_width``) is at most ``thin``, and the others. Both are full-size bool
    masks whose union is ``mask``."""
    smooth = np.zeros_like(mask)
    textured = np.zeros_like(mask)
    box = mask_bbox(mask, pad=RING + 1)
    if box is None:
        return smooth, textured
    y0, y1, x0, x1 = box
    sub = mask[y0:y1, x0:x1]
    grey = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    grey = grey.astype(np.float32)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(sub.view(np.uint8), connectivity=8)
    h, w = sub.shape
    for label in range(1, count):
        left, top, width, height, _ = (int(v) for v in stats[label])
        # The group's box grown by the ring (and a pixel for the Sobel), clamped to the crop.
        by0, by1 = max(0, top - RING - 1), min(h, top + height + RING + 1)
        bx0, bx1 = max(0, left - RING - 1), min(w, left + width + RING + 1)
        own = labels[by0:by1, bx0:bx1] == label
        if thin > 0 and group_width(own) <= thin:
            target = smooth
        else:
            ring = ring_around(own, np.ascontiguousarray(sub[by0:by1, bx0:bx1]))
            energy = texture_energy(grey[by0:by1, bx0:bx1], ring)
            target = smooth if energy < threshold else textured
        target[y0 + by0 : y0 + by1, x0 + bx0 : x0 + bx1] |= own
    return smooth, textured


class TextureAwareFill(Engine):
    """Fills each group of masked pixels with ``smooth`` (Telea) or ``textured`` (PatchMatch)
    by the texture around it; groups at most ``thin`` px wide (``group_width``) always go to
    ``smooth`` (0: texture alone). Reports the method of the textured engine when it filled any
    pixel of an image, else the smooth one's; its own name is the smooth engine's (what an
    image with nothing to fill reports)."""

    def __init__(
        self,
        smooth: InpaintingEngine,
        textured: InpaintingEngine,
        threshold: float = SMOOTH_TEXTURE,
        *,
        thin: float = THIN_GROUP,
        threads: int = 1,
    ) -> None:
        self.name = smooth.name
        self.smooth = smooth
        self.textured = textured
        self.threshold = threshold
        self.thin = thin
        # Texture is measured within ``RING`` of a group (and a pixel for the Sobel).
        reaches = (smooth.reach, textured.reach, RING + 1)
        self.reach = None if None in reaches else max(r for r in reaches if r is not None)
        self.threads = max(1, threads)
        """Images filled at once: each image's fill is its own, and Telea and PatchMatch
        release the GIL, so a batch's fills use every core (the same pixels as one by one)."""

    def restore(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        in_place: bool = False,
        lossless: Sequence[bool] | None = None,
    ) -> list[Restored]:
        outputs = list(images) if in_place else [image.copy() for image in images]
        pairs = list(zip(outputs, masks, strict=True))
        if self.threads == 1 or len(pairs) < 2:
            return [self._fill(out, mask) for out, mask in pairs]
        with ThreadPoolExecutor(min(self.threads, len(pairs)), "fill") as pool:
            return list(pool.map(lambda pair: self._fill(*pair), pairs))

    def _fill(self, out: np.ndarray, mask: np.ndarray) -> Restored:
        """Fill ``out`` where ``mask`` says, in place."""
        smooth, textured = split_by_texture(
            out, np.asarray(mask, dtype=bool), self.threshold, self.thin
        )
        # Telea first: PatchMatch then copies from no unfilled hole near its groups.
        if smooth.any():
            self.smooth.restore_in_place([out], [smooth])
        if textured.any():
            self.textured.restore_in_place([out], [textured])
        return Restored(out, self.textured.name if textured.any() else self.smooth.name)
