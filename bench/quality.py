"""Quality and speed of the batch watermark recovery engine (``restore``).

    .venv/bin/python bench/quality.py            # full table -> docs/restore-quality.md
    .venv/bin/python bench/quality.py --quick    # a few cases, printed only
    .venv/bin/python bench/quality.py --few      # only the one-to-three-image tables, printed
    .venv/bin/python bench/quality.py --few --dev  # the same on the tuning seeds (other crops)
    .venv/bin/python bench/quality.py --figure docs/img/restore-example.png
    .venv/bin/python bench/quality.py --detect   # "mask": "auto" -> docs/detect-quality.md
    .venv/bin/python bench/quality.py --detect --seeds tune --no-restore  # tuning seeds, printed
    .venv/bin/python bench/quality.py --detect --clean-only 48 --seeds other  # false detections

Synthetic cases from photos bundled with scikit-image (nothing is downloaded): a text or logo
watermark ``J = a*W + (1-a)*I`` with known alpha matte ``a`` and colour ``W`` is stamped on N
different photo crops, saved as PNG or JPEG quality 90, and the masked pixels are restored by:

* ``restore``: ``WatermarkRecoveryEngine(fallback=OpenCVEngine())`` with its default settings;
* ``telea``: ``OpenCVEngine`` (OpenCV Telea inpainting), image by image;
* ``oracle``: the blend inverted with the true ``a`` and ``W`` where ``a <= 0.9``, Telea on the
  rest: what is left once only compression noise stands in the way.

PSNR is over all masked pixels of the batch (pooled MSE); SSIM is the SSIM map averaged over
the masked pixels, then over the images. The mask is the mark's support dilated by 2 pixels.
A second grid, one to three images (``FEW_*``), adds solid shapes (a filled ellipse over a
bar, white and blue) to the text and logo marks, alpha 0.3-0.7, several seeds per cell: the
single-image recovery's own tables and targets.

The timing lines restore 20 different 1920x1080 photos carrying a text mark (~2% of the
area), as JPEG q90 and as PNG (lossless: ``restore`` then tries its exact-blend fit), with
``restore`` and with Telea one image after the other (median of the timed runs, after one
warm-up run each).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data as skdata
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from photo_eraser.engines.opencv import OpenCVEngine  # noqa: E402
from photo_eraser.engines.restore import WatermarkRecoveryEngine  # noqa: E402
from photo_eraser.imaging import fit_mask  # noqa: E402
from photo_eraser.imaging.detect import DetectParams, detect_watermark  # noqa: E402

H, W = 384, 512
ORACLE_MAX_ALPHA = 0.9
ALPHAS = (0.3, 0.5, 0.7, 1.0)
COUNTS = (1, 4, 8, 16)
FORMATS = ("png", "jpeg90")
FEW_ALPHAS = (0.3, 0.5, 0.7)
FEW_COUNTS = (1, 2, 3)
FEW_SEEDS = 3
FEW_BASE = 7000
"""Seed origin of the reported one-to-three-image grid; ``--dev`` uses DEV_BASE (other crops)
for tuning, so the reported figures are not the ones thresholds were chosen on."""
DEV_BASE = 27000


def photos() -> list[np.ndarray]:
    """Distinct RGB photos and textures bundled with scikit-image."""
    left, right, _ = skdata.stereo_motorcycle()
    rgb = [
        skdata.astronaut(),
        skdata.coffee(),
        skdata.chelsea(),
        skdata.rocket(),
        left,
        right,
        skdata.immunohistochemistry(),
        skdata.retina(),
        skdata.hubble_deep_field(),
    ]
    grey = [skdata.camera(), skdata.brick(), skdata.grass(), skdata.gravel(), skdata.moon()]
    grey += [skdata.coins(), skdata.clock()]
    return rgb + [np.stack([g] * 3, axis=-1) for g in grey]


def photo_crop(photo: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``photo`` (rescaled by 1-1.4x, at least h x w), maybe mirrored."""
    scale = max(h / photo.shape[0], w / photo.shape[1], 1.0) * rng.uniform(1.0, 1.4)
    size = (int(np.ceil(photo.shape[1] * scale)), int(np.ceil(photo.shape[0] * scale)))
    big = cv2.resize(photo, size, interpolation=cv2.INTER_CUBIC)
    y = int(rng.integers(0, big.shape[0] - h + 1))
    x = int(rng.integers(0, big.shape[1] - w + 1))
    crop = big[y : y + h, x : x + w]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def text_coverage(h: int, w: int, text: str, scale: float, thickness: int) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a line of text in the lower middle of the image."""
    canvas = np.zeros((h, w), np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    org = ((w - tw) // 2, int(h * 0.62) + th // 2)
    cv2.putText(canvas, text, org, font, scale, 255, thickness, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255


def logo_coverage(h: int, w: int) -> np.ndarray:
    """Anti-aliased coverage of a logo: a ring, a bar and two bold letters."""
    canvas = np.zeros((h, w), np.uint8)
    cx, cy, r = int(w * 0.62), int(h * 0.55), int(min(h, w) * 0.2)
    cv2.circle(canvas, (cx, cy), r, 255, 7, cv2.LINE_AA)
    cv2.rectangle(canvas, (cx - r, cy + r + 12), (cx + r, cy + r + 22), 255, -1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_DUPLEX
    (tw, th), _ = cv2.getTextSize("PE", font, 2.2, 6)
    cv2.putText(canvas, "PE", (cx - tw // 2, cy + th // 2), font, 2.2, 255, 6, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255


def gradient_colour(h: int, w: int) -> np.ndarray:
    """A colour varying across the image, orange on the left to light blue on the right."""
    t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    left = np.array([250, 150, 30], np.float32)
    right = np.array([120, 200, 255], np.float32)
    return np.broadcast_to((1 - t) * left + t * right, (h, w, 3)).copy()


@dataclass(frozen=True)
class Mark:
    """A watermark design: coverage (HxW, 0..1) and colour (HxWx3)."""

    name: str
    coverage: np.ndarray
    colour: np.ndarray


def shape_coverage(h: int, w: int) -> np.ndarray:
    """Anti-aliased coverage of a solid shape: a filled ellipse over a filled bar."""
    canvas = np.zeros((h, w), np.uint8)
    cv2.ellipse(canvas, (w // 2, int(h * 0.45)), (90, 60), 0, 0, 360, 255, -1, cv2.LINE_AA)
    cv2.rectangle(canvas, (w // 5, int(h * 0.7)), (4 * w // 5, int(h * 0.8)), 255, -1, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255


def shapes(h: int = H, w: int = W) -> list[Mark]:
    """Solid marks of one colour: white and blue."""
    cov = shape_coverage(h, w)
    solid = lambda rgb: np.broadcast_to(np.array(rgb, np.float32), (h, w, 3)).copy()  # noqa: E731
    return [
        Mark("shape white", cov, solid((255, 255, 255))),
        Mark("shape blue", cov, solid((40, 80, 200))),
    ]


def marks(h: int = H, w: int = W) -> list[Mark]:
    text = text_coverage(h, w, "(c) Photo Eraser 2026", 1.1, 2)
    logo = logo_coverage(h, w)
    solid = lambda rgb: np.broadcast_to(np.array(rgb, np.float32), (h, w, 3)).copy()  # noqa: E731
    return [
        Mark("text white", text, solid((255, 255, 255))),
        Mark("text black", text, solid((0, 0, 0))),
        Mark("logo red", logo, solid((220, 30, 40))),
        Mark("logo gradient", logo, gradient_colour(h, w)),
    ]


def stamp(photo: np.ndarray, alpha: np.ndarray, colour: np.ndarray, fmt: str) -> np.ndarray:
    """The photo with the mark blended in, after a PNG (lossless) or JPEG q90 round trip."""
    a = alpha[..., None]
    blended = np.clip(np.rint(a * colour + (1 - a) * photo.astype(np.float32)), 0, 255)
    blended = blended.astype(np.uint8)
    if fmt == "png":
        return blended
    ok, buf = cv2.imencode(".jpg", blended[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def oracle(stamped: np.ndarray, alpha: np.ndarray, colour: np.ndarray, mask: np.ndarray):
    """Inverts with the true alpha and colour where alpha <= 0.9; Telea on the rest."""
    a = alpha[..., None]
    safe = alpha <= ORACLE_MAX_ALPHA
    inverted = (stamped.astype(np.float32) - a * colour) / np.maximum(1 - a, 1e-3)
    out = stamped.copy()
    take = mask & safe
    out[take] = np.clip(np.rint(inverted[take]), 0, 255).astype(np.uint8)
    rest = mask & ~safe
    if rest.any():
        out = OpenCVEngine().inpaint(out, rest)
    return out


def masked_psnr(results, truths, masks) -> float:
    se = sum(
        float(((r.astype(np.float64) - t)[m] ** 2).sum())
        for r, t, m in zip(results, truths, masks, strict=True)
    )
    n = sum(int(m.sum()) * 3 for m in masks)
    return float(10 * np.log10(255**2 / max(se / n, 1e-12)))


def masked_ssim(results, truths, masks) -> float:
    values = []
    for r, t, m in zip(results, truths, masks, strict=True):
        ys, xs = np.nonzero(m)
        y0, y1 = max(0, ys.min() - 8), min(m.shape[0], ys.max() + 9)
        x0, x1 = max(0, xs.min() - 8), min(m.shape[1], xs.max() + 9)
        _, full = structural_similarity(
            r[y0:y1, x0:x1], t[y0:y1, x0:x1], channel_axis=2, data_range=255, full=True
        )
        values.append(float(full.mean(axis=2)[m[y0:y1, x0:x1]].mean()))
    return float(np.mean(values))


@dataclass
class Row:
    mark: str
    alpha: float
    n: int
    fmt: str
    psnr: dict[str, float]
    ssim: dict[str, float]
    share: float

    def targets(self) -> list[tuple[str, bool]]:
        """The issue's targets that apply to this case, and whether each is met."""
        r, t, o = self.psnr["restore"], self.psnr["telea"], self.psnr["oracle"]
        out = [("T3 >= Telea-0.5", r >= t - 0.5)]
        if self.alpha < 1.0 and self.n >= 6:
            out.append(("T2 >= min(Telea+5, oracle-1.5)", r >= min(t + 5.0, o - 1.5)))
        if self.alpha <= 0.5 and self.n >= 8:
            out.append(("T1 >= oracle-1.5", r >= o - 1.5))
        return out


@dataclass
class Batch:
    """One benchmark case: the true photos, the mark's alpha, the mask, the stamped images."""

    truths: list[np.ndarray]
    alpha: np.ndarray
    mask: np.ndarray
    stamped: list[np.ndarray]


def make_batch(mark: Mark, alpha0: float, n: int, fmt: str, seed: int) -> Batch:
    """N different photo crops stamped with ``mark`` at opacity ``alpha0`` (seeded)."""
    rng = np.random.default_rng(seed)
    sources = photos()
    start = int(rng.integers(0, len(sources)))
    truths = [photo_crop(sources[(start + k) % len(sources)], H, W, rng) for k in range(n)]
    alpha = alpha0 * mark.coverage
    mask = cv2.dilate((mark.coverage > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return Batch(truths, alpha, mask, [stamp(t, alpha, mark.colour, fmt) for t in truths])


def run_case(
    mark: Mark,
    alpha0: float,
    n: int,
    fmt: str,
    engine: WatermarkRecoveryEngine,
    seed: int,
    near_oracle: bool = False,
) -> Row:
    """One case restored by each method. ``near_oracle``: also the oracle given an opacity 1 %
    off (the worse of +1 % and -1 %): what a very good estimate from one image can reach."""
    case = make_batch(mark, alpha0, n, fmt, seed)
    truths, alpha, mask, stamped = case.truths, case.alpha, case.mask, case.stamped
    masks = [mask] * n
    # PNG cases are what a PNG upload gives the engine: pixels exactly as stamped.
    restored = engine.restore(stamped, masks, lossless=[fmt == "png"] * n)
    telea = OpenCVEngine().restore(stamped, masks)
    best = [oracle(s, alpha, mark.colour, mask) for s in stamped]
    outputs = {
        "restore": [r.image for r in restored],
        "telea": [r.image for r in telea],
        "oracle": best,
    }
    psnr = {k: masked_psnr(v, truths, masks) for k, v in outputs.items()}
    if near_oracle:
        psnr["oracle 1%"] = min(
            masked_psnr([oracle(s, alpha * f, mark.colour, mask) for s in stamped], truths, masks)
            for f in (1.01, 0.99)
        )
    return Row(
        mark=mark.name,
        alpha=alpha0,
        n=n,
        fmt=fmt,
        psnr=psnr,
        ssim={k: masked_ssim(v, truths, masks) for k, v in outputs.items()},
        share=float(np.mean([r.recovered_share or 0.0 for r in restored])),
    )


def timing(repeats: int, fmt: str) -> dict[str, float]:
    """Seconds to restore 20 different 1920x1080 photos with a ~2% text mark."""
    h, w = 1080, 1920
    sources = photos()
    truths = []
    for k in range(20):
        photo = cv2.resize(sources[k % len(sources)], (w, h), interpolation=cv2.INTER_CUBIC)
        truths.append(np.ascontiguousarray(photo[:, ::-1] if k >= len(sources) else photo))
    coverage = text_coverage(h, w, "(c) Photo Eraser Stock 2026", 2.8, 6)
    mask = cv2.dilate((coverage > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    colour = np.full((h, w, 3), 255, np.float32)
    stamped = [stamp(t, 0.5 * coverage, colour, fmt) for t in truths]
    masks = [mask] * len(stamped)
    lossless = [fmt == "png"] * len(stamped)
    restore, telea = WatermarkRecoveryEngine(fallback=OpenCVEngine()), OpenCVEngine()
    times: dict[str, list[float]] = {"restore": [], "telea": []}
    for i in range(repeats + 1):
        for name, engine in (("telea", telea), ("restore", restore)):
            t0 = time.perf_counter()
            engine.restore(stamped, masks, lossless=lossless)
            if i:  # the first run of each is a warm-up
                times[name].append(time.perf_counter() - t0)
    return {
        "mask_share": float(mask.mean()),
        "restore": statistics.median(times["restore"]),
        "telea": statistics.median(times["telea"]),
    }


def machine() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"load average {load[0]:.2f}; Python {platform.python_version()}, numpy {np.__version__}, "
        f"OpenCV {cv2.__version__}"
    )


def markdown(rows: list[Row], speeds: dict[str, dict[str, float]], command: str) -> str:
    checks = [(name, ok) for row in rows for name, ok in row.targets()]
    summary = []
    for target in sorted({name for name, _ in checks}):
        results = [ok for name, ok in checks if name == target]
        summary.append(f"| {target} | {sum(results)} / {len(results)} |")
    lines = [
        "# `restore` quality benchmark",
        "",
        f"Generated by `{command}` on {machine()}.",
        "",
        "Masked-region PSNR (dB, pooled over the batch) and SSIM (mean over masked pixels) of",
        "the `restore` engine (fallback: OpenCV Telea), Telea alone, and the oracle that knows",
        "alpha and W (inverts where alpha <= 0.9, Telea on the rest). `share` is the mean share",
        "of masked pixels `restore` recovered by inversion (the rest it inpainted). Images:",
        f"{H}x{W} crops of different scikit-image photos; the mask is the mark dilated by 2 px.",
        "",
        "Timing, 20 different 1920x1080 photos, text mark at alpha 0.5, mask "
        f"{speeds['jpeg90']['mask_share'] * 100:.1f}% of the area (median of timed runs after a "
        "warm-up; goal: under 2x):",
        "",
        *(
            f"- {fmt}: `restore` {speed['restore']:.2f} s, Telea one by one "
            f"{speed['telea']:.2f} s, ratio **{speed['restore'] / speed['telea']:.2f}x**"
            for fmt, speed in speeds.items()
        ),
        "",
        "Targets (from the issue), cases meeting them:",
        "",
        "| target | met |",
        "|---|---|",
        *summary,
        "",
        "T1 applies to N >= 8 and alpha <= 0.5; T2 to alpha < 1 and N >= 6; T3 to every case.",
        "",
        *summary_table(rows),
        "",
        "| mark | alpha | N | format | restore PSNR | Telea PSNR | oracle PSNR | restore SSIM "
        "| Telea SSIM | oracle SSIM | share | targets missed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        missed = ", ".join(name.split()[0] for name, ok in r.targets() if not ok) or "-"
        alpha = "opaque" if r.alpha >= 1.0 else f"{r.alpha:.1f}"
        lines.append(
            f"| {r.mark} | {alpha} | {r.n} | {r.fmt} | {r.psnr['restore']:.1f} "
            f"| {r.psnr['telea']:.1f} | {r.psnr['oracle']:.1f} | {r.ssim['restore']:.3f} "
            f"| {r.ssim['telea']:.3f} | {r.ssim['oracle']:.3f} | {r.share:.2f} | {missed} |"
        )
    return "\n".join(lines) + "\n"


def summary_table(rows: list[Row]) -> list[str]:
    """Mean PSNR over the mark designs: restore / Telea / oracle, per format, alpha and N."""
    counts = sorted({r.n for r in rows})
    lines = [
        "Mean masked PSNR over the mark designs, restore / Telea / oracle (dB):",
        "",
        "| format | alpha | " + " | ".join(f"N = {n}" for n in counts) + " |",
        "|---|---|" + "---|" * len(counts),
    ]
    for fmt in FORMATS:
        for alpha in sorted({r.alpha for r in rows}):
            cells = []
            for n in counts:
                sel = [r for r in rows if r.fmt == fmt and r.alpha == alpha and r.n == n]
                if not sel:
                    cells.append("")
                    continue
                mean = {k: float(np.mean([r.psnr[k] for r in sel])) for k in sel[0].psnr}
                cells.append(f"{mean['restore']:.1f} / {mean['telea']:.1f} / {mean['oracle']:.1f}")
            name = "opaque" if alpha >= 1.0 else f"{alpha:.1f}"
            lines.append(f"| {fmt} | {name} | " + " | ".join(cells) + " |")
    return lines


def few_rows(quick: bool = False, only: str = "", base: int = FEW_BASE) -> list[Row]:
    """The one-to-three-image grid: every mark design and the solid shapes, FEW_SEEDS seeds
    (``base``: the seeds' origin; another one gives other photo crops for tuning)."""
    engine = WatermarkRecoveryEngine(fallback=OpenCVEngine())
    designs = marks() + shapes()
    grid = [
        (m, a, n, f, seed, base + 1000 * d + 100 * round(a * 10) + 10 * n + seed)
        for d, m in enumerate(designs)
        for a in FEW_ALPHAS
        for n in FEW_COUNTS
        for f in FORMATS
        for seed in range(FEW_SEEDS)
    ]
    if quick:
        grid = [g for g in grid if g[2] == 1 and g[4] == 0]
    elif only:
        grid = [g for g in grid if only in g[0].name]
    rows = []
    print("| mark | alpha | N | format | seed | restore | telea | oracle | share |")
    for mark, alpha, n, fmt, seed, case_seed in grid:
        row = run_case(mark, alpha, n, fmt, engine, seed=case_seed, near_oracle=n == 1)
        rows.append(row)
        print(
            f"| {mark.name} | {alpha} | {n} | {fmt} | {seed} | {row.psnr['restore']:.1f} "
            f"| {row.psnr['telea']:.1f} | {row.psnr['oracle']:.1f} | {row.share:.2f} |",
            flush=True,
        )
    return rows


def few_clean(base: int = FEW_BASE) -> dict[int, tuple[int, int]]:
    """Per N of FEW_COUNTS: each design's mask over N bare photo crops (nothing to recover: a
    mask over an object), FEW_SEEDS x 2 batches per design and format: (images the engine
    inverted anyway, images). The one-image seeds are those of the first version of this
    count; the others are apart from every marked case's."""
    engine = WatermarkRecoveryEngine(fallback=OpenCVEngine())
    counts = {}
    for n in FEW_COUNTS:
        inverted = total = 0
        for d, mark in enumerate(marks() + shapes()):
            for fmt in FORMATS:
                for seed in range(2 * FEW_SEEDS):
                    first = 10 if n == 1 else 10 * n + 900
                    case = make_batch(mark, 0.0, n, fmt, base + 1000 * d + first + seed)
                    results = engine.restore(
                        case.stamped, [case.mask] * n, lossless=[fmt == "png"] * n
                    )
                    inverted += sum(bool(r.recovered_share) for r in results)
                    total += n
        print(f"N = {n}, no mark under the mask: {inverted} of {total} images inverted anyway")
        counts[n] = (inverted, total)
    return counts


def family(row: Row) -> str:
    """The mark's kind: solid shape, text or logo."""
    return row.mark.split()[0]


def few_targets(rows: list[Row]) -> list[tuple[str, int, int]]:
    """The issue's one-image targets: (target, cases met, cases)."""
    solid = [r for r in rows if family(r) == "shape" and r.n == 1]
    text = [r for r in rows if family(r) == "text" and r.n == 1]
    gain = float(np.mean([r.psnr["restore"] - r.psnr["telea"] for r in text])) if text else 0.0
    ok = lambda rs, f: (sum(f(r) for r in rs), len(rs))  # noqa: E731
    return [
        (
            "N = 1 solid >= Telea + 10",
            *ok(solid, lambda r: r.psnr["restore"] >= r.psnr["telea"] + 10),
        ),
        (
            "N = 1 solid >= oracle - 4",
            *ok(solid, lambda r: r.psnr["restore"] >= r.psnr["oracle"] - 4),
        ),
        (
            "N = 1 solid >= oracle(a +- 1 %) - 4",
            *ok(solid, lambda r: r.psnr["restore"] >= r.psnr["oracle 1%"] - 4),
        ),
        (f"N = 1 text mean >= Telea + 2 (mean gain {gain:+.1f} dB)", int(gain >= 2.0), 1),
        (
            "N = 1 text >= Telea - 0.5",
            *ok(text, lambda r: r.psnr["restore"] >= r.psnr["telea"] - 0.5),
        ),
        (
            "N = 1-3 any >= Telea - 0.5",
            *ok(rows, lambda r: r.psnr["restore"] >= r.psnr["telea"] - 0.5),
        ),
    ]


def few_markdown(rows: list[Row], clean: dict[int, tuple[int, int]] | None = None) -> list[str]:
    """The one-to-three-image section of the report (``clean``: ``few_clean``'s counts)."""
    solid = [r for r in rows if family(r) == "shape" and r.n == 1 and "oracle 1%" in r.psnr]
    lines = [
        "## One to three images",
        "",
        f"Text and logo marks as above plus solid shapes (a filled ellipse over a bar, white and "
        f"blue), alpha {', '.join(str(a) for a in FEW_ALPHAS)}, {FEW_SEEDS} seeds (different photos) "
        "per cell. Cells: mean masked PSNR restore / Telea / oracle (dB), then the worst "
        "restore - Telea of the cell and the mean share recovered.",
        "",
        "Targets (issue 17), cases meeting them:",
        "",
        "| target | met |",
        "|---|---|",
        *(f"| {name} | {met} / {total} |" for name, met, total in few_targets(rows)),
        *(
            [
                f"| N = {n} no mark under the mask: images not inverted | {t - k} / {t} |"
                for n, (k, t) in clean.items()
            ]
            if clean
            else []
        ),
        "",
        "`oracle(a +- 1 %)`: the oracle given an opacity 1 % off (the worse of the two); on "
        "lossless images the oracle is exact up to 8-bit rounding amplified by 1 / (1 - a) "
        "(48-54 dB), which no estimate from one image reaches. N = 1 solid shapes, mean "
        "restore / oracle / oracle(a +- 1 %) (dB): "
        + "; ".join(
            f"{fmt} {a:.1f}: "
            + " / ".join(
                f"{np.mean([r.psnr[k] for r in sel]):.1f}"
                for k in ("restore", "oracle", "oracle 1%")
            )
            for fmt in FORMATS
            for a in FEW_ALPHAS
            if (sel := [r for r in solid if r.fmt == fmt and r.alpha == a])
        )
        + ".",
        "",
        "| mark | format | alpha | " + " | ".join(f"N = {n}" for n in FEW_COUNTS) + " |",
        "|---|---|---|" + "---|" * len(FEW_COUNTS),
    ]
    for kind in ("shape", "text", "logo"):
        for fmt in FORMATS:
            for alpha in FEW_ALPHAS:
                cells = []
                for n in FEW_COUNTS:
                    sel = [
                        r
                        for r in rows
                        if family(r) == kind and r.fmt == fmt and r.alpha == alpha and r.n == n
                    ]
                    if not sel:
                        cells.append("")
                        continue
                    mean = {k: float(np.mean([r.psnr[k] for r in sel])) for k in sel[0].psnr}
                    worst = min(r.psnr["restore"] - r.psnr["telea"] for r in sel)
                    share = float(np.mean([r.share for r in sel]))
                    cells.append(
                        f"{mean['restore']:.1f} / {mean['telea']:.1f} / {mean['oracle']:.1f} "
                        f"({worst:+.1f}, {share:.2f})"
                    )
                lines.append(f"| {kind} | {fmt} | {alpha:.1f} | " + " | ".join(cells) + " |")
    return lines


def figure(path: Path) -> None:
    """Before / Telea / restore / truth for one image of an 8-image batch (logo, alpha 0.5)."""
    mark = marks()[3]
    rng = np.random.default_rng(11)
    sources = photos()
    truths = [photo_crop(sources[k], H, W, rng) for k in range(8)]
    alpha = 0.5 * mark.coverage
    mask = cv2.dilate((mark.coverage > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    stamped = [stamp(t, alpha, mark.colour, "jpeg90") for t in truths]
    restored = WatermarkRecoveryEngine(fallback=OpenCVEngine()).restore(stamped, [mask] * 8)
    telea = OpenCVEngine().inpaint(stamped[0], mask)
    ys, xs = np.nonzero(mask)
    y0, y1 = max(0, ys.min() - 12), min(H, ys.max() + 13)
    x0, x1 = max(0, xs.min() - 12), min(W, xs.max() + 13)
    panels = [stamped[0], telea, restored[0].image, truths[0]]
    labels = ["watermarked (JPEG q90)", "OpenCV Telea", "restore (8 images)", "truth"]
    tiles = []
    for panel, label in zip(panels, labels, strict=True):
        tile = np.ascontiguousarray(panel[y0:y1, x0:x1])
        band = np.full((22, tile.shape[1], 3), 255, np.uint8)
        cv2.putText(band, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.vstack([band, tile]))
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    row = np.hstack([tiles[0], gap, tiles[1], gap, tiles[2], gap, tiles[3]])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


# ---- "mask": "auto": the watermark found in the batch ------------------------------------

DETECT_COUNTS = (2, 3, 4, 8, 12)
DETECT_ALPHAS = (0.3, 0.45, 0.6)
CLEAN_BATCHES = 24
DETECT_SEEDS = {"report": (5000, 9000), "tune": (7000, 11000), "other": (8000, 13000)}
"""First seed of the marked cases and of the clean batches. The detector's thresholds were
tuned on ``tune`` (and checked on ``other``); docs/detect-quality.md reports ``report``."""
BELOW_MINIMUM = DetectParams(min_images=2)
"""The detector as the service runs it, but also on batches below its minimum of images (to
show why it refuses them)."""
MIXED_SCALE = 1.5
"""In a mixed-size batch every third image is this much larger, its mark scaled with it."""


def detect_marks(h: int = H, w: int = W) -> list[Mark]:
    """The restore benchmark's designs (white, black text; red, two-colour logo) plus a
    coloured text."""
    text = text_coverage(h, w, "(c) Photo Eraser 2026", 1.1, 2)
    blue = np.broadcast_to(np.array((40, 90, 230), np.float32), (h, w, 3)).copy()
    return [*marks(h, w), Mark("text blue", text, blue)]


@dataclass
class DetectBatch:
    """Photos (each its own size), the stamped JPEGs, each image's true mask (the mark
    dilated by 2 px) and the true mask in the largest image's frame."""

    truths: list[np.ndarray]
    stamped: list[np.ndarray]
    masks: list[np.ndarray]
    reference: np.ndarray
    footprint: np.ndarray
    """The mark's own anti-aliased footprint (coverage > 0, undilated) in the reference frame."""


def make_detect_batch(
    mark: Mark, alpha0: float, n: int, seed: int, *, mixed: bool, clean: bool = False
) -> DetectBatch:
    """N photo crops carrying ``mark`` at ``alpha0`` (none if ``clean``), each saved as JPEG
    at a quality drawn from 85-92; with ``mixed``, every third one larger (the mark too)."""
    rng = np.random.default_rng(seed)
    sources = photos()
    start = int(rng.integers(0, len(sources)))
    truths, stamped, masks, footprints = [], [], [], []
    for k in range(n):
        scale = MIXED_SCALE if mixed and k % 3 == 1 else 1.0
        h, w = round(H * scale), round(W * scale)
        truth = photo_crop(sources[(start + k) % len(sources)], h, w, rng)
        cover, colour = mark.coverage, mark.colour
        if scale != 1.0:
            cover = cv2.resize(cover, (w, h), interpolation=cv2.INTER_LINEAR)
            colour = cv2.resize(colour, (w, h), interpolation=cv2.INTER_LINEAR)
        a = 0.0 if clean else alpha0 * cover[..., None]
        blended = np.clip(np.rint(a * colour + (1 - a) * truth.astype(np.float32)), 0, 255)
        quality = int(rng.integers(85, 93))
        ok, buf = cv2.imencode(
            ".jpg", blended.astype(np.uint8)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        assert ok
        stamped.append(np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]))
        truths.append(truth)
        masks.append(cv2.dilate((cover > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
        footprints.append(cover > 0)
    reference = max(masks, key=lambda m: m.size)
    footprint = max(footprints, key=lambda m: m.size)
    return DetectBatch(truths, stamped, masks, reference, footprint)


@dataclass
class DetectRow:
    mark: str
    alpha: float
    n: int
    mixed: bool
    found: bool
    precision: float
    recall: float
    iou: float
    seconds: float
    psnr: dict[str, float]
    """Restored with the true mask / the detected one (N >= 4), over both masks' pixels."""
    ssim: dict[str, float]
    exact_recall: float = 0.0
    """Recall and IoU against the mark's exact footprint (coverage > 0, not dilated)."""
    exact_iou: float = 0.0


def run_detect_case(
    mark: Mark,
    alpha0: float,
    n: int,
    mixed: bool,
    engine: WatermarkRecoveryEngine | None,
    seed: int,
) -> DetectRow:
    case = make_detect_batch(mark, alpha0, n, seed, mixed=mixed)
    t0 = time.perf_counter()
    found = detect_watermark(case.stamped, BELOW_MINIMUM)
    seconds = time.perf_counter() - t0
    truth = case.reference
    det = found.mask if found.mask is not None else np.zeros_like(truth)
    both = int((det & truth).sum())
    precision = both / max(1, int(det.sum())) if found.found else 0.0
    recall = both / max(1, int(truth.sum()))
    iou = both / max(1, int((det | truth).sum()))
    inside = int((det & case.footprint).sum())
    exact_recall = inside / max(1, int(case.footprint.sum()))
    exact_iou = inside / max(1, int((det | case.footprint).sum()))
    psnr: dict[str, float] = {}
    ssim: dict[str, float] = {}
    if n >= 4 and engine is not None:
        detected = [fit_mask(det, *m.shape) for m in case.masks]
        union = [d | m for d, m in zip(detected, case.masks, strict=True)]
        with_truth = [r.image for r in engine.restore(case.stamped, case.masks)]
        with_found = (
            [r.image for r in engine.restore(case.stamped, detected)]
            if found.found
            else case.stamped  # nothing found: the task fails, the images stay as they are
        )
        for name, out in (("true mask", with_truth), ("detected", with_found)):
            psnr[name] = masked_psnr(out, case.truths, union)
            ssim[name] = masked_ssim(out, case.truths, union)
            # Over the mark's own pixels only: how well the mark itself was removed.
            psnr[name + " (mark)"] = masked_psnr(out, case.truths, case.masks)
    return DetectRow(
        mark.name,
        alpha0,
        n,
        mixed,
        found.found,
        precision,
        recall,
        iou,
        seconds,
        psnr,
        ssim,
        exact_recall,
        exact_iou,
    )


def clean_detections(n: int, batches: int, seed: int) -> int:
    """Batches of ``n`` unmarked photos (JPEG 85-92, half of them mixed sizes) in which a
    mark was found."""
    mark = detect_marks()[0]
    return sum(
        detect_watermark(
            make_detect_batch(mark, 0.0, n, seed + b, mixed=b % 2 == 1, clean=True).stamped,
            BELOW_MINIMUM,
        ).found
        for b in range(batches)
    )


def detect_timing(repeats: int) -> dict[str, float]:
    """Seconds to detect the mark in 20 different 1920x1080 photos (decoded), one thread,
    beside decoding their JPEG q90 files (the service's decoder), interleaved; and the IoU
    found there."""
    from photo_eraser.imaging import ImageLimits, decode_image

    h, w = 1080, 1920
    sources = photos()
    coverage = text_coverage(h, w, "(c) Photo Eraser Stock 2026", 2.8, 6)
    colour = np.full((h, w, 3), 255, np.float32)
    files, stamped = [], []
    for k in range(20):
        photo = cv2.resize(sources[k % len(sources)], (w, h), interpolation=cv2.INTER_CUBIC)
        photo = np.ascontiguousarray(photo[:, ::-1] if k >= len(sources) else photo)
        image = stamp(photo, 0.5 * coverage, colour, "png")
        ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        files.append(buf.tobytes())
        stamped.append(np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]))
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    limits = ImageLimits()
    times: dict[str, list[float]] = {"detect": [], "decode": [], "detect_cpu": [], "decode_cpu": []}
    try:
        for i in range(repeats + 1):
            t0, c0 = time.perf_counter(), time.process_time()
            for f in files:
                decode_image(f, limits)
            t1, c1 = time.perf_counter(), time.process_time()
            found = detect_watermark(stamped)
            t2, c2 = time.perf_counter(), time.process_time()
            if i:  # the first run of each is a warm-up
                times["decode"].append(t1 - t0)
                times["detect"].append(t2 - t1)
                times["decode_cpu"].append(c1 - c0)
                times["detect_cpu"].append(c2 - c1)
    finally:
        cv2.setNumThreads(threads)
    truth = cv2.dilate((coverage > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    det = found.mask if found.mask is not None else np.zeros_like(truth)
    return {
        **{k: statistics.median(v) for k, v in times.items()},
        "iou": float((det & truth).sum() / max(1, (det | truth).sum())),
        "mask_share": float(truth.mean()),
    }


def print_detect_timing(speed: dict[str, float]) -> None:
    print(
        f"timing: detect {speed['detect']:.2f} s (cpu {speed['detect_cpu']:.2f}), "
        f"decode {speed['decode']:.2f} s (cpu {speed['decode_cpu']:.2f}), "
        f"IoU {speed['iou']:.2f}"
    )


def detect_markdown(
    rows: list[DetectRow], clean: dict[int, tuple[int, int]], speed: dict[str, float], command: str
) -> str:
    counts = sorted({r.n for r in rows})
    lines = [
        '# `"mask": "auto"`: detection benchmark',
        "",
        f"Generated by `{command}` on {machine()}.",
        "",
        "Each case: N different crops of scikit-image photos carrying one mark (the designs of",
        f"[restore-quality.md](restore-quality.md) plus a blue text), {H}x{W} pixels, each saved",
        "as JPEG at a quality drawn from 85-92; in the `mixed` cases every third image is 1.5x",
        "larger, its mark scaled with it. The truth is the mark's support dilated by 2 px (the",
        "mask the restore benchmark paints), in the largest image's frame; precision, recall",
        "and IoU of the detected mask against it (0 when nothing was found). Clean batches:",
        "the same photos without a mark (half of them mixed sizes). Beside it, recall and IoU",
        "against the mark's exact footprint (every pixel it touches, coverage > 0, not dilated):",
        "a perfect footprint widened by 1 px scores 0.75 (text) and 0.83 (logo) against the",
        "dilated truth, widened by a 2 px disc 0.95; the footprint itself 0.56 and 0.71; the",
        "truth eroded by 1 px 0.83 and 0.86, shifted by 1 px 0.93 and 0.94 (what a one-pixel",
        "error along the outline costs); the visible part (coverage > 0.3) widened by the",
        "truth's 2 px square 0.95 and 0.92 (about the ceiling where JPEG hides the faint fringe).",
        "",
        "Timing: 20 different 1920x1080 photos with a white text mark at alpha 0.5 "
        f"({speed['mask_share'] * 100:.1f}% of the area), already decoded, one thread; beside "
        "it, decoding their JPEG q90 files with the service's decoder (median of the timed runs "
        "after a warm-up):",
        "",
        f"- detection **{speed['detect']:.2f} s** for 20 images ({speed['detect_cpu']:.2f} s "
        f"of CPU time; IoU {speed['iou']:.2f}); decoding the 20 files {speed['decode']:.2f} s "
        f"({speed['decode_cpu']:.2f} s of CPU time): ratio {speed['detect'] / speed['decode']:.2f}",
        "",
        "Per N, over every design, alpha and size mix (found: batches where a mark was found):",
        "",
        "PSNR and SSIM of the restored images (the `restore` engine) with the true mask and with "
        "the detected one, over the pixels of both masks (an unmarked pixel the detected mask "
        "takes in and the engine changes counts) and, in brackets, over the true mask only (how "
        "well the mark itself was removed); where nothing was found, the images count as left "
        "as they are (the task fails and changes nothing):",
        "",
        "| N | found | precision | recall | IoU (mean) | IoU (min of found) | footprint recall "
        "| footprint IoU | clean batches with a detection | PSNR true mask | PSNR detected "
        "| SSIM true / detected |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        sel = [r for r in rows if r.n == n]
        hit = [r for r in sel if r.found]
        low = f"{min(r.iou for r in hit):.2f}" if hit else "-"
        restored = "| - | - | - |"
        if sel[0].psnr:
            pt = np.mean([r.psnr["true mask"] for r in sel])
            pd = np.mean([r.psnr["detected"] for r in sel])
            st = np.mean([r.ssim["true mask"] for r in sel])
            sd = np.mean([r.ssim["detected"] for r in sel])
            mt = np.mean([r.psnr["true mask (mark)"] for r in sel])
            md = np.mean([r.psnr["detected (mark)"] for r in sel])
            restored = f"| {pt:.1f} ({mt:.1f}) | {pd:.1f} ({md:.1f}) | {st:.3f} / {sd:.3f} |"
        lines.append(
            f"| {n} | {len(hit)} / {len(sel)} | {np.mean([r.precision for r in sel]):.2f} "
            f"| {np.mean([r.recall for r in sel]):.2f} | {np.mean([r.iou for r in sel]):.2f} "
            f"| {low} | {np.mean([r.exact_recall for r in sel]):.2f} "
            f"| {np.mean([r.exact_iou for r in sel]):.2f} | {clean[n][0]} / {clean[n][1]} {restored}"
        )
    lines += [
        "",
        "Mean IoU per design and N:",
        "",
        "| design | " + " | ".join(f"N = {n}" for n in counts) + " |",
        "|---|" + "---|" * len(counts),
    ]
    for name in dict.fromkeys(r.mark for r in rows):
        cells = [np.mean([r.iou for r in rows if r.mark == name and r.n == n]) for n in counts]
        lines.append(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    lines += [
        "",
        "Every case (PSNR in dB over the pixels of both masks, pooled over the batch; "
        "restoration with the `restore` engine, fallback Telea):",
        "",
        "| design | alpha | N | sizes | found | precision | recall | IoU | detect s "
        "| PSNR true mask | PSNR detected |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pt = f"{r.psnr['true mask']:.1f}" if r.psnr else "-"
        pd = f"{r.psnr['detected']:.1f}" if r.psnr else "-"
        lines.append(
            f"| {r.mark} | {r.alpha:.2f} | {r.n} | {'mixed' if r.mixed else 'one'} "
            f"| {'yes' if r.found else 'no'} | {r.precision:.2f} | {r.recall:.2f} "
            f"| {r.iou:.2f} | {r.seconds:.2f} | {pt} | {pd} |"
        )
    return "\n".join(lines) + "\n"


def detect_bench(
    quick: bool,
    repeats: int,
    output: Path | None,
    seeds: str = "report",
    clean_only: int = 0,
    restore: bool = True,
) -> None:
    """The detection benchmark: every design, alpha, N and size mix; clean batches; timing."""
    marked_seed, clean_seed = DETECT_SEEDS[seeds]
    if clean_only:
        for n in DETECT_COUNTS:
            if n >= DetectParams().min_images:
                hits = clean_detections(n, clean_only, clean_seed + 100 * n)
                print(
                    f"N = {n}: {hits} of {clean_only} clean batches with a detection "
                    f"(seeds {clean_seed + 100 * n}..{clean_seed + 100 * n + clean_only - 1})"
                )
        print(machine())
        return
    engine = WatermarkRecoveryEngine(fallback=OpenCVEngine()) if restore else None
    designs = detect_marks()
    alphas = DETECT_ALPHAS[::2] if quick else DETECT_ALPHAS
    rows = []
    print("| design | alpha | N | sizes | found | P | R | IoU | s | PSNR true | PSNR detected |")
    for k, (mark, alpha, n, mixed) in enumerate(
        (m, a, n, x) for n in DETECT_COUNTS for m in designs for a in alphas for x in (False, True)
    ):
        row = run_detect_case(mark, alpha, n, mixed, engine, seed=marked_seed + k)
        rows.append(row)
        pt = f"{row.psnr['true mask']:.1f}" if row.psnr else "-"
        pd = f"{row.psnr['detected']:.1f}" if row.psnr else "-"
        print(
            f"| {mark.name} | {alpha} | {n} | {'mixed' if mixed else 'one'} | {row.found} "
            f"| {row.precision:.2f} | {row.recall:.2f} | {row.iou:.2f} | {row.seconds:.2f} "
            f"| {pt} | {pd} |",
            flush=True,
        )
    batches = 2 if quick else CLEAN_BATCHES
    clean = {
        n: (clean_detections(n, batches, clean_seed + 100 * n), batches) for n in DETECT_COUNTS
    }
    print("clean batches with a detection:", clean)
    speed = detect_timing(1 if quick else repeats)
    print_detect_timing(speed)
    print(machine())
    target = output or (None if quick or seeds != "report" else Path("docs/detect-quality.md"))
    command = ".venv/bin/python bench/quality.py --detect" + (" --quick" if quick else "")
    if seeds != "report":
        command += f" --seeds {seeds}"
    report = detect_markdown(rows, clean, speed, command)
    if target:
        target.write_text(report)
        print(f"wrote {target}")
    else:  # the summary tables, without the case list printed above
        print(report.split("\nEvery case")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few cases; print only")
    parser.add_argument("--output", type=Path, help="markdown file (default: full run only)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (after a warm-up)")
    parser.add_argument("--figure", type=Path, help="write the before/after picture and exit")
    parser.add_argument(
        "--detect", action="store_true", help='the "mask": "auto" detection benchmark instead'
    )
    parser.add_argument(
        "--seeds",
        choices=sorted(DETECT_SEEDS),
        default="report",
        help="with --detect: the reporting seeds, or those the thresholds were tuned on",
    )
    parser.add_argument(
        "--clean-only",
        type=int,
        default=0,
        metavar="BATCHES",
        help="with --detect: only count detections in this many clean batches per N",
    )
    parser.add_argument(
        "--no-restore",
        action="store_true",
        help="with --detect: the detection figures only (no restoration with either mask)",
    )
    parser.add_argument(
        "--detect-timing-only",
        action="store_true",
        help="with --detect: only the timing (20 full-HD images), printed",
    )
    parser.add_argument("--few", action="store_true", help="only the one-to-three-image grid")
    parser.add_argument("--only", default="", help="with --few: only marks whose name has this")
    parser.add_argument(
        "--dev", action="store_true", help="with --few: the tuning seeds, not the reported ones"
    )
    args = parser.parse_args()
    logging.disable(logging.INFO)
    if args.figure:
        figure(args.figure)
        return
    if args.detect and args.detect_timing_only:
        print_detect_timing(detect_timing(args.repeats))
        print(machine())
        return
    if args.detect:
        detect_bench(
            args.quick, args.repeats, args.output, args.seeds, args.clean_only, not args.no_restore
        )
        return
    if args.few:
        base = DEV_BASE if args.dev else FEW_BASE
        few = few_rows(quick=args.quick, only=args.only, base=base)
        clean = None if args.quick or args.only else few_clean(base)
        print("\n".join(few_markdown(few, clean)))
        print(machine())
        return
    all_marks = marks()
    if args.quick:
        grid = [
            (m, a, n, f)
            for m in all_marks[::3]
            for a in (0.5, 1.0)
            for n in (1, 8)
            for f in FORMATS
        ]
    else:
        grid = [(m, a, n, f) for m in all_marks for a in ALPHAS for n in COUNTS for f in FORMATS]
    engine = WatermarkRecoveryEngine(fallback=OpenCVEngine())
    rows = []
    print("| mark | alpha | N | format | restore | telea | oracle | share | missed |")
    for k, (mark, alpha, n, fmt) in enumerate(grid):
        row = run_case(mark, alpha, n, fmt, engine, seed=1000 + k)
        rows.append(row)
        missed = ",".join(name.split()[0] for name, ok in row.targets() if not ok) or "-"
        print(
            f"| {mark.name} | {alpha} | {n} | {fmt} | {row.psnr['restore']:.1f} "
            f"| {row.psnr['telea']:.1f} | {row.psnr['oracle']:.1f} | {row.share:.2f} | {missed} |",
            flush=True,
        )
    few = few_rows(quick=args.quick)
    clean = None if args.quick else few_clean()
    speeds = {fmt: timing(1 if args.quick else args.repeats, fmt) for fmt in FORMATS[::-1]}
    for fmt, speed in speeds.items():
        print(
            f"timing {fmt}: restore {speed['restore']:.2f} s, telea {speed['telea']:.2f} s, "
            f"ratio {speed['restore'] / speed['telea']:.2f}x, "
            f"mask {speed['mask_share'] * 100:.1f}%"
        )
    print(machine())
    output = args.output or (None if args.quick else Path("docs/restore-quality.md"))
    if output:
        command = ".venv/bin/python bench/quality.py" + (" --quick" if args.quick else "")
        output.write_text(
            markdown(rows, speeds, command) + "\n" + "\n".join(few_markdown(few, clean)) + "\n"
        )
        print(f"wrote {output}")


if __name__ == "__main__":
    main()
