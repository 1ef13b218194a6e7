"""PatchMatch inpainting (Barnes et al., SIGGRAPH 2009): fills holes with texture copied from
the pixels around them, so grass stays grass instead of Telea's smear. Weight-free.

The native code is the ``pypatchmatch`` wheel (MIT, InvokeAI's build of Jiayuan Mao's
PyPatchMatch). It runs on crops, so the cost follows the mask, not the image: masked pixels
less than ``2 * GROUP_GAP`` apart form a group (a line of text is one), and each group's crop
is its holes' box grown by its smaller side, between ``MIN_CONTEXT`` and ``MAX_CONTEXT``
pixels. Measured while choosing (docs/engines.md): growing by the larger side instead (up to
256 px, so a caption's crop spans the image) gave the same texture ratio at twice the time on
a 1920x1080 caption; a fixed 24 px lost 0.2 dB.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np

from photo_eraser.engines.base import EngineSetup, InpaintingEngine, mask_bbox

PATCH_RADIUS = 3
"""Compared patches are 7x7: larger ones follow larger structures but cost far more."""
GROUP_GAP = 24
"""Holes closer than twice this share a crop."""
CONTEXT_SCALE = 1.0
"""A group's crop grows by this times its smaller side (more texture to copy)..."""
MIN_CONTEXT = 24
"""...by at least this many pixels..."""
MAX_CONTEXT = 64
"""...and at most this many: past it the context mostly slows the search down."""
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


def groups(mask: np.ndarray, gap: int) -> list[tuple[int, int, int, int]]:
    """Boxes ``(y0, y1, x0, x1)`` of the masked pixels of each group: pixels less than
    ``2 * gap`` apart are in one group."""
    box = mask_bbox(mask, pad=gap)
    if box is None:
        return []
    y, _, x, _ = box
    holes = np.ascontiguousarray(mask[box[0] : box[1], box[2] : box[3]]).view(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * gap + 1, 2 * gap + 1))
    joined = cv2.dilate(holes, kernel) if gap > 0 else holes
    count, labels, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    out = []
    for label in range(1, count):
        left, top, width, height, _ = (int(v) for v in stats[label])
        window = (slice(top, top + height), slice(left, left + width))
        own = (labels[window] == label) & (holes[window] > 0)
        oy0, oy1, ox0, ox1 = mask_bbox(own) or (0, 0, 0, 0)
        out.append((y + top + oy0, y + top + oy1, x + left + ox0, x + left + ox1))
    return out


def context_box(
    hole: tuple[int, int, int, int], shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    """The crop PatchMatch searches for one group (a box of ``groups``), clamped."""
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
    reach = max(GROUP_GAP, MAX_CONTEXT)
    """Groups are joined within ``GROUP_GAP`` of the mask; each searches ``MAX_CONTEXT`` around."""

    def __init__(self, patch_radius: int = PATCH_RADIUS) -> None:
        self.patch_radius = patch_radius

    def restore_in_place(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        for image, mask in zip(images, masks, strict=True):
            self.fill(image, mask)

    def fill(self, image: np.ndarray, mask: np.ndarray) -> None:
        """Fill ``mask`` in ``image`` (RGB uint8, written in place), one crop per group."""
        library = _library()
        # The crop of one group may reach into another group's holes: those are filled in
        # that crop too (never used as a source), and only the group's own box is kept.
        for hole in groups(mask, GROUP_GAP):
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
