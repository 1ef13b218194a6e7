"""Step 7: where the mark is. Which images carry it, which parts of the mask, and how far a
loose mask reaches beyond it.

The ghost score compares the edge energy at the mark's edges before and after inversion: well
below 1 where the mark is there (inverting removes its edges), above 1 where it is not
(inverting prints a negative ghost of it). It decides which images are left out, whether the
batch carries a mark at all, and which connected parts of the mask carry it. A loose mask (a
box, a broad brush) is narrowed to the mark, its faint parts and a thin margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage, sparse

from photo_eraser.engines.restore.arrays import ROUNDING_NOISE, channel_mean, within
from photo_eraser.engines.restore.estimate import Blend, Estimate
from photo_eraser.engines.restore.params import RestoreParams
from photo_eraser.engines.restore.pixels import (
    clearly_marked,
    enough_marked,
    marked_by_opacity,
    opaque,
)
from photo_eraser.engines.restore.solver import GridSolver


def ghost_scores(
    stack: np.ndarray,
    blend: Blend,
    solver: GridSolver,
    p: RestoreParams,
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
    beta = solver.gather(blend.beta)
    offset = channel_mean(solver.gather(blend.offset))
    spread = solver.gather(blend.spread)
    ea, eb = solver.ea, solver.eb
    # The mark's edges: steps of its colour or of its opacity (a black mark has no colour).
    weight = np.abs(offset[ea] - offset[eb]) + 128.0 * np.abs(beta[ea] - beta[eb])
    # Only where inversion is attempted at all (not under an opaque mark).
    weight *= ~opaque(np.minimum(beta[ea], beta[eb]), np.minimum(spread[ea], spread[eb]), p.pixels)
    inverted = values / beta - channel_mean(solver.gather(blend.u))
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


def no_shared_mark(scores: np.ndarray, p: RestoreParams) -> bool:
    """Whether inverting barely changes the edges of a typical image (median ghost score): no
    shared mark (e.g. the mask covers an object that differs between the photos)."""
    return float(np.median(scores)) > p.mark.no_mark_score


def finds_mark(blend: Blend, scores: np.ndarray, domain: np.ndarray, p: RestoreParams) -> bool:
    """Whether the estimate found a shared mark: inverting it weakens the edges of a typical
    image, and enough pixels are clearly marked."""
    return not no_shared_mark(scores, p) and enough_marked(blend, domain, p.pixels)


def images_without_the_mark(scores: np.ndarray, p: RestoreParams) -> np.ndarray:
    """Which images (bool per image) lack the mark: inverting prints a ghost (a score above 1).
    Faint marks come near 1 either way, so the score must clearly exceed 1 and stand out."""
    limit = max(p.mark.ghost_limit, p.mark.ghost_outlier * float(np.median(scores)))
    return scores > limit


@dataclass(frozen=True)
class MarkParts:
    """The mask's pixels that belong to the mark or its surroundings (HxW bool), and the ghost
    score up to which a part of the mask is taken to carry the mark."""

    pixels: np.ndarray
    limit: float


def parts_with_mark(est: Estimate, whole: GridSolver, p: RestoreParams) -> MarkParts:
    """The parts of the whole mask that carry the mark, by the estimate ``est``.

    Each connected part of the mask with enough clearly marked pixels carries the mark if
    inverting it weakens the edges there in a typical image (the median ghost score of the
    part) about as much as in the mark's typical part: an estimate over a part without the
    mark (an object masked apart from it) can be far from "no mark", but inverting it weakens
    little or prints a ghost. Those parts are the mark's, however far they reach. So are the
    pixels within ``MarkParams.near`` of clearly marked ones in chains of parts each within
    about ``near`` of the next (the mark's letters that score worse, the opaque parts of a
    logo, where the score means nothing). The rest is something else to erase. If no part has
    enough clearly marked pixels (a mark of many small parts), the pixels within ``near`` of
    clearly marked ones are the mark's. Pixels off the mask are none of these.
    """
    m, px = p.mark, p.pixels
    domain = whole.domain
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        domain.astype(np.uint8), connectivity=8
    )
    marked = clearly_marked(est.blend, domain, px)
    near = domain & within(marked, m.near)
    held = np.bincount(labels[marked], minlength=count)[1:]
    enough = held >= np.maximum(
        px.min_marked_pixels, px.min_marked_share * stats[1:, cv2.CC_STAT_AREA]
    )
    if not enough.any():
        return MarkParts(near, m.no_mark_score)
    scores = np.median(ghost_scores(est.stack, est.blend, whole, p, labels), 0)
    # The typical part: the median score over the clearly marked pixels of the parts that
    # have enough of them.
    order = np.flatnonzero(enough)[np.argsort(scores[enough])]
    weight = np.cumsum(held[order])
    typical = float(scores[order[int(np.searchsorted(weight, weight[-1] / 2))]])
    limit = min(m.no_mark_score, max(m.part_score_floor, m.part_score_ratio * typical))
    carries = np.concatenate([[False], enough & (scores <= limit)])[labels]
    # Chains of parts: where the mask, widened by half of ``near`` on every side, is connected.
    widened = within(domain, m.near // 2).astype(np.uint8)
    _, chains = cv2.connectedComponents(widened, connectivity=8)
    return MarkParts(carries | (near & np.isin(chains, np.unique(chains[carries]))), limit)


def narrowed(
    blend: Blend,
    domain: np.ndarray,
    with_mark: np.ndarray,
    faint: np.ndarray,
    p: RestoreParams,
) -> np.ndarray | None:
    """The mask cut down to its parts with the mark (``with_mark``), their marked pixels, the
    mark's ``faint`` parts and a margin around them, if more than ``MarkParams.loose_share`` of
    it lies beyond ``tight_margin`` of those pixels (a loose mask, or parts without the mark);
    else ``None``.

    The mark is where the estimate finds opacity (its offset alone is not enough: next to an
    opaque mark the free fit's offset drifts far into a loose mask), or where pixels hardly vary
    over the batch (under an opaque mark the ratio fits have no signal).
    """
    tight, around_mark = _margins(blend, domain, with_mark, faint, p)
    if tight is None or around_mark.sum() > (1.0 - p.mark.loose_share) * domain.sum():
        return None
    return tight


def trimmed(
    blend: Blend,
    domain: np.ndarray,
    with_mark: np.ndarray,
    faint: np.ndarray,
    p: RestoreParams,
) -> np.ndarray | None:
    """The mask cut down as by ``narrowed``, if that leaves anything out at all, however little
    (a lossless batch left on the free fit: the margin can be what keeps the exact fit out)."""
    tight, _ = _margins(blend, domain, with_mark, faint, p)
    return tight if tight is not None and tight.sum() < domain.sum() else None


def _margins(
    blend: Blend,
    domain: np.ndarray,
    with_mark: np.ndarray,
    faint: np.ndarray,
    p: RestoreParams,
) -> tuple[np.ndarray | None, np.ndarray]:
    """The mask's pixels within the fit's margin of the marked ones (``None`` if none are
    marked), and those within ``tight_margin`` of them."""
    marked = (marked_by_opacity(blend.beta, blend.spread, p.pixels) & domain & with_mark) | (
        faint & domain
    )

    def around(margin: int) -> np.ndarray:
        return domain & with_mark & within(marked, margin)

    if not marked.any():
        return None, marked
    margin = p.mark.tight_margin if blend.exact else p.mark.tight_margin_free
    return around(margin), around(p.mark.tight_margin)


def faint_parts(est: Estimate, p: RestoreParams) -> np.ndarray:
    """Parts of the mark too faint to count as clearly marked (a line at alpha 0.06 under a
    bold logo): the candidates of ``_faint_candidates`` that the batch agrees on (HxW bool).

    A free fit over a loose mask also leaves faint, speckled patches where some photos are
    textured; the images disagree there. A candidate is kept if, over its pixels, the median
    of the correction inverting applies is at least ``MarkParams.faint_min_confidence`` times
    its jackknife standard error.
    """
    groups = _faint_candidates(est.blend, est.solver.domain, p)
    if not groups.any():
        return groups > 0
    stack, blend = est.stack, est.blend
    correction = np.median(np.sqrt(channel_mean((stack - blend.invert(stack)) ** 2)), axis=0)
    confidence = correction / (np.median(est.errors, axis=0) + ROUNDING_NOISE)
    inside = groups > 0
    typical = ndimage.median(confidence[inside], groups[inside], np.arange(1, groups.max() + 1))
    kept = np.asarray(typical) >= p.mark.faint_min_confidence
    return np.concatenate([[False], kept])[groups]


def _faint_candidates(blend: Blend, domain: np.ndarray, p: RestoreParams) -> np.ndarray:
    """Groups of pixels (HxW int, ``0`` for none) that may be a faint part of the mark: their
    opacity or offset stands out from their 5x5 median.

    Measured against the same contrast over the mask's pixels away from the mark (the noise of
    the estimate; a smooth drift of the offset, as next to an opaque mark, has none). Groups
    with at least ``faint_min_seeds`` pixels above ``faint_seed`` standard scores, grown over
    the pixels above ``faint_grow``; an estimate's noise gives few, scattered ones.
    """
    m = p.mark
    offset = blend.offset
    background = np.stack([cv2.medianBlur(offset[..., c], 5) for c in range(3)], axis=-1)
    alpha = 1.0 - blend.beta
    contrasts = ((offset - background).max(axis=2), alpha - cv2.medianBlur(alpha, 5))
    strong = marked_by_opacity(blend.beta, blend.spread, p.pixels)
    # A mask drawn tight may leave too few such pixels: then the floors are the scales (a
    # faint part clearly marked by its offset stands out from them).
    away = domain & ~within(clearly_marked(blend, domain, p.pixels) | strong, 3)
    enough = away.sum() >= m.faint_min_reference
    score = np.zeros(domain.shape, dtype=np.float32)
    for contrast, floor in zip(contrasts, (1.0, 0.01), strict=True):
        noise = 1.4826 * float(np.median(np.abs(contrast[away]))) if enough else 0.0
        score = np.maximum(score, contrast / max(noise, floor))
    grown = domain & ~strong & (score > m.faint_grow)
    seeds = grown & (score > m.faint_seed)
    count, groups = cv2.connectedComponents(within(grown, 1).astype(np.uint8), connectivity=8)
    held = np.bincount(groups[seeds], minlength=count)
    held[0] = 0
    # What lies within the margin narrowing keeps anyway does not matter; a free fit's ripples
    # hug the mark.
    beyond = np.bincount(groups[grown & ~within(strong, m.tight_margin + 1)], minlength=count)
    kept = (held >= m.faint_min_seeds) & (beyond >= m.faint_min_beyond)
    number = np.cumsum(kept) * kept  # kept groups renumbered 1..P, the rest 0
    return np.where(grown, number[groups], 0).astype(np.int32)
