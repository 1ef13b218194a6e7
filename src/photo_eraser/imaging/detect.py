"""Watermark detection from the batch (the ``"mask": "auto"`` extension).

A batch that shares one watermark carries its own mask: the same edges at the same place in
every photo, while the photos' own edges differ from image to image. Per pixel, a low
quantile over the batch of the gradient magnitude keeps what (nearly) every image shows there
and drops what only some do (Dekel, Rubinstein, Liu, Freeman, "On the Effectiveness of
Visible Watermarks", CVPR 2017, use the median; with few images a lower rank rejects photo
edges much better).

Two passes. A coarse one on every image reduced to a small working frame finds whether and
roughly where a shared mark is; a fine one, at the reference image's resolution but only
around what the coarse pass found, aligns the images (marks shifted by a few pixels), draws
the mark's edges with a hysteresis threshold set against the surrounding background, fills
the solid parts between them (strokes, bars), and widens the result by a small margin, as a
user would paint it.

Images of different sizes are stretched onto the reference frame (the largest image), as the
mask is stretched back onto each of them: a mark that scales with the image is found once.
Arrays: images RGB uint8 HxWx3; the mask bool HxW in the reference frame, True = restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

__all__ = ["DetectParams", "Detection", "detect_watermark"]


@dataclass(frozen=True)
class DetectParams:
    """Every threshold of the detector, with its reason (measured: docs/restore-quality.md)."""

    min_images: int = 3
    """Fewer images cannot tell a shared mark from two photos' coinciding edges."""
    coarse_width: int = 480
    """Width of the coarse pass's frame: enough for text strokes of a 2% mark at 1920 px to
    show, small enough to cost a few ms an image."""
    fine_max_pixels: int = 2_000_000
    """The fine pass's region is scaled down beyond this many pixels (huge marks)."""
    rank_share: float = 0.3
    """The per-pixel rank taken over the batch, as a share of the images (0.5 = median): the
    mark must show in ~70% of the images; faint or same-coloured spots in a few are tolerated."""
    high: float = 3.0
    """Hysteresis: a mark edge is this many times the background's 90th percentile ..."""
    low: float = 1.6
    """... and its continuation (connected to a strong edge) this many times."""
    min_high: float = 6.0
    """Floor of the high threshold (gradient energy, grey levels summed over x, y and the
    three channels): JPEG noise on flat photos must not pass."""
    min_area_share: float = 0.0003
    """A mark covers at least this share of the coarse frame (smaller: noise)."""
    null_margin: float = 1.6
    """A mark's strongest edge must be this many times the strongest spot of the scrambled
    batch (each image moved elsewhere: the photos' chance agreements, no shared mark)."""
    scrambles: int = 4
    """Scrambled versions of the batch whose strongest spot sets the bar."""
    reach: float = 0.1
    """Weaker edges count as part of the mark within this share of the frame's longer side
    of one that clears the bar."""
    flat_energy: float = 1600.0
    """Structure-tensor trace (squared Sobel gradients, 16x grey levels squared) below which a
    pixel counts as flat: its orientation says little."""
    align_radius: int = 4
    """Marks shifted by up to this many reference pixels are aligned."""
    fill_share: float = 0.02
    """Enclosed gaps between edges up to this inscribed radius (a share of the reference
    frame's longer side, at least ``fill_min`` pixels) are the solid inside of a stroke or bar
    and are filled; wider ones (a ring's hole) are not."""
    fill_min: float = 4.0
    margin: int = 1
    """The mask reaches this many pixels beyond the mark (as a tight hand-painted mask)."""


@dataclass
class Detection:
    """What the detector found: a mask (None if no shared mark), how sure, and why not."""

    mask: np.ndarray | None
    """bool HxW in the reference frame (the largest image's size); None if nothing was found."""
    confidence: float
    """0..1, from ``contrast``: 0.5 at the acceptance limit, 1 at twice it (0 if none)."""
    reason: str
    """Why no mask was returned ("" when one was)."""
    images: int
    shape: tuple[int, int]
    """(height, width) of the reference frame."""
    contrast: float = 0.0
    """The strongest edge found over the strongest of the scrambled batch (above
    ``null_margin``: a mark)."""
    shifts: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Images realigned, by (dy, dx) in reference pixels."""

    @property
    def found(self) -> bool:
        return self.mask is not None


def no_mark_reason(images: int) -> str:
    """What a user reads when the batch carries no shared watermark."""
    return f"no shared watermark found in {images} images; send a mask"


def detect_watermark(images: Sequence[np.ndarray], params: DetectParams | None = None) -> Detection:
    """The watermark shared by ``images`` (RGB uint8 HxWx3, any sizes), as a mask in the
    frame of the largest image."""
    p = params or DetectParams()
    n = len(images)
    ref = max(range(n), key=lambda i: images[i].shape[0] * images[i].shape[1]) if n else 0
    shape = (images[ref].shape[0], images[ref].shape[1]) if n else (0, 0)
    if n < p.min_images:
        reason = (
            f"{no_mark_reason(n)} (automatic detection needs at least {p.min_images} images "
            "carrying the same mark)"
        )
        return Detection(None, 0.0, reason, n, shape)
    hr, wr = shape
    scale = min(1.0, p.coarse_width / wr)
    ch, cw = max(8, round(hr * scale)), max(8, round(wr * scale))
    small = [_resized(im, cw, ch) for im in images]
    coarse = np.stack([_spread_out(_energy(im)) for im in small])
    score = _score(small, coarse, p)
    # The same batch with each image moved elsewhere: the photos' chance agreements stay, a
    # shared mark no longer lines up. A mark must stand out above what that shows.
    chance = 1e-3
    for turn in range(p.scrambles):
        moved = _scrambled(small, turn)
        null = _score(moved, np.stack([_spread_out(_energy(im)) for im in moved]), p)
        chance = max(chance, float(_peak(null).max()))
    peak = _peak(score)
    background = _background(score, None)
    high = max(p.high * background, p.min_high)
    edges = _hysteresis(score, peak, high, p.low * background)
    edges = _drop_small(edges, max(4, round(p.min_area_share * ch * cw)))
    edges = _near_sure(edges, peak, p.null_margin * chance, p.reach * max(ch, cw))
    contrast = float(peak[edges].max() if edges.any() else peak.max()) / chance
    if not edges.any():
        return Detection(None, 0.0, no_mark_reason(n), n, shape, contrast)
    mask, shifts = _fine(images, shape, edges, (ch, cw), p)
    if mask is None:
        return Detection(None, 0.0, no_mark_reason(n), n, shape, contrast)
    confidence = min(1.0, 0.5 * contrast / p.null_margin)
    return Detection(mask, round(confidence, 3), "", n, shape, contrast, shifts)


def _fine(
    images: Sequence[np.ndarray],
    shape: tuple[int, int],
    coarse_edges: np.ndarray,
    coarse_shape: tuple[int, int],
    p: DetectParams,
) -> tuple[np.ndarray | None, dict[int, tuple[int, int]]]:
    """The mask at the reference resolution around the coarse find; the shifts made."""
    hr, wr = shape
    ch, cw = coarse_shape
    ys, xs = np.nonzero(coarse_edges)
    fy, fx = hr / ch, wr / cw
    fill = max(p.fill_min, p.fill_share * max(hr, wr))
    pad = p.align_radius + p.margin + 2 * round(fill) + round(2 * max(fy, fx)) + 8
    y0, y1 = max(0, int(ys.min() * fy) - pad), min(hr, int((ys.max() + 1) * fy) + pad)
    x0, x1 = max(0, int(xs.min() * fx) - pad), min(wr, int((xs.max() + 1) * fx) + pad)
    # The fine frame: the region at the reference resolution, or scaled down if huge.
    s = min(1.0, float(np.sqrt(p.fine_max_pixels / max(1, (y1 - y0) * (x1 - x0)))))
    gh, gw = max(4, round((y1 - y0) * s)), max(4, round((x1 - x0) * s))
    r = max(1, round(p.align_radius * s))
    crops = [_region(im, shape, (y0, y1, x0, x1), (gh + 2 * r, gw + 2 * r), r / s) for im in images]
    energy = np.stack([_energy(c) for c in crops])
    shifts = _alignment(energy, r, p.rank_share)
    h, w = gh, gw
    crops = [
        c[r + dy : r + dy + h, r + dx : r + dx + w]
        for c, (dy, dx) in ((crops[i], shifts.get(i, (0, 0))) for i in range(len(crops)))
    ]
    energy = np.stack([_energy(c) for c in crops])
    score = _score(crops, energy, p)
    near = cv2.resize(
        coarse_edges[
            int(y0 / fy) : int(np.ceil(y1 / fy)), int(x0 / fx) : int(np.ceil(x1 / fx))
        ].astype(np.uint8),
        (gw, gh),
        interpolation=cv2.INTER_NEAREST,
    )
    around = cv2.dilate(near, np.ones((3, 3), np.uint8), iterations=max(2, round(2 * fy * s)))
    background = _background(score, around == 0)
    edges = _hysteresis(
        score, _peak(score), max(p.high * background, p.min_high), p.low * background
    )
    # Only what the coarse pass vouched for (its noise-free components), widened a little.
    edges &= around > 0
    edges = _drop_small(edges, 6)
    if not edges.any():
        return None, {}
    solid = _filled(edges, fill * s)
    margin = max(1, round((p.margin + _spread(shifts)) * s))
    solid = cv2.dilate(solid.astype(np.uint8), _disc(margin)) > 0
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = cv2.resize(
        solid.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST
    ).astype(bool)
    scaled = {i: (round(dy / s), round(dx / s)) for i, (dy, dx) in shifts.items()}
    return mask, scaled


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _region(
    image: np.ndarray,
    shape: tuple[int, int],
    box: tuple[int, int, int, int],
    out: tuple[int, int],
    pad: float,
) -> np.ndarray:
    """The reference frame's ``box`` (plus ``pad`` reference pixels each side) of ``image``
    stretched onto the reference frame, resampled to ``out`` (h, w)."""
    hr, wr = shape
    h, w = image.shape[:2]
    y0, y1, x0, x1 = box
    ky, kx = h / hr, w / wr
    # Source rectangle in the image's own pixels (pixel edges, not centres).
    sy0, sy1 = (y0 - pad) * ky, (y1 + pad) * ky
    sx0, sx1 = (x0 - pad) * kx, (x1 + pad) * kx
    oh, ow = out
    ay, ax = (sy1 - sy0) / oh, (sx1 - sx0) / ow
    # Output pixel centre j -> source x = sx0 + (j + 0.5) * ax - 0.5.
    m = np.array([[ax, 0.0, sx0 + 0.5 * ax - 0.5], [0.0, ay, sy0 + 0.5 * ay - 0.5]])
    shrink = max(ax, ay) > 1.5
    src = image
    if shrink:  # average before sampling, so a reduced crop is not aliased
        k = int(round(max(ax, ay)))
        src = cv2.blur(image, (k, k))
    return cv2.warpAffine(
        src,
        m,
        (ow, oh),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def _energy(image: np.ndarray) -> np.ndarray:
    """Gradient energy, float32 HxW: |dx| + |dy| summed over the colour channels (colour, not
    grey: a coloured mark can have the luminance of the photo under it)."""
    im = image.astype(np.int16)
    e = np.zeros(im.shape[:2], np.float32)
    e[:, :-1] += np.abs(im[:, 1:] - im[:, :-1]).sum(axis=2, dtype=np.int16)
    e[:-1] += np.abs(im[1:] - im[:-1]).sum(axis=2, dtype=np.int16)
    return e


def _spread_out(energy: np.ndarray) -> np.ndarray:
    """Each pixel's energy as the largest of its 3x3 neighbourhood: in the coarse pass, marks
    a pixel or so apart (shifted a few pixels in the full image) still coincide."""
    return cv2.dilate(energy, np.ones((3, 3), np.uint8))


def _rank(stack: np.ndarray, share: float) -> np.ndarray:
    """Per pixel, the value at rank ``share`` (0 = the smallest) over the batch axis."""
    n = stack.shape[0]
    k = min(n - 1, max(0, int(np.floor(share * (n - 1) + 0.5))))
    return np.partition(stack, k, axis=0)[k]


def _background(score: np.ndarray, where: np.ndarray | None) -> float:
    """The background's level: the 90th percentile of the score (over ``where``)."""
    values = score if where is None else score[where]
    if values.size == 0:
        values = score.ravel()
    return max(1.0, float(np.percentile(values, 90)))


def _hysteresis(score: np.ndarray, peak: np.ndarray, high: float, low: float) -> np.ndarray:
    """Pixels whose score is above ``low``, connected (8-neighbours) to one whose ``peak`` is
    above ``high``."""
    weak = score > low
    n, labels = cv2.connectedComponents(weak.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros(score.shape, bool)
    strong = np.zeros(n, bool)
    strong[np.unique(labels[weak & (peak > high)])] = True
    strong[0] = False
    return strong[labels]


def _peak(score: np.ndarray) -> np.ndarray:
    """The score averaged over 3x3 pixels: a lone pixel's chance high does not count."""
    return cv2.blur(score, (3, 3))


def _scrambled(images: Sequence[np.ndarray], turn: int) -> list[np.ndarray]:
    """Each image rolled by its own large offset (and every other one mirrored), so that
    nothing shared at a fixed place lines up any more; ``turn`` picks other offsets."""
    out = []
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        k = i + 1 + turn * 7
        rolled = np.roll(im, (int(h * ((0.37 * k) % 1)), int(w * ((0.61 * k) % 1))), (0, 1))
        out.append(np.ascontiguousarray(rolled[:, ::-1] if (i + turn) % 2 else rolled))
    return out


def _near_sure(edges: np.ndarray, peak: np.ndarray, sure: float, reach: float) -> np.ndarray:
    """The edge components within ``reach`` pixels of one that peaks above ``sure`` (the
    parts of a mark lie together; stray chance edges elsewhere are dropped)."""
    n, labels = cv2.connectedComponents(edges.astype(np.uint8), connectivity=8)
    if n <= 1:
        return edges
    seeds = np.zeros(n, bool)
    seeds[np.unique(labels[edges & (peak > sure)])] = True
    seeds[0] = False
    if not seeds.any():
        return np.zeros_like(edges)
    far = cv2.distanceTransform((~seeds[labels]).astype(np.uint8), cv2.DIST_L2, 3)
    near = np.zeros(n, bool)
    near[np.unique(labels[edges & (far <= reach)])] = True
    near[0] = False
    return near[labels]


def _drop_small(edges: np.ndarray, min_pixels: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(edges.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False
    return keep[labels]


def _alignment(energy: np.ndarray, r: int, share: float) -> dict[int, tuple[int, int]]:
    """Shifts (dy, dx), up to ``r`` pixels, that make each image's energy best match the
    batch's rank map (normalised cross-correlation), found twice; ``energy`` holds crops with
    ``r`` pixels to spare on each side."""
    n, h, w = energy.shape
    shifts = {i: (0, 0) for i in range(n)}
    for _ in range(2):
        template = _rank(
            np.stack(
                [
                    energy[i, r + dy : h - r + dy, r + dx : w - r + dx]
                    for i, (dy, dx) in shifts.items()
                ]
            ),
            share,
        )
        if float(template.std()) < 1e-6:
            break
        moved = False
        for i in range(n):
            score = cv2.matchTemplate(energy[i], template, cv2.TM_CCOEFF_NORMED)
            score[r, r] += 0.02  # no shift unless another is clearly better
            best = int(np.argmax(score))
            found = (best // score.shape[1] - r, best % score.shape[1] - r)
            if found != shifts[i]:
                shifts[i] = found
                moved = True
        if not moved:
            break
    return {i: s for i, s in shifts.items() if s != (0, 0)}


def _score(images: Sequence[np.ndarray], energy: np.ndarray, p: DetectParams) -> np.ndarray:
    """Per pixel, how much the batch agrees on an edge there: the low-rank gradient energy
    (shown by most images) times the coherence of the edge's orientation over the batch (a
    mark's edge runs the same way in every image, photo edges in any direction)."""
    a = np.zeros(energy.shape[1:], np.float32)
    b = np.zeros_like(a)
    for im in images:
        f = im.astype(np.float32)
        gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3)
        # The structure tensor summed over the colour channels, lightly smoothed, normalised:
        # its orientation part (a, b) has length 1 on a clean edge and ~0 on flat noise.
        jxx = cv2.GaussianBlur(cv2.transform(gx * gx, np.ones((1, 3), np.float32)), (0, 0), 1.0)
        jyy = cv2.GaussianBlur(cv2.transform(gy * gy, np.ones((1, 3), np.float32)), (0, 0), 1.0)
        jxy = cv2.GaussianBlur(cv2.transform(gx * gy, np.ones((1, 3), np.float32)), (0, 0), 1.0)
        tr = jxx + jyy + p.flat_energy
        a += (jxx - jyy) / tr
        b += 2 * jxy / tr
    coherence = np.sqrt(a * a + b * b) / len(images)
    return coherence * _rank(energy, p.rank_share)


def _spread(shifts: dict[int, tuple[int, int]]) -> int:
    """How far the images' marks lie from the reference placement (reference pixels)."""
    return max((max(abs(dy), abs(dx)) for dy, dx in shifts.values()), default=0)


def _filled(edges: np.ndarray, radius: float) -> np.ndarray:
    """``edges`` plus the enclosed gaps between them no wider than ``radius`` (inscribed):
    the solid inside of strokes and bars."""
    closed = cv2.morphologyEx(edges.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    gaps = closed == 0
    n, labels = cv2.connectedComponents(gaps.astype(np.uint8), connectivity=4)
    if n <= 1:
        return closed > 0
    dist = cv2.distanceTransform(gaps.astype(np.uint8), cv2.DIST_L2, 3)
    widest = ndimage.maximum(dist, labels, index=np.arange(n))
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = np.asarray(widest) <= radius
    fill[border] = False
    fill[0] = True  # label 0: the edges themselves
    return fill[labels]


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
