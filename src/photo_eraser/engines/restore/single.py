"""Step 9: the pixels under a watermark from one image alone (batches of one to three).

Many real marks have one colour ``C`` and one opacity ``a`` (anti-aliased only at the rim):
``J = (1 - m) * I + m * C`` with the matte ``m`` equal to ``a`` over the mark's body. Inside the
mask an inpainting ``F`` (OpenCV Telea) predicts the photo's local colour, so the marked pixels
follow ``J ~ (1 - a) * F + a * C`` up to the photo's texture.

1. **A first guess** of ``a`` and ``C`` from Telea's fill of the whole mask: the least opaque
   mark explaining the pixels (``C`` on the colour gamut's boundary: exact for white and black
   marks, a lower bound for others).
2. **A robust fit near the mark's outline.** The pixels the guess finds marked, and one pixel
   around them, are inpainted again: that fill reaches only a few pixels in from real photo
   pixels (the mask's unmarked margin), so on the body pixels near the outline it is close to
   the photo, and ``J = (1 - a) * F + a * C`` is fitted there (Cauchy-weighted least squares).
   Where the fill hardly varies the fit cannot tell ``a`` from ``C``: a white or black mark
   is preferred while it explains those pixels nearly as well, a free colour is kept only if
   it explains them clearly better, else only ``a`` is refitted.
3. **The matte.** The support is where ``J - F`` projected on ``C - F`` reaches half of ``a``.
   Deep inside a large mark the fill no longer predicts the photo, so when the support's share
   jumps at one distance from the mask's border (the margin the mask was drawn with), the
   deeper parts join it, each only if inverting it continues the inverted photo around it
   better than leaving it (the gaps between letters stay out); large holes are judged alike.
   The support's interior takes ``a``; its rim, inpainted from both sides (the photo around
   the mask and the inverted interior), takes its own opacity in ``[0, a]`` by the same
   projection, and so do the narrow gaps between strokes that closing the support filled
   (those near the outline, or whose own opacity is low). ``a`` is then searched nearby for the
   least edge energy at the outline.
4. **Invert** ``I = (J - m * C) / (1 - m)``; masked pixels with ``m = 0`` are kept as they are.
5. **Checks.** The fit must explain the marked pixels (median residual small next to
   ``|J - F|``); the mark's outline must show (an edge stronger than the photo's) and fade when
   inverted; the inverted body must have texture like the photo around (a flat object has
   none); few inverted pixels near the border may depart far from Telea's fill (those few are
   inpainted). Then a hold-out: the estimated mark is stamped on copies of the mask beside it,
   where the photo is known, and steps 1-4 and Telea both restore them. The recovery is used
   only if it beats Telea there by a margin (pooled over the copies); otherwise ``None``, and
   the image is inpainted as before.

Two or three images under one mask share the fit (their pixels pooled near the outline) and
the matte (their projections pooled); each is then checked alone.

Before any of that, the cheap tests: too few masked pixels far from the fill, a first guess
out of range (an opaque mark), or (one image) a first guess whose inversion leaves the edges at
its outline as they are (a mask over no mark, ``first_fade_limit``), return ``None`` after one
Telea fill of the mask's box.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from photo_eraser.engines.restore.arrays import noise_level, outline
from photo_eraser.engines.restore.estimate import Recovery
from photo_eraser.engines.restore.params import SingleParams

_K3 = np.ones((3, 3), np.uint8)


def _telea(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Telea's fill of ``mask`` (float32 HxWx3; pixels off the mask unchanged)."""
    return cv2.inpaint(pixels, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA).astype(np.float32)


def _beside(
    mask: np.ndarray, pad: int, min_pixels: int
) -> list[tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]]:
    """Copies of ``mask`` shifted beside it (above, below, left, right), away from it and from
    the image's edge, with their padded boxes and shifts; only those with ``min_pixels``."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    bh, bw = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    m8 = mask.astype(np.uint8)
    big = cv2.dilate(m8, np.ones((9, 9), np.uint8)) > 0
    out = []
    for dy, dx in ((-bh - 8, 0), (bh + 8, 0), (0, -bw - 8), (0, bw + 8)):
        shift = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
        sm = cv2.warpAffine(m8, shift, (w, h), flags=cv2.INTER_NEAREST) > 0
        sm &= ~big
        sm[:4], sm[-4:], sm[:, :4], sm[:, -4:] = False, False, False, False
        if sm.sum() < min_pixels:
            continue
        sy, sx = np.nonzero(sm)
        y0, y1 = max(0, int(sy.min()) - pad), min(h, int(sy.max()) + 1 + pad)
        x0, x1 = max(0, int(sx.min()) - pad), min(w, int(sx.max()) + 1 + pad)
        out.append((sm, (y0, y1, x0, x1), (dy, dx)))
    return out


def _blend_fit(j: np.ndarray, f: np.ndarray, iterations: int) -> tuple[float, np.ndarray]:
    """Robust least squares of ``J = (1 - a) * F + k`` over pixels (Nx3 each): ``a`` and
    ``C = k / a`` (Cauchy weights on each pixel's residual)."""
    jd, fd = j.astype(np.float64), f.astype(np.float64)
    wt = np.ones(len(jd))
    a, k = 0.0, np.zeros(3)
    for _ in range(iterations):
        sw = wt.sum()
        fm = (wt[:, None] * fd).sum(axis=0) / sw
        jm = (wt[:, None] * jd).sum(axis=0) / sw
        fc, jc = fd - fm, jd - jm
        beta = float((wt[:, None] * fc * jc).sum() / max((wt[:, None] * fc * fc).sum(), 1e-9))
        a, k = 1.0 - beta, jm - beta * fm
        res = np.linalg.norm(jd - beta * fd - k, axis=1)
        scale = 1.4826 * float(np.median(res)) + 1.0
        wt = 1.0 / (1.0 + (res / (2.0 * scale)) ** 2)
    return a, k / a if abs(a) > 1e-3 else np.zeros(3)


def _opacity(j: np.ndarray, f: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Each pixel's own opacity: ``J - F`` projected on ``C - F`` (HxW)."""
    dw = colour[None, None, :] - f
    return ((j - f) * dw).sum(axis=2) / np.maximum((dw * dw).sum(axis=2), 1.0)


@dataclass
class _Crop:
    """The mask's padded box of one image, its Telea fill and the pixels far from the fill."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    pixels: np.ndarray
    """The image's pixels (uint8 HxWx3, contiguous)."""
    j: np.ndarray
    """The same as float32."""
    fill: np.ndarray
    """Telea's fill of the mask ``F`` (float32 HxWx3): the photo's local colour, roughly."""
    grey: np.ndarray
    noise: float
    distance: np.ndarray
    """``|J - F|`` per pixel."""
    threshold: float
    """Distance from the fill beyond which a masked pixel is taken as marked."""
    photo_energy: float
    """Mean edge energy (``_sobel_energy``) of the photo just around the mask (at least 1)."""

    @property
    def marked(self) -> np.ndarray:
        return self.mask & (self.distance > self.threshold)


@dataclass
class _Inverted:
    """One image's mark as estimated, and the crop inverted with it."""

    crop: _Crop
    alpha: float
    colour: np.ndarray
    matte: np.ndarray
    """Each crop pixel's opacity (HxW, 0 off the mark)."""
    recovered: np.ndarray
    """The crop inverted with the matte (float32 HxWx3; masked pixels at ``matte = 0`` as they are)."""
    explained: float
    """Median residual of the fit over the pixels it was fitted on, relative to ``|J - F|``."""


def recover_single(image: np.ndarray, mask: np.ndarray, p: SingleParams) -> Recovery | None:
    """Inverted pixels over the mask's box and where to use them; ``None`` if not confident.
    One image is held to the stricter ``max_ghost_share_alone`` (its mask may be over an
    object); a fit to several images under one mask to ``max_ghost_share``."""
    inv = _invert_all([image], mask, p)
    return None if inv is None else _gated(image, mask, inv[0], p, alone=True)


def recover_together(
    images: list[np.ndarray], masks: list[np.ndarray], p: SingleParams
) -> list[tuple[Recovery | None, int]]:
    """Two or three images: with the same mask (the same mark at the same place), one mark is
    fitted to all of them, its matte pooled over them; an image that fit does not suit, or
    images with different masks, are tried alone. Each image's recovery comes with the number
    of images its mark was fitted to (1: alone); with no recovery, the most images a fit tried
    had (for the report's reason, ``single_reason``)."""
    same = all(m.shape == masks[0].shape and np.array_equal(m, masks[0]) for m in masks)
    tried = len(images) > 1 and same
    joint = _invert_all(images, masks[0], p) if tried else None
    out: list[tuple[Recovery | None, int]] = []
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        rec = None if joint is None else _gated(image, mask, joint[k], p, alone=False)
        if rec is not None:
            out.append((rec, len(images)))
            continue
        alone = recover_single(image, mask, p)
        out.append((alone, 1 if alone is not None or not tried else len(images)))
    return out


def _gated(
    image: np.ndarray, mask: np.ndarray, inv: _Inverted, p: SingleParams, alone: bool
) -> Recovery | None:
    """Step 5: the inverted crop where it passes the checks, ``None`` where it does not. A fit
    to one image ``alone`` is held to the stricter ``max_ghost_share_alone``."""
    if inv.explained > p.max_unexplained:
        return None
    # The mark's outline must show (an edge stronger than the photo's) and fade when inverted.
    visible = _visible(inv.crop, inv.matte)
    ghost = _ghost(inv.crop, inv.matte, inv.colour)
    share = p.max_ghost_share_alone if alone else p.max_ghost_share
    if visible < p.min_visible or ghost > p.max_ghost or ghost > share * visible:
        return None
    # The photo under the mark has texture like the photo around it (a flat object has none).
    body = cv2.erode((inv.matte >= inv.alpha).astype(np.uint8), _K3) > 0
    if body.any():
        texture = float(np.mean(_sobel_energy(inv.recovered)[body])) / inv.crop.photo_energy
        if not p.texture_range[0] <= texture <= p.texture_range[1]:
            return None
    plausible = _plausible(inv, p)
    marked = inv.crop.mask & (inv.matte > 0)
    if (marked & ~plausible).sum() > p.max_implausible * marked.sum():
        return None
    gain = _holdout_gain(image, mask, inv, p)
    if gain is not None and gain < p.min_holdout_gain:
        return None
    usable = inv.crop.mask & (inv.matte <= p.max_alpha) & plausible
    pixels = np.clip(np.rint(inv.recovered), 0, 255).astype(np.uint8)
    return Recovery(inv.crop.box, pixels, usable)


def _invert(image: np.ndarray, mask: np.ndarray, p: SingleParams) -> _Inverted | None:
    """Steps 1-4 on one image (the hold-out's copies: every check is left to the caller)."""
    inv = _invert_all([image], mask, p, early=False)
    return None if inv is None else inv[0]


def _invert_all(
    images: list[np.ndarray], mask: np.ndarray, p: SingleParams, early: bool = True
) -> list[_Inverted] | None:
    """Steps 1-4 on images of one size under one mask: the mark's opacity, colour and matte,
    shared by them, and each crop inverted. ``early``: give up as soon as step 5's first check
    fails (a fit that does not explain the pixels needs no matte)."""
    crops = []
    for image in images:
        crop = _look(image, mask, p)
        # The cheap test first: a blend moves the marked pixels away from the fill.
        if crop is None or crop.marked.sum() < p.min_body:
            return None
        crops.append(crop)
    guesses = [_fit_mark(c, p) for c in crops]
    found = [g for g in guesses if g is not None]
    if not found:
        return None
    a = float(np.median([g[0] for g in found]))
    colour = np.median([g[1] for g in found], axis=0).astype(np.float32)
    # The second cheap test, before the fits and the matte (most of the cost): inverted with
    # the first guess, a mark's outline fades; a mask over no mark keeps its edges. One image
    # only: a guess pooled over two or three photos fits each of them less well (on the
    # benchmark it turned away joint fits that the checks accept); each is then tried alone.
    if early and len(crops) == 1 and not _first_guess_fades(crops[0], a, colour, p):
        return None
    a, colour, explained = _refine(crops, a, colour, p)
    if not p.min_alpha <= a <= p.max_alpha or (early and explained > p.max_unexplained):
        return None
    matte = _matte(crops, a, colour, p)
    # Before the opacity search, which scales the matte and so keeps this count.
    if (matte >= 0.5 * a).sum() < max(p.min_body, p.min_body_share * crops[0].mask.sum()):
        return None
    best = _best_opacity(crops, matte, a, colour, p)
    matte *= best / a
    a = best
    m = matte[..., None]
    return [
        _Inverted(c, a, colour, matte, (c.j - m * colour) / (1.0 - m), explained) for c in crops
    ]


def _look(image: np.ndarray, mask: np.ndarray, p: SingleParams) -> _Crop | None:
    """The mask's padded box, its fill, its noise and how far from the fill is "marked"."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    y0, y1 = max(0, ys.min() - p.pad), min(h, ys.max() + 1 + p.pad)
    x0, x1 = max(0, xs.min() - p.pad), min(w, xs.max() + 1 + p.pad)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    m = mask[y0:y1, x0:x1]
    fill = _telea(crop, m)
    j = crop.astype(np.float32)
    grey = np.ascontiguousarray(j.mean(axis=2))
    ring = (cv2.dilate(m.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0) & ~m
    noise = noise_level(grey, ring, min_pixels=20)
    d = np.linalg.norm(j - fill, axis=2)
    lap = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
    ring_dev = float(np.median(lap[ring])) if ring.any() else 4.0
    threshold = max(6.0 * noise, 2.0 * ring_dev, 10.0)
    m8 = m.astype(np.uint8)
    around = (cv2.dilate(m8, np.ones((7, 7), np.uint8)) > 0) & ~(cv2.dilate(m8, _K3) > 0)
    energy = float(np.mean(_sobel_energy(j)[around])) if around.any() else 1.0
    return _Crop((y0, y1, x0, x1), m, crop, j, fill, grey, noise, d, threshold, max(energy, 1.0))


def _fit_mark(crop: _Crop, p: SingleParams) -> tuple[float, np.ndarray] | None:
    """Step 1: a first guess of the opacity ``a`` and colour ``C``, if ``a`` is in range."""
    cand = crop.marked
    jc, fc = crop.j[cand], crop.fill[cand]
    # The least opaque mark explaining the pixels (C on the colour gamut's boundary): exact
    # for white and black marks, a lower bound for others.
    up = (jc - fc) / np.maximum(255.0 - fc, 1.0)
    down = (fc - jc) / np.maximum(fc, 1.0)
    a = float(np.median(np.maximum(up, down).max(axis=1)))
    if not p.min_alpha <= a <= p.max_alpha:
        return None
    colour = np.clip(np.median((jc - (1.0 - a) * fc) / a, axis=0), 0.0, 255.0).astype(np.float32)
    return a, colour


def _first_guess_fades(crop: _Crop, a: float, colour: np.ndarray, p: SingleParams) -> bool:
    """Whether inverting with the first guess (no fit, no further fill) fades the outline of
    its support enough for a mark to be there."""
    fade, share = _first_fade(crop, a, colour)
    if fade >= p.first_fade_limit:
        return False
    # A support over most of the mask is a large solid mark, whose first guess is rough (the
    # fill deep inside it says little): only a narrower one is held to the stricter limit.
    return not (fade >= p.first_fade_limit_narrow and share < p.first_support_wide)


def _first_fade(crop: _Crop, a: float, colour: np.ndarray) -> tuple[float, float]:
    """Edge energy left at the outline of the first guess's support after inverting with it,
    as a share of the energy there before (below 1: the guessed mark fades when inverted), and
    the support's share of the mask. The support is where ``J - F`` projected on ``C - F``
    (Telea's fill of the whole mask) reaches half of ``a``; the matte is ``a`` on it."""
    own = cv2.medianBlur(_opacity(crop.j, crop.fill, colour).astype(np.float32), 3)
    support = crop.mask & (own > 0.5 * a)
    share = float(support.sum()) / max(float(crop.mask.sum()), 1.0)
    matte = np.where(support, np.float32(a), np.float32(0.0))
    outline = _outline(matte)
    if not outline.any():
        return 1.0, share
    before = float(np.mean(_sobel_energy(crop.j)[outline]))
    return _ghost(crop, matte, colour, outline) * crop.photo_energy / max(before, 1e-6), share


def _refine(
    crops: list[_Crop], a: float, colour: np.ndarray, p: SingleParams
) -> tuple[float, np.ndarray, float]:
    """Step 2: ``a`` and ``C`` fitted on the body pixels near the mark's outline against a fill
    of the mark alone (pooled over the images); also how much of ``|J - F|`` the fit leaves
    unexplained there."""
    fills = [c.fill for c in crops]
    explained = 1.0
    for _ in range(p.refine_rounds):
        js, fs = [], []
        for k, crop in enumerate(crops):
            j, m = crop.j, crop.mask
            own = cv2.medianBlur(_opacity(j, fills[k], colour).astype(np.float32), 3)
            support = m & (own > 0.3 * a)
            near = m & (cv2.dilate(support.astype(np.uint8), _K3) > 0)
            fills[k] = _telea(crop.pixels, near)
            own = _opacity(j, fills[k], colour)
            depth = cv2.distanceTransform(near.astype(np.uint8), cv2.DIST_L2, 3)
            fitted = (depth > p.fit_skip) & (depth <= p.outline_depth + p.fit_skip)
            body = near & (np.abs(own - a) < p.body_tolerance * a) & fitted
            js.append(j[body])
            fs.append(fills[k][body])
        jb, fb = np.concatenate(js), np.concatenate(fs)
        if len(jb) < p.min_body:
            break

        def residual(aa: float, cc: np.ndarray, jb: np.ndarray = jb, fb: np.ndarray = fb) -> float:
            return float(np.median(np.linalg.norm(jb - (1.0 - aa) * fb - aa * cc, axis=1)))

        # White or black marks (the usual ones) need no trade-off: their opacity is the grey
        # step towards 255 or 0, taken here where the fill is good.
        for level in (255.0, 0.0):
            neutral = np.full(3, level, np.float32)
            grey = fb.sum(axis=1)
            gap = 3 * level - grey
            step = (jb.sum(axis=1) - grey) / np.where(np.abs(gap) < 3, 3.0, gap)
            an = float(np.median(step))
            if p.min_alpha <= an <= p.max_alpha and residual(
                an, neutral
            ) <= p.neutral_slack * residual(a, colour):
                a, colour = an, neutral
        a2, c2 = _blend_fit(jb, fb, p.fit_iterations)
        c2 = np.clip(c2, 0.0, 255.0).astype(np.float32)
        before = residual(a, colour)
        scale = max(float(np.median(np.linalg.norm(jb - fb, axis=1))), 1e-6)
        if p.min_alpha <= a2 <= p.max_alpha and residual(a2, c2) <= p.fit_gain * before:
            a, colour = a2, c2
            explained = residual(a2, c2) / scale
            continue
        # The fill hardly varies here (a and C trade off): keep the colour, refit the opacity.
        dw = colour[None, :] - fb
        a3 = float(((jb - fb) * dw).sum() / max(float((dw * dw).sum()), 1e-6))
        if residual(a3, colour) < before:
            a = a3
        explained = residual(a, colour) / scale
        break
    return a, colour, explained


def _matte(crops: list[_Crop], a: float, colour: np.ndarray, p: SingleParams) -> np.ndarray:
    """Step 3: each crop pixel's opacity (HxW float32): ``a`` inside the mark, its own on the
    rim, 0 off the mark; one matte for all the images (their projections pooled)."""
    m = crops[0].mask
    # A 3x3 median: a larger one wipes out strokes two or three pixels wide.
    own = cv2.medianBlur(_pooled_opacity(crops, [c.fill for c in crops], colour), 3)
    seen = m & (own > 0.5 * a)
    support = m & (cv2.morphologyEx(seen.astype(np.uint8), cv2.MORPH_CLOSE, _K3) > 0)
    joined = support & ~seen
    # Deep inside the mask the fill says little: if the support starts at one distance from
    # the mask's border (the margin the mask was drawn with), all that lies deeper is support.
    depth = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
    share = []
    for d in range(1, p.margin_search + 1):
        ring = (depth > d - 1) & (depth <= d)
        share.append(float(support[ring].mean()) if ring.any() else 1.0)
    jumps = np.diff(share)
    step = int(np.argmax(jumps))
    if jumps[step] >= p.margin_jump and share[step + 1] >= p.margin_inside:
        # ... unless a deep part inverts worse than it is (the gaps between letters).
        deep = m & (depth > step + 3) & ~support
        count, labels = cv2.connectedComponents(deep.astype(np.uint8), connectivity=4)
        parts = [labels == k for k in range(1, count)]
        support = _join_if_marked(crops, support, parts, a, colour)
    support = _fill_holes(crops, support, a, colour, p.min_hole)
    core = cv2.erode(support.astype(np.uint8), _K3) > 0
    # The closing fills the pixels the projection missed inside a wide body (the fill's noise),
    # but also the gaps of one or two pixels between strokes: a joined pixel is taken for a gap,
    # a rim pixel with its own opacity, where it is near the support's outline or its own
    # opacity is low.
    square = np.ones((p.gap_body, p.gap_body), np.uint8)
    wide = cv2.erode(support.astype(np.uint8), square) > 0
    core &= ~(joined & (~wide | (own < p.gap_opacity * a)))
    # The rim: one pixel on either side of the support's outline (wider, the mask's unmarked
    # margin took opacity from the photo's texture).
    rim = m & (cv2.dilate(support.astype(np.uint8), _K3) > 0) & ~core
    out = np.zeros(m.shape, np.float32)
    out[core] = a
    # The rim inpainted from both sides: the photo around the mask and the inverted interior.
    arounds = []
    for crop in crops:
        inside = np.clip((crop.j - a * colour) / (1.0 - a), 0, 255)
        base = np.ascontiguousarray(np.where(core[..., None], inside, crop.j).astype(np.uint8))
        arounds.append(_telea(base, rim))
    out[rim] = np.clip(_pooled_opacity(crops, arounds, colour), 0.0, a)[rim]
    return out


def _pooled_opacity(crops: list[_Crop], fills: list[np.ndarray], colour: np.ndarray) -> np.ndarray:
    """Each pixel's opacity fitted to all images at once: ``J - F`` projected on ``C - F``,
    pooled (an image whose photo is far from the mark's colour there tells more)."""
    num = np.zeros(crops[0].mask.shape, np.float32)
    den = np.zeros(crops[0].mask.shape, np.float32)
    for crop, fill in zip(crops, fills, strict=True):
        dw = colour[None, None, :] - fill
        num += ((crop.j - fill) * dw).sum(axis=2)
        den += (dw * dw).sum(axis=2)
    return (num / np.maximum(den, float(len(crops)))).astype(np.float32)


def _fill_holes(
    crops: list[_Crop], support: np.ndarray, a: float, colour: np.ndarray, min_hole: int
) -> np.ndarray:
    """The support with those of its holes (not reaching the mask's outside) that continue the
    inverted photo around them better inverted than as they are."""
    count, labels = cv2.connectedComponents((~support).astype(np.uint8), connectivity=4)
    outside = set(np.unique(labels[~crops[0].mask]).tolist())
    holes = [labels == k for k in range(1, count) if k not in outside]
    return _join_if_marked(crops, support, [h for h in holes if h.sum() >= min_hole], a, colour)


def _join_if_marked(
    crops: list[_Crop], support: np.ndarray, parts: list[np.ndarray], a: float, colour: np.ndarray
) -> np.ndarray:
    """The support joined by those ``parts`` (HxW bool each) whose inverted pixels continue the
    inverted support around them better than their pixels as they are (summed over images)."""
    inverted = [(c.j - a * colour) / (1.0 - a) for c in crops]
    out = support.copy()
    for part in parts:
        ring = (cv2.dilate(part.astype(np.uint8), _K3) > 0) & ~part & support
        if not ring.any():
            continue
        edge = part & (cv2.dilate(ring.astype(np.uint8), _K3) > 0)
        as_is = flipped = 0.0
        for crop, inv in zip(crops, inverted, strict=True):
            around = np.median(inv[ring], axis=0)
            as_is += float(np.abs(np.median(crop.j[edge], axis=0) - around).sum())
            flipped += float(np.abs(np.median(inv[edge], axis=0) - around).sum())
        if flipped < as_is:
            out |= part
    return out


def _plausible(inv: _Inverted, p: SingleParams) -> np.ndarray:
    """Pixels (HxW bool) whose inverted value departs from Telea's fill no more than the photo
    around the mask departs from its own local mean (times ``departure_ratio``); pixels deep
    inside a large mark, where the fill says nothing, all count as plausible."""
    crop = inv.crop
    m8 = crop.mask.astype(np.uint8)
    ring = (cv2.dilate(m8, np.ones((7, 7), np.uint8)) > 0) & ~crop.mask
    detail = np.abs(crop.grey - cv2.GaussianBlur(crop.grey, (0, 0), 2.0))
    spread = float(np.percentile(detail[ring], 95)) if ring.any() else 10.0
    limit = max(p.departure_floor, p.departure_ratio * spread)
    departure = np.linalg.norm(inv.recovered - crop.fill, axis=2) / np.sqrt(3.0)
    depth = cv2.distanceTransform(m8, cv2.DIST_L2, 3)
    return (departure <= limit) | (depth > p.outline_depth) | (inv.matte <= 0)


def _ghost(
    crop: _Crop, matte: np.ndarray, colour: np.ndarray, outline: np.ndarray | None = None
) -> float:
    """Edge energy left at the mark's outline after inverting with ``matte``, relative to the
    photo's own edge energy around the mask (about 1 when the mark is gone)."""
    if outline is None:
        outline = _outline(matte)
    m = matte[..., None]
    inverted = (crop.j - m * colour) / (1.0 - m)
    return float(np.mean(_sobel_energy(inverted)[outline])) / crop.photo_energy


def _visible(crop: _Crop, matte: np.ndarray) -> float:
    """Edge energy at the mark's outline before inverting, relative to the photo's own."""
    return float(np.mean(_sobel_energy(crop.j)[_outline(matte)])) / crop.photo_energy


def _outline(matte: np.ndarray) -> np.ndarray:
    """Pixels at the mark's outline (HxW bool): next to both marked and unmarked pixels."""
    return outline(matte > 0)


def _best_opacity(
    crops: list[_Crop], matte: np.ndarray, a: float, colour: np.ndarray, p: SingleParams
) -> float:
    """The opacity, within ``opacity_search`` of ``a`` and under the matte's shape, that leaves
    the least edge energy at the mark's outline (summed over the images)."""

    outline = _outline(matte)

    def ghost(mt: np.ndarray) -> float:
        return sum(_ghost(c, mt, colour, outline) for c in crops)

    best, best_ghost = a, ghost(matte)
    for f in np.linspace(1.0 - p.opacity_search, 1.0 + p.opacity_search, p.opacity_steps):
        a2 = a * float(f)
        if not p.min_alpha <= a2 <= p.max_alpha:
            continue
        g = ghost(matte * (a2 / a))
        if g < best_ghost:
            best, best_ghost = a2, g
    return best


def _sobel_energy(image: np.ndarray) -> np.ndarray:
    """Absolute Sobel gradients, x plus y, summed over the colour channels (HxW): a mark of
    another hue than the photo shows in colour more than in grey."""
    e = np.abs(cv2.Sobel(image, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(image, cv2.CV_32F, 0, 1))
    return e[..., 0] + e[..., 1] + e[..., 2]


def _holdout_gain(
    image: np.ndarray, mask: np.ndarray, inv: _Inverted, p: SingleParams
) -> float | None:
    """dB by which steps 1-4 beat Telea on copies of the mask beside it, each stamped with the
    estimated mark over the real photo there (pooled squared errors); ``None`` when no copy of
    at least ``holdout_min_share`` of the mask fits beside it (a mask too large for its image)."""
    y0, y1, x0, x1 = inv.crop.box
    ours = telea = 0.0
    copies = 0
    for sm, (by0, by1, bx0, bx1), (dy, dx) in _beside(
        mask, 2 * p.pad, int(p.holdout_min_share * mask.sum())
    )[: p.holdout_copies]:
        truth = np.ascontiguousarray(image[by0:by1, bx0:bx1])
        msub = sm[by0:by1, bx0:bx1]
        matte = np.zeros(msub.shape, np.float32)
        _paste(matte, inv.matte, y0 + dy - by0, x0 + dx - bx0)
        matte[~msub] = 0.0
        mat = matte[..., None]
        blend = (1.0 - mat) * truth + mat * inv.colour
        stamped = np.ascontiguousarray(np.clip(np.rint(blend), 0, 255).astype(np.uint8))
        fill = _telea(stamped, msub)
        again = _invert(stamped, msub, p)
        out = fill.copy()
        if again is not None:
            cy0, cy1, cx0, cx1 = again.crop.box
            use = again.crop.mask & (again.matte <= p.max_alpha)
            out[cy0:cy1, cx0:cx1][use] = again.recovered[use]
        t = truth.astype(np.float32)
        ours += float(((np.clip(np.rint(out), 0, 255) - t)[msub] ** 2).sum())
        telea += float(((fill - t)[msub] ** 2).sum())
        copies += 1
    if not copies:
        return None
    return float(10 * np.log10(max(telea, 1e-6) / max(ours, 1e-6)))


def _paste(dst: np.ndarray, src: np.ndarray, y: int, x: int) -> None:
    """Write ``src`` into ``dst`` with its top-left corner at (y, x), clipped to ``dst``."""
    h, w = dst.shape[:2]
    sy0, sx0 = max(0, -y), max(0, -x)
    dy0, dx0 = max(0, y), max(0, x)
    dy1, dx1 = min(h, y + src.shape[0]), min(w, x + src.shape[1])
    if dy1 > dy0 and dx1 > dx0:
        dst[dy0:dy1, dx0:dx1] = src[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]


def single_reason(recovered: bool, fitted: int) -> str:
    """The report's reason for an image of one to three whose mark was fitted to ``fitted``
    images at once (``recover_together``): "one-image fit", "fit to 2 images together", or
    that no fit it tried was confident."""
    if recovered:
        return "one-image fit" if fitted == 1 else f"fit to {fitted} images together"
    if fitted == 1:
        return "the one-image fit is not confident"
    return f"neither the fit to {fitted} images together nor the one-image fit is confident"
