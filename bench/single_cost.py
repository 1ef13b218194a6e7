"""What ``auto`` (= ``restore``) costs over plain ``opencv`` on a single image (issue 18, item 4).

    .venv/bin/python bench/single_cost.py                       # this checkout only
    .venv/bin/python bench/single_cost.py --before /work/main/src  # side by side with other code
    .venv/bin/python bench/single_cost.py --images 3 --lossless     # three PNG images, one mask

One image, 1920x1080 and 4000x3000 (12 MP), a scikit-image photo scaled up, a line of text
masked (about 2% of the area), three cases:

* ``text a=0.5``: white text at opacity 0.5 (the one-image recovery can apply);
* ``no mark``: the same mask over the bare photo (an object to erase: it cannot apply);
* ``opaque``: the text at opacity 1 (nothing under it to recover: it cannot apply).

``--images 2`` or ``3``: as many different photos under the same mask, restored together
(``--lossless``: as PNG uploads are, so three images also get the exact fit of step 6).

Each engine restores each case ``--repeats`` times after a warm-up (median, milliseconds, of
the process's CPU time, which the shared machine's load disturbs far less than wall-clock
time, and of wall-clock time).
With ``--before``, each round runs the other code and this checkout in fresh processes, one
after the other (``--rounds`` rounds, interleaved, so the shared machine's load hits both
alike), and the medians over rounds are printed side by side with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SIZES = {"1080p": (1080, 1920), "12MP": (3000, 4000)}


def _cases(h: int, w: int, images: int = 1) -> dict[str, tuple[list[Any], Any]]:
    import cv2
    import numpy as np
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea()][:images]
    photos = [cv2.resize(p, (w, h), interpolation=cv2.INTER_CUBIC) for p in sources]
    canvas = np.zeros((h, w), np.uint8)
    scale, thickness = 2.8 * w / 1920, max(2, round(6 * w / 1920))
    text = "(c) Photo Eraser Stock 2026"
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    cv2.putText(
        canvas, text, ((w - tw) // 2, int(h * 0.62)), font, scale, 255, thickness, cv2.LINE_AA
    )
    cov = canvas.astype(np.float32)[..., None] / 255
    mask = cv2.dilate(canvas, np.ones((5, 5), np.uint8)) > 0

    def stamp(alpha: float) -> list[Any]:
        outs = [(1 - alpha * cov) * photo + alpha * cov * 255.0 for photo in photos]
        return [np.clip(np.rint(out), 0, 255).astype(np.uint8) for out in outs]

    return {
        "text a=0.5": (stamp(0.5), mask),
        "no mark": (list(photos), mask),
        "opaque": (stamp(1.0), mask),
    }


def child(src: str, repeats: int, images: int, lossless: bool) -> None:
    """Time both engines on every case with the code under ``src``; JSON on stdout."""
    sys.path.insert(0, src)
    import logging

    logging.disable(logging.INFO)
    from photo_eraser.engines.opencv import OpenCVEngine
    from photo_eraser.engines.restore import WatermarkRecoveryEngine

    engines = {"opencv": OpenCVEngine(), "auto": WatermarkRecoveryEngine(fallback=OpenCVEngine())}
    out: dict[str, dict[str, object]] = {}
    for size, (h, w) in SIZES.items():
        for name, (batch, mask) in _cases(h, w, images).items():
            row: dict[str, object] = {}
            for label, engine in engines.items():
                times, cpu = [], []
                for i in range(repeats + 1):
                    t0, c0 = time.perf_counter(), time.process_time()
                    res = engine.restore(
                        batch, [mask] * len(batch), lossless=[lossless] * len(batch)
                    )[0]
                    if i:  # the first run is a warm-up
                        times.append(time.perf_counter() - t0)
                        cpu.append(time.process_time() - c0)
                row[label] = 1000 * statistics.median(times)
                row[f"{label} cpu"] = 1000 * statistics.median(cpu)
                row[f"{label} method"] = res.method
            out[f"{size} {name}"] = row
    print(json.dumps(out))


def run(src: Path, repeats: int, images: int, lossless: bool) -> dict[str, dict[str, object]]:
    cmd = [sys.executable, __file__, "--child", str(src), "--repeats", str(repeats)]
    cmd += ["--images", str(images)] + (["--lossless"] if lossless else [])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout's src/ to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--lossless", action="store_true", help="tell the engine they are PNG")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeats, args.images, args.lossless)
        return
    versions = {"after": HERE.parent / "src"}
    if args.before:
        versions = {"before": args.before, **versions}
    results: dict[str, list[dict[str, dict[str, object]]]] = {v: [] for v in versions}
    loads = []
    for _ in range(args.rounds):
        for label, src in versions.items():
            loads.append(os.getloadavg()[0])
            results[label].append(run(src, args.repeats, args.images, args.lossless))
    cases = list(results["after"][0])
    for clock, suffix in (("CPU time", " cpu"), ("wall-clock time", "")):
        head = " | ".join(f"{v}: opencv, auto, +auto, auto's method" for v in versions)
        print(f"\n{clock} (ms)\n\n| case | {head} |")
        print("|---|" + "---|" * len(versions))
        for case in cases:
            cells = []
            for v in versions:
                cv = statistics.median(float(r[case]["opencv" + suffix]) for r in results[v])  # type: ignore[arg-type]
                au = statistics.median(float(r[case]["auto" + suffix]) for r in results[v])  # type: ignore[arg-type]
                method = results[v][-1][case]["auto method"]
                cells.append(f"{cv:.0f}, {au:.0f}, **{au - cv:+.0f}**, {method}")
            print(f"| {case} | " + " | ".join(cells) + " |")
    print(
        f"\n{args.images} image(s) per call{', lossless' if args.lossless else ''}; "
        f"median of {args.rounds} interleaved rounds x {args.repeats} timed runs; load average "
        f"at the rounds' starts {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
