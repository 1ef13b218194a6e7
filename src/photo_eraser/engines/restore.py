"""Batch watermark recovery: invert a shared semi-transparent overlay, inpaint the rest.

A visible watermark stamped on every image of a batch is ``J = alpha*W + (1-alpha)*I``.
Because alpha and W are the same on every image, they can be estimated from the batch (see
``_watermark``) and the blend inverted, giving back the real pixels rather than invented ones.
Where the mark is (nearly) opaque, or where the estimate is not confident, the masked pixels are
filled by the fallback engine instead.

Per image, ``Restored.method`` is ``"restore"`` when at least half of the mask was recovered by
inversion, ``"restore+<fallback>"`` when less than half (the rest inpainted), and the
fallback's own name when nothing was recovered (e.g. an opaque mark, an image where the mark
was missing, or a single image the one-image fit (``_single``) is not confident about). ``recovered_share`` is the recovered fraction of the mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from photo_eraser.engines._single import recover_single
from photo_eraser.engines._watermark import (
    BlendEstimate,
    GridSolver,
    batch_median,
    channel_mean,
    estimate_blend,
    ghost_scores,
    jackknife_groups,
)
from photo_eraser.engines.base import Engine, Restored, mask_bbox

log = logging.getLogger(__name__)

_UNMARKED_ALPHA = 0.03
"""Estimated opacity below which (with a small offset) a pixel is taken as not marked."""
_UNMARKED_OFFSET = 6.0
"""Largest estimated ``alpha * W`` (grey levels, any channel) of a pixel taken as not marked."""
_UNMARKED_ALPHA_AFTER_EXACT = 0.01
_UNMARKED_OFFSET_AFTER_EXACT = 2.0
"""The same after an exact-blend fit: taking a faint rim pixel as unmarked costs
``alpha * |I - W|``, 2-3 grey levels at alpha 0.02, far above such a fit's error (with 0.03 and
6, lossless batches of 16 lost 0.8 dB)."""
_MARKED_ALPHA = 0.1
"""Estimated opacity from which a pixel is clearly under the mark."""
_MARKED_OFFSET = 15.0
"""Estimated ``alpha * W`` (grey levels, any channel) from which a pixel is clearly marked."""
_MIN_MARKED_PIXELS = 20
_MIN_MARKED_SHARE = 0.02
"""Fewest clearly marked grid pixels (count and share of the mask) to call it a mark at all."""
_NEAR = 8
"""Grid pixels around the clearly marked ones that are the mark's surroundings in a part of the
mask that does not carry the mark itself, and the gap that chains parts (``_parts_with_mark``);
also how far from opaque pixels a free fit's offset is not trusted."""
_TIGHT_MARGIN = 2
"""Grid pixels around the clearly marked ones that a loose mask is narrowed to (see
``_narrowed``): the mark's faint anti-aliased rim and a margin of unmarked pixels."""
_TIGHT_MARGIN_FREE = 1
"""The same after a free fit, whose clearly marked pixels spill about a pixel beyond the mark
(with 2, a red logo at alpha 0.3 under a mask 14 px wider than it came out at 39 dB, not 57)."""
_LOOSE_SHARE = 0.1
"""Share of the mask beyond ``_TIGHT_MARGIN`` from the mark from which it is narrowed (masks
drawn 2 px around the mark, as in the benchmark, are not: a second estimate costs time)."""
_NARROWING_ROUNDS = 2
_FAINT_SEED = 6.0
_FAINT_GROW = 3.0
"""Standard scores (see ``_faint_candidates``) that start and extend a faint part of the mark."""
_FAINT_MIN_SEEDS = 20
"""Fewest starting pixels of a faint part (grown pixels within 2 px of each other join)."""
_FAINT_MIN_BEYOND = 16
"""Fewest pixels of a faint part beyond the margin that narrowing keeps around the mark."""
_FAINT_MIN_REFERENCE = 200
"""Fewest mask pixels away from the mark to measure the estimate's noise on."""
_FAINT_MIN_CONFIDENCE = 1.2
"""Median correction of a faint part in units of its jackknife error (see ``_faint_parts``)."""
_PART_SCORE_RATIO = 1.4
_PART_SCORE_FLOOR = 0.65
"""A part of the mask carries the mark if its ghost score is at most this many times the
mark's typical part's, or at most the floor (and at most ``_NO_MARK_SCORE``). Parts over no
mark scored 0.72-0.82 after rough fits; parts of one mark 0.13-0.59, a logo at the other
corner from the rest 0.54-0.56 where the rest scored 0.29-0.39."""
_NO_MARK_SCORE = 0.85
"""Median ghost score above which the batch is taken as carrying no shared mark."""
_GHOST_LIMIT = 1.25
"""Ghost score (see ``ghost_scores``) above which an image is taken as not carrying the mark."""
_OPAQUE_SPREAD = 0.1
"""Pixels varying over the batch less than this share of their surroundings are opaque."""
_EXACT_ONLY_IMAGES = 3
"""Smallest lossless batch estimated together, with the exact-blend fit only."""
_ROUNDING_NOISE = float(np.sqrt(1 / 12))
"""Standard deviation (grey levels) of rounding to whole levels."""


@dataclass(frozen=True)
class _Placement:
    """Where grid pixel ``(gy, gx)`` lies in one image: ``y = sy*(gy+dy) + oy``, same for x."""

    sy: float
    sx: float
    oy: float
    ox: float
    dy: int = 0
    dx: int = 0

    def shifted(self, dy: int, dx: int) -> _Placement:
        return _Placement(self.sy, self.sx, self.oy, self.ox, dy, dx)

    def grid_to_image(self) -> np.ndarray:
        """Affine matrix taking grid coordinates to image coordinates."""
        return np.array(
            [
                [self.sx, 0.0, self.sx * self.dx + self.ox],
                [0.0, self.sy, self.sy * self.dy + self.oy],
            ]
        )

    def image_to_grid(self, y0: int, x0: int) -> np.ndarray:
        """Affine matrix taking coordinates of a crop starting at ``(y0, x0)`` to the grid."""
        m = self.grid_to_image()
        return np.array(
            [
                [1.0 / m[0, 0], 0.0, (x0 - m[0, 2]) / m[0, 0]],
                [0.0, 1.0 / m[1, 1], (y0 - m[1, 2]) / m[1, 1]],
            ]
        )


@dataclass
class _Recovery:
    """The inverted pixels of one image and where they may be used (image coordinates)."""

    box: tuple[int, int, int, int]
    pixels: np.ndarray
    usable: np.ndarray


class RestoreEngine(Engine):
    """Recovers the pixels under a watermark shared by a batch; inpaints what it cannot recover.

    ``max_alpha``: pixels whose estimated opacity is higher are inpainted (inversion would
    amplify noise by ``1/(1-alpha)``). A pixel is inverted when its predicted error (grey
    levels RMS) is at most ``max_error`` or at most ``error_ratio`` times the predicted
    inpainting error; otherwise it is inpainted. ``min_images``: in smaller batches each image
    is handled alone (a constant-colour, constant-opacity fit, see ``_single``, used only where
    confident; otherwise inpainted), except three lossless images whose exact-blend fit
    holds. Smaller batches after excluding images without the mark are inpainted entirely.
    ``exact_fit``: whether batches whose images are all lossless (see
    ``Engine.restore``) may get the exact-blend fit (docs/restore.md, step 6).
    """

    name = "restore"

    def __init__(
        self,
        fallback: Engine,
        *,
        max_alpha: float = 0.85,
        max_error: float = 3.0,
        error_ratio: float = 1.5,
        min_images: int = 4,
        align_radius: int = 4,
        max_grid_pixels: int = 250_000,
        exact_fit: bool = True,
    ) -> None:
        self.fallback = fallback
        self.max_alpha = max_alpha
        self.max_error = max_error
        self.error_ratio = error_ratio
        self.min_images = max(3, min_images)
        self.align_radius = align_radius
        self.max_grid_pixels = max_grid_pixels
        self.exact_fit = exact_fit

    def restore(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        in_place: bool = False,
        lossless: Sequence[bool] | None = None,
    ) -> list[Restored]:
        if len(images) != len(masks):
            raise ValueError("one mask per image is required")
        if lossless is not None and len(lossless) != len(images):
            raise ValueError("one lossless flag per image is required")
        masks = [np.asarray(m, dtype=bool) for m in masks]
        boxes = [mask_bbox(m) for m in masks]
        flags = list(lossless) if lossless is not None else [False] * len(images)
        recoveries = self._recover(images, masks, boxes, flags)
        outputs = list(images) if in_place else [np.array(im, copy=True) for im in images]
        filled_idx: list[int] = []
        submasks: list[np.ndarray] = []
        counts: list[tuple[int, int]] = []
        for i, (out, mask, box, rec) in enumerate(
            zip(outputs, masks, boxes, recoveries, strict=True)
        ):
            if box is None:
                counts.append((0, 0))
                continue
            y0, y1, x0, x1 = box
            todo = mask[y0:y1, x0:x1].copy()
            if rec is not None:
                take = rec.usable & todo
                out[y0:y1, x0:x1][take] = rec.pixels[take]
                todo &= ~take
            filled_px = int(todo.sum())
            counts.append((int(mask[y0:y1, x0:x1].sum()), filled_px))
            if filled_px:
                sub = np.zeros_like(mask)
                sub[y0:y1, x0:x1] = todo
                filled_idx.append(i)
                submasks.append(sub)
        if filled_idx:
            # Our outputs are private (copies, or handed over): the fallback may write into them.
            batch = [outputs[i] for i in filled_idx]
            filled = self.fallback.restore(batch, submasks, in_place=True)
            for i, sub, res in zip(filled_idx, submasks, filled, strict=True):
                if res.image is not outputs[i]:
                    outputs[i][sub] = res.image[sub]
        results = []
        for i, (out, (total, filled_px)) in enumerate(zip(outputs, counts, strict=True)):
            if not total:  # nothing masked in this image: nothing was recovered or filled
                results.append(Restored(out, self.fallback.name))
                continue
            share = 1.0 - filled_px / total
            results.append(Restored(out, self._method(share), recovered_share=share))
            log.info(
                "restore image",
                extra={
                    "engine": self.name,
                    "image_index": i,
                    "method": results[-1].method,
                    "recovered_share": round(share, 4),
                    "filled_share": round(1.0 - share, 4),
                    "masked_pixels": total,
                },
            )
        return results

    def _method(self, share: float) -> str:
        if share >= 0.5:
            return self.name
        if share > 0.0:
            return f"{self.name}+{self.fallback.name}"
        return self.fallback.name

    def _recover(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        boxes: Sequence[tuple[int, int, int, int] | None],
        lossless: Sequence[bool],
    ) -> list[_Recovery | None]:
        """Invert the blend wherever it is safe; ``None`` for images left to the fallback."""
        candidates = [i for i, box in enumerate(boxes) if box is not None]
        # Three lossless images are too few for the free fit, but may be enough for the exact
        # one (docs/restore.md, step 6); if it does not hold, each image is handled alone.
        exact_only = (
            _EXACT_ONLY_IMAGES <= len(candidates) < self.min_images
            and self.exact_fit
            and all(lossless[i] for i in candidates)
        )
        if len(candidates) < self.min_images and not exact_only:
            return self._each_alone(images, masks, boxes, candidates)
        together = self._recover_together(images, masks, boxes, lossless, candidates, exact_only)
        if together is not None:
            return together
        if exact_only:
            return self._each_alone(images, masks, boxes, candidates)
        return [None] * len(images)

    def _recover_together(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        boxes: Sequence[tuple[int, int, int, int] | None],
        lossless: Sequence[bool],
        candidates: Sequence[int],
        exact_only: bool,
    ) -> list[_Recovery | None] | None:
        """The batch estimate and inversion; ``None`` when the batch shows no usable mark."""
        out: list[_Recovery | None] = [None] * len(images)
        ref = max(candidates, key=lambda i: _box_area(boxes[i]))
        placements, grid_shape, domain = self._grid(images, masks, ref, candidates)
        if domain is None:
            return None
        crops = {i: _extract(images[i], placements[i], grid_shape) for i in candidates}
        placements, crops = self._align(images, placements, crops, domain, grid_shape)
        # Grid pixels off an image (a mask at its edge) hold mirrored pixels, not the photo:
        # the estimate ignores them, and masked ones are inverted in no image.
        valid = np.logical_and.reduce(
            [_on_image(images[i], placements[i], grid_shape) for i in candidates]
        )
        solver = GridSolver(domain, valid)
        valid = solver.valid
        # Resampling (images of another size, a scaled-down grid) mixes pixels: the crops are
        # no longer exactly the blend, whatever the format.
        shifts_only = all(placements[i].sy == 1 and placements[i].sx == 1 for i in candidates)
        exact = [bool(flag) and shifts_only and self.exact_fit for flag in lossless]
        if exact_only and not shifts_only:
            return None
        batch = self._estimate(crops, candidates, solver, exact, exact_only)
        if batch is None:
            return None
        whole = solver
        batch, solver, with_mark = self._around_the_mark(
            batch, whole, crops, candidates, exact, exact_only
        )
        used, stack, est, errors = batch
        # Next to (nearly) opaque pixels the ratio fits have no signal: keep a margin.
        opaque = (est.beta < 1.0 - self.max_alpha) | (est.spread < _OPAQUE_SPREAD)
        confident_alpha = ~_within(opaque, 2)
        offset = est.offset
        # Masked pixels around the mark that it does not reach (masks are drawn with a margin,
        # or as a box) are left as they are: inverting an estimate of "no mark" would only add
        # its noise. Parts of the mask without the mark (``with_mark``) are something else to
        # erase (an object): inpainted.
        # An exact fit is precise enough to keep faint rim pixels (alpha 0.01-0.03) as marked.
        most_alpha, most_offset = (
            (_UNMARKED_ALPHA_AFTER_EXACT, _UNMARKED_OFFSET_AFTER_EXACT)
            if est.exact
            else (_UNMARKED_ALPHA, _UNMARKED_OFFSET)
        )
        # Near opaque areas a free fit's offset drifts (from their ``W / beta``, with beta
        # near 0): there the opacity alone says whether a pixel is marked (trusting the drift
        # had put an opaque white text under a 6-px mask 0.9 dB below Telea with 4 images).
        # A few stray "opaque" pixels of a rough fit over a semi-transparent mark are no such
        # area: only groups of at least ``_MIN_MARKED_PIXELS`` count.
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            opaque.astype(np.uint8), connectivity=8
        )
        big = np.concatenate([[False], stats[1:, cv2.CC_STAT_AREA] >= _MIN_MARKED_PIXELS])
        drifting = _within(big[labels], _NEAR)
        unmarked = (
            (est.beta > 1.0 - most_alpha)
            & ((np.abs(offset).max(axis=2) < most_offset) | drifting)
            & confident_alpha
        )
        beta = np.where(unmarked, 1.0, est.beta).astype(np.float32)
        offset = np.where(unmarked[..., None], 0.0, offset).astype(np.float32)
        # Where to measure each image's noise: off the mark, away from the grid's border.
        outside = ~_within(domain, 1)
        outside[:1], outside[-1:], outside[:, :1], outside[:, -1:] = False, False, False, False
        outside &= valid
        plan = _fill_plan(domain, valid)
        for k, i in enumerate(used):
            ok = self._invertible(stack[k], est, errors[k], plan, outside) & confident_alpha
            box = boxes[i]
            assert box is not None
            # Masked pixels in parts of the mask without the mark, off the estimated domain (a
            # mask unlike the others), or off an image of the batch (not estimated), are
            # inpainted. Grid pixels off the mask count as usable: an image's pixels at the
            # mask's edge are resampled from both sides of it (a scaled grid, another size).
            usable = (ok | unmarked) & (with_mark | ~domain) & solver.known & whole.known
            out[i] = _invert_on_image(images[i], box, placements[i], beta, offset, usable)
        return out

    def _around_the_mark(
        self,
        batch: tuple[list[int], np.ndarray, BlendEstimate, np.ndarray],
        whole: GridSolver,
        crops: dict[int, np.ndarray],
        candidates: Sequence[int],
        exact: Sequence[bool],
        exact_only: bool,
    ) -> tuple[tuple[list[int], np.ndarray, BlendEstimate, np.ndarray], GridSolver, np.ndarray]:
        """The estimate narrowed to the mark if the mask is loose, its solver, and the mask's
        pixels that belong to the mark or its surroundings (``_parts_with_mark``).

        A loose mask (a box or a broad brush around the mark): the estimate takes the domain's
        border as unmarked and integrates across all of it, so far from the mark it only adds
        noise, and the exact fit breaks down. Estimate again on the mark, its faint parts
        (``_faint_parts``) and a thin margin (twice: a first estimate over a loose mask finds a
        few stray marked pixels); the rest of the mask is taken as unmarked.
        """
        solver, domain = whole, whole.domain
        with_mark, limit = self._parts_with_mark(batch[1], batch[2], whole)
        narrowed_to = with_mark
        faint = np.zeros(domain.shape, dtype=bool)
        narrowing_failed = False
        for round_ in range(_NARROWING_ROUNDS):
            tight = _narrowed(batch[2], solver.domain, narrowed_to, faint)
            if tight is not None and round_ == 0:
                # Found on the whole mask (its unmarked pixels show the estimate's noise), and
                # only when narrowing is due: it inverts the batch once more.
                faint = self._faint_parts(batch, whole) & with_mark
                tight = _narrowed(batch[2], solver.domain, narrowed_to, faint)
            if (
                tight is None
                and round_ > 0
                and not batch[2].exact
                and all(exact[i] for i in batch[0])
            ):
                # A lossless batch still on the free fit after narrowing once (the faint parts'
                # margin can keep the exact fit from holding): trim to the free fit's margin
                # once more, however little that leaves out.
                tight = _narrowed(batch[2], solver.domain, narrowed_to, faint, force=True)
            if tight is None:
                break
            # Narrowing must not drop a faint part of the mark (found by its offset alone):
            # where inverting the estimate weakens the edges of what it would drop about as
            # much as in the mark's parts, it keeps the mask as it is.
            dropped = (solver.domain & ~tight).astype(np.int32)
            scores = ghost_scores(batch[1], batch[2], solver, 1.0 - self.max_alpha, dropped)
            if float(np.median(scores)) <= limit:
                break
            log.info(
                "restore: the mask reaches well beyond the mark, estimating around the mark",
                extra={
                    "engine": self.name,
                    "mask_pixels": int(solver.domain.sum()),
                    "narrowed_pixels": int(tight.sum()),
                },
            )
            narrow = GridSolver(tight, whole.valid)
            again = self._estimate(crops, candidates, narrow, exact, exact_only)
            if again is None and faint.any():
                # The faint parts may be what spoiled it (false ones in the drift around an
                # opaque mark take in pixels the images disagree on): narrow without them.
                faint = np.zeros_like(faint)
                without = _narrowed(batch[2], solver.domain, narrowed_to, faint)
                if without is not None:
                    tight, narrow = without, GridSolver(without, whole.valid)
                    again = self._estimate(crops, candidates, narrow, exact, exact_only)
            if again is None:
                narrowing_failed = solver is whole
                break
            batch, solver, narrowed_to = again, narrow, tight
        if solver is not whole:  # judge the mask's parts again, with the final estimate
            with_mark = self._parts_with_mark(batch[1], batch[2], whole)[0]
        elif narrowing_failed:  # far from the mark the whole mask's estimate is only noise
            with_mark &= _within(_clearly_marked(batch[2], domain), _NEAR)
        return batch, solver, with_mark

    def _faint_parts(
        self, batch: tuple[list[int], np.ndarray, BlendEstimate, np.ndarray], solver: GridSolver
    ) -> np.ndarray:
        """Parts of the mark too faint to count as clearly marked (a line at alpha 0.06 under a
        bold logo): the candidates of ``_faint_candidates`` that the batch agrees on.

        A free fit over a loose mask also leaves faint, speckled patches where some photos are
        textured; the images disagree there. A candidate is kept if, over its pixels, the
        median of the correction inverting applies is at least ``_FAINT_MIN_CONFIDENCE`` times
        its jackknife standard error (speckle measured 0.7-1.0, faint lines 1.4-9).
        """
        _, stack, est, errors = batch
        groups = _faint_candidates(est, solver.domain)
        if not groups.any():
            return groups > 0
        correction = np.median(np.sqrt(channel_mean((stack - est.invert(stack)) ** 2)), axis=0)
        confidence = correction / (np.median(errors, axis=0) + _ROUNDING_NOISE)
        inside = groups > 0
        typical = ndimage.median(confidence[inside], groups[inside], np.arange(1, groups.max() + 1))
        return np.concatenate([[False], np.asarray(typical) >= _FAINT_MIN_CONFIDENCE])[groups]

    def _each_alone(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        boxes: Sequence[tuple[int, int, int, int] | None],
        candidates: Sequence[int],
    ) -> list[_Recovery | None]:
        """Too few images to estimate the mark together: each is tried alone (``_single``)."""
        log.info(
            "restore: batch too small to estimate the watermark, trying each image alone",
            extra={"engine": self.name, "images": len(candidates)},
        )
        out: list[_Recovery | None] = [None] * len(images)
        for i in candidates:
            out[i] = _single_recovery(images[i], masks[i], boxes[i])
        return out

    def _estimate(
        self,
        crops: dict[int, np.ndarray],
        candidates: Sequence[int],
        solver: GridSolver,
        lossless: Sequence[bool],
        exact_only: bool = False,
    ) -> tuple[list[int], np.ndarray, BlendEstimate, np.ndarray] | None:
        """Estimate the blend from the images that carry the mark; ``None`` if too few do.

        Returns the images used, their crops, the estimate and its per-image jackknife errors.
        ``exact_only``: ``None`` as well unless the exact-blend fit holds.
        """
        fewest = _EXACT_ONLY_IMAGES if exact_only else self.min_images
        used = list(candidates)
        stack = np.stack([crops[i] for i in used])
        est, errors, scores, gave_way = self._fit(
            stack, solver, all(lossless[i] for i in used), exact_only
        )
        if float(np.median(scores)) > _NO_MARK_SCORE:
            # Inverting barely changes the edges of a typical image: no shared mark was found
            # (e.g. the mask covers an object that differs between the photos).
            log.info("restore: no shared watermark found", extra={"engine": self.name})
            return None
        # Inversion adds edges (a negative ghost) to an image without the mark: score above 1.
        # Faint marks come near 1 either way, so the score must clearly exceed 1 and stand out.
        limit = max(_GHOST_LIMIT, 2.0 * float(np.median(scores)))
        excluded = [i for i, score in zip(used, scores, strict=True) if score > limit]
        if excluded:
            used = [i for i in used if i not in excluded]
            log.info(
                "restore: images without the mark excluded",
                extra={"engine": self.name, "excluded": excluded},
            )
            if len(used) < fewest:
                return None
            stack = np.stack([crops[i] for i in used])
            exact = not gave_way and all(lossless[i] for i in used)
            est, errors, scores, again = self._fit(stack, solver, exact, exact_only)
            gave_way = gave_way or again
        if exact_only and not est.exact:
            return None
        if not _enough_marked(est, solver.domain):
            # Without enough pixels clearly under the mark there is no shared mark either.
            log.info("restore: no shared watermark found", extra={"engine": self.name})
            return None
        if all(lossless[i] for i in used):  # a lossless batch: say how the exact fit fared
            log.info(
                "restore: lossless batch",
                extra={
                    "engine": self.name,
                    "exact_blend_model": est.exact,
                    "exact_fit_found_no_mark": gave_way,
                },
            )
        return used, stack, est, errors

    def _fit(
        self, stack: np.ndarray, solver: GridSolver, lossless: bool, exact_only: bool
    ) -> tuple[BlendEstimate, np.ndarray, np.ndarray, bool]:
        """The estimate, its jackknife errors and ghost scores, and whether an exact fit that
        found no mark gave way to the free fit.

        An exact fit that finds no mark, where the free fit may well find one, means the images
        are not exactly the blend after all (e.g. PNG files JPEG-compressed after the mark):
        the free fit decides. (``exact_only`` batches have no free fit to fall back on.)
        """
        groups = jackknife_groups(stack.shape[0])
        min_beta = 1.0 - self.max_alpha
        est, errors = estimate_blend(stack, solver, groups, lossless=lossless)
        scores = ghost_scores(stack, est, solver, min_beta=min_beta)
        if not est.exact or exact_only or _shows_mark(est, scores, solver.domain):
            assert errors is not None
            return est, errors, scores, False
        log.info(
            "restore: the exact-blend fit found no mark, trying the free fit",
            extra={"engine": self.name},
        )
        est, errors = estimate_blend(stack, solver, groups)
        assert errors is not None
        return est, errors, ghost_scores(stack, est, solver, min_beta=min_beta), True

    def _parts_with_mark(
        self, stack: np.ndarray, est: BlendEstimate, solver: GridSolver
    ) -> tuple[np.ndarray, float]:
        """The pixels of the mask (HxW bool) that belong to the mark or its surroundings, and
        the ghost score up to which a part of the mask is taken to carry the mark.

        Each connected part of the mask with enough clearly marked pixels carries the mark if
        inverting it weakens the edges there in a typical image (the median ghost score of
        the part) about as much as in the mark's typical part: an estimate over a part
        without the mark (an object masked apart from it) can be far from "no mark", but
        inverting it weakens little or prints a ghost. Those parts are the mark's, however far
        they reach. So are the pixels within ``_NEAR`` of clearly marked ones in chains of parts
        each within about ``_NEAR`` of the next (the mark's letters that score worse, the
        opaque parts of a logo, where the score means nothing). The rest is something else to
        erase. If no part has enough clearly marked pixels (a mark of many small parts), the
        pixels within ``_NEAR`` of clearly marked ones are the mark's. Pixels off the mask are
        none of these (but stay usable for resampling, see ``_recover_together``).
        """
        domain = solver.domain
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            domain.astype(np.uint8), connectivity=8
        )
        marked = _clearly_marked(est, domain)
        near = domain & _within(marked, _NEAR)
        held = np.bincount(labels[marked], minlength=count)[1:]
        enough = held >= np.maximum(
            _MIN_MARKED_PIXELS, _MIN_MARKED_SHARE * stats[1:, cv2.CC_STAT_AREA]
        )
        if not enough.any():
            return near, _NO_MARK_SCORE
        scores = np.median(ghost_scores(stack, est, solver, 1.0 - self.max_alpha, labels), 0)
        # The typical part: the median score over the clearly marked pixels of the parts that
        # have enough of them. Free fits of four JPEG images gave parts over no mark 0.72-0.82
        # where the mark's parts scored 0.43-0.56.
        order = np.flatnonzero(enough)[np.argsort(scores[enough])]
        weight = np.cumsum(held[order])
        typical = float(scores[order[int(np.searchsorted(weight, weight[-1] / 2))]])
        limit = min(_NO_MARK_SCORE, max(_PART_SCORE_FLOOR, _PART_SCORE_RATIO * typical))
        carries = np.concatenate([[False], enough & (scores <= limit)])[labels]
        # Chains of parts: where the mask, widened by half of _NEAR on every side, is connected.
        widened = _within(domain, _NEAR // 2).astype(np.uint8)
        _, chains = cv2.connectedComponents(widened, connectivity=8)
        return carries | (near & np.isin(chains, np.unique(chains[carries]))), limit

    def _invertible(
        self,
        crop: np.ndarray,
        est: BlendEstimate,
        jack: np.ndarray,
        plan: list[_FillStep],
        outside: np.ndarray,
    ) -> np.ndarray:
        """Grid pixels where inverting is predicted to beat inpainting, for one image.

        Predicted inversion error: the jackknife error of the estimate plus the image noise
        amplified by ``1/beta``. Predicted inpainting error: how far the recovered photo departs
        from a smooth interpolation of the pixels around the mask (what an inpainter can at
        best reproduce).
        """
        grey = channel_mean(crop)
        # After an exact fit the images are lossless: rounding to whole grey levels is the only
        # noise added after the mark (the photo's own fine texture is not noise here).
        noise = _ROUNDING_NOISE if est.exact else _noise_level(grey, outside)
        inv_err2 = _local_mean(jack**2) + (noise / est.beta) ** 2
        # The blend is linear per channel, so the grey recovered photo is the inverted grey.
        recovered = grey / est.beta - channel_mean(est.u)
        detail2 = _local_mean((recovered - _interpolate_from_outside(recovered, plan)) ** 2)
        fill_err2 = np.maximum(detail2 - inv_err2, 0.0)
        return inv_err2 <= np.maximum(self.max_error**2, self.error_ratio**2 * fill_err2)

    def _grid(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        ref: int,
        candidates: Sequence[int],
    ) -> tuple[dict[int, _Placement], tuple[int, int], np.ndarray | None]:
        """The common grid: the reference mask's padded box, scaled down if the mask is huge."""
        rmask = masks[ref]
        scale = min(1.0, float(np.sqrt(self.max_grid_pixels / max(1, int(rmask.sum())))))
        pad = int(np.ceil((self.align_radius + 4) / scale))
        box = mask_bbox(rmask)
        assert box is not None
        y0, y1, x0, x1 = box
        y0, x0, y1, x1 = y0 - pad, x0 - pad, y1 + pad, x1 + pad
        gh = max(1, round((y1 - y0) * scale))
        gw = max(1, round((x1 - x0) * scale))
        rh, rw = rmask.shape
        placements = {}
        for i in candidates:
            h, w = masks[i].shape
            fy, fx = h / rh, w / rw
            # Pixel centres: ref y = y0 + (gy+0.5)/scale - 0.5; image y = (ref y+0.5)*fy - 0.5.
            placements[i] = _Placement(
                sy=fy / scale,
                sx=fx / scale,
                oy=(y0 + 0.5 / scale) * fy - 0.5,
                ox=(x0 + 0.5 / scale) * fx - 0.5,
            )
        grid = (gh, gw)
        dom = cv2.warpAffine(
            rmask.astype(np.float32),
            placements[ref].grid_to_image(),
            (gw, gh),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
        )
        domain = dom > 0.5
        domain[:2], domain[-2:], domain[:, :2], domain[:, -2:] = False, False, False, False
        return placements, grid, (domain if domain.any() else None)

    def _align(
        self,
        images: Sequence[np.ndarray],
        placements: dict[int, _Placement],
        crops: dict[int, np.ndarray],
        domain: np.ndarray,
        grid_shape: tuple[int, int],
    ) -> tuple[dict[int, _Placement], dict[int, np.ndarray]]:
        """Shift each image's crop (a few grid pixels) so its mark lines up with the batch's."""
        r = self.align_radius
        if r <= 0:
            return placements, crops
        near = _within(domain, 2)
        box = mask_bbox(near)
        assert box is not None
        y0, y1, x0, x1 = box
        y0, x0 = max(y0, r), max(x0, r)
        y1, x1 = min(y1, grid_shape[0] - r), min(x1, grid_shape[1] - r)
        # Prefer no shift unless another one matches clearly better.
        bias = np.full((2 * r + 1, 2 * r + 1), -0.02, dtype=np.float32)
        bias[r, r] = 0.0
        for _ in range(2):
            energy = {i: _gradient_energy(c) for i, c in crops.items()}
            template = batch_median(np.stack(list(energy.values())), axis=0)[y0:y1, x0:x1]
            if float(template.std()) < 1e-6:
                break
            moved = False
            for i, e in energy.items():
                score = cv2.matchTemplate(
                    e[y0 - r : y1 + r, x0 - r : x1 + r], template, cv2.TM_CCOEFF_NORMED
                )
                best = int(np.argmax(score + bias))
                dy, dx = best // score.shape[1] - r, best % score.shape[1] - r
                if dy or dx:
                    p = placements[i]
                    placements[i] = p.shifted(p.dy + dy, p.dx + dx)
                    crops[i] = _extract(images[i], placements[i], grid_shape)
                    moved = True
            if not moved:
                break
        shifts = {i: (p.dy, p.dx) for i, p in placements.items() if p.dy or p.dx}
        if shifts:
            log.info("restore: marks realigned", extra={"engine": self.name, "shifts": shifts})
        return placements, crops


def _extract(image: np.ndarray, placement: _Placement, grid_shape: tuple[int, int]) -> np.ndarray:
    """The image resampled on the grid (float32 HxWx3); exact when the placement is a shift."""
    gh, gw = grid_shape
    m = placement.grid_to_image()
    h, w = image.shape[:2]
    # Only the part of the image the grid covers (plus the interpolation margin) is converted.
    ys = (m[1, 2], m[1, 1] * (gh - 1) + m[1, 2])
    xs = (m[0, 2], m[0, 0] * (gw - 1) + m[0, 2])
    y0, y1 = max(0, int(np.floor(min(ys))) - 2), min(h, int(np.ceil(max(ys))) + 3)
    x0, x1 = max(0, int(np.floor(min(xs))) - 2), min(w, int(np.ceil(max(xs))) + 3)
    m[0, 2] -= x0
    m[1, 2] -= y0
    return cv2.warpAffine(
        image[y0:y1, x0:x1].astype(np.float32),
        m,
        (gw, gh),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )


def _on_image(image: np.ndarray, placement: _Placement, grid_shape: tuple[int, int]) -> np.ndarray:
    """Grid pixels (HxW bool) that ``_extract`` interpolates from the image's own pixels only."""
    gh, gw = grid_shape
    m = placement.grid_to_image()
    h, w = image.shape[:2]
    y = m[1, 1] * np.arange(gh) + m[1, 2]
    x = m[0, 0] * np.arange(gw) + m[0, 2]
    eps = 1e-3
    rows = (y > -eps) & (y < h - 1 + eps)
    cols = (x > -eps) & (x < w - 1 + eps)
    return rows[:, None] & cols[None, :]


def _local_mean(a: np.ndarray) -> np.ndarray:
    """5x5 box average (the scale the fallback decision is taken at)."""
    return cv2.blur(a, (5, 5))


def _noise_level(grey: np.ndarray, outside: np.ndarray) -> float:
    """Noise standard deviation over ``outside`` (Immerkaer 1996), clamped to [0.5, 4]."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    lap = np.abs(cv2.filter2D(grey, -1, kernel))
    if not outside.any():
        return 2.0
    sigma = float(np.sqrt(np.pi / 2) / 6 * lap[outside].mean())
    return min(4.0, max(0.5, sigma))


@dataclass(frozen=True)
class _FillStep:
    """One pass of ``_interpolate_from_outside``: blur width, known pixels, pixels it fills."""

    sigma: float
    known: np.ndarray
    fill: np.ndarray
    density: np.ndarray


def _fill_plan(domain: np.ndarray, valid: np.ndarray) -> list[_FillStep]:
    """The passes filling ``domain`` from the ``valid`` pixels outside it (masks only)."""
    steps = []
    known = (~domain & valid).astype(np.float32)
    for sigma in (3.0, 9.0, 27.0):
        density = cv2.GaussianBlur(known, (0, 0), sigma)
        fill = domain & (density > 0.05)
        steps.append(_FillStep(sigma, known, fill, density))
        known = np.where(fill, 1.0, known).astype(np.float32)
        domain = domain & ~fill
        if not domain.any():
            break
    return steps


def _interpolate_from_outside(image: np.ndarray, plan: list[_FillStep]) -> np.ndarray:
    """A smooth fill of the domain (grey HxW) from the pixels around it (normalised convolution)."""
    out = image.copy()
    for step in plan:
        num = cv2.GaussianBlur(out * step.known, (0, 0), step.sigma)
        out[step.fill] = num[step.fill] / step.density[step.fill]
    return out


def _gradient_energy(crop: np.ndarray) -> np.ndarray:
    """Absolute horizontal plus vertical differences, summed over channels (HxW).

    Colour, not grey: a coloured mark can have the luminance of the photo under it.
    """
    gx = cv2.absdiff(crop[:, 1:], crop[:, :-1])
    gy = cv2.absdiff(crop[1:], crop[:-1])
    energy = np.zeros(crop.shape[:2], dtype=np.float32)
    energy[:, :-1] += cv2.transform(gx, np.ones((1, 3), np.float32))
    energy[:-1] += cv2.transform(gy, np.ones((1, 3), np.float32))
    return energy


def _single_recovery(
    image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int] | None
) -> _Recovery | None:
    """One image's recovery from a constant-colour, constant-opacity fit (``_single``)."""
    if box is None:
        return None
    rec = recover_single(image, mask)
    if rec is None:
        return None
    y0, y1, x0, x1 = box
    ry0, _, rx0, _ = rec.box
    sl = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
    return _Recovery(box=box, pixels=rec.pixels[sl], usable=rec.usable[sl])


def _within(pixels: np.ndarray, radius: int) -> np.ndarray:
    """Pixels at most ``radius`` away (in x and in y) from the given ones (HxW bool)."""
    size = 2 * radius + 1
    return cv2.dilate(pixels.astype(np.uint8), np.ones((size, size), np.uint8)) > 0


def _clearly_marked(est: BlendEstimate, domain: np.ndarray) -> np.ndarray:
    """Grid pixels clearly under the mark (HxW bool)."""
    return domain & (
        (est.beta < 1.0 - _MARKED_ALPHA) | (np.abs(est.offset).max(axis=2) >= _MARKED_OFFSET)
    )


def _marked_by_opacity(est: BlendEstimate) -> np.ndarray:
    """Grid pixels where the estimate finds opacity (alpha >= ``_MARKED_ALPHA``), or that hardly
    vary over the batch (under an opaque mark the ratio fits have no signal)."""
    return (est.beta < 1.0 - _MARKED_ALPHA) | (est.spread < _OPAQUE_SPREAD)


def _narrowed(
    est: BlendEstimate,
    domain: np.ndarray,
    with_mark: np.ndarray,
    faint: np.ndarray,
    force: bool = False,
) -> np.ndarray | None:
    """The mask cut down to its parts with the mark, their clearly marked pixels, the mark's
    ``faint`` parts (``_faint_parts``) and a margin around them, if more than ``_LOOSE_SHARE``
    of it lies beyond ``_TIGHT_MARGIN`` of those pixels (a loose mask, or parts without the
    mark), or with ``force`` if that leaves anything out; else ``None``.

    The mark is where the estimate finds opacity (its offset alone is not enough: next to an
    opaque mark the free fit's offset drifts far into a loose mask), or where pixels hardly vary
    over the batch (under an opaque mark the ratio fits have no signal).
    """
    marked = (_marked_by_opacity(est) & domain & with_mark) | (faint & domain)

    def around(margin: int) -> np.ndarray:
        return domain & with_mark & _within(marked, margin)

    if not marked.any():
        return None
    tight = around(_TIGHT_MARGIN if est.exact else _TIGHT_MARGIN_FREE)
    if force:  # a lossless batch left on a free fit: trim the free fit's margin once more
        return tight if tight.sum() < domain.sum() else None
    if around(_TIGHT_MARGIN).sum() > (1.0 - _LOOSE_SHARE) * domain.sum():
        return None
    return tight


def _faint_candidates(est: BlendEstimate, domain: np.ndarray) -> np.ndarray:
    """Groups of pixels (HxW int, ``0`` for none) that may be a faint part of the mark: their
    opacity or offset stands out from their 5x5 median.

    Measured against the same contrast over the mask's pixels away from the mark (the noise of
    the estimate; a smooth drift of the offset, as next to an opaque mark, has none). Groups
    with at least ``_FAINT_MIN_SEEDS`` pixels above ``_FAINT_SEED`` standard scores, grown
    over the pixels above ``_FAINT_GROW``; an estimate's noise gives few, scattered ones.
    """
    offset = est.offset
    background = np.stack([cv2.medianBlur(offset[..., c], 5) for c in range(3)], axis=-1)
    alpha = 1.0 - est.beta
    contrasts = ((offset - background).max(axis=2), alpha - cv2.medianBlur(alpha, 5))
    strong = _marked_by_opacity(est)
    # A mask drawn tight may leave too few such pixels: then the floors are the scales (a
    # faint part clearly marked by its offset stands out from them).
    away = domain & ~_within(_clearly_marked(est, domain) | strong, 3)
    enough = away.sum() >= _FAINT_MIN_REFERENCE
    score = np.zeros(domain.shape, dtype=np.float32)
    for contrast, floor in zip(contrasts, (1.0, 0.01), strict=True):
        noise = 1.4826 * float(np.median(np.abs(contrast[away]))) if enough else 0.0
        score = np.maximum(score, contrast / max(noise, floor))
    grown = domain & ~strong & (score > _FAINT_GROW)
    seeds = grown & (score > _FAINT_SEED)
    count, groups = cv2.connectedComponents(_within(grown, 1).astype(np.uint8), connectivity=8)
    held = np.bincount(groups[seeds], minlength=count)
    held[0] = 0
    # What lies within the margin narrowing keeps anyway does not matter; a free fit's ripples
    # hug the mark (12-13 pixels of such groups lay beyond, against 19 and more for lines).
    beyond = np.bincount(groups[grown & ~_within(strong, _TIGHT_MARGIN + 1)], minlength=count)
    kept = (held >= _FAINT_MIN_SEEDS) & (beyond >= _FAINT_MIN_BEYOND)
    number = np.cumsum(kept) * kept  # kept groups renumbered 1..P, the rest 0
    return np.where(grown, number[groups], 0).astype(np.int32)


def _enough_marked(est: BlendEstimate, domain: np.ndarray) -> bool:
    marked = int(_clearly_marked(est, domain).sum())
    return marked >= max(_MIN_MARKED_PIXELS, _MIN_MARKED_SHARE * int(domain.sum()))


def _shows_mark(est: BlendEstimate, scores: np.ndarray, domain: np.ndarray) -> bool:
    """Whether the estimate found a shared mark: inverting it weakens the edges of a typical
    image (median ghost score), and enough pixels are clearly marked."""
    return float(np.median(scores)) <= _NO_MARK_SCORE and _enough_marked(est, domain)


def _box_area(box: tuple[int, int, int, int] | None) -> int:
    return 0 if box is None else (box[1] - box[0]) * (box[3] - box[2])


def _invert_on_image(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    placement: _Placement,
    beta: np.ndarray,
    offset: np.ndarray,
    usable: np.ndarray,
) -> _Recovery:
    """Invert the blend over the mask's box of one image, with grid maps resampled onto it."""
    y0, y1, x0, x1 = box
    size = (x1 - x0, y1 - y0)
    m = placement.image_to_grid(y0, x0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    # Off the grid nothing is known: those pixels are not usable (the fallback fills them).
    b = cv2.warpAffine(beta, m, size, flags=flags, borderValue=1.0)
    c = cv2.warpAffine(offset, m, size, flags=flags, borderValue=(0.0, 0.0, 0.0))
    ok = cv2.warpAffine(usable.astype(np.float32), m, size, flags=flags, borderValue=0.0)
    crop = image[y0:y1, x0:x1].astype(np.float32)
    pixels = np.clip(np.rint((crop - c) / b[..., None]), 0, 255).astype(np.uint8)
    return _Recovery(box=box, pixels=pixels, usable=ok > 0.999)
