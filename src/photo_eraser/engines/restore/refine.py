"""Step 5, the refinement: the free fit redone with each image weighted by its local smoothness.

The free fit treats every image alike at every edge, apart from its robust weights; but at a
given place some photos are smooth and tell the mark's edges almost exactly, while textured
ones only add noise. With a first estimate the photos under the mark are recovered, each
image's local texture gives it a weight at every edge, and the ratio fits and the robust mean
gradient are redone with those weights. The exact fit (step 6) uses the same texture weights.
"""

from __future__ import annotations

import cv2
import numpy as np

from photo_eraser.engines.restore.arrays import batch_median
from photo_eraser.engines.restore.edges import EdgeChunks, cut, in_threads
from photo_eraser.engines.restore.free_fit import EdgeFit, weighted_mean
from photo_eraser.engines.restore.params import FreeFitParams, RestoreParams
from photo_eraser.engines.restore.pixels import marked_by_opacity, opaque
from photo_eraser.engines.restore.solver import GridSolver, Poisson, beta_from_ratio


def texture_weights(
    stack: np.ndarray,
    beta: np.ndarray,
    u: np.ndarray,
    solver: GridSolver,
    p: RestoreParams,
    threads: int = 1,
) -> np.ndarray:
    """Per image and edge (N x E): weight from the local texture of the recovered photo.

    The photo under the mark is recovered with the current estimate and its squared gradient
    averaged over 5x5 pixels; an edge counts by how smooth the photo is around it (the larger of
    its two ends), so images that are flat there dominate the fits. Estimation errors show up
    the same in every image, so they do not change the images' relative weights. The images
    are taken ``threads`` at a time.
    """
    inv = 1.0 / np.maximum(solver.scatter(beta, 1.0), p.pixels.min_inverted_beta)
    offset = solver.scatter(u.T, 0.0)
    energy = np.empty(stack.shape[:3], dtype=np.float32)

    def smoothness(k: int) -> None:
        rec = stack[k] * inv[..., None]
        rec -= offset
        e = np.zeros(rec.shape[:2], dtype=np.float32)
        d = rec[:, 1:] - rec[:, :-1]
        e[:, :-1] += np.einsum("hwc,hwc->hw", d, d)
        d = rec[1:] - rec[:-1]
        e[:-1] += np.einsum("hwc,hwc->hw", d, d)
        energy[k] = cv2.blur(e, (5, 5))

    in_threads(smoothness, range(len(stack)), threads)
    nodes = solver.gather(energy)
    # A chunk of edges at a time (``edges.py``), into the Fortran order that indexing the
    # edges of all at once gave (the layout decides the order of later sums over images).
    weights = np.empty((nodes.shape[0], solver.ea.size), dtype=np.float32, order="F")
    for edges in EdgeChunks(solver.ea.size, nodes.shape[0]).slices:
        local = np.maximum(nodes[:, solver.ea[edges]], nodes[:, solver.eb[edges]])
        weights[:, edges] = 1.0 / (1.0 + local / p.refine.texture**2)
    return weights


def refine(
    fit: EdgeFit,
    poisson: Poisson,
    stack: np.ndarray,
    beta: np.ndarray,
    u: np.ndarray,
    p: RestoreParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Re-fit ``beta`` and ``u`` weighting each image's edges by the photo's local smoothness.

    The first estimate treats every image alike at every edge (robust weights only). With it,
    the photos under the mark are recovered well enough to see where each one is smooth; the
    edge fits (ratios, then the robust mean gradient) are redone with those weights times
    Cauchy weights on the new residuals, and this is repeated. Returns ``beta``, ``u`` and the
    final weights of the ratio fits and of the gradient means (N x E each), kept for the
    jackknife.
    """
    solver, r = poisson.solver, p.refine
    w_slope = w_grad = None
    for _ in range(r.iterations):
        texture = texture_weights(stack, beta, u, solver, p, fit.chunks.threads)

        def ratios(edges: slice, texture: np.ndarray = texture) -> tuple[np.ndarray, ...]:
            # Each edge's ratio fit is its own: one chunk of edges at a time.
            part, tex = fit.part(edges), cut(texture, edges)
            ratio, sw, sx, sy, _ = part.slope(tex)
            res = part.residuals(ratio, sw, sx, sy)
            scale = 1.4826 * batch_median(res, axis=0) + p.free_fit.residual_floor
            w = tex / (1.0 + (res / (r.cauchy * scale)) ** 2)
            return part.slope(w)[0], w

        ratio, w_slope = fit.chunks.map(ratios)
        beta = beta_from_ratio(ratio, poisson, p.free_fit.beta_floor)

        def reweighted(
            edges: slice, beta: np.ndarray = beta, texture: np.ndarray = texture
        ) -> tuple[np.ndarray, ...]:
            # Each edge's robust mean gradient is its own: one chunk of edges at a time.
            grad, mean_a, mean_b = fit.part(edges).gradients(*fit.inverse_beta(beta, edges))
            grad += (mean_a - mean_b)[:, None]
            tex = cut(texture, edges)
            norm2 = np.einsum("cne,cne->ne", grad, grad)
            loc = weighted_mean(grad, tex)
            w = tex
            scale2 = None
            for _ in range(r.reweights):
                # Squared distance of every image's gradient from the current mean, by moments.
                res2 = norm2 - 2.0 * np.einsum("cne,ce->ne", grad, loc) + (loc * loc).sum(axis=0)
                np.maximum(res2, 0.0, out=res2)
                if scale2 is None:
                    scale = 1.4826 * batch_median(np.sqrt(res2), axis=0) + r.residual_floor
                    scale2 = (r.cauchy * scale) ** 2
                w = tex / (1.0 + res2 / scale2)
                loc = weighted_mean(grad, w)
            return loc, w

        loc, w_chunks = fit.chunks.map(reweighted)
        if r.reweights:
            w_grad = w_chunks
        u = poisson.solve(loc.T).T
    # Weights never reweighted are all 1 (allocated only then).
    if w_slope is None:
        w_slope = np.ones(fit.xx.shape, dtype=np.float32)
    if w_grad is None:
        w_grad = np.ones(fit.xx.shape, dtype=np.float32)
    return beta, u, w_slope, w_grad


def refinable(beta: np.ndarray, spread: np.ndarray, solver: GridSolver, p: RestoreParams) -> bool:
    """Whether to refine a first fit: not for a mostly opaque mark.

    Such a mark leaves little to invert (its anti-aliased rim), and next to opaque parts the
    recovered photos' texture means nothing; the full robust fit is kept instead.
    """
    marked = solver.inside & marked_by_opacity(beta, spread, p.pixels)
    dark = marked & opaque(beta, spread, p.pixels)
    return bool(marked.any() and dark.sum() < p.refine.max_opaque_share * marked.sum())


def refined_without(
    fit: EdgeFit,
    poisson: Poisson,
    w_slope: np.ndarray,
    w_grad: np.ndarray,
    rows: np.ndarray,
    p: FreeFitParams,
) -> tuple[np.ndarray, np.ndarray]:
    """The refined fit on the images ``rows`` only, keeping the full fit's weights."""
    beta = beta_from_ratio(fit.slope(w_slope, rows)[0], poisson, p.beta_floor)
    return beta, poisson.solve(fit.mean_gradient(beta, w_grad, rows).T).T
