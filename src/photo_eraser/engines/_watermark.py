"""Estimating a shared visible watermark from a batch of aligned crops.

Model, per pixel p of image k: ``J_k(p) = c(p) + beta(p) * I_k(p)`` with ``beta = 1 - alpha``
and ``c = alpha * W`` (the watermark colour W may vary across the mark). Outside the domain
(the mask) there is no watermark: ``beta = 1``, ``c = 0``.

Two facts about natural photos identify ``beta`` and ``c`` from a batch:

* neighbouring pixels p, q of one photo are nearly equal, so across the batch
  ``J_k(p) ~ (beta_p / beta_q) * J_k(q) + const``: a robust regression per pixel pair gives the
  ratio ``beta_p / beta_q``, and integrating ``log beta`` (a Poisson problem, ``0`` on the
  domain's border) gives ``beta``;
* with ``Z_k = J_k / beta = I_k + u`` (``u = c / beta``), a robust mean (median, refined)
  over the batch of the gradient of ``Z_k`` is the gradient of ``u`` (photo gradients are
  sparse and differ between photos; Dekel et al., CVPR 2017); a second Poisson solve gives
  ``u``.

Then ``I_k = J_k / beta - u``. All arrays here are float32 crops on a common grid.

On lossless batches (``estimate_blend(..., lossless=True)``) an exact-blend fit may replace
the second half of this: ``c = alpha * W`` with one smoothly varying colour ``W``, ratio fits
through the origin of ``J - W``, flat opacity where the data cannot tell a step, and the mark's
body pooled into one value (``_exact_fit``); it is kept only if it explains the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import splu

_MIN_BETA = 0.02
"""Lower clamp for the estimated ``1 - alpha``; below the inversion bound anyway."""
_RESIDUAL_FLOOR = 1.0
"""Added to the residual scale (grey levels) of the robust fits, so it never reaches 0."""
_CAUCHY = 0.6
"""Cauchy weight width in residual scales. Narrow: photo edges make the residuals very
heavy-tailed, and a narrow width gave the best estimates on synthetic batches."""
_IRLS_ITERATIONS = 5
_SIGNAL_VARIANCE = 100.0
"""Per-image variance (grey levels^2) at which an edge's fit gets half weight."""
_ANCHOR = 1e-6
"""Tiny pull to 0 in the Poisson solves, so pixels without informative edges stay defined."""
_TEXTURE = 2.0
"""Local gradient RMS (grey levels) of a recovered photo at which its edges get half weight in
the refinement: a smooth neighbourhood tells the mark's edges far more precisely."""
_REFINE_MIN_IMAGES = 6
"""Smallest batch that is refined: with fewer images, leaving one out (the jackknife) moves the
texture-weighted fits too much, and the refined estimate was not better on JPEG batches."""
_TEXTURE_MIN_BETA = 0.15
"""Under (nearly) opaque parts the photo is not recovered: its texture is measured with at most
this amplification, so noise blown up by ``1/beta`` does not swamp the weights around them."""
_REFINE_MARKED_ALPHA = 0.1
_REFINE_OPAQUE_SPREAD = 0.1
_REFINE_MAX_OPAQUE = 0.5
"""The refinement is skipped when more than this share of the marked pixels is (nearly)
opaque: beta under ``_TEXTURE_MIN_BETA`` or varying over the batch less than
``_REFINE_OPAQUE_SPREAD`` of the surroundings (as the engine decides). Marked: the first fit's
alpha above ``_REFINE_MARKED_ALPHA``, or opaque by the spread (the edge fits cannot see inside
an opaque mark). Semi-transparent marks score about 0, opaque ones 0.6 to 0.9."""
_REFINE_ITERATIONS = 2
_REFINE_REWEIGHTS = 2
_REFINE_IRLS_ITERATIONS = 2
"""IRLS iterations of the first fit when it is refined (it only needs to be good enough to
tell smooth from textured neighbourhoods)."""
_REFINE_CAUCHY = 1.5
"""Cauchy width (residual scales) of the refinement's fits; the texture weights already
discount most photo edges, so it is wider than ``_CAUCHY``."""
_REFINE_FLOOR = 0.5
"""Residual-scale floor (grey levels) of the refinement's robust mean."""

_EXACT_ITERATIONS = 4
"""Rounds of the exact-blend fit (opacity, then colour)."""
_EXACT_SNAP = 1.5
"""Edges whose log opacity ratio is within this many standard errors of 0 are taken as flat:
a mark's opacity is mostly constant, with steps at its outline (its anti-aliased rim)."""
_EXACT_SNAP_MAX_ERROR = 0.03
"""... and only when that standard error is below this (imprecise edges keep their ratio)."""
_EXACT_PLATEAU_ITERATIONS = 2
"""Further rounds with the mark's body (its most common opacity) as one value."""
_EXACT_PLATEAU_BIN = 0.005
_EXACT_PLATEAU_WIDTH = 0.003
_EXACT_PLATEAU_MAX_WIDTH = 0.02
_EXACT_PLATEAU_ERRORS = 2.0
"""A pixel joins the body if within this many of its standard errors of the mode (the
standard error from the precisions of its edges' ratio fits), within at least
``_EXACT_PLATEAU_WIDTH`` (a wider floor, 0.01, pooled rim pixels of 94-96 % coverage with the
body: -0.2 dB on lossless batches) and never farther than ``_EXACT_PLATEAU_MAX_WIDTH``: pixels
with few edges (at the image's edge) have large errors, and rim pixels there were pulled into
the body."""
_EXACT_PLATEAU_MIN_SHARE = 0.2
"""The body is pooled only if at least this share of the marked pixels is at its opacity."""
_EXACT_IRLS = 4
"""Reweighting steps of the first round's ratio fits (later rounds start from the last
weights and take one step)."""
_EXACT_TEXTURE_EVERY = 2
"""Rounds between updates of the texture weights (they change slowly)."""
_EXACT_COLOUR_IRLS = 2
"""Reweighting steps of each colour fit."""
_EXACT_MIN_BATCH = 3
"""Smallest batch the exact fit is tried on (with three images it often holds already)."""
_EXACT_IMAGE_EDGES = 950_000
_EXACT_MIN_IMAGES = 8
"""Larger batches are fitted on an evenly spread subset of images: as many as keep images x
edges under ``_EXACT_IMAGE_EDGES`` (10 for 20 full-HD photos with a 2% text mark), at least
``_EXACT_MIN_IMAGES``. The cost grows with the images, the precision beyond a dozen hardly."""
_EXACT_UNMARKED_ALPHA = 0.02
_EXACT_UNMARKED_OFFSET = 1.0
"""A first fit's pixel with less opacity and offset than these (and no such neighbour) is
taken as unmarked by the exact fit."""
_EXACT_RIM_STEP = 0.01
"""Edges across which ``alpha / beta`` changes by more than this inform the colour fit."""
_EXACT_DEGREE = 2
"""Degree of the polynomial (in x and y) that the mark's colour W follows in the exact fit."""
_EXACT_MIN_ALPHA = 0.1
"""Pixels at least this opaque (first fit) give the exact fit's starting colour."""
_EXACT_MAX_RSS_RATIO = 1.4
"""The exact fit is kept only if, at the mark's outline, its residuals (one ratio per edge) are
at most this times the free fit's (a ratio and three offsets per edge), relative to what the
free fit's extra parameters alone explain (``(3N - 1) / (3N - 4)`` for N images): about 1.0-1.2
for an exact blend of one smooth colour, 1.4 and more after JPEG, 2 and more with a mark of
two colours."""
_EXACT_MAX_RSS_RATIO_FEW = {3: 1.7, 4: 1.6}
"""... except with three or four images, where the free fit is rough and clean blends score
higher: on 36 dev batches each, exact blends scored up to 2.2 (three images) and 1.55 (four),
marks of two colours 1.7 and more. (PNG files JPEG-compressed after the mark score like clean
ones; with so few images the exact fit still does better on them than the alternatives.)"""
_EXACT_MAX_COLOUR_RESIDUAL = 5.0
"""... and if the first fit's offset ``alpha * W`` departs from ``alpha`` times the smooth
colour by at most this (grey levels, median over the marked pixels): 1-3.5 for one colour,
6 and more after JPEG, 20 and more with two colours."""


@dataclass(frozen=True)
class BlendEstimate:
    """``beta = 1 - alpha`` (HxW) and ``u = alpha * W / beta`` (HxWx3) on the grid.

    ``spread`` (HxW) is a rough, independent ``beta``: each pixel's spread over the batch
    relative to the surroundings' (near 0 under an opaque mark).
    """

    beta: np.ndarray
    u: np.ndarray
    spread: np.ndarray
    exact: bool = False
    """Whether the exact-blend fit (one smooth colour, lossless images) was used."""

    def invert(self, crop: np.ndarray) -> np.ndarray:
        """The photo under the watermark for one grid crop (float32, not clipped)."""
        return crop / self.beta[..., None] - self.u

    @property
    def offset(self) -> np.ndarray:
        """``c = alpha * W`` (HxWx3), the additive part of the blend."""
        return self.u * self.beta[..., None]


class GridSolver:
    """Edges of the domain and a factorised Poisson matrix with a zero Dirichlet border.

    The batch is handled as compact arrays over the solver's ``nodes`` (the domain's pixels and
    the ring of pixels just outside it); ``solve(g)`` returns the node values ``v`` (``0``
    outside the domain) whose differences ``v[ea] - v[eb]`` best fit ``g`` in least squares.
    With ``valid`` (HxW bool), only edges between valid pixels are used: invalid pixels are
    no nodes (``scatter`` fills them; ``known`` is false for those in the domain), and where
    the domain meets them its border is free. If that leaves the domain no border at all,
    ``valid`` is ignored; ``self.valid`` is the map used.
    """

    def __init__(self, domain: np.ndarray, valid: np.ndarray | None = None) -> None:
        h, w = domain.shape
        if domain[0].any() or domain[-1].any() or domain[:, 0].any() or domain[:, -1].any():
            raise ValueError("the domain must not touch the grid's border")
        self.shape = (h, w)
        self.domain = domain
        flat = domain.ravel()
        ids = np.arange(h * w).reshape(h, w)
        # Edge (a, b): a is the right / lower neighbour of b; kept if either end is unknown.
        a = np.concatenate([ids[:, 1:].ravel(), ids[1:, :].ravel()])
        b = np.concatenate([ids[:, :-1].ravel(), ids[:-1, :].ravel()])
        keep = flat[a] | flat[b]
        self.valid = np.ones((h, w), dtype=bool)
        if valid is not None:
            # Off the images (a mask at the image's edge) nothing is known, in particular not
            # that the mark ends there: no edges reach those pixels, so the image's edge is a
            # free (Neumann) boundary rather than a beta = 1 anchor. Unless that leaves no
            # border at all to anchor to (the mask covers the whole image).
            ok = valid.ravel()
            on = keep & ok[a] & ok[b]
            if (on & ~(flat[a] & flat[b])).any():
                keep = on
                self.valid = valid
        a, b = a[keep], b[keep]
        self.nodes = np.union1d(a, b)
        self.ea = np.searchsorted(self.nodes, a)
        self.eb = np.searchsorted(self.nodes, b)
        inside = flat[self.nodes]
        self.inside = inside
        # Pixels with a value: off the domain (no mark), or nodes in it.
        self.known = ~domain
        self.known.ravel()[self.nodes[inside]] = True
        unknown = np.full(self.nodes.size, -1, dtype=np.int64)
        unknown[inside] = np.arange(int(inside.sum()))
        ia, ib = unknown[self.ea], unknown[self.eb]
        rows = np.arange(a.size)
        inc = sparse.coo_matrix(
            (
                np.concatenate([np.ones(int((ia >= 0).sum())), -np.ones(int((ib >= 0).sum()))]),
                (
                    np.concatenate([rows[ia >= 0], rows[ib >= 0]]),
                    np.concatenate([ia[ia >= 0], ib[ib >= 0]]),
                ),
            ),
            shape=(a.size, int(inside.sum())),
        ).tocsr()
        self._incidence = inc

    def gather(self, stack: np.ndarray) -> np.ndarray:
        """Node values of grid arrays: (..., H, W[, C]) -> (..., M[, C])."""
        h, w = self.shape
        lead = stack.shape[: stack.ndim - 2] if stack.shape[-2:] == (h, w) else stack.shape[:-3]
        tail = () if stack.shape[-2:] == (h, w) else stack.shape[-1:]
        flat = stack.reshape(lead + (h * w,) + tail)
        return flat[..., self.nodes, :] if tail else flat[..., self.nodes]

    def scatter(self, values: np.ndarray, fill: float) -> np.ndarray:
        """Grid array from node values (M[, C]); ``fill`` elsewhere."""
        h, w = self.shape
        out = np.full((h * w,) + values.shape[1:], fill, dtype=np.float32)
        out[self.nodes] = values
        return out.reshape((h, w) + values.shape[1:])

    def poisson(
        self, weights: np.ndarray, anchor: float, tied: np.ndarray | None = None
    ) -> _Poisson:
        """A factorised weighted Poisson problem on the domain (see ``_Poisson``)."""
        return _Poisson(self, weights, anchor, tied)


class _Poisson:
    """Least-squares integration of edge differences with a zero Dirichlet border.

    ``solve(g)`` returns node values ``v`` (``0`` outside the domain) minimising
    ``sum_e w_e (v[ea] - v[eb] - g_e)^2 + anchor * sum_p v_p^2``. With ``tied`` (a bool per
    domain node), those nodes share one value.
    """

    def __init__(
        self,
        solver: GridSolver,
        weights: np.ndarray,
        anchor: float,
        tied: np.ndarray | None = None,
    ) -> None:
        self._solver = solver
        inc = solver._incidence
        self._expand = None
        if tied is not None and tied.any():
            n = inc.shape[1]
            free = ~tied
            column = np.empty(n, dtype=np.int64)
            column[free] = np.arange(int(free.sum()))
            column[tied] = int(free.sum())
            self._expand = sparse.csr_matrix(
                (np.ones(n), (np.arange(n), column)), shape=(n, int(free.sum()) + 1)
            )
            inc = inc @ self._expand
        self._weights = weights.astype(np.float64)
        self._weighted_t = (inc.T @ sparse.diags(self._weights)).tocsr()
        n = inc.shape[1]
        matrix = self._weighted_t @ inc + anchor * sparse.identity(n, format="csr")
        self._lu = splu(matrix.tocsc())

    def solve(self, g: np.ndarray) -> np.ndarray:
        """Integrate edge differences ``g`` (E or ExC) into node values (M or MxC)."""
        solver = self._solver
        rhs = self._weighted_t @ g.astype(np.float64)
        values = self._lu.solve(rhs)
        if self._expand is not None:
            values = self._expand @ values
        out = np.zeros((solver.nodes.size,) + g.shape[1:], dtype=np.float32)
        out[solver.inside] = values
        return out


class _EdgeFit:
    """Per-edge robust regression of ``J(a)`` on ``J(b)`` over the images of a batch.

    For an edge (a, b) and images n, ``J_n(a) = r * J_n(b) + d`` (one slope ``r``, one
    intercept per channel) where ``r = beta_a / beta_b``: neighbouring photo pixels are nearly
    equal, and a photo edge between a and b only makes that image an outlier. The fit is
    iteratively reweighted least squares (Cauchy weights); the slope is the symmetric one
    (geometric mean of y-on-x and inverse x-on-y), so noise in J(b) does not bias it.
    Arrays are channels-first: (3, N, E).
    """

    def __init__(self, values: np.ndarray, solver: GridSolver) -> None:
        # Indexing the last axis leaves the edges outermost in memory; the sums over channels
        # below run several times faster on C-ordered copies.
        self.y = np.ascontiguousarray(values[:, :, solver.ea])
        self.x = np.ascontiguousarray(values[:, :, solver.eb])
        # Centre once so the float32 moment sums below do not cancel catastrophically.
        self.y_mean = self.y.mean(axis=1)
        self.x_mean = self.x.mean(axis=1)
        self.y -= self.y_mean[:, None]
        self.x -= self.x_mean[:, None]
        self.xx = np.einsum("cne,cne->ne", self.x, self.x)
        self.yy = np.einsum("cne,cne->ne", self.y, self.y)
        self.xy = np.einsum("cne,cne->ne", self.x, self.y)

    def subset(self, images: np.ndarray, edges: np.ndarray | None = None) -> _EdgeFit:
        """The same data for some images (indices) and edges (E bool, all by default); still
        centred on the whole batch's means, which every use here allows."""
        sub = object.__new__(_EdgeFit)
        keep = slice(None) if edges is None else edges
        c = np.ascontiguousarray  # as in __init__
        sub.y, sub.x = c(self.y[:, images][:, :, keep]), c(self.x[:, images][:, :, keep])
        sub.y_mean, sub.x_mean = c(self.y_mean[:, keep]), c(self.x_mean[:, keep])
        sub.xx, sub.yy = c(self.xx[images][:, keep]), c(self.yy[images][:, keep])
        sub.xy = c(self.xy[images][:, keep])
        return sub

    def slope(self, w: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Weighted fit on the images ``rows`` (all by default): slope, sums of w, x, y."""
        x, y, xx, yy, xy = self.x, self.y, self.xx, self.yy, self.xy
        if rows is not None:
            x, y, xx, yy, xy, w = x[:, rows], y[:, rows], xx[rows], yy[rows], xy[rows], w[rows]
        sw = w.sum(axis=0)
        sx = np.einsum("ne,cne->ce", w, x)
        sy = np.einsum("ne,cne->ce", w, y)
        sxx = np.maximum(np.einsum("ne,ne->e", w, xx) - (sx * sx).sum(axis=0) / sw, 0.0)
        syy = np.maximum(np.einsum("ne,ne->e", w, yy) - (sy * sy).sum(axis=0) / sw, 0.0)
        sxy = np.einsum("ne,ne->e", w, xy) - (sx * sy).sum(axis=0) / sw
        r = np.where(sxy > 0, np.sqrt((syy + 1e-3) / (sxx + 1e-3)), 1.0).astype(np.float32)
        # Per-sample variance of the weaker end: how much signal the edge's fit had.
        info = np.minimum(sxx, syy) / (x.shape[0] * sw)
        return r, sw, sx, sy, info

    def residuals(
        self, r: np.ndarray, sw: np.ndarray, sx: np.ndarray, sy: np.ndarray
    ) -> np.ndarray:
        """Residual norm over channels of every image at every edge (N, E) for a fit."""
        d = (sy - r * sx) / sw
        proj = np.einsum("cne,ce->ne", self.y, d) - r * np.einsum("cne,ce->ne", self.x, d)
        res2 = self.yy - 2 * r * self.xy + r * r * self.xx - 2 * proj + (d * d).sum(axis=0)
        return np.sqrt(np.maximum(res2, 0.0))

    def robust(
        self, iterations: int = _IRLS_ITERATIONS
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """IRLS over all images: slope and Poisson weight per edge, final weights (N, E).

        The Poisson weight is the slope's precision (signal over residual variance, relative
        to the median edge), damped where the ends barely vary over the batch (an opaque
        mark, flat photos): there the ratio says little whatever the residuals.
        """
        w = np.ones(self.xx.shape, dtype=np.float32)
        r, sw, sx, sy, info = self.slope(w)
        for _ in range(iterations if self.xx.shape[0] >= 3 else 0):
            res = self.residuals(r, sw, sx, sy)
            scale = 1.4826 * batch_median(res, axis=0) + _RESIDUAL_FLOOR
            w = 1.0 / (1.0 + (res / (_CAUCHY * scale)) ** 2)
            r, sw, sx, sy, info = self.slope(w)
        res = self.residuals(r, sw, sx, sy)
        noise = (w * res * res).sum(axis=0) / sw + _RESIDUAL_FLOOR**2
        precision = info / noise
        precision /= max(float(np.median(precision)), 1e-12)
        weight = np.clip(precision, 0.01, 100.0) * info / (info + _SIGNAL_VARIANCE)
        return r, weight, w


def batch_median(a: np.ndarray, axis: int) -> np.ndarray:
    """``np.median`` along a short axis; sorting is several times faster than partitioning here."""
    s = np.sort(a, axis=axis)
    n = a.shape[axis]
    return (np.take(s, (n - 1) // 2, axis=axis) + np.take(s, n // 2, axis=axis)) * 0.5


def channel_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the last axis of 3 colour channels; equal to ``a.mean(axis=-1)`` and many
    times faster (numpy reduces a short last axis slowly)."""
    return (a[..., 0] + a[..., 1] + a[..., 2]) / a.dtype.type(3)


def _robust_mean(a: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Robust location over the images (axis 1 of a 3 x N x E array).

    Starts at the median and refines it with Cauchy weights (scale: the median absolute
    deviation), which uses the images that agree more efficiently than the median alone.
    """
    loc = batch_median(a, axis=1)
    scale = 1.4826 * batch_median(np.abs(a - loc[:, None]), axis=1) + _RESIDUAL_FLOOR
    width = (_CAUCHY * scale)[:, None]
    for _ in range(iterations):
        w = a - loc[:, None]
        w /= width
        np.square(w, out=w)
        w += 1.0
        np.reciprocal(w, out=w)
        loc = np.einsum("cne,cne->ce", w, a) / w.sum(axis=1)
    return loc


def _integrate(
    fit: _EdgeFit,
    slope: np.ndarray,
    poisson: _Poisson,
    rows: np.ndarray | None = None,
    iterations: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """``beta`` (M) from edge slopes, then ``u`` (3 x M) from the robust mean gradient of J/beta.

    Uses the images ``rows`` of the fit (all by default).
    """
    solver = poisson._solver
    beta = _integrate_ratio(slope, poisson)
    inv_a, inv_b = 1.0 / beta[solver.ea], 1.0 / beta[solver.eb]
    y, x = (fit.y, fit.x) if rows is None else (fit.y[:, rows], fit.x[:, rows])
    # Gradient of J/beta along each edge; the fit's centring is added back after the median.
    diff = y * inv_a
    diff -= x * inv_b
    grad = _robust_mean(diff, iterations) + fit.y_mean * inv_a - fit.x_mean * inv_b
    return beta, poisson.solve(grad.T).T


def _texture_weights(
    stack: np.ndarray, beta: np.ndarray, u: np.ndarray, solver: GridSolver
) -> np.ndarray:
    """Per image and edge (N x E): weight from the local texture of the recovered photo.

    The photo under the mark is recovered with the current estimate and its squared gradient
    averaged over 5x5 pixels; an edge counts by how smooth the photo is around it (the larger of
    its two ends), so images that are flat there dominate the fits. Estimation errors show up
    the same in every image, so they do not change the images' relative weights.
    """
    inv = 1.0 / np.maximum(solver.scatter(beta, 1.0), _TEXTURE_MIN_BETA)
    offset = solver.scatter(u.T, 0.0)
    energy = np.empty(stack.shape[:3], dtype=np.float32)
    for k, crop in enumerate(stack):
        rec = crop * inv[..., None]
        rec -= offset
        e = np.zeros(rec.shape[:2], dtype=np.float32)
        d = rec[:, 1:] - rec[:, :-1]
        e[:, :-1] += np.einsum("hwc,hwc->hw", d, d)
        d = rec[1:] - rec[:-1]
        e[:-1] += np.einsum("hwc,hwc->hw", d, d)
        energy[k] = cv2.blur(e, (5, 5))
    nodes = solver.gather(energy)
    local = np.maximum(nodes[:, solver.ea], nodes[:, solver.eb])
    return (1.0 / (1.0 + local / _TEXTURE**2)).astype(np.float32)


def _weighted_mean(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean over the images (axis 1 of a 3 x N x E array; weights N x E)."""
    return np.einsum("ne,cne->ce", w, a) / np.maximum(w.sum(axis=0), 1e-12)


def _gradients(
    fit: _EdgeFit, beta: np.ndarray, solver: GridSolver, rows: np.ndarray | None = None
) -> np.ndarray:
    """Gradient of ``J/beta`` along every edge, per image (3 x N x E); images ``rows`` only."""
    inv_a, inv_b = 1.0 / beta[solver.ea], 1.0 / beta[solver.eb]
    y, x = (fit.y, fit.x) if rows is None else (fit.y[:, rows], fit.x[:, rows])
    diff = y * inv_a
    diff -= x * inv_b
    diff += (fit.y_mean * inv_a - fit.x_mean * inv_b)[:, None]
    return diff


def _refine(
    fit: _EdgeFit,
    poisson: _Poisson,
    stack: np.ndarray,
    beta: np.ndarray,
    u: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Re-fit ``beta`` and ``u`` weighting each image's edges by the photo's local smoothness.

    The first estimate treats every image alike at every edge (robust weights only). With it,
    the photos under the mark are recovered well enough to see where each one is smooth; the
    edge fits (ratios, then the robust mean gradient) are redone with those weights times
    Cauchy weights on the new residuals, and this is repeated. Returns ``beta``, ``u`` and the
    final weights of the ratio fits and of the gradient means (N x E each), kept for the
    jackknife.
    """
    solver = poisson._solver
    w_slope = w_grad = np.ones(fit.xx.shape, dtype=np.float32)
    for _ in range(_REFINE_ITERATIONS):
        texture = _texture_weights(stack, beta, u, solver)
        r, sw, sx, sy, _ = fit.slope(texture)
        res = fit.residuals(r, sw, sx, sy)
        scale = 1.4826 * batch_median(res, axis=0) + _RESIDUAL_FLOOR
        w_slope = texture / (1.0 + (res / (_REFINE_CAUCHY * scale)) ** 2)
        beta = _integrate_ratio(fit.slope(w_slope)[0], poisson)
        grad = _gradients(fit, beta, solver)
        norm2 = np.einsum("cne,cne->ne", grad, grad)
        loc = _weighted_mean(grad, texture)
        scale2 = None
        for _ in range(_REFINE_REWEIGHTS):
            # Squared distance of every image's gradient from the current mean, by moments.
            res2 = norm2 - 2.0 * np.einsum("cne,ce->ne", grad, loc) + (loc * loc).sum(axis=0)
            np.maximum(res2, 0.0, out=res2)
            if scale2 is None:
                scale = 1.4826 * batch_median(np.sqrt(res2), axis=0) + _REFINE_FLOOR
                scale2 = (_REFINE_CAUCHY * scale) ** 2
            w_grad = texture / (1.0 + res2 / scale2)
            loc = _weighted_mean(grad, w_grad)
        u = poisson.solve(loc.T).T
    return beta, u, w_slope, w_grad


def _refinable(beta: np.ndarray, spread: np.ndarray, solver: GridSolver) -> bool:
    """Whether to refine a first fit: not for a mostly opaque mark.

    Such a mark leaves little to invert (its anti-aliased rim), and next to opaque parts the
    recovered photos' texture means nothing; the full robust fit is kept instead.
    """
    flat = spread < _REFINE_OPAQUE_SPREAD
    marked = solver.inside & ((beta < 1.0 - _REFINE_MARKED_ALPHA) | flat)
    opaque = marked & ((beta < _TEXTURE_MIN_BETA) | flat)
    return bool(marked.any() and opaque.sum() < _REFINE_MAX_OPAQUE * marked.sum())


def _integrate_ratio(slope: np.ndarray, poisson: _Poisson) -> np.ndarray:
    """``beta`` (M) from the edges' ratios ``beta_a / beta_b`` (a Poisson solve of the logs)."""
    log_ratio = np.log(np.clip(slope, _MIN_BETA, 1.0 / _MIN_BETA))
    return np.clip(np.exp(poisson.solve(log_ratio)), _MIN_BETA, 1.0).astype(np.float32)


def _refined_without(
    fit: _EdgeFit,
    poisson: _Poisson,
    w_slope: np.ndarray,
    w_grad: np.ndarray,
    rows: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The refined fit on the images ``rows`` only, keeping the full fit's weights."""
    solver = poisson._solver
    beta = _integrate_ratio(fit.slope(w_slope, rows)[0], poisson)
    grad = _gradients(fit, beta, solver, rows)
    return beta, poisson.solve(_weighted_mean(grad, w_grad[rows]).T).T


def _colour_basis(solver: GridSolver) -> np.ndarray:
    """Monomials in x and y up to ``_EXACT_DEGREE`` at the nodes (T x M), x and y in [-1, 1]."""
    h, w = solver.shape
    yy, xx = np.divmod(solver.nodes, w)
    size = float(max(h, w))
    x, y = (xx - w / 2) / size, (yy - h / 2) / size
    terms = [x**i * y ** (d - i) for d in range(_EXACT_DEGREE + 1) for i in range(d + 1)]
    return np.stack(terms).astype(np.float64)


def _colour_from_offset(
    beta: np.ndarray, u: np.ndarray, basis: np.ndarray, inside: np.ndarray
) -> np.ndarray | None:
    """Smooth colour (3 x T coefficients) best explaining a fit's offset ``c = alpha * W``."""
    alpha = 1.0 - beta
    marked = inside & (alpha >= _EXACT_MIN_ALPHA)
    if marked.sum() < 4 * basis.shape[0]:
        return None
    design = (basis[:, marked] * alpha[marked]).T
    offset = (u * beta)[:, marked].T.astype(np.float64)
    return np.linalg.lstsq(design, offset, rcond=None)[0].T


def _colour_from_gradients(
    values: np.ndarray,
    beta: np.ndarray,
    basis: np.ndarray,
    texture: np.ndarray,
    solver: GridSolver,
) -> np.ndarray:
    """Smooth colour (3 x T) whose term ``W * alpha / beta`` best explains the gradients of J/beta.

    ``J_k / beta = I_k + W * gamma`` with ``gamma = alpha / beta``: across each edge, the mark's
    part of the gradient is linear in the colour's few coefficients; photo gradients are the
    noise, down-weighted by texture and Cauchy weights (one small least-squares problem).
    """
    gamma = (1.0 - beta) / beta
    # Only edges across which the mark's strength changes say much about its colour.
    rim = np.abs(gamma[solver.ea] - gamma[solver.eb]) > _EXACT_RIM_STEP
    ea, eb = solver.ea[rim], solver.eb[rim]
    grad = values[:, :, ea] / beta[ea] - values[:, :, eb] / beta[eb]
    design = basis[:, ea] * gamma[ea] - basis[:, eb] * gamma[eb]  # T x E
    w = texture[:, rim]
    theta = np.zeros((3, basis.shape[0]))
    for _ in range(_EXACT_COLOUR_IRLS):
        total = w.sum(axis=0)
        lhs = (design * total) @ design.T + 1e-9 * np.eye(basis.shape[0])
        rhs = design @ np.einsum("ne,cne->ce", w, grad).T
        theta = np.linalg.solve(lhs, rhs).T
        res = np.sqrt(((grad - (theta @ design)[:, None].astype(np.float32)) ** 2).sum(axis=0))
        scale = 1.4826 * batch_median(res, axis=0) + _REFINE_FLOOR
        w = texture[:, rim] / (1.0 + (res / (_REFINE_CAUCHY * scale)) ** 2)
    return theta


@dataclass
class _ExactRatios:
    """Per-edge fits of ``J(a) - W(a) = (beta_a / beta_b) * (J(b) - W(b))`` over the images."""

    log_ratio: np.ndarray
    precision: np.ndarray
    weights: np.ndarray


def _exact_ratios(
    fit: _EdgeFit,
    colour_a: np.ndarray,
    colour_b: np.ndarray,
    texture: np.ndarray,
    start: np.ndarray | None,
) -> _ExactRatios:
    """Ratio fits through the origin: with the colour known, ``J - W = beta * (I - W)``.

    No offsets to fit, and the lever arm is the distance of each pixel from the mark's colour
    (not its spread over the batch), so each ratio is far more precise than the free fit's.
    ``colour_a`` and ``colour_b`` (3 x E) are the colour at each edge's ends; ``start``: robust
    weights of the previous round (fewer reweighting steps are needed).
    """
    yy, xx, xy = _origin_moments(fit, colour_a, colour_b)
    w = texture if start is None else start
    for _ in range(_EXACT_IRLS if start is None else 1):
        r = _origin_slope(yy, xx, w)
        res2 = np.maximum(yy - 2.0 * r * xy + r * r * xx, 0.0)
        scale = 1.4826 * batch_median(np.sqrt(res2), axis=0) + _REFINE_FLOOR
        w = texture / (1.0 + res2 / (_REFINE_CAUCHY * scale) ** 2)
    noise = (w * res2).sum(axis=0) / w.sum(axis=0) + _REFINE_FLOOR**2
    sxx = np.einsum("ne,ne->e", w, xx)
    return _ExactRatios(np.log(r), (sxx / noise).astype(np.float64), w)


def _origin_moments(
    fit: _EdgeFit, colour_a: np.ndarray, colour_b: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and edge (N x E): sums over channels of y*y, x*x and x*y, where
    ``y = J(a) - W(a)`` and ``x = J(b) - W(b)``; from the edge fit's centred values."""
    y, x, yy, xx, xy = fit.y, fit.x, fit.yy, fit.xx, fit.xy
    if rows is not None:
        y, x, yy, xx, xy = y[:, rows], x[:, rows], yy[rows], xx[rows], xy[rows]
    my = fit.y_mean - colour_a
    mx = fit.x_mean - colour_b
    return (
        yy + 2.0 * np.einsum("cne,ce->ne", y, my) + (my * my).sum(axis=0),
        xx + 2.0 * np.einsum("cne,ce->ne", x, mx) + (mx * mx).sum(axis=0),
        xy
        + np.einsum("cne,ce->ne", x, my)
        + np.einsum("cne,ce->ne", y, mx)
        + (mx * my).sum(axis=0),
    )


def _origin_slope(yy: np.ndarray, xx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Symmetric slope through the origin per edge (noise in x does not bias it)."""
    syy = np.einsum("ne,ne->e", w, yy)
    sxx = np.einsum("ne,ne->e", w, xx)
    return np.sqrt((syy + 1e-3) / (sxx + 1e-3))


@dataclass
class _ExactFit:
    """The exact-blend fit: ``beta`` (M), ``u`` (3 x M) and what the jackknife re-uses."""

    beta: np.ndarray
    u: np.ndarray
    colour: np.ndarray
    ratio_colour: np.ndarray
    """The colour the last ratio fits used (``colour`` is refitted after them)."""
    flat: np.ndarray
    active: np.ndarray
    sub: _EdgeFit
    weights: np.ndarray
    poisson: _Poisson

    def without(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fit on the images ``rows`` only, keeping its colour, weights and flat edges."""
        solver = self.poisson._solver
        ea, eb = solver.ea[self.active], solver.eb[self.active]
        colour = self.ratio_colour
        yy, xx, _ = _origin_moments(self.sub, colour[:, ea], colour[:, eb], rows)
        log_ratio = np.zeros(self.flat.shape)
        log_ratio[self.active] = np.log(_origin_slope(yy, xx, self.weights[rows]))
        beta = _beta_from_log_ratio(np.where(self.flat, 0.0, log_ratio), self.poisson)
        return beta, ((1.0 - beta) / beta)[None] * self.colour


def _beta_from_log_ratio(log_ratio: np.ndarray, poisson: _Poisson) -> np.ndarray:
    return np.clip(np.exp(poisson.solve(log_ratio)), _MIN_BETA, 1.0).astype(np.float32)


def _exact_fit(
    values: np.ndarray,
    stack: np.ndarray,
    fit: _EdgeFit,
    solver: GridSolver,
    beta: np.ndarray,
    u: np.ndarray,
    poisson: _Poisson | None,
) -> _ExactFit | None:
    """Refit a lossless batch as an exact blend of one smoothly varying colour; ``None`` if not.

    The free fit gives every pixel its own offset ``c``; on lossless images the estimate can be
    much tighter by tying ``c = alpha * W`` to one colour ``W`` that varies smoothly (a
    polynomial) across the mark, by taking the opacity as flat wherever the data cannot tell
    its steps from 0, and by giving the pixels at the mark's most common opacity (its body,
    drawn at one opacity) one shared value. Opacity (ratio fits through the origin) and colour
    (from the gradients) are fitted in turn. The result is kept only if it explains the batch
    nearly as well as the free fit does (see ``_EXACT_MAX_RSS_RATIO`` and
    ``_EXACT_MAX_COLOUR_RESIDUAL``): a mark of two colours, or compression, fits clearly worse.

    ``beta`` and ``u`` are a first (free) fit; ``poisson`` its factorised Poisson matrix, reused
    until the body is pooled (refactorising each round cost time and gained nothing).
    """
    basis = _colour_basis(solver)
    theta = _colour_from_offset(beta, u, basis, solver.inside)
    if theta is None:
        return None
    free_beta, free_u = beta, u
    colour = np.clip(theta @ basis, 0.0, 255.0).astype(np.float32)
    # Edges between pixels that the first fit finds clearly unmarked are not fitted: their
    # ratio is 1 (flat). Most of a mask drawn with a margin is such pixels.
    active = _near_the_mark(beta, u, solver)
    sub = fit.subset(np.arange(values.shape[1]), active)
    ea, eb = solver.ea[active], solver.eb[active]
    tied = weights = ratios = None
    for i in range(_EXACT_ITERATIONS + _EXACT_PLATEAU_ITERATIONS):
        if i == _EXACT_ITERATIONS:
            assert ratios is not None
            tied = _plateau(beta, solver, _node_error(ratios.precision, active, solver))
            if tied is None:
                break
            poisson = None  # the body's nodes become one unknown: a new factorisation
        if i % _EXACT_TEXTURE_EVERY == 0 or i == _EXACT_ITERATIONS:
            texture = _texture_weights(stack, beta, u, solver)
        ratio_colour = colour
        ratios = _exact_ratios(sub, colour[:, ea], colour[:, eb], texture[:, active], weights)
        weights = ratios.weights
        standard_error = 1.0 / np.sqrt(np.maximum(ratios.precision, 1e-9))
        # Imprecise edges keep their measured ratio: taking them as flat could join a whole
        # letter to its unmarked surroundings.
        flat = np.ones(active.shape, dtype=bool)
        flat[active] = (np.abs(ratios.log_ratio) < _EXACT_SNAP * standard_error) & (
            standard_error < _EXACT_SNAP_MAX_ERROR
        )
        if poisson is None:
            typical = max(float(np.median(ratios.precision)), 1e-12)
            weight = np.ones(active.shape)
            weight[active] = np.clip(ratios.precision / typical, 0.01, 100.0)
            poisson = solver.poisson(weight, _ANCHOR, None if tied is None else tied[solver.inside])
        log_ratio = np.zeros(active.shape)
        log_ratio[active] = ratios.log_ratio
        beta = _beta_from_log_ratio(np.where(flat, 0.0, log_ratio), poisson)
        theta = _colour_from_gradients(values, beta, basis, texture, solver)
        colour = np.clip(theta @ basis, 0.0, 255.0).astype(np.float32)
        u = ((1.0 - beta) / beta)[None] * colour
    assert poisson is not None and weights is not None
    if not _explains_batch(values, fit, solver, texture, free_beta, free_u, beta, colour):
        return None
    return _ExactFit(beta, u, colour, ratio_colour, flat, active, sub, weights, poisson)


def _node_error(precision: np.ndarray, active: np.ndarray, solver: GridSolver) -> np.ndarray:
    """Standard error of each node's ``log beta`` from the precisions of its edges' ratios."""
    total = np.zeros(solver.nodes.size)
    np.add.at(total, solver.ea[active], precision)
    np.add.at(total, solver.eb[active], precision)
    return 1.0 / np.sqrt(np.maximum(total, 1e-12))


def _near_the_mark(beta: np.ndarray, u: np.ndarray, solver: GridSolver) -> np.ndarray:
    """Edges (E bool) with an end at, or next to, a pixel a first fit finds marked at all."""
    marked = (beta < 1.0 - _EXACT_UNMARKED_ALPHA) | (
        np.abs(u * beta).max(axis=0) > _EXACT_UNMARKED_OFFSET
    )
    grid = solver.scatter(marked.astype(np.float32), 0.0)
    near = solver.gather(cv2.dilate(grid, np.ones((3, 3), np.uint8))) > 0
    return near[solver.ea] | near[solver.eb]


def _plateau(beta: np.ndarray, solver: GridSolver, error: np.ndarray) -> np.ndarray | None:
    """Nodes at the mark's most common opacity (within their errors of it), if many.

    ``error``: each node's standard error of ``log beta`` (see ``_EXACT_PLATEAU_ERRORS``).

    A watermark is usually drawn at one opacity, its anti-aliased rim aside; pooling that body
    into one value removes the slow drift that integrating many small ratios leaves.
    """
    marked = solver.inside & (beta <= 1.0 - _EXACT_MIN_ALPHA)
    if not marked.any():
        return None
    bins = np.arange(0.0, 1.0 + _EXACT_PLATEAU_BIN, _EXACT_PLATEAU_BIN)
    counts = np.convolve(np.histogram(beta[marked], bins=bins)[0], [1, 2, 3, 2, 1], mode="same")
    mode = bins[int(np.argmax(counts))] + _EXACT_PLATEAU_BIN / 2
    # Imprecisely known pixels may join too: within a few of their standard errors.
    width = np.clip(
        _EXACT_PLATEAU_ERRORS * error * beta, _EXACT_PLATEAU_WIDTH, _EXACT_PLATEAU_MAX_WIDTH
    )
    plateau = marked & (np.abs(beta - mode) < width)
    return plateau if plateau.sum() >= _EXACT_PLATEAU_MIN_SHARE * marked.sum() else None


def _explains_batch(
    values: np.ndarray,
    fit: _EdgeFit,
    solver: GridSolver,
    texture: np.ndarray,
    free_beta: np.ndarray,
    free_u: np.ndarray,
    beta: np.ndarray,
    colour: np.ndarray,
) -> bool:
    """Whether the exact fit explains the batch about as well as the free fit, at the mark."""
    ea, eb = solver.ea, solver.eb
    free_c = free_u * free_beta
    # The mark's outline, as the free fit sees it: steps of its opacity or of its offset.
    outline = (
        np.abs(np.log(free_beta[ea]) - np.log(free_beta[eb]))
        + np.abs(free_c[:, ea] - free_c[:, eb]).mean(axis=0) / 128.0
    ) > 0.05
    alpha = 1.0 - free_beta
    marked = solver.inside & (alpha >= _EXACT_MIN_ALPHA)
    if not outline.any() or not marked.any():
        return False
    r, sw, sx, sy, _ = fit.slope(texture)
    free_rss = (texture * fit.residuals(r, sw, sx, sy) ** 2)[:, outline].sum()
    y = values[:, :, ea][:, :, outline] - colour[:, None, ea[outline]]
    x = values[:, :, eb][:, :, outline] - colour[:, None, eb[outline]]
    ratio = (beta[ea] / beta[eb])[outline]
    exact_rss = (texture[:, outline] * ((y - ratio * x) ** 2).sum(axis=0)).sum()
    # Per edge the free fit has 4 parameters (a ratio and 3 offsets) for 3 samples per image,
    # the exact fit 1: with nothing but noise its residuals are larger by this much.
    samples = 3 * values.shape[1]
    expected = (samples - 1) / (samples - 4)
    limit = _EXACT_MAX_RSS_RATIO_FEW.get(values.shape[1], _EXACT_MAX_RSS_RATIO)
    if exact_rss > limit * expected * max(float(free_rss), 1e-6):
        return False
    if values.shape[1] < _REFINE_MIN_IMAGES:
        # The first fit of so few images is too rough to compare colours with.
        return True
    colour_residual = np.abs(free_c[:, marked] - alpha[marked] * colour[:, marked]).max(axis=0)
    return float(np.median(colour_residual)) <= _EXACT_MAX_COLOUR_RESIDUAL


def _spread(values: np.ndarray, solver: GridSolver) -> np.ndarray:
    """Rough ``beta`` per node: its spread over the batch relative to the surroundings'.

    Independent of the edge fits: under an opaque mark (the same colour in every image) it is
    near 0 even where integrating the edges cannot tell.
    """
    spread = values.mean(axis=0).std(axis=0)
    ref = float(np.median(spread[~solver.inside])) if (~solver.inside).any() else 0.0
    if ref <= 0:
        return np.ones(spread.shape, dtype=np.float32)
    return np.clip(spread / ref, 0.0, 1.0).astype(np.float32)


def estimate_blend(
    stack: np.ndarray,
    solver: GridSolver,
    groups: Sequence[np.ndarray] = (),
    *,
    lossless: bool = False,
) -> tuple[BlendEstimate, np.ndarray | None]:
    """Estimate ``beta`` and ``u`` from aligned crops ``stack`` (N x H x W x 3, float32).

    ``lossless``: the crops are exactly the blend (no lossy compression after the mark was
    put on), so the exact-blend fit may be tried (see ``_exact_fit``).

    With ``groups``, also returns each image's per-pixel standard error of the recovered
    photo (N x H x W, grey levels RMS over channels): a jackknife that re-fits the blend
    without each group of images (keeping the robust weights of the full fit) and measures
    how much the recovered photos move. The engine decides on this confidence.
    """
    values = np.ascontiguousarray(np.moveaxis(solver.gather(stack), -1, 0))
    n = values.shape[1]
    fit = _EdgeFit(values, solver)
    spread = _spread(values, solver)
    refine = n >= _REFINE_MIN_IMAGES
    try_exact = lossless and n >= _EXACT_MIN_BATCH
    if refine or try_exact:
        # A short first fit, only good enough to tell smooth from textured neighbourhoods.
        slope, edge_weight, weights = fit.robust(_REFINE_IRLS_ITERATIONS)
        poisson = solver.poisson(edge_weight, _ANCHOR)
        beta = _integrate_ratio(slope, poisson)
        # The ratio fits' robust weights already discount photo edges: a weighted mean will do.
        u = poisson.solve(_weighted_mean(_gradients(fit, beta, solver), weights).T).T
        refinable = _refinable(beta, spread, solver)
        refine, try_exact = refine and refinable, try_exact and refinable
    exact = None
    if try_exact:
        # Starts from the short first fit: the exact fit replaces the refinement when it holds.
        # A large batch is fitted on a subset (see _EXACT_IMAGE_EDGES).
        most = max(_EXACT_MIN_IMAGES, _EXACT_IMAGE_EDGES // max(solver.ea.size, 1))
        rows = np.linspace(0, n - 1, min(n, most)).round().astype(int)
        exact = _exact_fit(values[:, rows], stack[rows], fit.subset(rows), solver, beta, u, poisson)
        if exact is not None:
            beta, u = exact.beta, exact.u
    if exact is None and refine:
        beta, u, w_slope, w_grad = _refine(fit, poisson, stack, beta, u)
    elif exact is None:
        slope, edge_weight, weights = fit.robust()
        poisson = solver.poisson(edge_weight, _ANCHOR)
        beta, u = _integrate(fit, slope, poisson)
    est = BlendEstimate(
        beta=solver.scatter(beta, 1.0),
        u=solver.scatter(u.T, 0.0),
        spread=solver.scatter(spread, 1.0),
        exact=exact is not None,
    )
    if not groups:
        return est, None
    if exact is not None:
        # The exact fit saw only its subset: leave out groups of that subset (groups of the
        # whole batch could leave a subset half empty).
        groups = jackknife_groups(rows.size)
    g = len(groups)
    inv_beta, offsets = [], []
    for group in groups:
        keep = np.setdiff1d(np.arange(n), group)
        if exact is not None:
            beta_g, u_g = exact.without(np.setdiff1d(np.arange(rows.size), group))
        elif refine:
            beta_g, u_g = _refined_without(fit, poisson, w_slope, w_grad, keep)
        else:
            beta_g, u_g = _integrate(fit, fit.slope(weights, keep)[0], poisson, keep)
        inv_beta.append(1.0 / beta_g)
        offsets.append(u_g)
    if g == 2:
        # Two groups: both deviations from the mean are half the difference.
        dev = values * (inv_beta[0] - inv_beta[1]) - (offsets[0] - offsets[1])[:, None, :]
        var = np.einsum("cnm,cnm->nm", dev, dev) / 12.0
    else:
        mean_ib, mean_u = np.mean(inv_beta, axis=0), np.mean(offsets, axis=0)
        var = np.zeros(values.shape[1:], dtype=np.float32)
        for ib, ug in zip(inv_beta, offsets, strict=True):
            dev = values * (ib - mean_ib) - (ug - mean_u)[:, None, :]
            var += np.einsum("cnm,cnm->nm", dev, dev) / 3.0
        var *= (g - 1) / g
    errors = np.stack([solver.scatter(np.sqrt(v), 0.0) for v in var])
    return est, errors


def ghost_scores(
    stack: np.ndarray,
    est: BlendEstimate,
    solver: GridSolver,
    min_beta: float = 0.15,
    parts: np.ndarray | None = None,
) -> np.ndarray:
    """Per image: edge energy at the mark's edges after inversion relative to before.

    Inversion scales the photo's own edges by ``1/beta``; that is undone (the edges after
    inversion are weighed by ``beta``) so that only the mark's part counts. Below 1 when
    inverting removes the mark's edges (the mark is there); above 1 when inversion prints a
    negative ghost of the mark (the mark is missing or misplaced).

    With ``parts`` (HxW int, the part of the domain each pixel belongs to, ``0`` off it) the
    score is taken per part: N x P for parts ``1..P``.
    """
    values = channel_mean(solver.gather(stack))
    beta = solver.gather(est.beta)
    offset = channel_mean(solver.gather(est.offset))
    spread = solver.gather(est.spread)
    ea, eb = solver.ea, solver.eb
    # The mark's edges: steps of its colour or of its opacity (a black mark has no colour).
    weight = np.abs(offset[ea] - offset[eb]) + 128.0 * np.abs(beta[ea] - beta[eb])
    # Only where inversion is attempted at all (not under an opaque mark).
    weight *= (np.minimum(beta[ea], beta[eb]) >= min_beta) & (
        np.minimum(spread[ea], spread[eb]) >= 0.1
    )
    inverted = values / beta - channel_mean(solver.gather(est.u))
    weight_after = weight * 0.5 * (beta[ea] + beta[eb])
    if parts is not None:  # one column of weights per part (sparse: each edge is in one)
        node_part = solver.gather(parts)
        edge_part = np.maximum(node_part[ea], node_part[eb]) - 1  # -1: no part
        rows, cols = np.flatnonzero(edge_part >= 0), edge_part[edge_part >= 0]
        shape = (ea.size, int(parts.max()))
        weight = sparse.csc_matrix((weight[rows], (rows, cols)), shape=shape)
        weight_after = sparse.csc_matrix((weight_after[rows], (rows, cols)), shape=shape)
    after = np.asarray(np.abs(inverted[:, ea] - inverted[:, eb]) @ weight_after)
    before = np.asarray(np.abs(values[:, ea] - values[:, eb]) @ weight)
    # No edge energy at the mark's edges means no mark to see: score it as absent, not present.
    return np.where(before > 0, after / np.maximum(before, 1e-6), np.inf)


def jackknife_groups(n: int) -> list[np.ndarray]:
    """Image groups to leave out in turn: halves for larger batches, single images otherwise."""
    if n >= 6:
        return [np.arange(0, n, 2), np.arange(1, n, 2)]
    return [np.array([i]) for i in range(n)]
