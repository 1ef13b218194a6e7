"""Steps 3-4, the free fit: opacity from pixel-pair ratios, colour from the robust mean gradient.

Model, per pixel p of image k: ``J_k(p) = c(p) + beta(p) * I_k(p)`` with ``beta = 1 - alpha``
and ``c = alpha * W`` (the mark's colour W may vary across it). Two facts about photos
identify ``beta`` and ``c`` from a batch:

* neighbouring pixels p, q of one photo are nearly equal, so across the batch
  ``J_k(p) ~ (beta_p / beta_q) * J_k(q) + const``: a robust regression per pixel pair
  (``EdgeFit``) gives the ratio, and integrating ``log beta`` (``solver``) gives ``beta``;
* with ``Z_k = J_k / beta = I_k + u`` (``u = c / beta``), a robust mean over the batch of the
  gradient of ``Z_k`` is the gradient of ``u`` (photo gradients are sparse and differ between
  photos; Dekel et al., CVPR 2017); a second Poisson solve gives ``u``.

"Free": every pixel has its own opacity and offset. Arrays are channels-first over the solver's
nodes and edges: values 3 x N x M, edge data 3 x N x E. Each edge's fit is its own, so the
work runs on chunks of edges (``edges.py``): no 3 x N x E array is held, only N x E ones.
"""

from __future__ import annotations

import copy

import numpy as np

from photo_eraser.engines.restore.arrays import batch_median
from photo_eraser.engines.restore.edges import EdgeChunks, cut
from photo_eraser.engines.restore.params import FreeFitParams
from photo_eraser.engines.restore.solver import GridSolver, Poisson, beta_from_ratio


class EdgePart:
    """The centred values at the two ends of some edges, for some images (3 x N x E each), and
    their moments summed over channels (N x E): what the per-edge fits work on."""

    def __init__(
        self,
        y: np.ndarray,
        x: np.ndarray,
        y_mean: np.ndarray,
        x_mean: np.ndarray,
        xx: np.ndarray,
        yy: np.ndarray,
        xy: np.ndarray,
    ) -> None:
        self.y, self.x, self.y_mean, self.x_mean = y, x, y_mean, x_mean
        self.xx, self.yy, self.xy = xx, yy, xy

    def slope(self, w: np.ndarray) -> tuple[np.ndarray, ...]:
        """Weighted fit (weights N x E): slope, sums of w, x, y, and the fit's signal."""
        x, y, xx, yy, xy = self.x, self.y, self.xx, self.yy, self.xy
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

    def gradients(self, inv_a: np.ndarray, inv_b: np.ndarray) -> tuple[np.ndarray, ...]:
        """Gradient of ``J/beta`` along the edges (``inv_a``, ``inv_b``: ``1/beta`` at their
        ends): the centred part per image (3 x N x E) and the centring's two terms (3 x E)."""
        diff = self.y * inv_a
        diff -= self.x * inv_b
        return diff, self.y_mean * inv_a, self.x_mean * inv_b


class EdgeFit:
    """Per-edge robust regression of ``J(a)`` on ``J(b)`` over the images of a batch.

    For an edge (a, b) and images n, ``J_n(a) = r * J_n(b) + d`` (one slope ``r``, one
    intercept per channel) where ``r = beta_a / beta_b``: neighbouring photo pixels are nearly
    equal, and a photo edge between a and b only makes that image an outlier. The fit is
    iteratively reweighted least squares (Cauchy weights); the slope is the symmetric one
    (geometric mean of y-on-x and inverse x-on-y), so noise in J(b) does not bias it.

    Holds the values (3 x N x M, not copied), the ends' means over the batch (3 x E) and the
    centred moments (N x E); the values at the edges' ends are gathered a chunk at a time
    (``part``).
    """

    def __init__(
        self, values: np.ndarray, solver: GridSolver, chunks: EdgeChunks | None = None
    ) -> None:
        self.values = values
        self.rows: np.ndarray | None = None
        """The images of ``values`` this fit is on (all by default)."""
        self.ea, self.eb = solver.ea, solver.eb
        self.chunks = chunks if chunks is not None else EdgeChunks(self.ea.size, values.shape[1])

        def moments(edges: slice) -> tuple[np.ndarray, ...]:
            # C-ordered (``take`` gathers them so, several times faster than indexing and
            # copying): the sums over channels below run several times faster on them.
            y = np.take(values, self.ea[edges], axis=2)
            x = np.take(values, self.eb[edges], axis=2)
            # Centre once so the float32 moment sums below do not cancel catastrophically.
            y_mean, x_mean = y.mean(axis=1), x.mean(axis=1)
            y -= y_mean[:, None]
            x -= x_mean[:, None]
            xx = np.einsum("cne,cne->ne", x, x)
            yy = np.einsum("cne,cne->ne", y, y)
            return y_mean, x_mean, xx, yy, np.einsum("cne,cne->ne", x, y)

        self.y_mean, self.x_mean, self.xx, self.yy, self.xy = self.chunks.map(moments)

    @property
    def images(self) -> int:
        return int(self.xx.shape[0])

    def part(self, edges: slice, rows: np.ndarray | None = None) -> EdgePart:
        """The data of the edges ``edges`` (a chunk) for the images ``rows`` (all by default)."""
        # The same steps, in the same memory layouts, as gathering every edge at once: C-ordered
        # ends (of the fit's images), centred, then the images ``rows``.
        c = np.ascontiguousarray
        y = np.take(self.values, self.ea[edges], axis=2)
        x = np.take(self.values, self.eb[edges], axis=2)
        if self.rows is not None:
            y, x = c(y[:, self.rows]), c(x[:, self.rows])
        y_mean, x_mean = cut(self.y_mean, edges), cut(self.x_mean, edges)
        y -= y_mean[:, None]
        x -= x_mean[:, None]
        if rows is not None:
            y, x = y[:, rows], x[:, rows]
        moments = (cut(m, edges, rows) for m in (self.xx, self.yy, self.xy))
        return EdgePart(y, x, y_mean, x_mean, *moments)

    def on_threads(self, threads: int) -> EdgeFit:
        """The same fit, its chunks run ``threads`` at a time (for fits run side by side)."""
        other = copy.copy(self)
        other.chunks = self.chunks.on_threads(threads)
        return other

    def subset(self, images: np.ndarray, edges: np.ndarray | None = None) -> EdgeFit:
        """The same data for some images (indices) and edges (E bool, all by default); still
        centred on the whole batch's means, which every use here allows."""
        sub = object.__new__(EdgeFit)
        keep = slice(None) if edges is None else edges
        c = np.ascontiguousarray
        sub.values = self.values
        sub.rows = images if self.rows is None else self.rows[images]
        sub.ea, sub.eb = self.ea[keep], self.eb[keep]
        sub.y_mean, sub.x_mean = c(self.y_mean[:, keep]), c(self.x_mean[:, keep])
        sub.xx, sub.yy = c(self.xx[images][:, keep]), c(self.yy[images][:, keep])
        sub.xy = c(self.xy[images][:, keep])
        sub.chunks = EdgeChunks(sub.ea.size, len(images), self.chunks.threads)
        return sub

    def slope(self, w: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """Weighted fit on the images ``rows`` (all by default): slope, sums of w, x, y, and the
        fit's signal, per edge."""

        def fit(edges: slice) -> tuple[np.ndarray, ...]:
            return self.part(edges, rows).slope(cut(w, edges, rows))

        return self.chunks.map(fit)

    def residuals(
        self, r: np.ndarray, sw: np.ndarray, sx: np.ndarray, sy: np.ndarray
    ) -> np.ndarray:
        """Residual norm over channels of every image at every edge (N, E) for a fit."""

        def residuals(edges: slice) -> tuple[np.ndarray, ...]:
            fitted = (cut(a, edges) for a in (r, sw, sx, sy))
            return (self.part(edges).residuals(*fitted),)

        return self.chunks.map(residuals)[0]

    def robust(
        self, p: FreeFitParams, iterations: int | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """IRLS over all images: slope and Poisson weight per edge, final weights (N, E).

        The Poisson weight is the slope's precision (signal over residual variance, relative
        to the median edge), damped where the ends barely vary over the batch (an opaque
        mark, flat photos): there the ratio says little whatever the residuals.
        """
        if iterations is None:
            iterations = p.irls_iterations
        rounds = iterations if self.images >= 3 else 0

        def irls(edges: slice) -> tuple[np.ndarray, ...]:
            part = self.part(edges)
            w: np.ndarray = np.ones(part.xx.shape, dtype=np.float32)
            r, sw, sx, sy, info = part.slope(w)
            for _ in range(rounds):
                res = part.residuals(r, sw, sx, sy)
                scale = 1.4826 * batch_median(res, axis=0) + p.residual_floor
                w = 1.0 / (1.0 + (res / (p.cauchy * scale)) ** 2)
                r, sw, sx, sy, info = part.slope(w)
            res = part.residuals(r, sw, sx, sy)
            noise = (w * res * res).sum(axis=0) / sw + p.residual_floor**2
            return r, info, noise, w

        r, info, noise, w = self.chunks.map(irls)
        precision = info / noise
        precision /= max(float(np.median(precision)), 1e-12)
        weight = np.clip(precision, 0.01, 100.0) * info / (info + p.signal_variance)
        return r, weight, w

    def inverse_beta(self, beta: np.ndarray, edges: slice) -> tuple[np.ndarray, np.ndarray]:
        """``1/beta`` at both ends of the edges ``edges``."""
        return 1.0 / beta[self.ea[edges]], 1.0 / beta[self.eb[edges]]

    def mean_gradient(
        self, beta: np.ndarray, w: np.ndarray, rows: np.ndarray | None = None
    ) -> np.ndarray:
        """Weighted mean over the images ``rows`` (all by default; weights N x E of all
        images) of the gradient of ``J/beta`` along every edge (3 x E)."""

        def mean(edges: slice) -> tuple[np.ndarray, ...]:
            diff, mean_a, mean_b = self.part(edges, rows).gradients(*self.inverse_beta(beta, edges))
            diff += (mean_a - mean_b)[:, None]
            return (weighted_mean(diff, cut(w, edges, rows)),)

        return self.chunks.map(mean)[0]


def robust_mean(a: np.ndarray, p: FreeFitParams, iterations: int = 2) -> np.ndarray:
    """Robust location over the images (axis 1 of a 3 x N x E array).

    Starts at the median and refines it with Cauchy weights (scale: the median absolute
    deviation), which uses the images that agree more efficiently than the median alone.
    """
    loc = batch_median(a, axis=1)
    scale = 1.4826 * batch_median(np.abs(a - loc[:, None]), axis=1) + p.residual_floor
    width = (p.cauchy * scale)[:, None]
    for _ in range(iterations):
        w = a - loc[:, None]
        w /= width
        np.square(w, out=w)
        w += 1.0
        np.reciprocal(w, out=w)
        loc = np.einsum("cne,cne->ce", w, a) / w.sum(axis=1)
    return loc


def weighted_mean(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean over the images (axis 1 of a 3 x N x E array; weights N x E)."""
    return np.einsum("ne,cne->ce", w, a) / np.maximum(w.sum(axis=0), 1e-12)


def free_fit(
    fit: EdgeFit,
    ratio: np.ndarray,
    poisson: Poisson,
    p: FreeFitParams,
    rows: np.ndarray | None = None,
    iterations: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """``beta`` (M) from the edges' ratios, then ``u`` (3 x M) from the robust mean gradient of
    ``J/beta``, on the images ``rows`` of the fit (all by default)."""
    beta = beta_from_ratio(ratio, poisson, p.beta_floor)

    def gradient(edges: slice) -> tuple[np.ndarray, ...]:
        diff, mean_a, mean_b = fit.part(edges, rows).gradients(*fit.inverse_beta(beta, edges))
        # The centring is added back after the robust mean (it is the same for every image).
        return (robust_mean(diff, p, iterations) + mean_a - mean_b,)

    grad = fit.chunks.map(gradient)[0]
    return beta, poisson.solve(grad.T).T


def spread(values: np.ndarray, solver: GridSolver) -> np.ndarray:
    """Rough ``beta`` per node: its spread over the batch relative to the surroundings'.

    Independent of the edge fits: under an opaque mark (the same colour in every image) it is
    near 0 even where integrating the edges cannot tell.
    """
    spread = values.mean(axis=0).std(axis=0)
    ref = float(np.median(spread[~solver.inside])) if (~solver.inside).any() else 0.0
    if ref <= 0:
        return np.ones(spread.shape, dtype=np.float32)
    return np.clip(spread / ref, 0.0, 1.0).astype(np.float32)
