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


@dataclass(frozen=True)
class BlendEstimate:
    """``beta = 1 - alpha`` (HxW) and ``u = alpha * W / beta`` (HxWx3) on the grid.

    ``spread`` (HxW) is a rough, independent ``beta``: each pixel's spread over the batch
    relative to the surroundings' (near 0 under an opaque mark).
    """

    beta: np.ndarray
    u: np.ndarray
    spread: np.ndarray

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

    def poisson(self, weights: np.ndarray, anchor: float) -> _Poisson:
        """A factorised weighted Poisson problem on the domain (see ``_Poisson``)."""
        return _Poisson(self, weights, anchor)


class _Poisson:
    """Least-squares integration of edge differences with a zero Dirichlet border.

    ``solve(g)`` returns node values ``v`` (``0`` outside the domain) minimising
    ``sum_e w_e (v[ea] - v[eb] - g_e)^2 + anchor * sum_p v_p^2``.
    """

    def __init__(self, solver: GridSolver, weights: np.ndarray, anchor: float) -> None:
        self._solver = solver
        inc = solver._incidence
        self._weights = weights.astype(np.float64)
        self._weighted_t = (inc.T @ sparse.diags(self._weights)).tocsr()
        n = inc.shape[1]
        matrix = self._weighted_t @ inc + anchor * sparse.identity(n, format="csr")
        self._lu = splu(matrix.tocsc())

    def solve(self, g: np.ndarray) -> np.ndarray:
        """Integrate edge differences ``g`` (E or ExC) into node values (M or MxC)."""
        solver = self._solver
        rhs = self._weighted_t @ g.astype(np.float64)
        out = np.zeros((solver.nodes.size,) + g.shape[1:], dtype=np.float32)
        out[solver.inside] = self._lu.solve(rhs)
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
        self.y = values[:, :, solver.ea]
        self.x = values[:, :, solver.eb]
        # Centre once so the float32 moment sums below do not cancel catastrophically.
        self.y_mean = self.y.mean(axis=1)
        self.x_mean = self.x.mean(axis=1)
        self.y -= self.y_mean[:, None]
        self.x -= self.x_mean[:, None]
        self.xx = np.einsum("cne,cne->ne", self.x, self.x)
        self.yy = np.einsum("cne,cne->ne", self.y, self.y)
        self.xy = np.einsum("cne,cne->ne", self.x, self.y)

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
    stack: np.ndarray, solver: GridSolver, groups: Sequence[np.ndarray] = ()
) -> tuple[BlendEstimate, np.ndarray | None]:
    """Estimate ``beta`` and ``u`` from aligned crops ``stack`` (N x H x W x 3, float32).

    With ``groups``, also returns each image's per-pixel standard error of the recovered
    photo (N x H x W, grey levels RMS over channels): a jackknife that re-fits the blend
    without each group of images (keeping the robust weights of the full fit) and measures
    how much the recovered photos move. The engine decides on this confidence.
    """
    values = np.ascontiguousarray(np.moveaxis(solver.gather(stack), -1, 0))
    fit = _EdgeFit(values, solver)
    spread = _spread(values, solver)
    refine = values.shape[1] >= _REFINE_MIN_IMAGES
    if refine:
        # A short first fit, only good enough to tell smooth from textured neighbourhoods.
        slope, edge_weight, weights = fit.robust(_REFINE_IRLS_ITERATIONS)
        poisson = solver.poisson(edge_weight, _ANCHOR)
        beta = _integrate_ratio(slope, poisson)
        # The ratio fits' robust weights already discount photo edges: a weighted mean will do.
        u = poisson.solve(_weighted_mean(_gradients(fit, beta, solver), weights).T).T
        refine = _refinable(beta, spread, solver)
    if refine:
        beta, u, w_slope, w_grad = _refine(fit, poisson, stack, beta, u)
    else:
        slope, edge_weight, weights = fit.robust()
        poisson = solver.poisson(edge_weight, _ANCHOR)
        beta, u = _integrate(fit, slope, poisson)
    est = BlendEstimate(
        beta=solver.scatter(beta, 1.0),
        u=solver.scatter(u.T, 0.0),
        spread=solver.scatter(spread, 1.0),
    )
    if not groups:
        return est, None
    n, g = values.shape[1], len(groups)
    inv_beta, offsets = [], []
    for group in groups:
        keep = np.setdiff1d(np.arange(n), group)
        if refine:
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
    stack: np.ndarray, est: BlendEstimate, solver: GridSolver, min_beta: float = 0.15
) -> np.ndarray:
    """Per image: edge energy at the mark's edges after inversion relative to before.

    Inversion scales the photo's own edges by ``1/beta``; that is undone (the edges after
    inversion are weighed by ``beta``) so that only the mark's part counts. Below 1 when
    inverting removes the mark's edges (the mark is there); above 1 when inversion prints a
    negative ghost of the mark (the mark is missing or misplaced).
    """
    values = solver.gather(stack).mean(axis=2)
    beta = solver.gather(est.beta)
    offset = solver.gather(est.offset).mean(axis=1)
    spread = solver.gather(est.spread)
    ea, eb = solver.ea, solver.eb
    # The mark's edges: steps of its colour or of its opacity (a black mark has no colour).
    weight = np.abs(offset[ea] - offset[eb]) + 128.0 * np.abs(beta[ea] - beta[eb])
    # Only where inversion is attempted at all (not under an opaque mark).
    weight *= (np.minimum(beta[ea], beta[eb]) >= min_beta) & (
        np.minimum(spread[ea], spread[eb]) >= 0.1
    )
    inverted = values / beta - solver.gather(est.u).mean(axis=1)
    after = np.abs(inverted[:, ea] - inverted[:, eb]) @ (weight * 0.5 * (beta[ea] + beta[eb]))
    before = np.abs(values[:, ea] - values[:, eb]) @ weight
    # No edge energy at the mark's edges means no mark to see: score it as absent, not present.
    return np.where(before > 0, after / np.maximum(before, 1e-6), np.inf)


def jackknife_groups(n: int) -> list[np.ndarray]:
    """Image groups to leave out in turn: halves for larger batches, single images otherwise."""
    if n >= 6:
        return [np.arange(0, n, 2), np.arange(1, n, 2)]
    return [np.array([i]) for i in range(n)]
