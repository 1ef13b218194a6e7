"""The engine interface every restoration method implements.

Conventions at this boundary (and everywhere outside OpenCV calls):
images are RGB ``uint8`` arrays of shape HxWx3; masks are ``bool`` arrays of shape HxW,
``True`` = restore this pixel. Each mask has already been resized to its image.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from photo_eraser.engines.restore.report import RestoreReport

Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)``, end-exclusive."""


class EngineError(Exception):
    """An engine cannot run (missing model, corrupt model file, ...). The message is for users."""


class EngineUnavailable(EngineError):
    """The engine exists but cannot be used on this installation (e.g. its model is not installed)."""


@dataclass(frozen=True)
class EngineSetup:
    """What this installation builds its engines from."""

    model_dir: Path
    """Where model files are installed (``photo-eraser models``)."""
    threads: int = 1
    """Threads one engine call may use."""
    restore_exact_fit: bool = True
    """Whether ``restore`` fits an exact blend model to all-lossless batches."""
    image_threads: int = 1
    """Images of one batch a weight-free fill may work on at once (``PHOTO_ERASER_IMAGE_THREADS``):
    OpenCV and PatchMatch release the GIL, so a batch's fills run side by side."""
    restore_fill: str = "best"
    """What ``restore`` fills the pixels it cannot recover with (``PHOTO_ERASER_RESTORE_FILL``):
    ``best`` or the name of one fallback, ``lama``, ``fill`` or ``opencv``."""


@dataclass
class Restored:
    """One restored image and how it was produced."""

    image: np.ndarray
    method: str
    recovered_share: float | None = None
    """For the batch ``restore`` engine: share of masked pixels recovered (vs. inpainted)."""
    report: RestoreReport | None = None
    """For the ``restore`` engine: how the image was restored (``method`` and
    ``recovered_share`` are read from it)."""


class Engine(ABC):
    """Restores the masked area of every image of a batch at once."""

    name: str = ""
    per_image: bool = False
    """Whether each image's result depends on that image alone, and one image per call costs
    no more than a batch: then a task's images go through the engine one at a time, in
    parallel, each from download to stored result (the worker streams them)."""
    reach: int | None = None
    """How far beyond the bounding box of a mask the engine reads or writes an image's pixels
    (``None``: anywhere). An engine with a reach gives the same pixels on the part of an image
    that ``window`` names as on the whole image."""

    def window(self, mask: np.ndarray, images: int) -> Box | None:
        """The part of an image (a box) the engine needs to restore ``mask`` in it, in a batch of
        ``images`` images of that size under that mask; ``None``: the whole image. A batch
        engine's caller may then hold only that part of each image (``restore_parts``)."""
        return None if self.reach is None else mask_bbox(mask, pad=self.reach)

    def restore_parts(
        self,
        parts: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        origins: Sequence[tuple[int, int]],
        *,
        lossless: Sequence[bool] | None = None,
    ) -> list[Restored]:
        """``restore`` on the parts of the images that ``window`` named: ``parts[i]`` lies at
        ``origins[i]`` (top, left) in an image of the size of ``masks[i]`` (the whole image's
        mask). The parts are handed over (written in place); the results are the parts."""
        cut = [
            np.ascontiguousarray(m[y : y + p.shape[0], x : x + p.shape[1]])
            for p, m, (y, x) in zip(parts, masks, origins, strict=True)
        ]
        return self.restore(parts, cut, in_place=True, lossless=lossless)

    @abstractmethod
    def restore(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        in_place: bool = False,
        lossless: Sequence[bool] | None = None,
    ) -> list[Restored]:
        """Return one result per input, same size; pixels outside each mask unchanged.

        With ``in_place=True`` the caller hands the arrays over: the engine may write into them
        and return them, which saves a full-size copy per image (the only cost that would
        otherwise follow the image's size rather than the mask's).

        ``lossless`` (one per image, optional) says which images came in a lossless format
        (PNG, BMP): their pixels are exactly what was stamped. Inpainters ignore it; ``restore``
        fits an exact blend model when the whole batch is lossless.
        """


class InpaintingEngine(Engine):
    """An engine that fills each image from its own pixels (a batch may share model calls)."""

    @abstractmethod
    def restore_in_place(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        """Fill each mask, writing into the given arrays."""

    def inpaint(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Fill ``mask`` in a copy of ``image``."""
        out = image.copy()
        self.restore_in_place([out], [mask])
        return out

    def restore(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        in_place: bool = False,
        lossless: Sequence[bool] | None = None,
    ) -> list[Restored]:
        outputs = list(images) if in_place else [image.copy() for image in images]
        self.restore_in_place(outputs, masks)
        return [Restored(out, self.name) for out in outputs]


def mask_bbox(mask: np.ndarray, pad: int = 0) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, y1, x0, x1)`` (end-exclusive) of a mask, padded and clamped."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (
        max(0, int(rows[0]) - pad),
        min(h, int(rows[-1]) + 1 + pad),
        max(0, int(cols[0]) - pad),
        min(w, int(cols[-1]) + 1 + pad),
    )
