"""Golden outputs of the restore engine: a restructuring must not change a single pixel.

Each case is a deterministic batch (``tests/watermarks.py``): text or logo marks, opacity 0.3 to
opaque, 1 to 8 images, PNG (lossless) or JPEG, tight or loose masks, shifted, missing and
edge-cut marks, images of two sizes, a separate object in the mask, no mark at all. The engine's
outputs (every pixel, each image's ``method`` and ``recovered_share``) are hashed and compared
with ``tests/golden/restore.json``, written from the code before the restructuring.

A deliberate change of the engine's behaviour changes hashes: rewrite the file with

    .venv/bin/python tests/test_restore_golden.py --write

and say in the commit which cases moved and why (the file keeps each case's PSNR against the
true photos, so the diff shows whether a case got better or worse).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

if __name__ == "__main__":  # run as a script: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from photo_eraser.engines.opencv import OpenCVEngine
from photo_eraser.engines.restore import WatermarkRecoveryEngine
from tests import watermarks as wm

GOLDEN = Path(__file__).parent / "golden" / "restore.json"

# The batches are smaller than the other restore tests' so that 30 of them stay quick.
H, W = 120, 240

WHITE, BLACK = (255, 255, 255), (0, 0, 0)


@dataclass(frozen=True)
class Case:
    mark: str  # "text" | "logo" | "shape" | "none"
    alpha: float  # 1.0: opaque
    n: int
    fmt: str  # "png" | "jpeg"
    mask: str = "tight"  # "tight" | "loose"
    # "shifted" | "missing" | "sizes" | "edge" | "object" | "faint" | "recompressed"
    variant: str = "plain"
    colour: tuple[int, int, int] | None = None  # None: a gradient across the mark
    seed: int = 0

    @property
    def name(self) -> str:
        a = "opaque" if self.alpha >= 1 else f"a{self.alpha}"
        c = "gradient" if self.colour is None else "rgb" + "-".join(map(str, self.colour))
        return f"{self.mark}-{a}-n{self.n}-{self.fmt}-{self.mask}-{self.variant}-{c}-s{self.seed}"


CASES = [
    Case("text", 0.5, 8, "png"),
    Case("text", 0.5, 8, "jpeg"),
    Case("text", 0.3, 8, "png", colour=WHITE),
    Case("text", 0.7, 8, "jpeg", colour=WHITE, seed=1),
    Case("text", 1.0, 8, "png", colour=WHITE, seed=2),
    Case("logo", 0.5, 8, "png", seed=3),
    Case("logo", 0.3, 8, "jpeg", colour=BLACK, seed=4),
    Case("logo", 1.0, 4, "jpeg", colour=WHITE, seed=5),
    Case("text", 0.5, 4, "png", seed=6),
    Case("text", 0.5, 4, "jpeg", colour=WHITE, seed=7),
    Case("logo", 0.5, 4, "png", mask="loose", seed=8),
    Case("text", 0.5, 8, "png", mask="loose", seed=9),
    Case("text", 0.5, 8, "jpeg", mask="loose", seed=10),
    Case("text", 1.0, 4, "jpeg", mask="loose", colour=WHITE, seed=11),
    Case("logo", 0.7, 3, "png", colour=WHITE, seed=12),
    Case("logo", 0.5, 3, "png", seed=13),
    Case("text", 0.5, 3, "jpeg", seed=14),
    Case("logo", 0.5, 1, "png", colour=WHITE, seed=15),
    Case("logo", 0.3, 1, "jpeg", colour=WHITE, seed=16),
    Case("text", 0.5, 1, "png", seed=17),
    Case("logo", 1.0, 1, "png", colour=BLACK, seed=18),
    Case("text", 0.5, 8, "png", variant="shifted", seed=19),
    Case("logo", 0.5, 8, "jpeg", variant="shifted", colour=WHITE, seed=20),
    Case("text", 0.5, 8, "jpeg", variant="missing", seed=21),
    Case("logo", 0.5, 4, "png", variant="missing", seed=22),
    Case("text", 0.4, 8, "png", variant="sizes", seed=23),
    Case("logo", 0.5, 8, "jpeg", variant="sizes", seed=24),
    Case("text", 0.5, 8, "png", variant="edge", seed=25),
    Case("logo", 0.5, 8, "png", variant="object", colour=WHITE, seed=26),
    Case("none", 0.5, 8, "png", seed=27),
    Case("logo", 0.5, 1, "png", colour=WHITE, seed=40),
    Case("logo", 0.5, 1, "png", colour=WHITE, seed=43),
    Case("logo", 0.4, 2, "jpeg", colour=(230, 230, 230), seed=46),
    Case("text", 0.5, 5, "png", variant="recompressed", seed=28),
    Case("text", 0.5, 6, "png", mask="loose", variant="faint", colour=WHITE, seed=29),
    Case("text", 0.5, 4, "jpeg", mask="loose", variant="faint", colour=WHITE, seed=30),
    Case("logo", 1.0, 8, "png", mask="loose", colour=WHITE, seed=31),
    # One image, the one-image recovery's paths: a solid shape, text, a logo; low and high
    # opacity; PNG and JPEG.
    Case("shape", 0.3, 1, "jpeg", colour=WHITE, seed=50),
    Case("shape", 0.7, 1, "png", colour=(40, 80, 200), seed=51),
    Case("text", 0.3, 1, "jpeg", colour=WHITE, seed=52),
    Case("text", 0.7, 1, "png", colour=BLACK, seed=53),
    Case("logo", 0.7, 1, "jpeg", colour=(220, 30, 40), seed=54),
]


@dataclass
class Batch:
    images: list[np.ndarray]
    masks: list[np.ndarray]
    truths: list[np.ndarray]
    lossless: list[bool]


def _coverage(mark: str, h: int, w: int) -> np.ndarray:
    draws: dict[str, Callable[[int, int], np.ndarray]] = {
        "logo": wm.logo_coverage,
        "shape": wm.shape_coverage,
    }
    draw = draws.get(mark, wm.text_coverage)
    if (h, w) == (H, W):
        return draw(h, w)
    return cv2.resize(draw(H, W), (w, h))  # the mark scales with the image, as masks do


def build(case: Case) -> Batch:
    """The case's watermarked images, masks and true photos."""
    big = (int(H * 1.5), int(W * 1.5))
    if case.variant == "sizes":
        half = case.n // 2
        photos = wm.crops(half, H, W, seed=case.seed) + wm.crops(
            case.n - half, *big, seed=case.seed + 100
        )
    else:
        photos = wm.crops(case.n, H, W, seed=case.seed)
    images, masks = [], []
    for k, photo in enumerate(photos):
        h, w = photo.shape[:2]
        cov = _coverage("text" if case.mark == "none" else case.mark, h, w)
        if case.variant == "edge":  # the mark cut by the top edge (3 rows off the image)
            top = int(np.flatnonzero(cov.any(axis=1))[0])
            cov = np.roll(cov, -top - 3, axis=0)
            cov[-top - 3 :] = 0
        if case.variant == "faint":  # a thin line under the mark at an eighth of its opacity
            line = np.zeros((h, w), np.uint8)
            cv2.line(line, (w // 4, h - 18), (3 * w // 4, h - 18), 255, 2, cv2.LINE_AA)
            cov = np.maximum(cov, line.astype(np.float32) / 255 / 8)
        mask = wm.tight_mask(cov) if case.mask == "tight" else wm.box_around(cov, 10)
        shift = {1: (2, -3), 3: (-1, 2)}.get(k) if case.variant == "shifted" else None
        if shift is not None:  # this image's mark moved; its mask covers both places
            cov = np.roll(cov, shift, axis=(0, 1))
            mask = mask | wm.tight_mask(cov)
        if case.variant == "object":  # a separate part of the mask over something else
            mask = mask.copy()
            mask[4:22, 6:40] = True
        colour = (
            wm.gradient_colour(h, w) if case.colour is None else wm.solid_colour(case.colour, h, w)
        )
        unmarked = case.mark == "none" or (case.variant == "missing" and k == 2)
        image = photo if unmarked else wm.stamp([photo], case.alpha * cov, colour)[0]
        if case.fmt == "jpeg" or case.variant == "recompressed":  # PNG files saved from JPEG
            image = wm.jpeg(image, 90)
        images.append(image)
        masks.append(mask)
    return Batch(images, masks, photos, [case.fmt == "png"] * case.n)


def outcome(case: Case) -> dict[str, object]:
    """What the engine makes of the case: a hash of everything, and readable parts of it."""
    batch = build(case)
    engine = WatermarkRecoveryEngine(fallback=OpenCVEngine())
    results = engine.restore(batch.images, batch.masks, lossless=batch.lossless)
    digest = hashlib.sha256()
    shares = []
    for r in results:
        share = None if r.recovered_share is None else f"{r.recovered_share:.6f}"
        shares.append(share)
        digest.update(np.ascontiguousarray(r.image).tobytes())
        digest.update(f"|{r.method}|{share}|".encode())
    masked = np.concatenate(
        [
            (r.image.astype(np.float64) - t)[m].ravel()
            for r, t, m in zip(results, batch.truths, batch.masks, strict=True)
        ]
    )
    psnr = 10 * np.log10(255**2 / max(float(np.mean(masked**2)), 1e-10))
    return {
        "sha256": digest.hexdigest(),
        "methods": [r.method for r in results],
        "recovered_share": shares,
        "psnr": round(float(psnr), 3),
    }


def _golden() -> dict[str, dict[str, object]]:
    return json.loads(GOLDEN.read_text())


def test_the_cases_cover_what_the_refactoring_must_keep() -> None:
    """The golden set spans the dimensions it must (so a narrowed set fails here)."""
    assert len(CASES) >= 24 and len({c.name for c in CASES}) == len(CASES)
    assert {c.mark for c in CASES} >= {"text", "logo", "shape", "none"}
    assert {c.alpha for c in CASES} >= {0.3, 0.5, 0.7, 1.0}
    assert {c.n for c in CASES} >= {1, 3, 4, 8}
    assert {c.fmt for c in CASES} == {"png", "jpeg"}
    assert {c.mask for c in CASES} == {"tight", "loose"}
    assert {c.variant for c in CASES} >= {"plain", "shifted", "missing", "sizes", "edge", "faint"}
    assert set(_golden()) == {c.name for c in CASES}


def test_the_outcomes_span_every_method() -> None:
    """A positive control for the hashes: the cases reach inversion, partial inversion and the
    fallback, so the hashed outputs depend on every path of the engine."""
    methods = {m for entry in _golden().values() for m in entry["methods"]}  # type: ignore[attr-defined]
    assert methods == {"restore", "restore+opencv", "opencv"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_restore_output_is_unchanged(case: Case) -> None:
    expected = _golden()[case.name]
    got = outcome(case)
    # Methods and shares first: their diff says what moved; the hash then covers every pixel.
    assert got["methods"] == expected["methods"]
    assert got["recovered_share"] == expected["recovered_share"]
    assert got["sha256"] == expected["sha256"], (
        f"pixels changed: masked PSNR {got['psnr']} dB, was {expected['psnr']} dB"
    )


def _write() -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    table = {case.name: outcome(case) for case in CASES}
    GOLDEN.write_text(json.dumps(table, indent=1) + "\n")
    for name, entry in table.items():
        print(f"{name:50s} {entry['psnr']:7.2f} dB  {sorted(set(entry['methods']))}")  # type: ignore[call-overload]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_restore_golden.py --write   (rewrites tests/golden/restore.json)")
    _write()
