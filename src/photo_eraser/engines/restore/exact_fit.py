"""Step 6, the exact-blend fit: on lossless batches, a model far tighter than the free fit.

The free fit gives every pixel its own offset ``c``. On lossless images (no lossy step after
the mark) the pixels are exactly the blend, and the estimate can tie ``c = alpha * W`` to one
colour ``W`` that varies smoothly (a polynomial) across the mark, take the opacity as flat
wherever the data cannot tell a step from 0, and give the pixels at the mark's most common
opacity (its body, drawn at one opacity) one shared value. Opacity (ratio fits through the
origin of ``J - W``) and colour (from the gradients) are fitted in turn. The result is kept
only if it explains the batch nearly as well as the free fit: a mark of two colours, or
compression, fits clearly worse.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from photo_eraser.engines.restore.arrays import batch_median
from photo_eraser.engines.restore.edges import cut
from photo_eraser.engines.restore.free_fit import EdgeFit
from photo_eraser.engines.restore.params import ExactFitParams, RestoreParams
from photo_eraser.engines.restore.refine import texture_weights
from photo_eraser.engines.restore.solver import GridSolver, Poisson, beta_from_log_ratio


def _colour_basis(solver: GridSolver, degree: int) -> np.ndarray:
    """Monomials in x and y up to ``degree`` at the nodes (T x M), x and y in [-1, 1]."""
    h, w = solver.shape
    yy, xx = np.divmod(solver.nodes, w)
    size = float(max(h, w))
    x, y = (xx - w / 2) / size, (yy - h / 2) / size
    terms = [x**i * y ** (d - i) for d in range(degree + 1) for i in range(d + 1)]
    return np.stack(terms).astype(np.float64)


def _colour_from_offset(
    beta: np.ndarray, u: np.ndarray, basis: np.ndarray, inside: np.ndarray, marked_alpha: float
) -> np.ndarray | None:
    """Smooth colour (3 x T coefficients) best explaining a fit's offset ``c = alpha * W``."""
    alpha = 1.0 - beta
    marked = inside & (alpha >= marked_alpha)
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
    p: RestoreParams,
) -> np.ndarray:
    """Smooth colour (3 x T) whose term ``W * alpha / beta`` best explains the gradients of J/beta.

    ``J_k / beta = I_k + W * gamma`` with ``gamma = alpha / beta``: across each edge, the mark's
    part of the gradient is linear in the colour's few coefficients; photo gradients are the
    noise, down-weighted by texture and Cauchy weights (one small least-squares problem).
    """
    gamma = (1.0 - beta) / beta
    # Only edges across which the mark's strength changes say much about its colour.
    rim = np.abs(gamma[solver.ea] - gamma[solver.eb]) > p.exact.rim_step
    ea, eb = solver.ea[rim], solver.eb[rim]
    grad = values[:, :, ea] / beta[ea] - values[:, :, eb] / beta[eb]
    design = basis[:, ea] * gamma[ea] - basis[:, eb] * gamma[eb]  # T x E
    w = texture[:, rim]
    theta = np.zeros((3, basis.shape[0]))
    for _ in range(p.exact.colour_irls):
        total = w.sum(axis=0)
        lhs = (design * total) @ design.T + 1e-9 * np.eye(basis.shape[0])
        rhs = design @ np.einsum("ne,cne->ce", w, grad).T
        theta = np.linalg.solve(lhs, rhs).T
        res = np.sqrt(((grad - (theta @ design)[:, None].astype(np.float32)) ** 2).sum(axis=0))
        scale = 1.4826 * batch_median(res, axis=0) + p.refine.residual_floor
        w = texture[:, rim] / (1.0 + (res / (p.refine.cauchy * scale)) ** 2)
    return theta


@dataclass
class _ExactRatios:
    """Per-edge fits of ``J(a) - W(a) = (beta_a / beta_b) * (J(b) - W(b))`` over the images."""

    log_ratio: np.ndarray
    precision: np.ndarray
    weights: np.ndarray


def _exact_ratios(
    fit: EdgeFit,
    colour_a: np.ndarray,
    colour_b: np.ndarray,
    texture: np.ndarray,
    start: np.ndarray | None,
    p: RestoreParams,
) -> _ExactRatios:
    """Ratio fits through the origin: with the colour known, ``J - W = beta * (I - W)``.

    No offsets to fit, and the lever arm is the distance of each pixel from the mark's colour
    (not its spread over the batch), so each ratio is far more precise than the free fit's.
    ``colour_a`` and ``colour_b`` (3 x E) are the colour at each edge's ends; ``start``: robust
    weights of the previous round (fewer reweighting steps are needed).
    """
    yy, xx, xy = _origin_moments(fit, colour_a, colour_b)
    w = texture if start is None else start
    for _ in range(p.exact.irls if start is None else 1):
        r = _origin_slope(yy, xx, w)
        res2 = np.maximum(yy - 2.0 * r * xy + r * r * xx, 0.0)
        scale = 1.4826 * batch_median(np.sqrt(res2), axis=0) + p.refine.residual_floor
        w = texture / (1.0 + res2 / (p.refine.cauchy * scale) ** 2)
    noise = (w * res2).sum(axis=0) / w.sum(axis=0) + p.refine.residual_floor**2
    sxx = np.einsum("ne,ne->e", w, xx)
    return _ExactRatios(np.log(r), (sxx / noise).astype(np.float64), w)


def _origin_moments(
    fit: EdgeFit, colour_a: np.ndarray, colour_b: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and edge (N x E): sums over channels of y*y, x*x and x*y, where
    ``y = J(a) - W(a)`` and ``x = J(b) - W(b)``; from the edge fit's centred values."""

    def moments(edges: slice) -> tuple[np.ndarray, ...]:
        part = fit.part(edges, rows)
        y, x = part.y, part.x
        my = part.y_mean - cut(colour_a, edges)
        mx = part.x_mean - cut(colour_b, edges)
        return (
            part.yy + 2.0 * np.einsum("cne,ce->ne", y, my) + (my * my).sum(axis=0),
            part.xx + 2.0 * np.einsum("cne,ce->ne", x, mx) + (mx * mx).sum(axis=0),
            part.xy
            + np.einsum("cne,ce->ne", x, my)
            + np.einsum("cne,ce->ne", y, mx)
            + (mx * my).sum(axis=0),
        )

    yy, xx, xy = fit.chunks.map(moments)
    return yy, xx, xy


def _origin_slope(yy: np.ndarray, xx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Symmetric slope through the origin per edge (noise in x does not bias it)."""
    syy = np.einsum("ne,ne->e", w, yy)
    sxx = np.einsum("ne,ne->e", w, xx)
    return np.sqrt((syy + 1e-3) / (sxx + 1e-3))


@dataclass
class ExactFit:
    """The exact-blend fit: ``beta`` (M), ``u`` (3 x M) and what the jackknife re-uses."""

    beta: np.ndarray
    u: np.ndarray
    colour: np.ndarray
    ratio_colour: np.ndarray
    """The colour the last ratio fits used (``colour`` is refitted after them)."""
    flat: np.ndarray
    active: np.ndarray
    sub: EdgeFit
    weights: np.ndarray
    poisson: Poisson
    beta_floor: float

    def without(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fit on the images ``rows`` only, keeping its colour, weights and flat edges."""
        solver = self.poisson.solver
        ea, eb = solver.ea[self.active], solver.eb[self.active]
        colour = self.ratio_colour
        yy, xx, _ = _origin_moments(self.sub, colour[:, ea], colour[:, eb], rows)
        log_ratio = np.zeros(self.flat.shape)
        log_ratio[self.active] = np.log(_origin_slope(yy, xx, self.weights[rows]))
        beta = beta_from_log_ratio(
            np.where(self.flat, 0.0, log_ratio), self.poisson, self.beta_floor
        )
        return beta, ((1.0 - beta) / beta)[None] * self.colour


def exact_fit(
    values: np.ndarray,
    stack: np.ndarray,
    fit: EdgeFit,
    solver: GridSolver,
    beta: np.ndarray,
    u: np.ndarray,
    poisson: Poisson | None,
    p: RestoreParams,
) -> ExactFit | None:
    """Refit a lossless batch as an exact blend of one smoothly varying colour; ``None`` if not.

    The free fit gives every pixel its own offset ``c``; on lossless images the estimate can be
    much tighter by tying ``c = alpha * W`` to one colour ``W`` that varies smoothly (a
    polynomial) across the mark, by taking the opacity as flat wherever the data cannot tell
    its steps from 0, and by giving the pixels at the mark's most common opacity (its body,
    drawn at one opacity) one shared value. Opacity (ratio fits through the origin) and colour
    (from the gradients) are fitted in turn. The result is kept only if it explains the batch
    nearly as well as the free fit does (``ExactFitParams.max_rss_ratio`` and
    ``max_colour_residual``): a mark of two colours, or compression, fits clearly worse.

    ``beta`` and ``u`` are a first (free) fit; ``poisson`` its factorised Poisson matrix, reused
    until the body is pooled (refactorising each round cost time and gained nothing).
    """
    e = p.exact
    basis = _colour_basis(solver, e.colour_degree)
    theta = _colour_from_offset(beta, u, basis, solver.inside, p.pixels.marked_alpha)
    if theta is None:
        return None
    free_beta, free_u = beta, u
    colour = np.clip(theta @ basis, 0.0, 255.0).astype(np.float32)
    # Edges between pixels that the first fit finds clearly unmarked are not fitted: their
    # ratio is 1 (flat). Most of a mask drawn with a margin is such pixels.
    active = _near_the_mark(beta, u, solver, e)
    sub = fit.subset(np.arange(values.shape[1]), active)
    ea, eb = solver.ea[active], solver.eb[active]
    tied = weights = ratios = None
    for i in range(e.iterations + e.body_iterations):
        if i == e.iterations:
            assert ratios is not None
            tied = _body(beta, solver, _node_error(ratios.precision, active, solver), p)
            if tied is None:
                break
            poisson = None  # the body's nodes become one unknown: a new factorisation
        if i % e.texture_every == 0 or i == e.iterations:
            texture = texture_weights(stack, beta, u, solver, p, fit.chunks.threads)
        ratio_colour = colour
        ratios = _exact_ratios(sub, colour[:, ea], colour[:, eb], texture[:, active], weights, p)
        weights = ratios.weights
        standard_error = 1.0 / np.sqrt(np.maximum(ratios.precision, 1e-9))
        # Imprecise edges keep their measured ratio: taking them as flat could join a whole
        # letter to its unmarked surroundings.
        flat = np.ones(active.shape, dtype=bool)
        flat[active] = (np.abs(ratios.log_ratio) < e.snap * standard_error) & (
            standard_error < e.snap_max_error
        )
        if poisson is None:
            typical = max(float(np.median(ratios.precision)), 1e-12)
            weight = np.ones(active.shape)
            weight[active] = np.clip(ratios.precision / typical, 0.01, 100.0)
            poisson = solver.poisson(
                weight, p.free_fit.anchor, None if tied is None else tied[solver.inside]
            )
        log_ratio = np.zeros(active.shape)
        log_ratio[active] = ratios.log_ratio
        beta = beta_from_log_ratio(np.where(flat, 0.0, log_ratio), poisson, p.free_fit.beta_floor)
        theta = _colour_from_gradients(values, beta, basis, texture, solver, p)
        colour = np.clip(theta @ basis, 0.0, 255.0).astype(np.float32)
        u = ((1.0 - beta) / beta)[None] * colour
    assert poisson is not None and weights is not None
    if not _explains_batch(values, fit, solver, texture, free_beta, free_u, beta, colour, p):
        return None
    return ExactFit(
        beta, u, colour, ratio_colour, flat, active, sub, weights, poisson, p.free_fit.beta_floor
    )


def _node_error(precision: np.ndarray, active: np.ndarray, solver: GridSolver) -> np.ndarray:
    """Standard error of each node's ``log beta`` from the precisions of its edges' ratios."""
    total = np.zeros(solver.nodes.size)
    np.add.at(total, solver.ea[active], precision)
    np.add.at(total, solver.eb[active], precision)
    return 1.0 / np.sqrt(np.maximum(total, 1e-12))


def _near_the_mark(
    beta: np.ndarray, u: np.ndarray, solver: GridSolver, e: ExactFitParams
) -> np.ndarray:
    """Edges (E bool) with an end at, or next to, a pixel a first fit finds marked at all."""
    marked = (beta < 1.0 - e.active_alpha) | (np.abs(u * beta).max(axis=0) > e.active_offset)
    grid = solver.scatter(marked.astype(np.float32), 0.0)
    near = solver.gather(cv2.dilate(grid, np.ones((3, 3), np.uint8))) > 0
    return near[solver.ea] | near[solver.eb]


def _body(
    beta: np.ndarray, solver: GridSolver, error: np.ndarray, p: RestoreParams
) -> np.ndarray | None:
    """Nodes at the mark's most common opacity (within their errors of it), if many.

    ``error``: each node's standard error of ``log beta`` (see ``ExactFitParams.body_errors``).

    A watermark is usually drawn at one opacity, its anti-aliased rim aside; pooling that body
    into one value removes the slow drift that integrating many small ratios leaves.
    """
    e = p.exact
    marked = solver.inside & (beta <= 1.0 - p.pixels.marked_alpha)
    if not marked.any():
        return None
    bins = np.arange(0.0, 1.0 + e.body_bin, e.body_bin)
    counts = np.convolve(np.histogram(beta[marked], bins=bins)[0], [1, 2, 3, 2, 1], mode="same")
    mode = bins[int(np.argmax(counts))] + e.body_bin / 2
    # Imprecisely known pixels may join too: within a few of their standard errors.
    width = np.clip(e.body_errors * error * beta, e.body_width, e.body_max_width)
    body = marked & (np.abs(beta - mode) < width)
    return body if body.sum() >= e.body_min_share * marked.sum() else None


def _explains_batch(
    values: np.ndarray,
    fit: EdgeFit,
    solver: GridSolver,
    texture: np.ndarray,
    free_beta: np.ndarray,
    free_u: np.ndarray,
    beta: np.ndarray,
    colour: np.ndarray,
    p: RestoreParams,
) -> bool:
    """Whether the exact fit explains the batch about as well as the free fit, at the mark."""
    ea, eb = solver.ea, solver.eb
    free_c = free_u * free_beta
    # The mark's outline, as the free fit sees it: steps of its opacity or of its offset.
    outline = (
        np.abs(np.log(free_beta[ea]) - np.log(free_beta[eb]))
        + np.abs(free_c[:, ea] - free_c[:, eb]).mean(axis=0) / 128.0
    ) > p.exact.outline_step
    alpha = 1.0 - free_beta
    marked = solver.inside & (alpha >= p.pixels.marked_alpha)
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
    limit = p.exact.rss_limit(values.shape[1])
    if exact_rss > limit * expected * max(float(free_rss), 1e-6):
        return False
    if values.shape[1] < p.refine.min_images:
        # The first fit of so few images is too rough to compare colours with.
        return True
    colour_residual = np.abs(free_c[:, marked] - alpha[marked] * colour[:, marked]).max(axis=0)
    return float(np.median(colour_residual)) <= p.exact.max_colour_residual
