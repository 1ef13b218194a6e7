"""PatchMatch inpainting (Barnes et al., SIGGRAPH 2009): fills holes with texture copied from
the pixels around them, so grass stays grass instead of Telea's smear. Weight-free.

The native code is the ``pypatchmatch`` wheel (MIT, InvokeAI's build of Jiayuan Mao's
PyPatchMatch). It runs on crops: the masked pixels are grouped by dilating the mask by the
context margin, and each group's crop is its box grown by ``context`` (at least
``MIN_CONTEXT`` pixels, at most ``CONTEXT_SCALE`` times the group's own extent more), so the
cost follows the mask, not the image.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np

from photo_eraser.engines.base import EngineSetup, InpaintingEngine

PATCH_RADIUS = 3
"""Compared patches are 7x7: larger ones follow larger structures but cost far more."""
MIN_CONTEXT = 24
"""Pixels of context around every group of holes, whatever its size."""
CONTEXT_SCALE = 1.0
"""A group's crop grows by this times its own extent on each side (more texture to copy)."""
MAX_CONTEXT = 256
"""Past this the context only slows the search down."""
SEED = 0
"""The randomised search starts from this seed: equal inputs give equal outputs."""

_seed_lock = threading.Lock()
_seeded = False


def unavailable_reason(setup: EngineSetup) -> str | None:
    """Why PatchMatch cannot run here (for users), or None: its native library must load."""
    try:
        import patchmatch
    except ImportError:
        return "engine 'patchmatch' needs the pypatchmatch package: pip install pypatchmatch"
    if not patchmatch.patchmatch_available:
        return "engine 'patchmatch': the pypatchmatch native library failed to load on this host"
    return None


def _library():  # type: ignore[no-untyped-def]
    """The loaded ``patchmatch`` module, seeded once per process."""
    global _seeded
    import patchmatch

    with _seed_lock:
        if not _seeded:
            patchmatch.set_random_seed(SEED)
            _seeded = True
    return patchmatch


def groups(mask: np.ndarray, margin: int) -> list[tuple[int, int, int, int]]:
    """Boxes ``(y0, y1, x0, x1)`` of the groups of masked pixels less than ``2*margin`` apart."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    cols = np.flatnonzero(mask.any(axis=0))
    y, x = int(rows[0]), int(cols[0])
    sub = mask[y : int(rows[-1]) + 1, x : int(cols[-1]) + 1].astype(np.uint8)
    if margin > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * margin + 1, 2 * margin + 1))
        sub = np.asarray(cv2.dilate(sub, kernel), dtype=np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(sub, connectivity=8)
    return [
        (y + int(top), y + int(top + height), x + int(left), x + int(left + width))
        for left, top, width, height, _ in stats[1:count]
    ]


def context_box(
    hole: tuple[int, int, int, int], shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """The crop PatchMatch searches for one group: its box grown by its context, clamped."""
    y0, y1, x0, x1 = hole
    grow = int(min(MAX_CONTEXT, max(MIN_CONTEXT, CONTEXT_SCALE * min(y1 - y0, x1 - x0))))
    return (
        max(0, y0 - grow),
        min(shape[0], y1 + grow),
        max(0, x0 - grow),
        min(shape[1], x1 + grow),
    )


class PatchMatchEngine(InpaintingEngine):
    """Texture-synthesising inpainting. Good on blobs and textured areas; slower than Telea."""

    name = "patchmatch"

    def __init__(self, patch_radius: int = PATCH_RADIUS) -> None:
        self.patch_radius = patch_radius

    def restore_in_place(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        for image, mask in zip(images, masks, strict=True):
            self.fill(image, mask)

    def fill(self, image: np.ndarray, mask: np.ndarray) -> None:
        """Fill ``mask`` in ``image`` (RGB uint8, written in place), one crop per group."""
        library = _library()
        # Groups are split where their holes are further apart than two minimum contexts;
        # the crop of one group may still reach into another's holes: those are filled in
        # that crop too (never used as a source), and only the group's own are kept.
        for hole in groups(mask, MIN_CONTEXT):
            y0, y1, x0, x1 = context_box(hole, mask.shape)
            crop_mask = np.ascontiguousarray(mask[y0:y1, x0:x1])
            # PatchMatch compares channels, in whatever order: RGB in, RGB out.
            filled = library.inpaint(
                np.ascontiguousarray(image[y0:y1, x0:x1]),
                crop_mask,
                patch_size=self.patch_radius,
            )
            hy0, hy1, hx0, hx1 = hole
            own = np.zeros_like(crop_mask)
            own[hy0 - y0 : hy1 - y0, hx0 - x0 : hx1 - x0] = True
            own &= crop_mask
            image[y0:y1, x0:x1][own] = filled[own]
