"""Decode and encode of one JPEG: ours (header and limit checks, EXIF orientation, ICC, strict
truncation) against the fastest decoders and encoders on PyPI for the same pixels, and against
the Pillow path the service used before.

    .venv/bin/python bench/codec.py [--repeat 15]

The floor is the fastest of: simplejpeg (``strict=True``: refuses truncated files), OpenCV's
``imdecode`` (RGB out) and Pillow, for decoding; OpenCV's ``imencode`` (from BGR, plus the RGB to
BGR swap it needs), simplejpeg's and Pillow's encoders, for encoding at quality 95 and 4:4:4.
The photo carries an EXIF orientation of 6 (a phone's portrait) and an sRGB profile, so our
path does the turn and keeps the profile; the floor's decoders skip both.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageCms
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import load_average, machine_line  # noqa: E402
from photo_eraser.imaging import decode_image, encode_image  # noqa: E402
from photo_eraser.imaging.codec import decode_image_with_pillow  # noqa: E402

SIZES = {"1080p": (1920, 1080), "12mp": (4000, 3000)}


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median CPU time of this thread over ``repeat`` runs, in ms: every codec here runs on
    the calling thread, and CPU time is much less disturbed than wall time by other work on a
    shared machine (though not free of it: caches and clock speed are shared)."""
    samples = []
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        samples.append(time.thread_time() - t)
    return statistics.median(samples) * 1000


def photo(width: int, height: int) -> np.ndarray:
    img = cv2.resize(skdata.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)
    noise = np.random.default_rng(0).integers(0, 12, img.shape, dtype=np.uint8)
    return cv2.add(img, noise)


def row(name: str, w: int, h: int, repeat: int, srgb: bytes, exif: Image.Exif) -> None:
    """One table row: every codec on one photo of ``w`` x ``h``."""
    args = argparse.Namespace(repeat=repeat)
    pixels = photo(w, h)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, icc_profile=srgb, exif=exif)
    data = buf.getvalue()
    ours = decode_image(data)
    assert np.array_equal(ours.pixels, decode_image_with_pillow(data).pixels)
    dec = {
        "ours": best_ms(lambda: decode_image(data), args.repeat),
        "pillow": best_ms(lambda: decode_image_with_pillow(data), args.repeat),
        # Turned upright as the file says, as ours is (OpenCV's imdecode does it itself).
        "simplejpeg": best_ms(
            lambda: cv2.rotate(
                simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True),
                cv2.ROTATE_90_CLOCKWISE,
            ),
            args.repeat,
        ),
        "cv2": best_ms(
            lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB),
            args.repeat,
        ),
    }
    up = ours.pixels
    copies = [up.copy() for _ in range(args.repeat)]  # handed over, one per run
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        95,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    ]
    enc = {
        # What the worker does: the restored pixels are handed over (consume=True).
        "ours": best_ms(
            lambda: encode_image(copies.pop(), "JPEG", jpeg_quality=95, consume=True),
            args.repeat,
        ),
        "cv2": best_ms(
            lambda: cv2.imencode(".jpg", cv2.cvtColor(up, cv2.COLOR_RGB2BGR), params),
            args.repeat,
        ),
        "simplejpeg": best_ms(lambda: simplejpeg.encode_jpeg(up, 95, "RGB", "444"), args.repeat),
        "pillow": best_ms(lambda: encode_image(up, "JPEG", jpeg_quality=95), args.repeat),
        # With the profile kept, Pillow writes it (OpenCV cannot).
        "ours_icc": best_ms(
            lambda: encode_image(up, "JPEG", jpeg_quality=95, icc_profile=srgb, consume=True),
            args.repeat,
        ),
    }
    floor = min(dec["simplejpeg"], dec["cv2"], dec["pillow"]) + min(
        enc["cv2"], enc["simplejpeg"], enc["pillow"]
    )
    total = dec["ours"] + enc["ours"]
    with_icc = dec["ours"] + enc["ours_icc"]
    print(
        f"| {name} ({w}x{h}) | {dec['ours']:.1f} | {dec['pillow']:.1f} | "
        f"{dec['simplejpeg']:.1f} | {dec['cv2']:.1f} | {enc['ours']:.1f} | "
        f"{enc['ours_icc']:.1f} | {enc['cv2']:.1f} | {enc['simplejpeg']:.1f} | "
        f"{enc['pillow']:.1f} | {total / floor:.2f}x ({with_icc / floor:.2f}x) |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    # One thread for OpenCV too, so that the CPU time of this thread is all of a call's work.
    cv2.setNumThreads(1)
    print("# JPEG decode + encode: ours against the fastest codecs on PyPI")
    print(machine_line())
    print(
        f"simplejpeg {simplejpeg.__version__}, OpenCV {cv2.__version__}, "
        f"Pillow {Image.__version__}; load average {load_average()}"
    )
    print(f"command: .venv/bin/python bench/codec.py --repeat {args.repeat}")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    print(
        "\n| image | ours: decode | Pillow path (before) | simplejpeg + turn | cv2.imdecode (turns) "
        "| ours: encode | ours: encode, ICC kept | cv2.imencode | simplejpeg | Pillow "
        "| ours / floor, decode + encode (ICC kept) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, (w, h) in SIZES.items():
        row(name, w, h, args.repeat, srgb, exif)
    print(f"\nCPU ms, medians of {args.repeat}; load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
