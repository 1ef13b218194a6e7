"""Watermark detection from the batch (the ``"mask": "auto"`` extension).

A batch that shares one watermark carries its own mask: the same edges at the same place in
every photo, while the photos' own edges differ from image to image (Dekel, Rubinstein, Liu,
Freeman, "On the Effectiveness of Visible Watermarks", CVPR 2017, take the per-pixel median
of the gradients). Here each pixel's score is a low rank over the batch of the gradient
energy (what most images show there; with few images a rank below the median rejects photo
edges much better) times the agreement of the edge over the batch: its orientation and the
sign of its colour change (a mark's edge runs, and changes the colours, the same way in every
image; chance agreements of photo texture do not). The colours are first whitened by the
batch's own gradient statistics, so that a coloured mark over grey or dull photos stands out.

Whether there is a mark at all is decided against the batch itself: each image is moved by
its own large offset ("scrambled"), which keeps every chance agreement of the photos and
breaks the shared mark. A mark is a cluster of edges whose mass (score above the threshold,
summed) is well above the largest the scrambled batches show.

Two passes. A coarse one on every image reduced to a small frame finds whether and roughly
where the mark is; a fine one at the reference image's resolution, only around it, aligns the
images (marks shifted by a few pixels), traces the mark's edges with a hysteresis threshold,
fills the solid parts between them (strokes, bars), then finds the mark's outline on the mark
rebuilt from the batch's median gradient (integrated: Dekel et al.), and widens the result by a
small margin, as a user would paint it.

Images of different sizes are stretched onto the reference frame (the largest image), as the
mask is stretched back onto each of them: a mark that scales with the image is found once.
Arrays: images RGB uint8 HxWx3; the mask bool HxW in the reference frame, True = restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import cv2
import numpy as np
from scipy import ndimage
from scipy.fft import dctn, idctn, next_fast_len

__all__ = ["DetectParams", "Detection", "detect_watermark", "no_mark_reason"]


@dataclass(frozen=True)
class DetectParams:
    """Every threshold of the detector, with its reason (figures: docs/detect-quality.md)."""

    min_images: int = 4
    """Below this the detector refuses: with 3 images it found 12 of 30 benchmark marks and,
    in one batch, a wrong area (docs/detect-quality.md, run with this lowered)."""
    coarse_width: int = 384
    """Width of the coarse pass's frame: a 2% text mark on a 1920 px photo still shows, and
    it costs a few ms an image."""
    rank_share: float = 0.3
    """The per-pixel rank taken over the batch, as a share of the images (0.5 = median): the
    mark must show in about 70% of them; a spot where it has the photo's colour in a few
    images is tolerated."""
    flat_energy: float = 1600.0
    """Structure-tensor trace (squared Sobel gradients summed over the channels) below which
    a pixel counts as flat: its orientation says little (about 10 grey levels a pixel)."""
    smooth: float = 1.0
    """Gaussian sigma (pixels) over which the structure tensor is averaged, coarse pass ..."""
    fine_smooth: float = 0.7
    """... and fine pass (sharper: a narrower trace of the edges)."""
    high: float = 3.0
    """A mark's edge scores this many times the background (the score's 90th percentile) ..."""
    low: float = 1.6
    """... and its continuation (connected to such an edge) this many times ..."""
    tail: float = 0.15
    """... and (in the fine pass) this share of the strongest score within 2 pixels."""
    min_high: float = 2.0
    """Floor of the high threshold (gradient energy in grey levels, mean over the channels,
    |dx| + |dy|, times the coherence): JPEG noise on flat photos must not pass."""
    blob_gap: int = 2
    """Edges this close (coarse pixels) form one cluster: a word's letters, a logo's parts."""
    scrambles: int = 2
    """Scrambled versions of the batch whose largest cluster sets the bar ..."""
    scrambled_images: int = 32
    """... at least this many images in all (small batches get more scrambles: their chance
    agreements vary more, and each costs little)."""
    null_margin: float = 6.0
    """A mark's cluster must have this many times the mass of the largest cluster of any
    scrambled batch, at ``null_images`` images ..."""
    null_images: int = 4
    """... and in proportion to N beyond them (12 at 8 images): a shared mark's contrast grows
    fast with N (52 and more at N = 8 on the tuning seeds), clean batches' does not (at most
    8.3 at N = 8 and 5.8 at N = 12, 24 batches each)."""
    min_mass_pixels: float = 0.0001
    """A mark's cluster must also reach that bar over the mass of this share of the coarse
    frame's pixels (at least 8) at twice the clusters' level (when the scrambled batches show
    nothing at all)."""
    cluster: float = 2.0
    """Clusters are made of the pixels above this many times the background; their mass is
    the score above that level, summed."""
    reach: float = 0.1
    """Weaker edges count as part of the mark within this share of the frame's longer side
    of a cluster that clears the bar."""
    fine_max_pixels: int = 600_000
    """The fine pass's region is scaled down beyond this many pixels (huge marks)."""
    fine_images: int = 10
    """The fine pass traces the mark on at most this many images (evenly spread; all are
    aligned): beyond them the trace hardly changes, and it is most of the cost."""
    align_radius: int = 4
    """Marks shifted by up to this many reference pixels are aligned."""
    align_max_pixels: int = 150_000
    """Alignment runs on a region halved in size beyond this many pixels (2 px precision;
    the mask is widened by the shifts' spread anyway)."""
    fill_share: float = 0.02
    """Enclosed gaps between edges up to this inscribed radius (a share of the reference
    frame's longer side, at least ``fill_min`` pixels) are the solid inside of a stroke or bar
    and are filled; wider ones (a ring's hole) are not."""
    fill_min: float = 4.0
    bridge: int = 2
    """Breaks in a contour up to twice this many pixels (or ``bridge_share`` of the frame's
    longer side) are bridged before filling."""
    bridge_share: float = 0.006
    margin: int = 2
    """The mask reaches this many pixels (a square: as far along a diagonal) beyond the
    mark's outline (``outline``), as the benchmark's truth and the restore benchmark's masks
    do: the anti-aliased fringe and JPEG's ringing around it."""
    outline: float = 0.3
    """The mark's outline: where its integrated median gradient (the mark itself, as far as
    the batch shows it: Dekel et al.) departs from the local background by this share of its
    90th percentile over the traced area. On other seeds than the benchmark's, 0.2 left
    JPEG ringing and photo clutter in and 0.4 cut the faint anti-aliased fringe."""
    signed: float = 0.5
    """Weight of the signed agreement in the coarse score (its geometric mean with the
    orientation's coherence: 0 = orientation only, 1 = signed only). A mark's edge changes the
    colours the same way in every image, chance alignments of photo edges seldom do; on the
    tuning seeds (plain RGB) 0.5 found 24 of 30 marks at N = 4 (IoU 0.60), orientation only
    22 (0.53), signed only 24 (0.59); no clean batch in 24 was detected with any."""
    colour_gain: float = 4.0
    """Both passes work on colours whitened by the batch's own gradients, the weakest colour
    direction amplified at most this many times (1: plain RGB). A coloured mark over grey or
    dull photos is the batch's only colour edge; on the tuning seeds 4 found 29 of 30 marks at
    N = 4 (10: 28), against 24 without."""
    fine_colours: bool = True
    """The fine pass traces on the whitened colours too (else on RGB)."""
    part_share: float = 0.5
    """A traced part (connected edges) whose mean score is below this share of the median
    score over all traced edges is photo clutter joined to the mark's search area, not one
    of its parts: dropped before filling (clutter encloses gaps that would be filled). On
    other seeds than the benchmark's 0.3-0.7 raised IoU and 0.9 dropped mark parts; 0.7
    dropped one in a benchmark batch (a letter, 4 images): 0.5 keeps a margin below that."""


@dataclass
class Detection:
    """What the detector found: a mask (None if no shared mark), how sure, and why not."""

    mask: np.ndarray | None
    """bool HxW in the reference frame (the largest image's size); None if nothing was found."""
    confidence: float
    """0..1, from ``contrast``: 0.5 at the acceptance bar (which grows with N), 1 at twice
    it (0 if none)."""
    reason: str
    """Why no mask was returned ("" when one was)."""
    images: int
    shape: tuple[int, int]
    """(height, width) of the reference frame."""
    contrast: float = 0.0
    """The largest edge cluster's mass over the largest of the scrambled batches' (at least
    ``null_margin`` x max(1, N / ``null_images``): a mark)."""
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
    colours = _whitening(small, p.colour_gain) if p.colour_gain > 1 else None
    if colours is not None:
        small = [cv2.transform(im.astype(np.float32), colours) for im in small]
    maps = _Maps(small, p, spread=True)
    score = maps.score(p.rank_share)
    background = _background(score, None)
    level = max(p.cluster * background, p.min_high)
    labels, mass = _clusters(score, level, p.blob_gap)
    # The same batch scrambled: the photos' chance agreements stay, a shared mark does not.
    chance = level * max(8.0, p.min_mass_pixels * ch * cw)
    for turn in range(max(p.scrambles, -(-p.scrambled_images // n))):
        _, null_mass = _clusters(maps.score(p.rank_share, turn + 1), level, p.blob_gap)
        chance = max(chance, float(null_mass.max(initial=0.0)))
    contrast = float(mass.max(initial=0.0)) / chance
    del maps, small  # tens of MB the fine pass would otherwise have to find fresh memory for
    sure = np.zeros(len(mass) + 1, bool)
    bar = p.null_margin * max(1.0, n / p.null_images)
    sure[1:] = mass >= bar * chance
    if not sure.any():
        return Detection(None, 0.0, no_mark_reason(n), n, shape, contrast)
    # The mark's other parts: clusters above any chance one, near a sure one.
    likely = np.zeros_like(sure)
    likely[1:] = mass >= chance
    edges = _hysteresis(score, _peak(score), level, p.low * background)
    edges &= _near(likely[labels], sure[labels], p.reach * max(ch, cw))
    mask, shifts = _fine(images, shape, edges, p, colours)
    if mask is None:
        return Detection(None, 0.0, no_mark_reason(n), n, shape, contrast)
    confidence = min(1.0, 0.5 * contrast / bar)
    return Detection(mask, round(confidence, 3), "", n, shape, contrast, shifts)


class _Maps:
    """Per image, on one frame: the gradient energy, the orientation part of the normalised
    structure tensor (``a``, ``b``: length 1 on a clean edge, ~0 on flat noise) and (coarse
    pass) the colour gradient normalised by the tensor's trace (``vx``, ``vy``)."""

    def __init__(self, images: Sequence[np.ndarray], p: DetectParams, spread: bool) -> None:
        h, w = images[0].shape[:2]
        n = len(images)
        self.energy = np.empty((n, h, w), np.float32)
        self.a = np.empty((n, h, w), np.float32)
        self.b = np.empty((n, h, w), np.float32)
        ones = np.ones((1, 3), np.float32)
        sigma = p.smooth if spread else p.fine_smooth
        # The signed agreement decides whether there is a mark (coarse pass); the fine pass
        # only traces it, and there it would cost more than it changes.
        self.signed = p.signed if spread else 0.0
        shape = (n, h, w, 3) if self.signed > 0 else (n, 1, 1, 1)
        self.vx = np.empty(shape, np.float32)
        self.vy = np.empty(shape, np.float32)
        # OpenCV's element-wise operations: the same values as numpy's, several times faster
        # on these small arrays.
        for i, im in enumerate(images):
            e = _energy(im)
            # In the coarse pass, marks a pixel or so apart (a few in the full image) still
            # coincide.
            self.energy[i] = cv2.dilate(e, np.ones((3, 3), np.uint8)) if spread else e
            gx = cv2.Sobel(im, cv2.CV_32F, 1, 0, ksize=3)
            gy = cv2.Sobel(im, cv2.CV_32F, 0, 1, ksize=3)
            jxx = _smoothed(cv2.transform(cv2.multiply(gx, gx), ones), sigma)
            jyy = _smoothed(cv2.transform(cv2.multiply(gy, gy), ones), sigma)
            jxy = _smoothed(cv2.transform(cv2.multiply(gx, gy), ones), sigma)
            tr = cv2.add(jxx, jyy) + np.float32(p.flat_energy)
            cv2.divide(cv2.subtract(jxx, jyy), tr, dst=self.a[i])
            cv2.divide(cv2.add(jxy, jxy), tr, dst=self.b[i])
            if self.signed > 0:
                norm = cv2.merge([cv2.sqrt(tr)] * 3)
                cv2.divide(gx, norm, dst=self.vx[i])
                cv2.divide(gy, norm, dst=self.vy[i])

    def score(self, share: float, scramble: int = 0) -> np.ndarray:
        """Per pixel, how much the batch agrees on an edge there: the low-rank energy times
        the orientation's coherence. ``scramble`` > 0: each image rolled by its own offset."""
        n, h, w = self.energy.shape
        offsets = [_offset(scramble * n + i, h, w) if scramble else (0, 0) for i in range(n)]
        energy = (
            [np.roll(e, o, (0, 1)) for e, o in zip(self.energy, offsets, strict=True)]
            if scramble
            else list(self.energy)
        )
        a, b = (_rolled_sum(m, offsets) for m in (self.a, self.b))
        coherence = np.sqrt(a**2 + b**2) / n
        if self.signed > 0:
            vx, vy = (_rolled_sum(m, offsets) for m in (self.vx, self.vy))
            squares = vx**2
            length = squares[..., 0] + squares[..., 1] + squares[..., 2]
            squares = vy**2
            length += squares[..., 0]
            length += squares[..., 1]
            length += squares[..., 2]
            agree = np.sqrt(length) / n
            coherence = coherence ** (1 - self.signed) * agree**self.signed
        return coherence * _rank(energy, share, overwrite=bool(scramble))


def _rolled_sum(maps: np.ndarray, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """The sum over the first axis of ``maps``, each rolled by its ``offsets`` (dy, dx) as
    ``np.roll`` does, without the rolled copies."""
    h, w = maps.shape[1:3]
    total = np.zeros(maps.shape[1:], maps.dtype)
    for m, (dy, dx) in zip(maps, offsets, strict=True):
        for ys, yd in ((slice(0, h - dy), slice(dy, h)), (slice(h - dy, h), slice(0, dy))):
            for xs, xd in ((slice(0, w - dx), slice(dx, w)), (slice(w - dx, w), slice(0, dx))):
                total[yd, xd] += m[ys, xs]
    return total


def _whitening(images: Sequence[np.ndarray], max_gain: float) -> np.ndarray:
    """A 3x3 colour transform under which the batch's gradients are about equally strong in
    every colour direction (at most ``max_gain`` times stronger in the weakest), the total
    gradient energy unchanged: a coloured mark over grey or dull photos stands out."""
    cov = np.zeros((3, 3), np.float64)
    for im in images:
        f = im.astype(np.float32)
        # Every other row and column: the colours' spread, not every pixel, is wanted.
        for d in (f[::2, 1::2] - f[::2, :-1:2], f[1::2, ::2] - f[:-1:2, ::2]):
            g = d.reshape(-1, 3)
            cov += (g.T @ g).astype(np.float64)
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, values.max() / max_gain**2)
    inverse_root = vectors @ np.diag(values**-0.5) @ vectors.T
    total = float(np.trace(cov))
    scale = np.sqrt(total / max(1e-12, float(np.trace(inverse_root @ cov @ inverse_root))))
    return (scale * inverse_root).astype(np.float32)


def _smoothed(a: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), sigma) if sigma > 0 else a


def _offset(k: int, h: int, w: int) -> tuple[int, int]:
    """A well spread offset for the k-th image of a scramble (golden-ratio sequence)."""
    return int(h * ((0.6180339887 * (k + 1)) % 1)), int(w * ((0.7548776662 * (k + 1)) % 1))


def _fine(
    images: Sequence[np.ndarray],
    shape: tuple[int, int],
    coarse_edges: np.ndarray,
    p: DetectParams,
    colours: np.ndarray | None = None,
) -> tuple[np.ndarray | None, dict[int, tuple[int, int]]]:
    """The mask at the reference resolution around the coarse find; the shifts made."""
    hr, wr = shape
    ch, cw = coarse_edges.shape
    ys, xs = np.nonzero(coarse_edges)
    fy, fx = hr / ch, wr / cw
    pad = p.align_radius + p.margin + 3 + round(2 * max(fy, fx))
    y0, y1 = max(0, int(ys.min() * fy) - pad), min(hr, int((ys.max() + 1) * fy) + pad)
    x0, x1 = max(0, int(xs.min() * fx) - pad), min(wr, int((xs.max() + 1) * fx) + pad)
    # The fine frame: the region at the reference resolution, or scaled down if huge.
    s = min(1.0, float(np.sqrt(p.fine_max_pixels / max(1, (y1 - y0) * (x1 - x0)))))
    gh, gw = max(4, round((y1 - y0) * s)), max(4, round((x1 - x0) * s))
    r = max(1, round(p.align_radius * s))
    # The trace needs fewer images than the decision: an evenly spread subset. Only its crops
    # are kept; of the others only the energy, for the alignment (less memory to fault in).
    step = max(1.0, len(images) / p.fine_images)
    traced = [int(i * step) for i in range(min(len(images), p.fine_images))]
    energy, kept = [], {}
    for i, im in enumerate(images):
        crop = _region(im, shape, (y0, y1, x0, x1), (gh + 2 * r, gw + 2 * r), r / s)
        if colours is not None and p.fine_colours:
            crop = cv2.transform(crop.astype(np.float32), colours)
        energy.append(_energy(crop))
        if i in traced:
            kept[i] = crop
    shifts = _alignment(energy, r, p)
    subset = [
        kept[i][r + dy : r + dy + gh, r + dx : r + dx + gw]
        for i, (dy, dx) in ((i, shifts.get(i, (0, 0))) for i in traced)
    ]
    score = _Maps(subset, p, spread=False).score(p.rank_share)
    near = cv2.resize(
        coarse_edges[
            int(y0 / fy) : int(np.ceil(y1 / fy)), int(x0 / fx) : int(np.ceil(x1 / fx))
        ].astype(np.uint8),
        (gw, gh),
        interpolation=cv2.INTER_NEAREST,
    )
    around = cv2.dilate(near, np.ones((3, 3), np.uint8), iterations=max(2, round(2 * fy * s)))
    background = _background(score, around == 0)
    # A strong edge's tails (the smoothing's) pass any level set against the background:
    # its continuation must also reach a share of the strongest score nearby.
    nearby = cv2.dilate(score, np.ones((5, 5), np.uint8)) * p.tail
    low = np.maximum(nearby, p.low * background)
    # Started only from what the coarse pass vouched for; continued as far as the edges go
    # (a mark's weaker parts joined to its strong ones).
    seeds = np.where(around > 0, _peak(score), 0)
    edges = _hysteresis(score, seeds, max(p.high * background, p.min_high), low)
    edges = _drop_small(edges, 6)
    if p.part_share > 0 and edges.any():
        edges = _strong_parts(edges, score, p.part_share)
    if not edges.any():
        return None, {}
    fill = max(p.fill_min, p.fill_share * max(hr, wr))
    bridge = max(p.bridge, p.bridge_share * max(hr, wr))
    solid = _filled(edges, fill * s, max(1, round(bridge * s)))
    if p.outline > 0:
        solid = _outline(subset, solid, p.outline)
        if not solid.any():
            return None, {}
    # The margin holds in every image's own pixels: wider in the reference frame when
    # smaller images are stretched onto it.
    stretch = max(wr / im.shape[1] for im in images)
    margin = round(p.margin * stretch * s) + _spread(shifts)
    if margin:
        solid = cv2.dilate(solid.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0
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
    if abs(ay - 1) < 1e-9 and abs(ax - 1) < 1e-9 and sy0 >= 0 and sx0 >= 0:
        iy, ix = round(sy0), round(sx0)
        if abs(iy - sy0) < 1e-9 and abs(ix - sx0) < 1e-9 and iy + oh <= h and ix + ow <= w:
            return image[iy : iy + oh, ix : ix + ow]  # the same size: a plain crop
    # Output pixel centre j -> source x = sx0 + (j + 0.5) * ax - 0.5.
    m = np.array([[ax, 0.0, sx0 + 0.5 * ax - 0.5], [0.0, ay, sy0 + 0.5 * ay - 0.5]])
    src = image
    if max(ax, ay) > 1.5:  # average before sampling, so a reduced crop is not aliased
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
    """Gradient energy, float32 HxW: |dx| + |dy|, each the mean over the colour channels
    (colour, not grey: a coloured mark can have the luminance of the photo under it)."""
    mean = np.full((1, 3), 1 / 3, np.float32)
    e = np.zeros(image.shape[:2], np.float32)
    e[:, :-1] = cv2.transform(cv2.absdiff(image[:, 1:], image[:, :-1]), mean)
    e[:-1] += cv2.transform(cv2.absdiff(image[1:], image[:-1]), mean)
    return e


def _rank(
    stack: np.ndarray | Sequence[np.ndarray], share: float, overwrite: bool = False
) -> np.ndarray:
    """Per pixel, the value at rank ``share`` (0 = the smallest) over the batch axis;
    ``overwrite``: the arrays of ``stack`` may be written over (else they are left as they are).

    The same values as ``np.partition`` along that axis, four to six times faster: a
    selection network (element-wise minimum and maximum of whole arrays) rather than one
    small partition per pixel."""
    values = list(stack)
    n = len(values)
    k = min(n - 1, max(0, int(np.floor(share * (n - 1) + 0.5))))
    # Arrays written over are reused rather than new ones made (fewer fresh pages).
    own = [overwrite] * n
    spare = None
    for a, b in _selection(n, k):
        low = np.minimum(values[a], values[b], out=spare)
        high = np.maximum(values[a], values[b], out=values[b] if own[b] else None)
        spare = values[a] if own[a] else None
        values[a], values[b] = low, high
        own[a] = own[b] = True
    return np.asarray(values[k])


@cache
def _selection(n: int, k: int) -> tuple[tuple[int, int], ...]:
    """The compare-exchanges of Batcher's odd-even merge sort of ``n`` values that the
    ``k``-th smallest depends on (Knuth, TAOCP vol. 3, 5.3.4): after them, position ``k``
    holds it. The network for the next power of two, less the exchanges with the (absent,
    largest) values beyond ``n``."""
    size = 1 << max(0, (n - 1).bit_length())
    pairs = []
    block = 1
    while block < size:
        gap = block
        while gap >= 1:
            for start in range(gap % block, size - gap, 2 * gap):
                for i in range(start, min(start + gap, size - gap)):
                    if i // (2 * block) == (i + gap) // (2 * block) and i + gap < n:
                        pairs.append((i, i + gap))
            gap //= 2
        block *= 2
    needed = {k}
    kept = []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b))
            needed |= {a, b}
    return tuple(reversed(kept))


def _background(score: np.ndarray, where: np.ndarray | None) -> float:
    """The background's level: the 90th percentile of the score (over ``where``)."""
    values = score if where is None else score[where]
    if values.size == 0:
        values = score.ravel()
    return max(0.1, float(np.percentile(values, 90)))


def _clusters(score: np.ndarray, high: float, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of pixels above ``high`` at most ``gap`` apart: their labels (0: none) and
    each one's mass (the score above ``high``, summed; index 0 = label 1)."""
    above = score > high
    grown = cv2.dilate(above.astype(np.uint8), np.ones((2 * gap + 1, 2 * gap + 1), np.uint8))
    n, labels = cv2.connectedComponents(grown, connectivity=8)
    if n <= 1:
        return labels, np.zeros(0)
    excess = np.where(above, score - high, 0.0)
    return labels, np.asarray(ndimage.sum(excess, labels, np.arange(1, n)), float)


def _hysteresis(
    score: np.ndarray, peak: np.ndarray, high: float, low: float | np.ndarray
) -> np.ndarray:
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


def _near(parts: np.ndarray, sure: np.ndarray, reach: float) -> np.ndarray:
    """The connected ``parts`` (HxW bool) within ``reach`` pixels of the ``sure`` area (the
    parts of a mark lie together; chance agreements elsewhere are dropped)."""
    n, labels = cv2.connectedComponents(parts.astype(np.uint8), connectivity=8)
    if n <= 1 or not sure.any():
        return np.zeros_like(parts)
    far = cv2.distanceTransform((~sure).astype(np.uint8), cv2.DIST_L2, 3)
    near = np.zeros(n, bool)
    near[np.unique(labels[parts & (far <= reach)])] = True
    near[0] = False
    return near[labels]


def _drop_small(edges: np.ndarray, min_pixels: int) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(edges.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False
    return keep[labels]


def _strong_parts(edges: np.ndarray, score: np.ndarray, share: float) -> np.ndarray:
    """The connected parts of ``edges`` whose mean score is at least ``share`` of the median
    score over all of them (the mark's parts score alike; clutter far lower)."""
    n, labels = cv2.connectedComponents(edges.astype(np.uint8), connectivity=8)
    if n <= 2:
        return edges
    means = np.asarray(ndimage.mean(score, labels, np.arange(n)), float)
    keep = means >= share * float(np.median(score[edges]))
    keep[0] = False
    return keep[labels]


def _alignment(energy: Sequence[np.ndarray], r: int, p: DetectParams) -> dict[int, tuple[int, int]]:
    """Shifts (dy, dx), up to ``r`` pixels, that make each image's energy best match the
    batch's rank map (normalised cross-correlation), found twice; ``energy`` holds crops with
    ``r`` pixels to spare on each side. Large regions are aligned at half size."""
    h, w = energy[0].shape
    step = 2 if (h - 2 * r) * (w - 2 * r) > p.align_max_pixels and r >= 2 else 1
    if step == 2:
        energy = [cv2.resize(e, (w // 2, h // 2), interpolation=cv2.INTER_AREA) for e in energy]
        h, w, r = h // 2, w // 2, r // 2
    n = len(energy)
    shifts = {i: (0, 0) for i in range(n)}
    for _ in range(2):
        template = _rank(
            np.stack(
                [
                    energy[i][r + dy : h - r + dy, r + dx : w - r + dx]
                    for i, (dy, dx) in shifts.items()
                ]
            ),
            p.rank_share,
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
    return {i: (dy * step, dx * step) for i, (dy, dx) in shifts.items() if (dy, dx) != (0, 0)}


def _spread(shifts: dict[int, tuple[int, int]]) -> int:
    """How far the images' marks lie from the reference placement (fine-frame pixels)."""
    return max((max(abs(dy), abs(dx)) for dy, dx in shifts.values()), default=0)


def _filled(edges: np.ndarray, radius: float, bridge: int) -> np.ndarray:
    """``edges`` plus the enclosed gaps between them no wider than ``radius`` (inscribed):
    the solid inside of strokes and bars."""
    # Closed first, so that a contour broken by a few pixels still encloses its inside.
    size = 2 * bridge + 1
    closed = cv2.morphologyEx(
        edges.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((size, size), np.uint8)
    )
    gaps = closed == 0
    n, labels = cv2.connectedComponents(gaps.astype(np.uint8), connectivity=4)
    if n <= 1:
        return closed > 0
    dist = cv2.distanceTransform(gaps.astype(np.uint8), cv2.DIST_L2, 3)
    fill = np.ones(n, bool)
    fill[labels[dist > radius]] = False  # a gap wider than ``radius`` somewhere
    fill[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    fill[0] = True  # label 0: the edges themselves
    return fill[labels]


def _outline(crops: Sequence[np.ndarray], traced: np.ndarray, share: float) -> np.ndarray:
    """The mark's own footprint within two pixels of the ``traced`` area (filled edges): where
    the mark, rebuilt from the batch's median gradient, stands out from its surroundings.

    The traced area's border follows the edges' energy, which is as wide as the mark is
    strong (a faint mark's trace is too thin, a strong one's a pixel too wide). The median
    over the images of the signed gradients is the mark's own gradient (the photos' vary in
    sign and cancel; Dekel et al. 2017); integrated, it is the mark's image up to a slowly
    varying offset, which is taken out by the level of the untraced pixels around it."""
    floats = [c.astype(np.float32, copy=False) for c in crops]
    mx = _rank([cv2.subtract(f[:, 1:], f[:, :-1]) for f in floats], 0.5, overwrite=True)
    my = _rank([cv2.subtract(f[1:], f[:-1]) for f in floats], 0.5, overwrite=True)
    near = cv2.dilate(traced.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    outside = (~near).astype(np.float32)
    # The local background level, from untraced pixels only (normalised convolution).
    sigma = 8.0
    weight = cv2.GaussianBlur(outside, (0, 0), sigma) + np.float32(1e-3)
    strength = np.zeros(traced.shape, np.float32)
    for c in range(mx.shape[2]):
        mark = _integrated(mx[..., c], my[..., c])
        local = cv2.divide(cv2.GaussianBlur(cv2.multiply(mark, outside), (0, 0), sigma), weight)
        strength += cv2.absdiff(mark, local)
    level = float(np.percentile(strength[traced], 90)) if traced.any() else 0.0
    return (strength > share * level) & near


def _integrated(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The image (up to a constant) whose forward differences best match ``gx`` (h x w-1)
    and ``gy`` (h-1 x w) in least squares: Poisson's equation with Neumann borders, solved by
    the cosine transform. The frame is extended below and to the right, where the gradient is
    taken as 0, to a size the transform is fast at (five times faster than at sizes with a
    large prime factor; the solution changes only near those borders)."""
    h, w = gy.shape[0] + 1, gx.shape[1] + 1
    div = np.zeros((next_fast_len(h, real=True), next_fast_len(w, real=True)), np.float32)
    div[:h, : w - 1] += gx
    div[:h, 1:w] -= gx
    div[: h - 1, :w] += gy
    div[1:h, :w] -= gy
    h, w = div.shape
    spectrum = dctn(div, type=2, norm="ortho")
    ky = (2 * np.cos(np.pi * np.arange(h) / h) - 2).astype(np.float32)
    kx = (2 * np.cos(np.pi * np.arange(w) / w) - 2).astype(np.float32)
    denominator = ky[:, None] + kx[None, :]
    denominator[0, 0] = 1.0
    spectrum /= denominator
    spectrum[0, 0] = 0.0
    mark = idctn(spectrum, type=2, norm="ortho")[: gy.shape[0] + 1, : gx.shape[1] + 1]
    return np.asarray(mark, np.float32)
