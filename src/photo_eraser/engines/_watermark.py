"""Estimating a shared visible watermark from a batch of aligned crops.

Model, per pixel p of image k: ``J_k(p) = c(p) + beta(p) * I_k(p)`` with ``beta = 1 - alpha``
and ``c = alpha * W`` (the watermark colour W may vary across the mark). Outside the domain
(the mask) there is no watermark: ``beta = 1``, ``c = 0``.

Two facts about natural photos identify ``beta`` and ``c`` from a batch:

* neighbouring pixels p, q of one photo are nearly equal, so across the batch
  ``J_k(p) ~ (beta_p / beta_q) * J_k(q) + const``: a robust regression per pixel pair gives the
  ratio ``beta_p / beta_q``, and integrating ``log beta`` (a Poisson problem, ``0`` on the
  domain's border) gives ``beta``;
* with ``Z_k = J_k / beta = I_k + u`` (``u = c / beta``), the median over the batch of the
  gradient of ``Z_k`` is the gradient of ``u`` (photo gradients are sparse and differ between
  photos; Dekel et al., CVPR 2017); a second Poisson solve gives ``u``.

Then ``I_k = J_k / beta - u``. All arrays here are float32 crops on a common grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import splu

_MIN_BETA = 0.02
"""Lower clamp for the estimated ``1 - alpha``; below the inversion bound anyway."""
_RESIDUAL_FLOOR = 2.0
"""Smallest residual scale (grey levels) of the robust fits, about the JPEG q90 noise."""


@dataclass(frozen=True)
class BlendEstimate:
    """``beta = 1 - alpha`` (HxW) and ``u = alpha * W / beta`` (HxWx3) on the grid."""

    beta: np.ndarray
    u: np.ndarray

    def invert(self, crop: np.ndarray) -> np.ndarray:
        """The photo under the watermark for one grid crop (float32, not clipped)."""
        return crop / self.beta[..., None] - self.u

    @property
    def offset(self) -> np.ndarray:
        """``c = alpha * W`` (HxWx3), the additive part of the blend."""
        return self.u * self.beta[..., None]


class GridSolver:
    """Edges of the domain and a factorised Poisson matrix with a zero Dirichlet border.

    ``solve(g)`` returns the field ``v`` (``0`` outside the domain) whose differences
    ``v[a] - v[b]`` best fit ``g`` in least squares over all edges ``(a, b)``.
    """

    def __init__(self, domain: np.ndarray) -> None:
        h, w = domain.shape
        if domain[0].any() or domain[-1].any() or domain[:, 0].any() or domain[:, -1].any():
            raise ValueError("the domain must not touch the grid's border")
        self.shape = (h, w)
        self.domain = domain
        flat = domain.ravel()
        index = np.full(h * w, -1, dtype=np.int64)
        index[flat] = np.arange(int(flat.sum()))
        self.unknowns = int(flat.sum())
        ids = np.arange(h * w).reshape(h, w)
        # Edge (a, b): a is the right / lower neighbour of b; kept if either end is unknown.
        a = np.concatenate([ids[:, 1:].ravel(), ids[1:, :].ravel()])
        b = np.concatenate([ids[:, :-1].ravel(), ids[:-1, :].ravel()])
        keep = flat[a] | flat[b]
        self.a, self.b = a[keep], b[keep]
        ia, ib = index[self.a], index[self.b]
        rows = np.arange(self.a.size)
        inc = sparse.coo_matrix(
            (
                np.concatenate([np.ones(int((ia >= 0).sum())), -np.ones(int((ib >= 0).sum()))]),
                (
                    np.concatenate([rows[ia >= 0], rows[ib >= 0]]),
                    np.concatenate([ia[ia >= 0], ib[ib >= 0]]),
                ),
            ),
            shape=(self.a.size, self.unknowns),
        ).tocsr()
        self._incidence = inc
        self._lu = splu((inc.T @ inc).tocsc())

    @property
    def edges(self) -> int:
        return int(self.a.size)

    def solve(self, g: np.ndarray) -> np.ndarray:
        """Integrate edge differences ``g`` (E or ExC) into a field (HxW or HxWxC)."""
        rhs = self._incidence.T @ g.astype(np.float64)
        sol = self._lu.solve(rhs)
        h, w = self.shape
        out = np.zeros((h * w,) + g.shape[1:], dtype=np.float32)
        out[self.domain.ravel()] = sol
        return out.reshape((h, w) + g.shape[1:])


def _edge_values(stack: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Pixel values of every image at the given flat indices: (N, E, 3)."""
    n = stack.shape[0]
    return stack.reshape(n, -1, 3)[:, idx, :]


def edge_differences(field: np.ndarray, solver: GridSolver) -> np.ndarray:
    """``field[a] - field[b]`` over the solver's edges, for one HxWx3 field: (E, 3)."""
    flat = field.reshape(-1, field.shape[-1])
    return flat[solver.a] - flat[solver.b]


def fit_edge_log_ratios(stack: np.ndarray, solver: GridSolver, iterations: int = 3) -> np.ndarray:
    """Robust per-edge estimate of ``log(beta_a / beta_b)`` from the batch.

    Regresses ``J(a)`` on ``J(b)`` over images (one slope, one intercept per channel) with
    iteratively reweighted least squares (Cauchy weights), so images with a photo edge
    between a and b barely count.
    """
    y = _edge_values(stack, solver.a)
    x = _edge_values(stack, solver.b)
    n = stack.shape[0]
    weights = np.ones(x.shape[:2], dtype=np.float32)
    slope = np.ones(x.shape[1], dtype=np.float32)
    for _ in range(iterations):
        wsum = weights.sum(axis=0)
        w3 = weights[..., None]
        xc = x - (w3 * x).sum(axis=0) / wsum[:, None]
        yc = y - (w3 * y).sum(axis=0) / wsum[:, None]
        sxy = (w3 * xc * yc).sum(axis=(0, 2))
        sxx = (w3 * xc * xc).sum(axis=(0, 2))
        syy = (w3 * yc * yc).sum(axis=(0, 2))
        # Symmetric (geometric mean of y-on-x and inverse x-on-y) slope: no attenuation bias.
        slope = np.sign(sxy) * np.sqrt((syy + 1e-3) / (sxx + 1e-3))
        slope = np.where(sxy > 0, slope, 1.0).astype(np.float32)
        if n < 3:
            break
        res = np.sqrt(((yc - slope[None, :, None] * xc) ** 2).sum(axis=2))
        scale = 1.4826 * np.median(res, axis=0) + _RESIDUAL_FLOOR
        weights = 1.0 / (1.0 + (res / (2.0 * scale)) ** 2)
    return np.log(np.clip(slope, _MIN_BETA, 1.0 / _MIN_BETA))


def estimate_blend(stack: np.ndarray, solver: GridSolver) -> BlendEstimate:
    """Estimate ``beta`` and ``u`` from aligned crops ``stack`` (N x H x W x 3, float32)."""
    log_ratio = fit_edge_log_ratios(stack, solver)
    beta = np.exp(solver.solve(log_ratio))
    beta = np.clip(beta, _MIN_BETA, 1.0).astype(np.float32)
    z = stack / beta[None, ..., None]
    grad = _edge_values(z, solver.a) - _edge_values(z, solver.b)
    u = solver.solve(np.median(grad, axis=0))
    return BlendEstimate(beta=beta, u=u)


def jackknife_groups(n: int) -> list[np.ndarray]:
    """Image groups to leave out in turn: halves for larger batches, single images otherwise."""
    if n >= 6:
        return [np.arange(0, n, 2), np.arange(1, n, 2)]
    return [np.array([i]) for i in range(n)]


def jackknife_error(
    stack: np.ndarray, solver: GridSolver, groups: Sequence[np.ndarray]
) -> np.ndarray:
    """Per-image, per-pixel standard error of the recovered photo (N x H x W, grey levels).

    Re-estimates the blend without each group of images and measures how much the recovered
    photos move (the jackknife variance); this is the confidence the engine decides on.
    """
    n = stack.shape[0]
    g = len(groups)
    restored = np.empty((g,) + stack.shape, dtype=np.float32)
    for i, group in enumerate(groups):
        keep = np.setdiff1d(np.arange(n), group)
        est = estimate_blend(stack[keep], solver)
        restored[i] = est.invert(stack)
    spread = restored - restored.mean(axis=0, keepdims=True)
    var = (g - 1) / g * (spread**2).sum(axis=0).mean(axis=-1)
    return np.sqrt(var)
