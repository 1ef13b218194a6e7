"""Make the README's before/after picture with the project's own CLI.

    .venv/bin/python bench/readme_picture.py

Stamps the same semi-transparent white watermark on eight photos that ship with scikit-image,
runs `photo-eraser erase` on the batch with `--engine opencv` and with `--engine restore`, and
writes `docs/img/before-after.png`: one photo's crop, stamped / opencv / restore / truth.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage import data

OUT = Path(__file__).resolve().parent.parent / "docs" / "img" / "before-after.png"
SIZE = (640, 480)
PHOTOS = (
    "coffee",
    "chelsea",
    "rocket",
    "astronaut",
    "immunohistochemistry",
    "cat",
    "retina",
    "hubble_deep_field",
)


def watermark() -> tuple[np.ndarray, np.ndarray]:
    """An alpha matte (float HxW) of bold text, and the boolean mask that covers it."""
    layer = Image.new("L", SIZE, 0)
    draw = ImageDraw.Draw(layer)
    font = ImageFont.load_default(size=56)
    draw.text((120, 190), "© SAMPLE", fill=255, font=font, stroke_width=2, stroke_fill=255)
    alpha = np.asarray(layer, np.float32) / 255 * 0.5
    mask = cv2.dilate((alpha > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    return alpha, mask


def main() -> None:
    alpha, mask = watermark()
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        truths, inputs = [], []
        for name in PHOTOS:
            truth = cv2.resize(getattr(data, name)(), SIZE, interpolation=cv2.INTER_AREA)
            stamped = truth * (1 - alpha[..., None]) + 255 * alpha[..., None]
            path = tmpdir / f"{name}.png"
            Image.fromarray(np.round(stamped).astype(np.uint8)).save(path)
            truths.append(truth)
            inputs.append(path)
        mask_path = tmpdir / "mask.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        results = {}
        for engine in ("opencv", "restore"):
            out = tmpdir / engine
            cmd = [
                sys.executable,
                "-m",
                "photo_eraser",
                "erase",
                "--mask",
                str(mask_path),
                *map(str, inputs),
                "--out",
                str(out),
                "--engine",
                engine,
                "--data-dir",
                str(tmpdir / "data"),
            ]
            subprocess.run(cmd, check=True)
            results[engine] = np.asarray(Image.open(out / f"{PHOTOS[0]}.png").convert("RGB"))
        stamped0 = np.asarray(Image.open(inputs[0]).convert("RGB"))
        crop = (slice(160, 300), slice(90, 560))
        panels = [
            stamped0[crop],
            results["opencv"][crop],
            results["restore"][crop],
            truths[0][crop],
        ]
        labels = ["stamped (input)", "opencv (Telea)", "restore (8-image batch)", "truth"]
        for name, panel in zip(labels, panels, strict=True):
            err = panel.astype(float)[mask[crop]] - truths[0][crop].astype(float)[mask[crop]]
            psnr = 10 * np.log10(255**2 / max(np.mean(err**2), 1e-9))
            print(f"{name:26s} masked PSNR {psnr:6.2f} dB" if name != "truth" else name)
        strip = np.concatenate(
            [np.pad(p, ((24, 4), (4, 4), (0, 0)), constant_values=255) for p in panels], axis=0
        )
        picture = Image.fromarray(strip)
        draw = ImageDraw.Draw(picture)
        height = panels[0].shape[0] + 28
        for i, label in enumerate(labels):
            draw.text(
                (8, i * height + 4), label, fill=(0, 0, 0), font=ImageFont.load_default(size=16)
            )
        OUT.parent.mkdir(parents=True, exist_ok=True)
        picture.save(OUT, optimize=True)
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
