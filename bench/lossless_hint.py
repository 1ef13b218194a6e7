"""What the lossless hint (PNG, BMP input) gains, and what it risks when it is wrong.

    .venv/bin/python bench/lossless_hint.py            # 3 qualities x N in 3, 4, 5, 8 (~8 min)
    .venv/bin/python bench/lossless_hint.py --quick    # JPEG q90 only

The pipeline tells ``restore`` that PNG and BMP images are lossless: they may be exactly the
blend, and the exact-blend fit is tried. Two histories give such files:

* ``before``: the photo was a JPEG (a camera's), then the mark was put on and the result
  saved as PNG. The file is exactly the blend: the hint should help.
* ``after``: the marked image was JPEG-compressed, then converted to PNG. The hint is wrong;
  the exact fit should be refused, or at least not cost much.

For each history, JPEG quality and batch size, eight batches (each of the four mark designs
of ``bench/quality.py`` at alpha 0.3 and at 0.5, different photos) are restored with the
hint and without it; printed is the masked PSNR with the hint minus without it (dB): min,
mean, max.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from photo_eraser.engines.opencv import OpenCVEngine  # noqa: E402
from photo_eraser.engines.restore import WatermarkRecoveryEngine  # noqa: E402
from quality import H, W, machine, marks, masked_psnr, photo_crop, photos, stamp  # noqa: E402

BATCHES = 8
"""Per setting: the four mark designs at alpha 0.3, then at 0.5."""


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


def gain(history: str, quality: int, n: int, seed: int, engine: WatermarkRecoveryEngine) -> float:
    """Masked PSNR with the hint minus without it, for one batch."""
    designs = marks()
    mark = designs[seed % len(designs)]
    alpha = (0.3, 0.5)[(seed // len(designs)) % 2] * mark.coverage
    rng = np.random.default_rng(700 + seed)
    sources = photos()
    start = int(rng.integers(0, len(sources)))
    truths = [photo_crop(sources[(start + k) % len(sources)], H, W, rng) for k in range(n)]
    if history == "before":
        truths = [jpeg(t, quality) for t in truths]
    stamped = [stamp(t, alpha, mark.colour, "png") for t in truths]
    if history == "after":
        stamped = [jpeg(s, quality) for s in stamped]
    mask = cv2.dilate((mark.coverage > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    masks = [mask] * n
    psnr = [
        masked_psnr(
            [r.image for r in engine.restore(stamped, masks, lossless=[hint] * n)], truths, masks
        )
        for hint in (True, False)
    ]
    return psnr[0] - psnr[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="JPEG quality 90 only")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    engine = WatermarkRecoveryEngine(fallback=OpenCVEngine())
    qualities = (90,) if args.quick else (75, 90, 95)
    print("| history | JPEG quality | N | hint - none: min | mean | max |")
    print("|---|---|---|---|---|---|")
    for history in ("after", "before"):
        for quality in qualities:
            for n in (3, 4, 5, 8):
                d = np.array([gain(history, quality, n, s, engine) for s in range(BATCHES)])
                print(
                    f"| {history} | {quality} | {n} | {d.min():+.1f} | {d.mean():+.1f} "
                    f"| {d.max():+.1f} |",
                    flush=True,
                )
    print(machine())


if __name__ == "__main__":
    main()
