"""The restore engine: batch watermark recovery, step by step (docs/restore.md).

A visible watermark stamped on every image of a batch is ``J = alpha*W + (1-alpha)*I``.
Because alpha and W are the same on every image, they can be estimated from the batch and the
blend inverted, giving back the real pixels rather than invented ones. Where the mark is
(nearly) opaque, or where the estimate is not confident, the masked pixels are filled by the
fallback inpainter instead. This module only orders the steps; each lives in its own module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from photo_eraser.engines.base import Box, Engine, Restored, mask_bbox
from photo_eraser.engines.restore.arrays import within
from photo_eraser.engines.restore.choose import better_of_two
from photo_eraser.engines.restore.edges import CHUNK_BYTES
from photo_eraser.engines.restore.estimate import Blend, Estimate, Recovery
from photo_eraser.engines.restore.fit import fit_blend
from photo_eraser.engines.restore.grid import Frame, align, common_grid, extract, on_image, reach
from photo_eraser.engines.restore.invert import cut_to_box, invert_batch
from photo_eraser.engines.restore.mark import (
    faint_parts,
    finds_mark,
    ghost_scores,
    images_without_the_mark,
    narrowed,
    no_shared_mark,
    parts_with_mark,
    trimmed,
)
from photo_eraser.engines.restore.params import RestoreParams
from photo_eraser.engines.restore.pixels import clearly_marked, enough_marked
from photo_eraser.engines.restore.report import BatchReport, RestoreReport, method_for
from photo_eraser.engines.restore.single import recover_together, single_reason
from photo_eraser.engines.restore.solver import GridSolver

log = logging.getLogger(__name__)


NO_SHARED_MARK = "no shared watermark found in the batch"


@dataclass(frozen=True)
class NoEstimate:
    """Why the batch gave no usable estimate."""

    reason: str


@dataclass
class _Batch:
    """One call's batch, as the estimation steps see it."""

    crops: np.ndarray
    """The candidates' crops on the grid, stacked (N x H x W x 3 float32; read only)."""
    candidates: list[int]
    exact: list[bool]
    """Per image: may it take part in an exact-blend fit (lossless, on an unscaled grid)."""
    exact_only: bool
    """Three lossless images: estimated together only if the exact fit holds."""
    valid: np.ndarray
    """Grid pixels on every image (``GridSolver.valid`` of the whole mask)."""

    def stack(self, images: list[int]) -> np.ndarray:
        """The crops of ``images`` (batch indices): the stacked crops themselves when all are
        used (each estimate of the batch shares them rather than holding a copy)."""
        if images == self.candidates:
            return self.crops
        at = {i: k for k, i in enumerate(self.candidates)}
        return self.crops[[at[i] for i in images]]


class _Narrowed(NamedTuple):
    """The batch estimated again on a narrowed mask, and the faint parts that mask kept."""

    estimate: Estimate
    faint: np.ndarray


class _Fitted(NamedTuple):
    blend: Blend
    errors: np.ndarray
    scores: np.ndarray
    """Each image's ghost score (step 7)."""
    gave_way: bool
    """Whether an exact fit that found no mark gave way to the free fit."""


@dataclass
class _Outcome:
    """The recoveries of a batch (``None``: left to the fallback) and what to report."""

    recoveries: list[Recovery | None]
    batch: BatchReport
    reasons: dict[int, str] = field(default_factory=dict)


class WatermarkRecoveryEngine(Engine):
    """Recovers the pixels under a watermark shared by a batch; inpaints what it cannot recover
    with ``fallback``. ``params``: every threshold (``RestoreParams``); the defaults are what the
    service runs. ``threads``: how many pieces of the estimate's independent work run at once
    (the task's image threads): chunks of its per-edge work, images for the texture weights
    and the inversion, the jackknife's re-fits; ``chunk_bytes``: the chunks' size
    (``edges.py``). The output is the same for any of these."""

    name = "restore"

    def __init__(
        self,
        fallback: Engine,
        params: RestoreParams | None = None,
        *,
        threads: int = 1,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.fallback = fallback
        self.params = params or RestoreParams()
        self.threads = max(1, threads)
        self.chunk_bytes = chunk_bytes

    def window(self, mask: np.ndarray, images: int) -> Box | None:
        """The grid's reach around the mask and the fallback's: the batch estimate's needs. A
        batch too small for it is recovered image by image, which looks far around the mask
        (copies of the mask beside it): whole images then."""
        fill = self.fallback.window(mask, images)
        box = mask_bbox(mask, pad=reach(mask, self.params.grid))
        if images < self.params.min_images or fill is None or box is None:
            return None
        return (
            min(box[0], fill[0]),
            max(box[1], fill[1]),
            min(box[2], fill[2]),
            max(box[3], fill[3]),
        )

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
        outputs = list(images) if in_place else [np.array(im, copy=True) for im in images]
        frames = [Frame(0, 0, *im.shape[:2]) for im in images]
        return self._restore(outputs, masks, frames, lossless)

    def restore_parts(
        self,
        parts: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        origins: Sequence[tuple[int, int]],
        *,
        lossless: Sequence[bool] | None = None,
    ) -> list[Restored]:
        """The whole masks place the grid exactly as on whole images; each step reads the
        images through their frames (``Frame.cut`` refuses a read beyond a part)."""
        if not len(parts) == len(masks) == len(origins):
            raise ValueError("one mask and one origin per part are required")
        frames = [Frame(y, x, *m.shape[:2]) for (y, x), m in zip(origins, masks, strict=True)]
        return self._restore(list(parts), masks, frames, lossless)

    def _restore(
        self,
        outputs: list[np.ndarray],
        masks: Sequence[np.ndarray],
        frames: Sequence[Frame],
        lossless: Sequence[bool] | None,
    ) -> list[Restored]:
        """Recover, then fill the rest, writing into ``outputs`` (the images at ``frames``)."""
        if lossless is not None and len(lossless) != len(outputs):
            raise ValueError("one lossless flag per image is required")
        masks = [np.asarray(m, dtype=bool) for m in masks]
        boxes = [mask_bbox(m) for m in masks]
        flags = list(lossless) if lossless is not None else [False] * len(outputs)
        outcome = self._recover(outputs, frames, masks, boxes, flags)
        counts, fill_methods = self._fill(outputs, frames, masks, boxes, outcome.recoveries)
        results = []
        for i, (out, (total, filled)) in enumerate(zip(outputs, counts, strict=True)):
            report = self._report(i, total, filled, outcome, fill_methods.get(i))
            results.append(Restored(out, report.method, report.recovered_share, report=report))
            if total:
                log.info("restore image", extra={"engine": self.name, **report.log_fields()})
        return results

    def _recover(
        self,
        images: Sequence[np.ndarray],
        frames: Sequence[Frame],
        masks: Sequence[np.ndarray],
        boxes: Sequence[Box | None],
        lossless: Sequence[bool],
    ) -> _Outcome:
        """Invert the blend wherever it is safe (steps 1-9)."""
        p = self.params
        candidates = [i for i, box in enumerate(boxes) if box is not None]
        if not candidates:
            return _Outcome([None] * len(images), BatchReport(0, "none"))
        # Three lossless images are too few for the free fit, but may be enough for the exact
        # one (step 6). Each image is also handled alone (step 9), and keeps the better of the
        # two recoveries when the exact fit holds.
        exact_only = (
            p.exact.min_images <= len(candidates) < p.min_images
            and p.exact.enabled
            and all(lossless[i] for i in candidates)
        )
        if len(candidates) < p.min_images and not exact_only:
            return self._each_alone(images, frames, masks, boxes, lossless, candidates)
        together = self._recover_together(
            images, frames, masks, boxes, lossless, candidates, exact_only
        )
        if exact_only:
            if isinstance(together, NoEstimate):
                return self._each_alone(images, frames, masks, boxes, lossless, candidates)
            if _recovered_at_least(together, masks, candidates, p.single.choice_enough):
                return together
            alone = self._each_alone(images, frames, masks, boxes, lossless, candidates)
            return _the_better_of(images, frames, together, alone, p.single.choice_min_change)
        if isinstance(together, _Outcome):
            return together
        batch = BatchReport(len(candidates), "batch", no_mark=together.reason)
        return _Outcome([None] * len(images), batch)

    def _recover_together(
        self,
        images: Sequence[np.ndarray],
        frames: Sequence[Frame],
        masks: Sequence[np.ndarray],
        boxes: Sequence[Box | None],
        lossless: Sequence[bool],
        candidates: list[int],
        exact_only: bool,
    ) -> _Outcome | NoEstimate:
        """Steps 1-8: the batch estimate and its inversion."""
        p = self.params
        # 1-2. The common grid, the images on it, their marks lined up.
        ref = max(candidates, key=lambda i: _box_area(boxes[i]))
        grid = common_grid(masks, ref, candidates, p.grid)
        if grid is None:
            return NoEstimate("the mask vanishes on the estimation grid")
        crops = {
            i: extract(images[i], frames[i], grid.placements[i], grid.shape) for i in candidates
        }
        shifts = align(images, frames, grid, crops, p.grid)
        # Grid pixels off an image (a mask at its edge) hold mirrored pixels, not the photo:
        # the estimate ignores them, and masked ones are inverted in no image.
        valid = np.logical_and.reduce(
            [on_image(frames[i], grid.placements[i], grid.shape) for i in candidates]
        )
        whole = GridSolver(grid.domain, valid)
        # Resampling (images of another size, a scaled-down grid) mixes pixels: the crops are
        # no longer exactly the blend, whatever the format.
        shifts_only = all(
            grid.placements[i].sy == 1 and grid.placements[i].sx == 1 for i in candidates
        )
        if exact_only and not shifts_only:
            return NoEstimate("three images are estimated together only on an unscaled grid")
        exact = [bool(flag) and shifts_only and p.exact.enabled for flag in lossless]
        stacked = np.stack([crops[i] for i in candidates])
        stacked.flags.writeable = False  # every estimate shares it
        del crops
        batch = _Batch(stacked, candidates, exact, exact_only, whole.valid)
        # 3-7. The estimate, from the images that carry the mark, around the mark.
        first = self._estimate(batch, whole)
        if isinstance(first, NoEstimate):
            return first
        est, with_mark, rounds = self._around_the_mark(first, batch)
        # 8. Invert where confident.
        recoveries = invert_batch(
            images, frames, boxes, grid, est, whole, with_mark, p, self.threads
        )
        report = BatchReport(
            images=len(candidates),
            approach="batch",
            fit=est.blend.fit,
            exact_gave_way=est.exact_gave_way,
            shifts=shifts,
            excluded=tuple(i for i in candidates if i not in est.images),
            narrowing_rounds=rounds,
        )
        reasons = {i: "does not carry the batch's mark" for i in report.excluded}
        return _Outcome(recoveries, report, reasons)

    def _estimate(self, batch: _Batch, solver: GridSolver) -> Estimate | NoEstimate:
        """The blend on the solver's domain from the images that carry the mark (step 7 leaves
        out those that do not); with ``exact_only``, only if the exact-blend fit holds."""
        p = self.params
        fewest = p.exact.min_images if batch.exact_only else p.min_images
        used = list(batch.candidates)
        stack = batch.stack(used)
        exact = all(batch.exact[i] for i in used)
        blend, errors, scores, gave_way = self._fit(stack, solver, exact, batch.exact_only)
        if no_shared_mark(scores, p):
            return NoEstimate(NO_SHARED_MARK)
        missing = images_without_the_mark(scores, p)
        excluded = [i for i, out in zip(used, missing, strict=True) if out]
        if excluded:
            used = [i for i in used if i not in excluded]
            if len(used) < fewest:
                return NoEstimate("too few images carry a shared watermark")
            stack = batch.stack(used)
            exact = not gave_way and all(batch.exact[i] for i in used)
            blend, errors, scores, again = self._fit(stack, solver, exact, batch.exact_only)
            gave_way = gave_way or again
        if batch.exact_only and not blend.exact:
            return NoEstimate("the exact-blend fit does not explain the three images")
        if not enough_marked(blend, solver.domain, p.pixels):
            return NoEstimate(NO_SHARED_MARK)
        return Estimate(used, stack, blend, errors, solver, gave_way)

    def _fit(
        self, stack: np.ndarray, solver: GridSolver, lossless: bool, exact_only: bool
    ) -> _Fitted:
        """The blend, its jackknife errors and ghost scores, and whether an exact fit that found
        no mark gave way to the free fit.

        An exact fit that finds no mark, where the free fit may well find one, means the images
        are not exactly the blend after all (e.g. PNG files JPEG-compressed after the mark):
        the free fit decides. (``exact_only`` batches have no free fit to fall back on.)
        """
        p = self.params
        blend, errors = fit_blend(
            stack, solver, p, lossless=lossless, threads=self.threads, chunk_bytes=self.chunk_bytes
        )
        assert errors is not None
        scores = ghost_scores(stack, blend, solver, p)
        if not blend.exact or exact_only or finds_mark(blend, scores, solver.domain, p):
            return _Fitted(blend, errors, scores, False)
        blend, errors = fit_blend(
            stack, solver, p, threads=self.threads, chunk_bytes=self.chunk_bytes
        )
        assert errors is not None
        return _Fitted(blend, errors, ghost_scores(stack, blend, solver, p), True)

    def _around_the_mark(self, first: Estimate, batch: _Batch) -> tuple[Estimate, np.ndarray, int]:
        """Step 7 for the mask: the estimate narrowed to the mark if the mask is loose, the
        mask's pixels that belong to the mark or its surroundings, and how often it narrowed.

        A loose mask (a box or a broad brush around the mark): the estimate takes the mask's
        border as unmarked and integrates across all of it, so far from the mark it only adds
        noise, and the exact fit breaks down. So the batch is estimated again on the mark, its
        faint parts and a thin margin; then once more, as a first estimate over a loose mask
        finds a few stray marked pixels. The rest of the mask is taken as unmarked.
        """
        p = self.params
        whole = first.solver
        parts = parts_with_mark(first, whole, p)
        # Narrowing, first: faint parts are looked for on the whole mask (its unmarked pixels
        # show the estimate's noise), and only when narrowing is due (it inverts once more).
        faint = np.zeros(whole.domain.shape, dtype=bool)
        tight = narrowed(first.blend, whole.domain, parts.pixels, faint, p)
        if tight is not None:
            faint = faint_parts(first, p) & parts.pixels
            tight = narrowed(first.blend, whole.domain, parts.pixels, faint, p)
        second = self._estimate_within(first, tight, parts.pixels, faint, parts.limit, batch)
        if second is None:
            return first, parts.pixels, 0
        if isinstance(second, NoEstimate):
            # Far from the mark the whole mask's estimate is only noise.
            near = within(clearly_marked(first.blend, whole.domain, p.pixels), p.mark.near)
            return first, parts.pixels & near, 0
        current, faint = second.estimate, second.faint
        # Narrowing, second: to what the estimate around the mark marks. A lossless batch
        # still on the free fit (the faint parts' margin can keep the exact fit from holding)
        # is trimmed to the free fit's margin, however little that leaves out.
        region = current.solver.domain
        tight = narrowed(current.blend, region, region, faint, p)
        if (
            tight is None
            and not current.blend.exact
            and all(batch.exact[i] for i in current.images)
        ):
            tight = trimmed(current.blend, region, region, faint, p)
        third = self._estimate_within(current, tight, region, faint, parts.limit, batch)
        final, rounds = (third.estimate, 2) if isinstance(third, _Narrowed) else (current, 1)
        # The mask's parts judged again, with the final estimate.
        return final, parts_with_mark(final, whole, p).pixels, rounds

    def _estimate_within(
        self,
        current: Estimate,
        tight: np.ndarray | None,
        with_mark: np.ndarray,
        faint: np.ndarray,
        limit: float,
        batch: _Batch,
    ) -> _Narrowed | NoEstimate | None:
        """The batch estimated again on the narrowed mask ``tight``, and the faint parts it
        kept; ``None`` if there is nothing to narrow, or if what narrowing would drop inverts
        like the mark (a faint part found by its offset alone); ``NoEstimate`` if it failed."""
        if tight is None:
            return None
        p = self.params
        dropped = (current.solver.domain & ~tight).astype(np.int32)
        scores = ghost_scores(current.stack, current.blend, current.solver, p, dropped)
        if float(np.median(scores)) <= limit:
            return None
        again = self._estimate(batch, GridSolver(tight, batch.valid))
        if isinstance(again, NoEstimate) and faint.any():
            # The faint parts may be what spoiled it (false ones in the drift around an
            # opaque mark take in pixels the images disagree on): narrow without them.
            faint = np.zeros_like(faint)
            without = narrowed(current.blend, current.solver.domain, with_mark, faint, p)
            if without is not None:
                again = self._estimate(batch, GridSolver(without, batch.valid))
        return again if isinstance(again, NoEstimate) else _Narrowed(again, faint)

    def _each_alone(
        self,
        images: Sequence[np.ndarray],
        frames: Sequence[Frame],
        masks: Sequence[np.ndarray],
        boxes: Sequence[Box | None],
        lossless: Sequence[bool],
        candidates: list[int],
    ) -> _Outcome:
        """Step 9: too few images for the batch estimate; one mark is fitted to those under one
        mask, the others are tried alone (on whole images: ``window`` asks for them). Lossy
        images (any of them) get the one-image fit's lossy parameters. Also run on three
        lossless images beside the batch estimate."""
        if any(frames[i] != Frame(0, 0, *images[i].shape[:2]) for i in candidates):
            raise ValueError("the one-image recovery needs whole images, not parts")
        out: list[Recovery | None] = [None] * len(images)
        reasons = {}
        p = self.params.single.for_format(lossless=all(lossless[i] for i in candidates))
        found = recover_together([images[i] for i in candidates], [masks[i] for i in candidates], p)
        for i, (rec, fitted) in zip(candidates, found, strict=True):
            box = boxes[i]
            assert box is not None
            out[i] = None if rec is None else cut_to_box(rec, box)
            reasons[i] = single_reason(rec is not None, fitted)
        return _Outcome(out, BatchReport(len(candidates), "each alone"), reasons)

    def _fill(
        self,
        outputs: list[np.ndarray],
        frames: Sequence[Frame],
        masks: Sequence[np.ndarray],
        boxes: Sequence[Box | None],
        recoveries: Sequence[Recovery | None],
    ) -> tuple[list[tuple[int, int]], dict[int, str]]:
        """Write the recovered pixels into the outputs and let the fallback fill the rest of
        each mask; returns each image's masked and filled pixel counts, and the method the
        fallback reported for each image it filled (a fill that chooses per region says which
        it used). The fallback is given the outputs as they are (whole images or the parts
        ``window`` named, which hold its reach)."""
        filled_idx: list[int] = []
        submasks: list[np.ndarray] = []
        counts: list[tuple[int, int]] = []
        methods: dict[int, str] = {}
        for i, (out, frame, mask, box, rec) in enumerate(
            zip(outputs, frames, masks, boxes, recoveries, strict=True)
        ):
            if box is None:
                counts.append((0, 0))
                continue
            y0, y1, x0, x1 = box
            todo = mask[y0:y1, x0:x1].copy()
            at = frame.cut(out, y0, y1, x0, x1)
            if rec is not None:
                take = rec.usable & todo
                at[take] = rec.pixels[take]
                todo &= ~take
            filled_px = int(todo.sum())
            counts.append((int(mask[y0:y1, x0:x1].sum()), filled_px))
            if filled_px:
                sub = np.zeros(out.shape[:2], dtype=bool)
                frame.cut(sub, y0, y1, x0, x1)[...] = todo
                filled_idx.append(i)
                submasks.append(sub)
        if filled_idx:
            # Our outputs are private (copies, or handed over): the fallback may write into them.
            batch = [outputs[i] for i in filled_idx]
            filled = self.fallback.restore(batch, submasks, in_place=True)
            for i, sub, res in zip(filled_idx, submasks, filled, strict=True):
                if res.image is not outputs[i]:
                    outputs[i][sub] = res.image[sub]
                methods[i] = res.method
        return counts, methods

    def _report(
        self, i: int, total: int, filled: int, outcome: _Outcome, fill_method: str | None
    ) -> RestoreReport:
        batch = outcome.batch
        if not total:  # nothing masked in this image: nothing was recovered or filled
            return RestoreReport(i, self.fallback.name, None, 0, 0, "nothing masked", batch)
        share = 1.0 - filled / total
        method = method_for(share, self.name, fill_method or self.fallback.name)
        reason = outcome.reasons.get(i) or batch.no_mark
        if reason is None:
            reason = "inverted where confident" if share else "no pixel confident enough to invert"
        return RestoreReport(i, method, share, total, filled, reason, batch)


def _the_better_of(
    images: Sequence[np.ndarray],
    frames: Sequence[Frame],
    batch: _Outcome,
    alone: _Outcome,
    min_change: float,
) -> _Outcome:
    """Three lossless images recovered both by the batch's exact fit and one by one (step 9):
    each image keeps the better of its two recoveries (``choose.better_of_two``), or the one
    it has; one the batch left out as not carrying its mark stays left out."""
    out: list[Recovery | None] = []
    reasons = {}
    for i, (b, s) in enumerate(zip(batch.recoveries, alone.recoveries, strict=True)):
        if i in batch.batch.excluded or s is None:
            out.append(b)
            if i in batch.reasons:
                reasons[i] = batch.reasons[i]
        elif b is None:
            out.append(s)
            reasons[i] = alone.reasons[i]
        else:
            rec, batch_won = better_of_two(images[i], frames[i], b, s, min_change)
            out.append(rec)
            if batch_won:
                reasons[i] = f"the batch's exact fit, chosen over the {alone.reasons[i]}"
            else:
                reasons[i] = f"{alone.reasons[i]}, chosen over the batch's exact fit"
    return _Outcome(out, batch.batch, reasons)


def _recovered_at_least(
    outcome: _Outcome, masks: Sequence[np.ndarray], candidates: list[int], share: float
) -> bool:
    """Whether the recoveries cover at least ``share`` of every candidate's mask."""
    for i in candidates:
        rec = outcome.recoveries[i]
        if rec is None:
            return False
        y0, y1, x0, x1 = rec.box
        covered = int((rec.usable & masks[i][y0:y1, x0:x1]).sum())
        if covered < share * int(masks[i].sum()):
            return False
    return True


def _box_area(box: Box | None) -> int:
    return 0 if box is None else (box[1] - box[0]) * (box[3] - box[2])
