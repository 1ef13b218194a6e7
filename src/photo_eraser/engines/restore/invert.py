"""Step 8, the inversion: ``I = (J - c) / beta`` on each image where it is predicted to beat
inpainting, with the grid's maps resampled onto the image's own pixels over the mask's box."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from photo_eraser.engines.restore.confidence import InversionGate
from photo_eraser.engines.restore.edges import in_threads
from photo_eraser.engines.restore.estimate import Estimate, Recovery
from photo_eraser.engines.restore.grid import Frame, Grid, Placement
from photo_eraser.engines.restore.params import RestoreParams
from photo_eraser.engines.restore.pixels import confident_opacity, unmarked
from photo_eraser.engines.restore.solver import GridSolver

Box = tuple[int, int, int, int]


def invert_batch(
    images: Sequence[np.ndarray],
    frames: Sequence[Frame],
    boxes: Sequence[Box | None],
    grid: Grid,
    est: Estimate,
    whole: GridSolver,
    with_mark: np.ndarray,
    p: RestoreParams,
    threads: int = 1,
) -> list[Recovery | None]:
    """Each image of the estimate inverted where that is predicted to beat inpainting
    (``None`` for the others); masked pixels the mark does not reach are kept as they are.
    ``images``: the arrays at ``frames`` of the images; ``boxes`` and the recoveries' boxes are
    in image coordinates.

    ``whole``: the solver of the whole mask; ``with_mark``: the mask's pixels that belong to
    the mark or its surroundings (step 7). Masked pixels in other parts of the mask, off the
    estimated domain (a mask unlike the others), or off an image of the batch (not estimated),
    are not usable: the fallback inpaints them. Grid pixels off the mask count as usable: an
    image's pixels at the mask's edge are resampled from both sides of it (a scaled grid,
    another size). The images are inverted ``threads`` at a time.
    """
    blend = est.blend
    confident = confident_opacity(blend, p.pixels)
    kept = unmarked(blend, confident, p.pixels)
    beta = np.where(kept, 1.0, blend.beta).astype(np.float32)
    offset = np.where(kept[..., None], 0.0, blend.offset).astype(np.float32)
    gate = InversionGate(whole.domain, whole.valid, p.confidence)
    known = (with_mark | ~whole.domain) & est.solver.known & whole.known

    def invert(k: int) -> Recovery:
        i = est.images[k]
        ok = gate.invertible(est.stack[k], blend, est.errors[k]) & confident
        box = boxes[i]
        assert box is not None
        usable = (ok | kept) & known
        return _invert_on_image(images[i], frames[i], box, grid.placements[i], beta, offset, usable)

    out: list[Recovery | None] = [None] * len(images)
    recovered = in_threads(invert, range(len(est.images)), threads)
    for i, rec in zip(est.images, recovered, strict=True):
        out[i] = rec
    return out


def _invert_on_image(
    image: np.ndarray,
    frame: Frame,
    box: Box,
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
    crop = frame.cut(image, y0, y1, x0, x1).astype(np.float32)
    pixels = np.clip(np.rint((crop - c) / b[..., None]), 0, 255).astype(np.uint8)
    return Recovery(box=box, pixels=pixels, usable=ok > 0.999)


def cut_to_box(rec: Recovery, box: Box) -> Recovery:
    """A recovery over a larger box (the one-image fit's padded one) cut to ``box``."""
    y0, y1, x0, x1 = box
    ry0, _, rx0, _ = rec.box
    sl = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
    return Recovery(box=box, pixels=rec.pixels[sl], usable=rec.usable[sl])
