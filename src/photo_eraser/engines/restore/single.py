"""Step 9: the pixels under a watermark from one image alone (batches of one to three).

Many real marks have one colour ``W`` and one opacity ``a`` over their body (anti-aliased
only at the rim). Inside the mask an inpainting ``F`` (OpenCV Telea from the mask's border)
predicts the photo's local colour, so the marked pixels follow ``J ~ a*W + (1-a)*F`` up to the
photo's texture. With ``F`` nearly constant over the mark, ``a`` and ``W`` trade off against
each other, so two estimates are combined:

* the least opaque mark that explains the pixels (``W`` on the boundary of the colour gamut;
  the median over the marked pixels of the smallest feasible opacity): exact for white and
  black marks, a lower bound for others;
* where ``F`` varies enough, the regression slope of ``J`` on ``F`` (``1 - a``), corrected by
  how much an inpainting flattens the photo, measured on copies of the mask shifted beside it
  where the truth is known (a hold-out);

``a`` is the larger, ``W`` the median of ``(J - (1-a)*F) / a``. Pixels whose own opacity (the
projection of ``J - F`` on ``W - F``) is near ``a`` and whose neighbours' is too form the body
and are inverted; masked pixels the mark does not reach are kept; the rest (the rim) is left
to the fallback.

The fit is used only when it is clearly a blend: it must explain most of ``J - F`` on the body,
inverting must weaken the mark's outline, the recovered body must show texture like the photo
around the mask, and per pixel the predicted inversion error (noise amplified by
``1/(1-a)`` plus the gap between the recovered and the inpainted local mean colour, where a
wrong ``a`` or ``W`` shows) must be below the predicted inpainting error (the recovered
detail around the local mean), on at least a fifth of the body. Otherwise ``None``: the image
is inpainted as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from photo_eraser.engines.restore.arrays import noise_level
from photo_eraser.engines.restore.estimate import Recovery
from photo_eraser.engines.restore.params import SingleParams


def _attenuation(image: np.ndarray, mask: np.ndarray, pad: int) -> float | None:
    """Hold-out slope of the true photo on its inpainting, for masks like ``mask`` nearby.

    The inpainting misses part of the photo's variation, so regressing ``J`` on the fill
    underestimates ``1 - a`` by this factor. Measured on copies of the mask shifted beside it
    (on unmarked pixels), where the truth is known.
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    bh, bw = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    big = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    num = den = 0.0
    m8 = mask.astype(np.uint8)
    for dy, dx in ((-bh - 8, 0), (bh + 8, 0), (0, -bw - 8), (0, bw + 8)):
        shift = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
        sm = cv2.warpAffine(m8, shift, (w, h), flags=cv2.INTER_NEAREST) > 0
        sm &= ~big
        sm[:4], sm[-4:], sm[:, :4], sm[:, -4:] = False, False, False, False
        if sm.sum() < 200:
            continue
        sy, sx = np.nonzero(sm)
        y0, y1 = max(0, sy.min() - pad), min(h, sy.max() + 1 + pad)
        x0, x1 = max(0, sx.min() - pad), min(w, sx.max() + 1 + pad)
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        sub = sm[y0:y1, x0:x1]
        fill = cv2.inpaint(crop, sub.astype(np.uint8), 3, cv2.INPAINT_TELEA)
        f = fill[sub].astype(np.float64)
        t = crop[sub].astype(np.float64)
        f -= f.mean(axis=0)
        t -= t.mean(axis=0)
        num += float((f * t).sum())
        den += float((f * f).sum())
    if den <= 0:
        return None
    return float(np.clip(num / den, 0.3, 1.0))


def _slope(j: np.ndarray, f: np.ndarray) -> float:
    """Robust slope ``b`` of ``J = c + b*F`` (one per pixel set, intercept per channel)."""
    wt = np.ones(len(j), np.float64)
    b = 1.0
    for _ in range(4):
        sw = wt.sum()
        fm = (wt[:, None] * f).sum(axis=0) / sw
        jm = (wt[:, None] * j).sum(axis=0) / sw
        fc, jc = f - fm, j - jm
        b = float((wt[:, None] * fc * jc).sum() / max((wt[:, None] * fc * fc).sum(), 1e-9))
        res = np.linalg.norm(jc - b * fc, axis=1)
        scale = 1.4826 * float(np.median(res)) + 1.0
        wt = 1.0 / (1.0 + (res / (2.0 * scale)) ** 2)
    return b


@dataclass
class _Crop:
    """The mask's padded box of one image, its Telea fill and the pixels far from the fill."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    j: np.ndarray
    """The image's pixels (float32 HxWx3)."""
    fill: np.ndarray
    """Telea's fill of the mask ``F`` (float32 HxWx3): the photo's local colour, roughly."""
    grey: np.ndarray
    noise: float
    distance: np.ndarray
    """``|J - F|`` per pixel."""
    threshold: float
    """Distance from the fill beyond which a masked pixel is taken as marked."""

    @property
    def marked(self) -> np.ndarray:
        return self.mask & (self.distance > self.threshold)


def recover_single(image: np.ndarray, mask: np.ndarray, p: SingleParams) -> Recovery | None:
    """Inverted pixels over the mask's box and where to use them; ``None`` if not confident."""
    crop = _look(image, mask, p)
    if crop is None or crop.marked.sum() < p.min_body:
        return None
    fitted = _fit_mark(crop, image, mask, p)
    if fitted is None:
        return None
    a, colour = fitted
    full_body, body, unmarked = _body(crop, a, colour, p)
    if body.sum() < max(p.min_body, p.min_body_share * crop.mask.sum()):
        return None
    beta = 1.0 - a
    rec = (crop.j - a * colour) / beta
    if not _is_a_blend(crop, a, colour, rec, full_body, body, p):
        return None
    ok = body & _beats_inpainting(crop, rec, body, beta)
    if ok.sum() < p.min_confident_share * body.sum():
        return None
    out = np.where(body[..., None], rec, crop.j)
    pixels = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Recovery(crop.box, pixels, ok | unmarked)


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
    m8 = m.astype(np.uint8)
    fill = cv2.inpaint(crop, m8, 3, cv2.INPAINT_TELEA).astype(np.float32)
    j = crop.astype(np.float32)
    grey = np.ascontiguousarray(j.mean(axis=2))
    ring = (cv2.dilate(m8, np.ones((7, 7), np.uint8)) > 0) & ~m
    noise = noise_level(grey, ring, min_pixels=20)
    d = np.linalg.norm(j - fill, axis=2)
    lap = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
    ring_dev = float(np.median(lap[ring])) if ring.any() else 4.0
    threshold = max(6.0 * noise, 2.0 * ring_dev, 10.0)
    return _Crop((y0, y1, x0, x1), m, j, fill, grey, noise, d, threshold)


def _fit_mark(
    crop: _Crop, image: np.ndarray, mask: np.ndarray, p: SingleParams
) -> tuple[float, np.ndarray] | None:
    """The mark's opacity ``a`` and colour ``W`` from its pixels, if ``a`` is in range."""
    cand = crop.marked
    jc, fc = crop.j[cand], crop.fill[cand]
    # The least opaque mark explaining the pixels (W on the colour gamut's boundary): exact
    # for white and black marks, a lower bound for others.
    up = (jc - fc) / np.maximum(255.0 - fc, 1.0)
    down = (fc - jc) / np.maximum(fc, 1.0)
    a = float(np.median(np.maximum(up, down).max(axis=1)))
    if float(fc.std(axis=0).mean()) >= p.min_fill_spread:
        lam = _attenuation(image, mask, p.pad)
        if lam is not None:
            a_cal = 1.0 - _slope(jc, fc) / lam
            a = max(a, a_cal)
    if not p.min_alpha <= a <= p.max_alpha:
        return None
    colour = np.clip(np.median((jc - (1.0 - a) * fc) / a, axis=0), 0.0, 255.0).astype(np.float32)
    return a, colour


def _body(
    crop: _Crop, a: float, colour: np.ndarray, p: SingleParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels at the mark's opacity, those of them inside the body (not its rim), and the
    masked pixels the mark does not reach (HxW bool each)."""
    j, fill, m = crop.j, crop.fill, crop.mask
    # Per-pixel opacity: projection of J - F on W - F.
    dw = colour[None, None, :] - fill
    own = ((j - fill) * dw).sum(axis=2) / np.maximum((dw * dw).sum(axis=2), 1.0)
    own = cv2.medianBlur(own.astype(np.float32), 3)
    full_body = m & (np.abs(own - a) <= p.body_tolerance * a)
    # The rim (partial opacity) is not the body: keep pixels whose neighbours are body too.
    body = cv2.erode(full_body.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    # Masked pixels the mark does not reach (masks are drawn with a margin) are kept as they
    # are: far from the fill, and not next to a pixel that is.
    near = cv2.dilate(crop.marked.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    unmarked = m & (own < 0.1 * a) & (crop.distance < crop.threshold) & ~near
    return full_body, body, unmarked


def _is_a_blend(
    crop: _Crop,
    a: float,
    colour: np.ndarray,
    rec: np.ndarray,
    full_body: np.ndarray,
    body: np.ndarray,
    p: SingleParams,
) -> bool:
    """Whether the fit clearly is a blend: it explains most of ``J - F`` on the body, the
    recovered body shows texture like the photo around the mask, and inverting weakens the
    mark's outline."""
    j, fill, grey = crop.j, crop.fill, crop.grey
    beta = 1.0 - a
    res = np.linalg.norm(j - a * colour - beta * fill, axis=2)[full_body]
    if float(np.median(res)) > p.max_unexplained * float(np.median(crop.distance[full_body])):
        return False
    gx = np.zeros_like(grey)
    gy = np.zeros_like(grey)
    rg = np.ascontiguousarray(rec.mean(axis=2))
    gx[:, :-1] = rg[:, 1:] - rg[:, :-1]
    gy[:-1] = rg[1:] - rg[:-1]
    g_rec = float(np.mean((gx * gx + gy * gy)[body]))
    gx[:, :-1] = grey[:, 1:] - grey[:, :-1]
    gy[:-1] = grey[1:] - grey[:-1]
    m8 = crop.mask.astype(np.uint8)
    outer = (cv2.dilate(m8, np.ones((15, 15), np.uint8)) > 0) & ~(
        cv2.dilate(m8, np.ones((3, 3), np.uint8)) > 0
    )
    g_out = float(np.mean((gx * gx + gy * gy)[outer])) if outer.any() else 0.0
    tex = np.sqrt((g_rec + 1.0) / (g_out + 1.0))
    if not p.texture_range[0] <= tex <= p.texture_range[1]:
        return False
    edge = (
        cv2.morphologyEx(full_body.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
        > 0
    )
    before = float(_sobel_energy(j)[edge].sum())
    after = float(
        _sobel_energy(np.where(full_body[..., None], j - a * colour + a * fill, j))[edge].sum()
    )
    return after / max(before, 1e-6) <= p.max_ghost


def _sobel_energy(x: np.ndarray) -> np.ndarray:
    """Absolute Sobel gradients of the grey image, x plus y (HxW)."""
    g = x.mean(axis=2)
    return np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))


def _beats_inpainting(crop: _Crop, rec: np.ndarray, body: np.ndarray, beta: float) -> np.ndarray:
    """Per pixel: predicted inversion error below predicted inpainting error (HxW bool).

    An inpainting gets the local mean colour about right and misses the detail; the inversion's
    local mean departing from the inpainting's counts as its error (a wrong ``a`` or ``W``
    shows up there), with the noise amplified by ``1/beta``.
    """
    bf = body.astype(np.float32)
    wsum = np.maximum(cv2.blur(bf, (7, 7)), 1e-6)[..., None]
    lm_rec = cv2.blur(rec * bf[..., None], (7, 7)) / wsum
    lm_fill = cv2.blur(crop.fill * bf[..., None], (7, 7)) / wsum
    bias2 = ((lm_rec - lm_fill) ** 2).mean(axis=2)
    inv_err2 = (crop.noise / beta) ** 2 + bias2
    detail2 = cv2.blur((((rec - lm_rec) ** 2).mean(axis=2)) * bf, (7, 7)) / wsum[..., 0]
    return inv_err2 <= detail2
