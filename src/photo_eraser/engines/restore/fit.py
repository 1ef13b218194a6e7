"""Steps 3-6 put together: which fit a batch gets, and its jackknife errors (step 8).

Every batch starts with the free fit's ratio and gradient fits. From ``RefineParams.min_images``
images a short first fit is refined with texture weights (step 5); a lossless batch tries the
exact-blend fit (step 6) from the same short first fit instead, and keeps it only if it holds.
Mostly opaque marks get neither: the plain free fit (steps 3-4).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from photo_eraser.engines.restore.edges import CHUNK_BYTES, EdgeChunks, in_threads
from photo_eraser.engines.restore.estimate import Blend, Fit
from photo_eraser.engines.restore.exact_fit import exact_fit
from photo_eraser.engines.restore.free_fit import EdgeFit, free_fit, spread
from photo_eraser.engines.restore.jackknife import jackknife_errors, jackknife_groups
from photo_eraser.engines.restore.params import RestoreParams
from photo_eraser.engines.restore.refine import refinable, refine, refined_without
from photo_eraser.engines.restore.solver import GridSolver, beta_from_ratio


def fit_blend(
    stack: np.ndarray,
    solver: GridSolver,
    p: RestoreParams,
    *,
    lossless: bool = False,
    jackknife: bool = True,
    threads: int = 1,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[Blend, np.ndarray | None]:
    """The blend on the solver's domain from aligned crops ``stack`` (N x H x W x 3, float32).

    ``lossless``: the crops are exactly the blend (no lossy step after the mark was put on),
    so the exact-blend fit may be tried.

    With ``jackknife``, also returns each image's per-pixel standard error of the recovered
    photo (N x H x W, grey levels RMS over channels): the blend is re-fitted without each group
    of images (keeping the robust weights of the full fit), and how much the recovered photos
    move is the error. The engine decides on this confidence.

    ``threads``: the per-edge work runs on chunks of edges (``chunk_bytes``, see ``edges.py``)
    this many at a time; the result is the same for any of these.
    """
    values = np.ascontiguousarray(np.moveaxis(solver.gather(stack), -1, 0))
    n = values.shape[1]
    fit = EdgeFit(values, solver, EdgeChunks(solver.ea.size, n, threads, chunk_bytes))
    rough_beta = spread(values, solver)
    to_refine = n >= p.refine.min_images
    try_exact = lossless and p.exact.enabled and n >= p.exact.min_images
    if to_refine or try_exact:
        # A short first fit, only good enough to tell smooth from textured neighbourhoods.
        ratio, edge_weight, first_weights = fit.robust(p.free_fit, p.refine.first_fit_irls)
        poisson = solver.poisson(edge_weight, p.free_fit.anchor)
        beta = beta_from_ratio(ratio, poisson, p.free_fit.beta_floor)
        # The ratio fits' robust weights already discount photo edges: a weighted mean will do.
        u = poisson.solve(fit.mean_gradient(beta, first_weights).T).T
        del first_weights  # images x edges, not needed again: not held through what follows
        worth_it = refinable(beta, rough_beta, solver, p)
        to_refine, try_exact = to_refine and worth_it, try_exact and worth_it
    exact = None
    if try_exact:
        # The exact fit replaces the refinement when it holds; a large batch is fitted on an
        # even subset of its images.
        most = max(p.exact.subset_min_images, p.exact.subset_image_edges // max(solver.ea.size, 1))
        rows = np.linspace(0, n - 1, min(n, most)).round().astype(int)
        exact = exact_fit(
            values[:, rows], stack[rows], fit.subset(rows), solver, beta, u, poisson, p
        )
    kind: Fit
    if exact is not None:
        kind, beta, u = "exact", exact.beta, exact.u
    elif to_refine:
        kind = "refined"
        beta, u, w_ratio, w_grad = refine(fit, poisson, stack, beta, u, p)
    else:
        kind = "free"
        ratio, edge_weight, weights = fit.robust(p.free_fit)
        poisson = solver.poisson(edge_weight, p.free_fit.anchor)
        beta, u = free_fit(fit, ratio, poisson, p.free_fit)
    blend = Blend(
        beta=solver.scatter(beta, 1.0),
        u=solver.scatter(u.T, 0.0),
        spread=solver.scatter(rough_beta, 1.0),
        fit=kind,
    )
    if not jackknife:
        return blend, None
    # The re-fits are independent: they run side by side, sharing the threads (so no more
    # chunks are held at once than by one re-fit on all of them).
    if exact is not None:
        # The exact fit saw only its subset: leave out groups of that subset (groups of the
        # whole batch could leave a subset half empty).
        groups = jackknife_groups(rows.size, p.confidence)
        on_share = replace(exact, sub=exact.sub.on_threads(_share(threads, len(groups))))

        def exact_without(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return on_share.without(np.setdiff1d(np.arange(rows.size), group))

        refits = in_threads(exact_without, groups, threads)
    else:
        groups = jackknife_groups(n, p.confidence)
        shared = fit.on_threads(_share(threads, len(groups)))

        def without(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            keep = np.setdiff1d(np.arange(n), group)
            if kind == "refined":
                return refined_without(shared, poisson, w_ratio, w_grad, keep, p.free_fit)
            return free_fit(shared, shared.slope(weights, keep)[0], poisson, p.free_fit, keep)

        refits = in_threads(without, groups, threads)
    inv_betas = [1.0 / beta_g for beta_g, _ in refits]
    offsets = [u_g for _, u_g in refits]
    return blend, jackknife_errors(values, inv_betas, offsets, solver)


def _share(threads: int, side_by_side: int) -> int:
    """Threads for each of ``side_by_side`` fits run at once on ``threads`` (at least one)."""
    return max(1, threads // max(1, min(threads, side_by_side)))
