"""Synthetic watermarked batches for the restore tests: real photos, exactly known marks.

A mark is an anti-aliased coverage map in [0, 1] (text or a logo) times an opacity, blended
over crops of scikit-image's bundled photos: ``J = alpha * W + (1 - alpha) * I``. Arrays
follow the engines' convention: RGB uint8 HxWx3 images, bool HxW masks.

The golden test (``test_restore_golden.py``) hashes outputs of batches built here: a change
to any function of this module changes those batches, and the golden file must then be
rewritten from the code before the change (see that module).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage import data

H, W = 150, 300


def photos() -> list[np.ndarray]:
    """Nine distinct photos (RGB, and grey ones as RGB) bundled with scikit-image."""
    grey = [data.camera(), data.brick(), data.grass()]
    left, right, _ = data.stereo_motorcycle()
    rgb = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), left, right]
    return rgb + [np.stack([g] * 3, axis=-1) for g in grey]


def crops(n: int, h: int = H, w: int = W, seed: int = 0) -> list[np.ndarray]:
    """``n`` crops of ``h`` x ``w`` from the photos, in turn, at seeded random places."""
    rng = np.random.default_rng(seed)
    pool = photos()
    out = []
    for i in range(n):
        p = pool[i % len(pool)]
        y = int(rng.integers(0, p.shape[0] - h + 1))
        x = int(rng.integers(0, p.shape[1] - w + 1))
        out.append(np.ascontiguousarray(p[y : y + h, x : x + w]))
    return out


def text_coverage(h: int = H, w: int = W) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a line of text across the middle."""
    m = np.zeros((h, w), np.uint8)
    scale = 1.2 * w / W
    (tw, th), _ = cv2.getTextSize("(c) Stock 26", cv2.FONT_HERSHEY_SIMPLEX, scale, 3)
    org = ((w - tw) // 2, (h + th) // 2)
    cv2.putText(m, "(c) Stock 26", org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 3, cv2.LINE_AA)
    return m.astype(np.float32) / 255


def logo_coverage(h: int = H, w: int = W) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a bold logo (a thick ring over a bar)."""
    m = np.zeros((h, w), np.uint8)
    cv2.circle(m, (w // 2, h // 2), 45, 255, 11, cv2.LINE_AA)
    cv2.rectangle(m, (w // 2 - 90, h // 2 + 55), (w // 2 + 90, h // 2 + 68), 255, -1, cv2.LINE_AA)
    return m.astype(np.float32) / 255


def shape_coverage(h: int = H, w: int = W) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a solid shape (a filled ellipse over a filled bar)."""
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2, h // 2 - 8), (w // 5, h // 4), 0, 0, 360, 255, -1, cv2.LINE_AA)
    cv2.rectangle(m, (w // 4, h // 2 + 36), (3 * w // 4, h // 2 + 52), 255, -1, cv2.LINE_AA)
    return m.astype(np.float32) / 255


def tight_mask(coverage: np.ndarray) -> np.ndarray:
    """The mark's support dilated by 2 pixels: a mask drawn closely around it."""
    return cv2.dilate((coverage > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0


def box_around(coverage: np.ndarray, pad: int) -> np.ndarray:
    """A rectangle ``pad`` pixels wider than the mark on each side: a mask drawn loosely."""
    ys, xs = np.nonzero(coverage > 0)
    box = np.zeros(coverage.shape, bool)
    box[ys.min() - pad : ys.max() + pad + 1, xs.min() - pad : xs.max() + pad + 1] = True
    return box


def gradient_colour(h: int = H, w: int = W) -> np.ndarray:
    """A watermark colour varying across the mark (orange to light blue), HxWx3 float."""
    t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    return np.broadcast_to((1 - t) * [250, 160, 40] + t * [150, 220, 255], (h, w, 3))


def solid_colour(rgb: tuple[int, int, int], h: int = H, w: int = W) -> np.ndarray:
    """One watermark colour everywhere, HxWx3 float."""
    return np.broadcast_to(np.array(rgb, np.float32), (h, w, 3))


def stamp(photos: list[np.ndarray], alpha: np.ndarray, colour: np.ndarray) -> list[np.ndarray]:
    """Each photo with the mark blended over it, rounded to whole grey levels."""
    a = alpha[..., None]
    return [np.rint(a * colour + (1 - a) * p).astype(np.uint8) for p in photos]


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    """The image after a JPEG round trip at ``quality`` (OpenCV's encoder)."""
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
