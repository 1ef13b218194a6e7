"""Fills of ``restore``'s residue: the masked pixels it could not invert, handed to its fallback.

    .venv/bin/python bench/residue.py --alphas 0.5 --output docs/fills-residue.md
    .venv/bin/python bench/residue.py                    # all opacities (0.3, 0.5, 0.7)
    .venv/bin/python bench/residue.py --only-task        # the 1080p task batch only (~1 min)
    .venv/bin/python bench/residue.py --only-task --task-size 12mp   # the same batch at 4000x3000
    .venv/bin/python bench/residue.py --quick --thins 0,3  # a few batches, two rules

On a batch with a semi-transparent mark ``restore`` inverts most of the mask and leaves small
groups scattered inside the recovered area (mark edges where the matte is uncertain, pixels
whose inversion was not confident). Those groups are not what ``bench/fills.py`` measured the
fill rule on (masks as users paint them: blobs, text, scribbles): they are small and the
pixels around them are recovered ones. This bench takes that residue as it really is:

* batches with known truth from ``bench/quality.py`` (scikit-image photos, 384x512 crops,
  eight images, text/logo/solid marks of alpha 0.3-0.7, white, black, red, blue or a colour
  gradient, PNG or JPEG q90), with the mask as the mark's support dilated by 2 px (``tight``)
  or as its bounding box grown by 12 px (``box``);
* the ``bench/task.py`` batch: 20 photos of 1920x1080, "(c) AGENCY" at alpha 0.45, JPEG q90,
  box mask (what the integrator's throughput runs use; ``--no-task`` leaves it out);

runs ``WatermarkRecoveryEngine`` with a fallback that records what it is handed (the images
with the recovered pixels written in, and the masks left to fill), then fills those with:

* ``telea``: ``OpenCVEngine``; ``patchmatch``: ``PatchMatchEngine``;
* ``fill w<=k``: ``TextureAwareFill`` with ``thin=k``: groups at most k px wide to Telea, the
  others by the texture around them (``w<=0``: texture alone, the rule before this bench).

The fills are run whole, per threshold, rather than composed from the two engines' per-group
results: Telea filling the thin groups first leaves PatchMatch crops with fewer holes, which
changes PatchMatch's own groups (on the task batch, for the better).

Scores per connected group of the residue, pooled (as ``bench/fills.py``): PSNR, SSIM over the
group's pixels, and the texture ratio (mean Sobel magnitude of the fill over the truth's). A
group's *width* is its largest distance to its border (``cv2.distanceTransform``, exact L2,
over the group padded with unmasked pixels: a 1-px line has width 1); *recovered around* is
the share of the pixels within 3 px of the group that ``restore`` recovered (the rest lie
outside the mask). The width table fills each residue with one engine alone, to show by
width where each is better. Fill time is CPU time of the process (``time.process_time``, one thread)
per method over the handed-over images; the machine was shared, so read it as a ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fills import Score, gradient, ring_texture  # noqa: E402
from machine import code_line, load_average, machine_line, version  # noqa: E402
from photo_eraser.engines.base import Engine, Restored  # noqa: E402
from photo_eraser.engines.fill import (  # noqa: E402
    SMOOTH_TEXTURE,
    THIN_GROUP,
    TextureAwareFill,
    group_width,
)
from photo_eraser.engines.opencv import OpenCVEngine  # noqa: E402
from photo_eraser.engines.patchmatch import PatchMatchEngine  # noqa: E402
from photo_eraser.engines.restore import WatermarkRecoveryEngine  # noqa: E402
from quality import make_batch, marks, photos, shapes  # noqa: E402

THINS = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
"""The width rule's thresholds run (0: texture alone, the rule before this bench)."""
ALPHAS = (0.3, 0.5, 0.7)
FORMATS = ("jpeg90", "png")
MASKS = ("tight", "box")
N = 8
BOX_PAD = 12
"""``bench/task.py``'s photos, in its order."""


class Recorder(Engine):
    """A fallback that keeps copies of what it is handed, then fills with Telea (cheap: what
    the recorder fills is thrown away, the recorded inputs are filled by each method)."""

    name = "opencv"

    def __init__(self) -> None:
        self.handed: list[tuple[np.ndarray, np.ndarray]] = []
        self.telea = OpenCVEngine()

    def restore(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        in_place: bool = False,
        lossless: Sequence[bool] | None = None,
    ) -> list[Restored]:
        self.handed += [
            (im.copy(), np.asarray(m, bool).copy()) for im, m in zip(images, masks, strict=True)
        ]
        return self.telea.restore(images, masks, in_place=in_place)


@dataclass
class Residue:
    """One image's residue: the truth, what the fallback was handed, the original mask."""

    case: str
    truth: np.ndarray
    image: np.ndarray
    todo: np.ndarray
    mask: np.ndarray


@dataclass
class Group:
    case: str
    pixels: int
    width: float
    recovered_around: float
    texture: float
    """The texture rule's statistic on the handed-over image (what the rule decides by)."""
    scores: dict[str, Score] = field(default_factory=dict)


def residues_of(case: str, truths, stamped, mask: np.ndarray, lossless: bool) -> list[Residue]:  # type: ignore[no-untyped-def]
    recorder = Recorder()
    engine = WatermarkRecoveryEngine(fallback=recorder)
    masks = [mask] * len(stamped)
    engine.restore(stamped, masks, lossless=[lossless] * len(stamped))
    out = []
    for image, todo in recorder.handed:
        # The recorder is handed images in order of the batch, only those with pixels left.
        index = next(i for i, s in enumerate(stamped) if _same_outside(s, image, mask))
        out.append(Residue(case, truths[index], image, todo, mask))
    return out


def _same_outside(stamped: np.ndarray, image: np.ndarray, mask: np.ndarray) -> bool:
    return stamped.shape == image.shape and np.array_equal(stamped[~mask], image[~mask])


def box_of(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    box = np.zeros_like(mask)
    h, w = mask.shape
    box[
        max(0, ys.min() - BOX_PAD) : min(h, ys.max() + BOX_PAD + 1),
        max(0, xs.min() - BOX_PAD) : min(w, xs.max() + BOX_PAD + 1),
    ] = True
    return box


def small_residues(quick: bool, alphas: Sequence[float] = ALPHAS) -> list[Residue]:
    designs = [*marks(), *shapes()]
    out: list[Residue] = []
    seed = 41000
    for mark in designs[:2] if quick else designs:
        for alpha in alphas[:1] if quick else alphas:
            for fmt in FORMATS:
                for kind in MASKS:
                    seed += 1
                    batch = make_batch(mark, alpha, N, fmt, seed)
                    mask = batch.mask if kind == "tight" else box_of(batch.mask)
                    name = f"{mark.name} a{alpha} {fmt} {kind}"
                    out += residues_of(name, batch.truths, batch.stamped, mask, fmt == "png")
    return out


def task_residues(n: int, size: str = "1080p") -> list[Residue]:
    """``bench/task.py``'s batch at ``size`` (1920x1080 or 4000x3000) with its true photos
    (`task.task_scene`)."""
    from task import SIZES, task_scene

    photos, alpha, mask = task_scene(*SIZES[size], n)
    truths, stamped = [], []
    for img in photos:
        truth = np.clip(img, 0, 255).astype(np.uint8)
        blended = np.clip(img * (1 - alpha) + 255 * alpha, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", blended[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        truths.append(truth)
        stamped.append(np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]))
    return residues_of(f"task {size}", truths, stamped, mask, False)


def fill_name(thin: float) -> str:
    return f"fill w<={thin:g}"


def fills(thins: Sequence[float]) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    telea, patchmatch = OpenCVEngine(), PatchMatchEngine()
    out: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "telea": telea.inpaint,
        "patchmatch": patchmatch.inpaint,
    }
    for thin in thins:
        fill = TextureAwareFill(telea, patchmatch, thin=thin)
        out[fill_name(thin)] = lambda im, m, f=fill: f.restore([im], [m])[0].image
    return out


def score_residue(res: Residue, methods, seconds: dict[tuple[str, str], float]) -> list[Group]:  # type: ignore[no-untyped-def]
    outputs = {}
    for name, fill in methods.items():
        start = time.process_time()
        outputs[name] = fill(res.image, res.todo)
        key = (subset_of(res.case), name)
        seconds[key] = seconds.get(key, 0.0) + time.process_time() - start
    ys, xs = np.nonzero(res.todo)
    y0, y1 = max(0, ys.min() - 12), min(res.todo.shape[0], ys.max() + 13)
    x0, x1 = max(0, xs.min() - 12), min(res.todo.shape[1], xs.max() + 13)
    crop = (slice(y0, y1), slice(x0, x1))
    truth, todo, mask = res.truth[crop], res.todo[crop], res.mask[crop]
    handed = res.image[crop]
    truth_grad, seen_grad = gradient(truth), gradient(handed)
    maps, grads = {}, {}
    for name, out in outputs.items():
        _, full = structural_similarity(out[crop], truth, channel_axis=2, data_range=255, full=True)
        maps[name], grads[name] = full.mean(axis=2), gradient(out[crop])
    count, labels = cv2.connectedComponents(todo.astype(np.uint8), connectivity=8)
    near = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    groups = []
    for label in range(1, count):
        own = labels == label
        n = int(own.sum())
        around = (cv2.dilate(own.view(np.uint8), near) > 0) & ~todo
        recovered = float((around & mask).sum() / max(1, around.sum()))
        group = Group(res.case, n, group_width(own), recovered, ring_texture(seen_grad, own, todo))
        for name, out in outputs.items():
            diff = out[crop][own].astype(np.float64) - truth[own]
            group.scores[name] = Score(
                pixels=n,
                squared=float((diff**2).sum()),
                ssim=float(maps[name][own].sum()),
                grad=float(grads[name][own].sum()),
                truth_grad=float(truth_grad[own].sum()),
            )
        groups.append(group)
    return groups


def pooled(groups: list[Group], pick: Callable[[Group], str]) -> Score:
    total = Score()
    for g in groups:
        total.add(g.scores[pick(g)])
    return total


def cells(s: Score) -> str:
    return f"{s.psnr:.2f} / {s.mean_ssim:.3f} / {s.ratio:.2f}"


def subset_of(case: str) -> str:
    return next(label for label, keep in SUBSETS if keep(case))


def summary(groups: list[Group], seconds: dict[tuple[str, str], float], methods) -> list[str]:  # type: ignore[no-untyped-def]
    """Per subset, each method's pooled scores over every group and its fill CPU time."""
    lines = [
        "| residue | groups / pixels | method | PSNR | SSIM | texture | fill CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, keep in SUBSETS:
        sel = [g for g in groups if keep(g.case)]
        if not sel:
            continue
        first, size = label, f"{len(sel)} / {sum(g.pixels for g in sel)}"
        for m in methods:
            s = pooled(sel, lambda g, m=m: m)  # type: ignore[misc]
            lines.append(
                f"| {first} | {size} | {m} | {s.psnr:.2f} | {s.mean_ssim:.3f} | {s.ratio:.2f} "
                f"| {seconds[(label, m)]:.2f} |"
            )
            first, size = "", ""
    return lines


def distribution(groups: list[Group]) -> list[str]:
    textured = [g for g in groups if g.texture >= SMOOTH_TEXTURE]
    lines = [
        "| width | groups (textured) | pixels | median size | recovered around | Telea PSNR / SSIM / texture | PatchMatch PSNR / SSIM / texture |",
        "|---|---|---|---|---|---|---|",
    ]
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 6), (6, 1e9)]
    for lo, hi in edges:
        sel = [g for g in textured if lo < g.width <= hi]
        if not sel:
            continue
        size = float(np.median([g.pixels for g in sel]))
        around = float(np.mean([g.recovered_around for g in sel]))
        label = f"> {lo:g}" if hi > 1e8 else f"({lo:g}, {hi:g}]"
        lines.append(
            f"| {label} | {len(sel)} | {sum(g.pixels for g in sel)} | {size:.0f} | {around:.0%} | "
            f"{cells(pooled(sel, lambda g: 'telea'))} | {cells(pooled(sel, lambda g: 'patchmatch'))} |"
        )
    return lines


SUBSETS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("the task batch, box", lambda case: case.startswith("task ")),
    ("small, tight masks", lambda case: case.endswith("tight")),
    ("small, box masks", lambda case: case.endswith("box")),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--quick", action="store_true", help="a few small batches only")
    parser.add_argument("--no-task", action="store_true", help="leave out the task batch")
    parser.add_argument("--task-images", type=int, default=20)
    parser.add_argument("--only-task", action="store_true", help="only the task batch")
    parser.add_argument(
        "--task-size", choices=("1080p", "12mp"), default="1080p", help="the task batch's size"
    )
    parser.add_argument(
        "--alphas", default=",".join(map(str, ALPHAS)), help="the small batches' opacities"
    )
    parser.add_argument(
        "--thins", default=",".join(f"{t:g}" for t in THINS), help="width rule thresholds run"
    )
    args = parser.parse_args()
    assert photos()  # the scikit-image photos load (nothing is downloaded)
    command = "bench/residue.py " + " ".join(sys.argv[1:])
    out = [
        f"Measured by `.venv/bin/python {command.strip()}`",
        f"{machine_line()}; load average {load_average()} at the start",
        f"{code_line()}; pypatchmatch {version('pypatchmatch')}, opencv {version('opencv-python-headless')}",
        f"rule: texture threshold {SMOOTH_TEXTURE:g}, thin groups (width <= {THIN_GROUP:g} px) to Telea",
        "",
    ]
    residues = [] if args.no_task else task_residues(args.task_images, args.task_size)
    if not args.only_task:
        alphas = tuple(float(a) for a in args.alphas.split(","))
        residues += small_residues(args.quick, alphas)
    methods = fills([float(t) for t in args.thins.split(",")])
    seconds: dict[tuple[str, str], float] = {}
    groups: list[Group] = []
    for res in residues:
        groups += score_residue(res, methods, seconds)
    task_px = [int(r.todo.sum()) for r in residues if r.case.startswith("task ")]
    if task_px:
        out.append(
            f"task {args.task_size}: {len(task_px)} of {args.task_images} images handed to the fill, "
            f"{np.mean(task_px):.0f} px each on average"
        )
    out += [f"{len(residues)} images handed to the fill, {len(groups)} groups", ""]
    out += summary(groups, seconds, methods)
    for label, keep in SUBSETS:
        sel = [g for g in groups if keep(g.case)]
        if not sel:
            continue
        out += [
            "",
            f"Textured groups of {label} by width, each engine filling the whole residue:",
            "",
        ]
        out += distribution(sel)
    out += ["", f"load average {load_average()} at the end"]
    text = "\n".join(out)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
