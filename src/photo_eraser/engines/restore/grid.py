"""Steps 1-2: the common grid every image is resampled onto, and the alignment of the marks.

The grid is the reference mask's bounding box plus a margin (the largest mask's), scaled down
for huge masks. Each image is placed on it by an affine map (a scale and an offset; exactly a
shift when the image has the reference's size), so images of different sizes are estimated
together. The median over the batch of the gradient magnitude shows the mark (photo edges
differ between images, the mark's do not); each image is shifted by a few grid pixels to best
match it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from photo_eraser.engines.base import mask_bbox
from photo_eraser.engines.restore.arrays import batch_median, within
from photo_eraser.engines.restore.params import GridParams


@dataclass(frozen=True)
class Placement:
    """Where grid pixel ``(gy, gx)`` lies in one image: ``y = sy*(gy+dy) + oy``, same for x."""

    sy: float
    sx: float
    oy: float
    ox: float
    dy: int = 0
    dx: int = 0

    def shifted(self, dy: int, dx: int) -> Placement:
        return Placement(self.sy, self.sx, self.oy, self.ox, dy, dx)

    def grid_to_image(self) -> np.ndarray:
        """Affine matrix taking grid coordinates to image coordinates."""
        return np.array(
            [
                [self.sx, 0.0, self.sx * self.dx + self.ox],
                [0.0, self.sy, self.sy * self.dy + self.oy],
            ]
        )

    def image_to_grid(self, y0: int, x0: int) -> np.ndarray:
        """Affine matrix taking coordinates of a crop starting at ``(y0, x0)`` to the grid."""
        m = self.grid_to_image()
        return np.array(
            [
                [1.0 / m[0, 0], 0.0, (x0 - m[0, 2]) / m[0, 0]],
                [0.0, 1.0 / m[1, 1], (y0 - m[1, 2]) / m[1, 1]],
            ]
        )


@dataclass(frozen=True)
class Frame:
    """Where an image array handed to the engine lies in its image: its top-left corner and the
    whole image's size (``Engine.restore_parts``: the engine may be given a part of each)."""

    top: int
    left: int
    height: int
    width: int

    def cut(self, pixels: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The image's pixels ``[y0:y1, x0:x1]`` (image coordinates) from the array ``pixels``."""
        y0, y1, x0, x1 = y0 - self.top, y1 - self.top, x0 - self.left, x1 - self.left
        if y0 < 0 or x0 < 0 or y1 > pixels.shape[0] or x1 > pixels.shape[1]:
            # Slicing would clamp silently and give other pixels: a window too small is a bug.
            raise ValueError("the restore engine reads beyond the part of an image it was given")
        return pixels[y0:y1, x0:x1]


def reach(mask: np.ndarray, p: GridParams) -> int:
    """How far (image pixels) beyond the bounding box of ``mask`` the grid of a batch of images
    of one size under that mask reads: its margin, the largest alignment shift, and the two or
    three pixels of the resampling (``extract``), with a pixel to spare."""
    scale = _scale(mask, p)
    margin = int(np.ceil((p.align_radius + 4) / scale))
    return margin + int(np.ceil(p.align_rounds * p.align_radius / scale)) + 6


def _scale(mask: np.ndarray, p: GridParams) -> float:
    return min(1.0, float(np.sqrt(p.max_grid_pixels / max(1, int(mask.sum())))))


@dataclass
class Grid:
    """The common grid: its shape, the reference mask on it, and each image's placement."""

    shape: tuple[int, int]
    domain: np.ndarray
    """The reference mask on the grid (HxW bool), two pixels off the grid's border."""
    placements: dict[int, Placement]


def common_grid(
    masks: Sequence[np.ndarray], ref: int, candidates: Sequence[int], p: GridParams
) -> Grid | None:
    """The grid around the reference mask's padded box, scaled down if the mask is huge;
    ``None`` if the mask vanishes on it."""
    rmask = masks[ref]
    scale = _scale(rmask, p)
    pad = int(np.ceil((p.align_radius + 4) / scale))
    box = mask_bbox(rmask)
    assert box is not None
    y0, y1, x0, x1 = box
    y0, x0, y1, x1 = y0 - pad, x0 - pad, y1 + pad, x1 + pad
    gh = max(1, round((y1 - y0) * scale))
    gw = max(1, round((x1 - x0) * scale))
    rh, rw = rmask.shape
    placements = {}
    for i in candidates:
        h, w = masks[i].shape
        fy, fx = h / rh, w / rw
        # Pixel centres: ref y = y0 + (gy+0.5)/scale - 0.5; image y = (ref y+0.5)*fy - 0.5.
        placements[i] = Placement(
            sy=fy / scale,
            sx=fx / scale,
            oy=(y0 + 0.5 / scale) * fy - 0.5,
            ox=(x0 + 0.5 / scale) * fx - 0.5,
        )
    dom = cv2.warpAffine(
        rmask.astype(np.float32),
        placements[ref].grid_to_image(),
        (gw, gh),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
    )
    domain = dom > 0.5
    domain[:2], domain[-2:], domain[:, :2], domain[:, -2:] = False, False, False, False
    if not domain.any():
        return None
    return Grid((gh, gw), domain, placements)


def align(
    images: Sequence[np.ndarray],
    frames: Sequence[Frame],
    grid: Grid,
    crops: dict[int, np.ndarray],
    p: GridParams,
) -> dict[int, tuple[int, int]]:
    """Shift each image's crop (a few grid pixels) so its mark lines up with the batch's;
    updates ``grid.placements`` and ``crops``, and returns the shifts made."""
    r = p.align_radius
    if r <= 0:
        return {}
    placements, grid_shape = grid.placements, grid.shape
    near = within(grid.domain, 2)
    box = mask_bbox(near)
    assert box is not None
    y0, y1, x0, x1 = box
    y0, x0 = max(y0, r), max(x0, r)
    y1, x1 = min(y1, grid_shape[0] - r), min(x1, grid_shape[1] - r)
    # Prefer no shift unless another one matches clearly better.
    bias = np.full((2 * r + 1, 2 * r + 1), -p.align_stay_bonus, dtype=np.float32)
    bias[r, r] = 0.0
    for _ in range(p.align_rounds):
        energy = {i: _gradient_energy(c) for i, c in crops.items()}
        template = batch_median(np.stack(list(energy.values())), axis=0)[y0:y1, x0:x1]
        if float(template.std()) < 1e-6:
            break
        moved = False
        for i, e in energy.items():
            score = cv2.matchTemplate(
                e[y0 - r : y1 + r, x0 - r : x1 + r], template, cv2.TM_CCOEFF_NORMED
            )
            best = int(np.argmax(score + bias))
            dy, dx = best // score.shape[1] - r, best % score.shape[1] - r
            if dy or dx:
                q = placements[i]
                placements[i] = q.shifted(q.dy + dy, q.dx + dx)
                crops[i] = extract(images[i], frames[i], placements[i], grid_shape)
                moved = True
        if not moved:
            break
    return {i: (q.dy, q.dx) for i, q in placements.items() if q.dy or q.dx}


def extract(
    image: np.ndarray, frame: Frame, placement: Placement, grid_shape: tuple[int, int]
) -> np.ndarray:
    """The image resampled on the grid (float32 HxWx3); exact when the placement is a shift.
    ``image``: the array at ``frame`` of the image (all of it, or the part the engine asked
    for)."""
    gh, gw = grid_shape
    m = placement.grid_to_image()
    h, w = frame.height, frame.width
    # Only the part of the image the grid covers (plus the interpolation margin) is converted.
    ys = (m[1, 2], m[1, 1] * (gh - 1) + m[1, 2])
    xs = (m[0, 2], m[0, 0] * (gw - 1) + m[0, 2])
    y0, y1 = max(0, int(np.floor(min(ys))) - 2), min(h, int(np.ceil(max(ys))) + 3)
    x0, x1 = max(0, int(np.floor(min(xs))) - 2), min(w, int(np.ceil(max(xs))) + 3)
    m[0, 2] -= x0
    m[1, 2] -= y0
    return cv2.warpAffine(
        frame.cut(image, y0, y1, x0, x1).astype(np.float32),
        m,
        (gw, gh),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def on_image(frame: Frame, placement: Placement, grid_shape: tuple[int, int]) -> np.ndarray:
    """Grid pixels (HxW bool) that ``extract`` interpolates from the image's own pixels only."""
    gh, gw = grid_shape
    m = placement.grid_to_image()
    h, w = frame.height, frame.width
    y = m[1, 1] * np.arange(gh) + m[1, 2]
    x = m[0, 0] * np.arange(gw) + m[0, 2]
    eps = 1e-3
    rows = (y > -eps) & (y < h - 1 + eps)
    cols = (x > -eps) & (x < w - 1 + eps)
    return rows[:, None] & cols[None, :]


def _gradient_energy(crop: np.ndarray) -> np.ndarray:
    """Absolute horizontal plus vertical differences, summed over channels (HxW).

    Colour, not grey: a coloured mark can have the luminance of the photo under it.
    """
    gx = cv2.absdiff(crop[:, 1:], crop[:, :-1])
    gy = cv2.absdiff(crop[1:], crop[:-1])
    energy = np.zeros(crop.shape[:2], dtype=np.float32)
    energy[:, :-1] += cv2.transform(gx, np.ones((1, 3), np.float32))
    energy[:-1] += cv2.transform(gy, np.ones((1, 3), np.float32))
    return energy
