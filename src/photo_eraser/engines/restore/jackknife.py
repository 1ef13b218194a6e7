"""The jackknife of step 8: how much the recovered photos move when the blend is re-fitted
without each half of the batch (each image, in small batches). ``fit.py`` re-fits; this module
says which groups to leave out and turns the re-fits into per-pixel errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from photo_eraser.engines.restore.params import ConfidenceParams
from photo_eraser.engines.restore.solver import GridSolver


def jackknife_groups(n: int, p: ConfidenceParams) -> list[np.ndarray]:
    """Image groups to leave out in turn: halves for larger batches, single images otherwise."""
    if n >= p.halves_from:
        return [np.arange(0, n, 2), np.arange(1, n, 2)]
    return [np.array([i]) for i in range(n)]


def jackknife_errors(
    values: np.ndarray,
    inv_betas: Sequence[np.ndarray],
    offsets: Sequence[np.ndarray],
    solver: GridSolver,
) -> np.ndarray:
    """Each image's standard error of its recovered photo (N x H x W, grey levels RMS over
    channels), from the fits without each group: ``1/beta`` (M) and ``u`` (3 x M) of each.

    ``values``: the batch on the solver's nodes (3 x N x M).
    """
    g = len(inv_betas)
    if g == 2:
        # Two groups: both deviations from the mean are half the difference.
        dev = values * (inv_betas[0] - inv_betas[1]) - (offsets[0] - offsets[1])[:, None, :]
        var = np.einsum("cnm,cnm->nm", dev, dev) / 12.0
    else:
        mean_ib, mean_u = np.mean(inv_betas, axis=0), np.mean(offsets, axis=0)
        var = np.zeros(values.shape[1:], dtype=np.float32)
        for ib, ug in zip(inv_betas, offsets, strict=True):
            dev = values * (ib - mean_ib) - (ug - mean_u)[:, None, :]
            var += np.einsum("cnm,cnm->nm", dev, dev) / 3.0
        var *= (g - 1) / g
    return np.stack([solver.scatter(np.sqrt(v), 0.0) for v in var])
