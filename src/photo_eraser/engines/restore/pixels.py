"""What a grid pixel is, by an estimate: opaque, clearly marked, or not reached by the mark.

The engine's classes of pixels, each written once; the exact fit, which works on its own
first fit, states its few thresholds where it uses them (``exact_fit.py``).
``beta`` and ``spread`` may be grid arrays (HxW) or node arrays (M) alike.
"""

from __future__ import annotations

import cv2
import numpy as np

from photo_eraser.engines.restore.arrays import within
from photo_eraser.engines.restore.estimate import Blend
from photo_eraser.engines.restore.params import PixelParams


def opaque(beta: np.ndarray, spread: np.ndarray, p: PixelParams) -> np.ndarray:
    """(Nearly) opaque: too opaque to invert, or the same colour in every image of the batch
    (under an opaque mark the ratio fits have no signal, but the spread shows it)."""
    return (beta < p.min_inverted_beta) | (spread < p.opaque_spread)


def marked_by_opacity(beta: np.ndarray, spread: np.ndarray, p: PixelParams) -> np.ndarray:
    """Where the estimate finds opacity, or that hardly varies over the batch (opaque)."""
    return (beta < 1.0 - p.marked_alpha) | (spread < p.opaque_spread)


def clearly_marked(blend: Blend, domain: np.ndarray, p: PixelParams) -> np.ndarray:
    """Grid pixels of the domain clearly under the mark, by opacity or by offset (HxW bool)."""
    return domain & (
        (blend.beta < 1.0 - p.marked_alpha) | (np.abs(blend.offset).max(axis=2) >= p.marked_offset)
    )


def enough_marked(blend: Blend, domain: np.ndarray, p: PixelParams) -> bool:
    """Whether enough of the domain is clearly marked to call it a mark at all."""
    marked = int(clearly_marked(blend, domain, p).sum())
    return marked >= max(p.min_marked_pixels, p.min_marked_share * int(domain.sum()))


def unmarked(blend: Blend, confident: np.ndarray, p: PixelParams) -> np.ndarray:
    """Grid pixels the mark does not reach (HxW bool): left as they are, not inverted.

    Masks are drawn with a margin or as a box; inverting an estimate of "no mark" there would
    only add its noise. ``confident``: where the opacity can be trusted (not beside opaque
    pixels). Near opaque areas a free fit's offset drifts (from their ``W / beta``, with beta
    near 0): there the opacity alone decides. A few stray "opaque" pixels of a rough fit over
    a semi-transparent mark are no such area: only groups of ``min_marked_pixels`` count.
    An exact fit is precise enough to keep faint rim pixels as marked.
    """
    if blend.exact:
        most_alpha, most_offset = p.unmarked_alpha_exact, p.unmarked_offset_exact
    else:
        most_alpha, most_offset = p.unmarked_alpha, p.unmarked_offset
    is_opaque = opaque(blend.beta, blend.spread, p)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        is_opaque.astype(np.uint8), connectivity=8
    )
    big = np.concatenate([[False], stats[1:, cv2.CC_STAT_AREA] >= p.min_marked_pixels])
    drifting = within(big[labels], p.drift_reach)
    return (
        (blend.beta > 1.0 - most_alpha)
        & ((np.abs(blend.offset).max(axis=2) < most_offset) | drifting)
        & confident
    )


def confident_opacity(blend: Blend, p: PixelParams) -> np.ndarray:
    """Where the estimated opacity can be trusted: not within ``opaque_margin`` of opaque
    pixels, next to which the ratio fits have no signal (HxW bool)."""
    return ~within(opaque(blend.beta, blend.spread, p), p.opaque_margin)
