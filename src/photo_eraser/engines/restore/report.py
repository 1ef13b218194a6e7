"""What the restore engine did with a batch and with each image of it.

Every result of the engine carries a ``RestoreReport``: the result item's ``method`` and
``recovered_share``, the engine's logs and the tests all read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from photo_eraser.engines.restore.estimate import Fit

Approach = Literal["batch", "each alone", "none"]
"""How the batch was handled: estimated together (steps 1-8), each image alone (step 9,
batches of one to three), or not at all (nothing masked)."""


@dataclass(frozen=True)
class BatchReport:
    """How the batch as a whole was estimated."""

    images: int
    approach: Approach
    fit: Fit | None = None
    """Which fit the final estimate used; ``None`` when there is no batch estimate."""
    no_mark: str | None = None
    """Why the batch estimate was not used, when it was not (e.g. no shared mark found)."""
    exact_gave_way: bool = False
    """An exact fit (lossless batch) that found no mark gave way to the free fit."""
    shifts: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Images whose mark was realigned: grid pixels (dy, dx)."""
    excluded: tuple[int, ...] = ()
    """Images left out of the estimate because they do not carry the mark."""
    narrowing_rounds: int = 0
    """Times a loose mask was narrowed to the mark and the batch estimated again."""


@dataclass(frozen=True)
class RestoreReport:
    """How one image was restored."""

    image_index: int
    method: str
    """``restore`` (at least half of the mask recovered), ``restore+<fallback>`` (less) or the
    fallback's name (nothing recovered)."""
    recovered_share: float | None
    """Share of the masked pixels recovered by inverting the blend (``None``: nothing masked)."""
    masked_pixels: int
    filled_pixels: int
    """Masked pixels left to the fallback inpainter."""
    reason: str
    """Why the image came out this way, for people: e.g. "inverted where confident", "does
    not carry the batch's mark", "the one-image fit is not confident"."""
    batch: BatchReport

    def log_fields(self) -> dict[str, object]:
        """The report as flat, JSON-friendly fields for a structured log line."""
        fields = {k: v for k, v in asdict(self).items() if k != "batch"}
        fields.update({f"batch_{k}": v for k, v in asdict(self.batch).items()})
        fields["batch_shifts"] = {str(k): list(v) for k, v in self.batch.shifts.items()}
        if self.recovered_share is not None:
            fields["recovered_share"] = round(self.recovered_share, 4)
        return fields


def method_for(share: float, engine: str, fallback: str) -> str:
    """The result's ``method``: the engine's name when at least half of the mask was
    recovered, ``<engine>+<fallback>`` when less, the fallback's when none."""
    if share >= 0.5:
        return engine
    if share > 0.0:
        return f"{engine}+{fallback}"
    return fallback
