"""Fills where pixels must be invented: Telea, PatchMatch and ``auto``'s texture-aware choice.

    .venv/bin/python bench/fills.py                 # table + timing -> printed
    .venv/bin/python bench/fills.py --output docs/fills-quality.md
    .venv/bin/python bench/fills.py --sweep         # the rule's threshold, per component
    .venv/bin/python bench/fills.py --figure docs/img/fills-example.png

Cases from photos bundled with scikit-image (nothing is downloaded; the 16 photos and
textures of ``bench/quality.py``): a 384x512 crop of each photo gets five opaque masks in
turn: three blobs (ellipses 24-80 px, object removal), thick text, thin text, tightly masked
text and a 3 px scribble. The masked area is painted (white text, grey blobs), the image goes
through JPEG q90 (halos reach just past the mask, as in uploads), and each method fills it:

* ``telea``: ``OpenCVEngine`` (OpenCV Telea, radius 3);
* ``patchmatch``: ``PatchMatchEngine`` (pypatchmatch, patch radius 3, on crops);
* ``fill``: ``TextureAwareFill``, what ``auto`` uses without LaMa: per connected group of the
  mask, Telea where the ring 3 to 10 px around it is smooth, else PatchMatch.

Scores per connected group of the mask, pooled over the groups of a row: PSNR (pooled MSE),
SSIM (the SSIM map averaged over the masked pixels) and the texture ratio: the mean Sobel
gradient magnitude of the fill over the masked pixels divided by the truth's (1.0: as much
detail as the photo had; Telea's smear gives 0.4-0.7). A group is ``textured`` when the ring
texture of the truth is at least the rule's threshold, else ``smooth``; the sweep picks each
group's engine as the rule does, by the ring texture of the input. PSNR rewards blur: a
smear that averages the texture has a lower squared error than a plausible texture that is
out of phase with the truth, so it is read beside the texture ratio and the figure.

Timing: one 1920x1080 photo (grass, then brick, coffee) with a 2% text mask and with three
blobs (1.5%), each method interleaved, median of the timed runs after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import code_line, load_average, machine_line, version  # noqa: E402
from photo_eraser.engines.fill import (  # noqa: E402
    SMOOTH_TEXTURE,
    THIN_GROUP,
    TextureAwareFill,
    group_width,
    ring_around,
)
from photo_eraser.engines.opencv import OpenCVEngine  # noqa: E402
from photo_eraser.engines.patchmatch import PatchMatchEngine  # noqa: E402
from quality import photo_crop, photos  # noqa: E402

H, W = 384, 512
KINDS = ("blob", "text thick", "text thin", "text tight", "scribble")
METHODS = ("telea", "patchmatch", "fill")
SWEEP = (0.0, 4.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0, 24.0, 32.0, 1e9)


def engines() -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    telea, patchmatch = OpenCVEngine(), PatchMatchEngine()
    fill = TextureAwareFill(telea, patchmatch)
    return {
        "telea": telea.inpaint,
        "patchmatch": patchmatch.inpaint,
        "fill": lambda image, mask: fill.restore([image], [mask])[0].image,
    }


def _text(h: int, w: int, text: str, scale: float, thickness: int, y: float) -> np.ndarray:
    canvas = np.zeros((h, w), np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    cv2.putText(canvas, text, ((w - tw) // 2, int(h * y) + th // 2), font, scale, 1, thickness)
    return canvas > 0


def mask_of(kind: str, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(paint, mask)``: the opaque mark and the mask that covers it (its dilation)."""
    if kind == "blob":
        paint = np.zeros((h, w), np.uint8)
        for _ in range(3):
            centre = (int(rng.integers(w // 8, w - w // 8)), int(rng.integers(h // 6, h - h // 6)))
            axes = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
            cv2.ellipse(paint, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        mark = paint > 0
        grow = 2
    elif kind == "scribble":
        paint = np.zeros((h, w), np.uint8)
        points = rng.integers([20, 20], [w - 20, h - 20], size=(6, 2)).astype(np.int32)
        cv2.polylines(paint, [points], False, 1, 3)
        return paint > 0, paint > 0
    else:
        scale, thickness, grow = {
            "text thick": (1.6, 5, 2),
            "text thin": (1.0, 2, 2),
            "text tight": (1.2, 2, 1),
        }[kind]
        mark = _text(h, w, "(c) Photo Eraser 26", scale, thickness, float(rng.uniform(0.3, 0.7)))
    size = 2 * grow + 1
    mask = cv2.dilate(mark.astype(np.uint8), np.ones((size, size), np.uint8)) > 0
    return mark, mask


def stamp(truth: np.ndarray, mark: np.ndarray, kind: str) -> np.ndarray:
    """The photo with an opaque mark (white text, grey objects), through JPEG q90."""
    out = truth.copy()
    out[mark] = (128, 128, 128) if kind == "blob" else (255, 255, 255)
    ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def gradient(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return np.hypot(gx, gy)


@dataclass
class Score:
    """Sums over the masked pixels of some groups, for one method."""

    pixels: int = 0
    squared: float = 0.0
    ssim: float = 0.0
    grad: float = 0.0
    truth_grad: float = 0.0
    seconds: float = 0.0

    def add(self, other: Score) -> None:
        for name in ("pixels", "squared", "ssim", "grad", "truth_grad", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def psnr(self) -> float:
        mse = self.squared / max(1, 3 * self.pixels)
        return float(10 * np.log10(255**2 / max(mse, 1e-12)))

    @property
    def mean_ssim(self) -> float:
        return self.ssim / max(1, self.pixels)

    @property
    def ratio(self) -> float:
        return self.grad / max(self.truth_grad, 1e-9)


@dataclass
class Group:
    """One connected group of a case's mask: its kind, texture and each method's score."""

    kind: str
    texture: float
    """The rule's texture statistic on the true photo: the row's class."""
    seen: float
    """The same on the input (JPEG halos and all): what the rule decides by."""
    width: float
    pixels: int = 0
    thin: float = 0.0
    """``group_width``: the largest distance of a pixel to the group's border (the fill's rule
    sends groups at most ``THIN_GROUP`` wide to Telea)."""
    scores: dict[str, Score] = field(default_factory=dict)


def ring_texture(truth_grad: np.ndarray, own: np.ndarray, mask: np.ndarray) -> float:
    """The rule's texture statistic, measured on the true photo."""
    ring = ring_around(own, mask)
    return float(truth_grad[ring].mean()) if ring.any() else 0.0


def run_case(truth: np.ndarray, kind: str, rng: np.random.Generator, fills) -> list[Group]:  # type: ignore[no-untyped-def]
    mark, mask = mask_of(kind, *truth.shape[:2], rng)
    stamped = stamp(truth, mark, kind)
    truth_grad = gradient(truth)
    stamped_grad = gradient(stamped)
    outputs, seconds = {}, {}
    for name, fill in fills.items():
        start = time.perf_counter()
        outputs[name] = fill(stamped, mask)
        seconds[name] = time.perf_counter() - start
    maps = {}
    grads = {}
    for name, out in outputs.items():
        _, full = structural_similarity(out, truth, channel_axis=2, data_range=255, full=True)
        maps[name] = full.mean(axis=2)
        grads[name] = gradient(out)
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    total = int(mask.sum())
    groups = []
    for label in range(1, count):
        own = labels == label
        n = int(own.sum())
        # Mean stroke width: area over half the perimeter (a strip of width w gives w).
        contours, _ = cv2.findContours(
            own.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        perimeter = sum(cv2.arcLength(c, True) for c in contours)
        group = Group(
            kind,
            ring_texture(truth_grad, own, mask),
            ring_texture(stamped_grad, own, mask),
            2 * n / max(perimeter, 1.0),
            n,
            group_width(own),
        )
        for name, out in outputs.items():
            diff = out[own].astype(np.float64) - truth[own]
            group.scores[name] = Score(
                pixels=n,
                squared=float((diff**2).sum()),
                ssim=float(maps[name][own].sum()),
                grad=float(grads[name][own].sum()),
                truth_grad=float(truth_grad[own].sum()),
                seconds=seconds[name] * n / total,
            )
        groups.append(group)
    return groups


def collect(seed: int = 0) -> list[Group]:
    rng = np.random.default_rng(seed)
    fills = engines()
    groups = []
    for photo in photos():
        truth = photo_crop(photo, H, W, rng)
        for kind in KINDS:
            groups += run_case(truth, kind, rng, fills)
    return groups


def pooled(groups: list[Group], method: str) -> Score:
    total = Score()
    for group in groups:
        total.add(group.scores[method])
    return total


def table(groups: list[Group], threshold: float) -> list[str]:
    lines = [
        f"| mask | surroundings | groups | {' | '.join(f'{m} PSNR / SSIM / texture' for m in METHODS)} |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for kind in (*KINDS, "all"):
        for label, pick in (
            ("smooth", lambda g: g.texture < threshold),
            ("textured", lambda g: g.texture >= threshold),
            ("all", lambda g: True),
        ):
            sel = [g for g in groups if (kind == "all" or g.kind == kind) and pick(g)]
            if not sel:
                continue
            cells = []
            for method in METHODS:
                s = pooled(sel, method)
                cells.append(f"{s.psnr:.2f} / {s.mean_ssim:.3f} / {s.ratio:.2f}")
            lines.append(f"| {kind} | {label} | {len(sel)} | " + " | ".join(cells) + " |")
    return lines


def sweep(groups: list[Group]) -> list[str]:
    """The choice at each threshold, from the per-group Telea and PatchMatch scores."""
    lines = [
        "| threshold | groups to Telea | PSNR all | texture all | PSNR textured | texture textured "
        "| PSNR smooth | texture smooth | fill time vs PatchMatch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pm_time = pooled(groups, "patchmatch").seconds
    for threshold in SWEEP:
        picked = []
        for g in groups:
            picked.append((g, g.scores["telea" if g.seen < threshold else "patchmatch"]))

        def score(sel: list[tuple[Group, Score]]) -> Score:
            s = Score()
            for _, one in sel:
                s.add(one)
            return s

        every = score(picked)
        textured = score([p for p in picked if p[0].texture >= SMOOTH_TEXTURE])
        smooth = score([p for p in picked if p[0].texture < SMOOTH_TEXTURE])
        telea_share = sum(g.seen < threshold for g in groups) / len(groups)
        name = "never" if threshold == 0 else "always" if threshold > 1e8 else f"{threshold:g}"
        lines.append(
            f"| {name} | {telea_share:.0%} | {every.psnr:.2f} | {every.ratio:.2f} "
            f"| {textured.psnr:.2f} | {textured.ratio:.2f} | {smooth.psnr:.2f} "
            f"| {smooth.ratio:.2f} | {every.seconds / pm_time:.2f} |"
        )
    return lines


THIN_SWEEP = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0)


def thin_sweep(groups: list[Group]) -> list[str]:
    """The width rule (``THIN_GROUP``) on these masks: groups at most that wide go to Telea,
    the others by texture. Which groups move, and what that does to their scores."""
    lines = [
        "| width <= | textured groups to Telea (by kind) | moved groups, Telea PSNR / SSIM / texture "
        "| moved groups, PatchMatch PSNR / SSIM / texture | all textured, the rule's PSNR / SSIM / texture |",
        "|---|---|---|---|---|",
    ]
    textured = [g for g in groups if g.seen >= SMOOTH_TEXTURE]
    for step in THIN_SWEEP:
        moved = [g for g in textured if g.thin <= step]
        kinds = ", ".join(f"{k} {sum(g.kind == k for g in moved)}" for k in KINDS)
        if moved:
            kinds += f"; median {statistics.median(g.pixels for g in moved):.0f} px"
        rule = Score()
        for g in textured:
            rule.add(g.scores["telea" if g.thin <= step else "patchmatch"])
        cells = []
        for method in ("telea", "patchmatch"):
            s = pooled(moved, method) if moved else None
            cells.append("-" if s is None else f"{s.psnr:.2f} / {s.mean_ssim:.3f} / {s.ratio:.2f}")
        lines.append(
            f"| {step:g} | {len(moved)} of {len(textured)} ({kinds}) | {cells[0]} | {cells[1]} "
            f"| {rule.psnr:.2f} / {rule.mean_ssim:.3f} / {rule.ratio:.2f} |"
        )
    return lines


def timing(repeats: int) -> list[str]:
    """Seconds per 1920x1080 image, each method interleaved, median of ``repeats`` runs."""
    h, w = 1080, 1920
    sources = photos()
    fills = engines()
    lines = ["| photo | mask | share | " + " | ".join(METHODS) + " |", "|---|---|---|" + "---|" * 3]
    by_name = {"grass": 11, "brick": 10, "coffee": 1}  # indexes in quality.photos()
    for photo_name, index in by_name.items():
        truth = cv2.resize(sources[index], (w, h), interpolation=cv2.INTER_CUBIC)
        rng = np.random.default_rng(5)
        text = _text(h, w, "(c) Photo Eraser Stock 2026", 2.8, 6, 0.62)
        text = cv2.dilate(text.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        blobs = np.zeros((h, w), np.uint8)
        for _ in range(3):
            centre = (int(rng.integers(200, w - 200)), int(rng.integers(150, h - 150)))
            cv2.ellipse(blobs, centre, (90, 60), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        for mask_name, mask in (("text", text), ("3 blobs", blobs > 0)):
            stamped = stamp(truth, mask, "blob")
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            for run in range(repeats + 1):
                for name in METHODS:
                    start = time.perf_counter()
                    fills[name](stamped, mask)
                    if run:  # the first run warms up
                        times[name].append(time.perf_counter() - start)
            cells = [f"{statistics.median(times[m]):.2f} s" for m in METHODS]
            lines.append(
                f"| {photo_name} | {mask_name} | {mask.mean():.1%} | " + " | ".join(cells) + " |"
            )
    return lines


def figure(path: Path) -> None:
    """Input / Telea / PatchMatch / fill / truth: text on grass, blobs on brick, a scribble on
    gravel, thin text on coffee (indexes in ``quality.photos()``)."""
    sources = photos()
    fills = engines()
    rows = []
    cases = ((11, "text thick", 3), (10, "blob", 4), (12, "scribble", 5), (1, "text thin", 2))
    for index, kind, seed in cases:
        rng = np.random.default_rng(seed)
        truth = photo_crop(sources[index], H, W, rng)
        mark, mask = mask_of(kind, H, W, rng)
        stamped = stamp(truth, mark, kind)
        ys, xs = np.nonzero(mask)
        y0, y1 = max(0, ys.min() - 16), min(H, ys.max() + 17)
        x0, x1 = max(0, xs.min() - 16), min(W, xs.max() + 17)
        x1 = min(x1, x0 + 360)  # one stretch of the line is enough to see the texture
        panels = [stamped, *(fills[m](stamped, mask) for m in METHODS), truth]
        labels = ["input (JPEG q90)", "Telea", "PatchMatch", "auto's fill", "truth"]
        tiles = []
        for panel, label in zip(panels, labels, strict=True):
            tile = np.ascontiguousarray(panel[y0:y1, x0:x1])
            band = np.full((22, tile.shape[1], 3), 255, np.uint8)
            cv2.putText(
                band, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
            )
            tiles.append(np.vstack([band, tile]))
        gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
        row = tiles[0]
        for tile in tiles[1:]:
            row = np.hstack([row, gap, tile])
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, 8), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.vstack(padded)).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--sweep", action="store_true", help="print the threshold sweep only")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (after a warm-up)")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--figure", type=Path, help="write the before/after picture and exit")
    args = parser.parse_args()
    if args.figure:
        figure(args.figure)
        return
    command = "bench/fills.py " + " ".join(sys.argv[1:])
    out = [
        f"Measured by `.venv/bin/python {command.strip()}`",
        f"{machine_line()}; load average {load_average()} at the start",
        f"{code_line()}; pypatchmatch {version('pypatchmatch')}, opencv {version('opencv-python-headless')}",
        "",
    ]
    groups = collect()
    if args.sweep:
        out += sweep(groups)
        out += ["", f"The width rule on these masks (now {THIN_GROUP:g}):", ""]
        out += thin_sweep(groups)
    else:
        out += [f"Quality per mask kind (threshold {SMOOTH_TEXTURE:g}):", ""]
        out += table(groups, SMOOTH_TEXTURE)
        out += ["", "The rule's threshold (per group: Telea below it, PatchMatch above):", ""]
        out += sweep(groups)
        out += ["", f"The width rule on these masks (now {THIN_GROUP:g}; bench/residue.py):", ""]
        out += thin_sweep(groups)
        if not args.no_timing:
            out += ["", "Seconds per 1920x1080 image:", ""]
            out += timing(args.repeats)
    out += ["", f"load average {load_average()} at the end"]
    text = "\n".join(out)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
