"""Poisson integration on the mask: the one linear solve that steps 3, 4 and 6 share.

The batch is handled as compact arrays over the solver's nodes (the mask's pixels and the ring
just outside it) and the edges between neighbouring nodes. Integrating edge differences into
node values, with 0 on the mask's border, turns the per-edge fits (a ratio of opacities, a
gradient of the colour) into per-pixel maps.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import splu


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
        # ``take`` copies into C order, 5x faster than indexing on an N x M x 3 stack (whose
        # copy came out node-major). Every use reads it element-wise or indexes it again (the
        # ghost scores' ``values[:, ea]``, laid out the same whatever the source), so no sum
        # sees another layout: the same bits.
        return np.take(flat, self.nodes, axis=-2 if tail else -1)

    def scatter(self, values: np.ndarray, fill: float) -> np.ndarray:
        """Grid array from node values (M[, C]); ``fill`` elsewhere."""
        h, w = self.shape
        out = np.full((h * w,) + values.shape[1:], fill, dtype=np.float32)
        out[self.nodes] = values
        return out.reshape((h, w) + values.shape[1:])

    def poisson(
        self, weights: np.ndarray, anchor: float, tied: np.ndarray | None = None
    ) -> Poisson:
        """A factorised weighted Poisson problem on the domain (see ``Poisson``)."""
        return Poisson(self, weights, anchor, tied)


class Poisson:
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
        self.solver = solver
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
        solver = self.solver
        rhs = self._weighted_t @ g.astype(np.float64)
        values = self._lu.solve(rhs)
        if self._expand is not None:
            values = self._expand @ values
        out = np.zeros((solver.nodes.size,) + g.shape[1:], dtype=np.float32)
        out[solver.inside] = values
        return out


def beta_from_log_ratio(log_ratio: np.ndarray, poisson: Poisson, min_beta: float) -> np.ndarray:
    """``beta`` (M) integrated from the edges' ``log(beta_a / beta_b)``, clamped to [min_beta, 1]."""
    return np.clip(np.exp(poisson.solve(log_ratio)), min_beta, 1.0).astype(np.float32)


def beta_from_ratio(ratio: np.ndarray, poisson: Poisson, min_beta: float) -> np.ndarray:
    """``beta`` (M) integrated from the edges' ratios ``beta_a / beta_b``."""
    log_ratio = np.log(np.clip(ratio, min_beta, 1.0 / min_beta))
    return beta_from_log_ratio(log_ratio, poisson, min_beta)
