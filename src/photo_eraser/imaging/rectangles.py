"""A mask drawn from boxes (the ``rectangles`` extension of the create call).

The boxes are drawn into a PNG mask at a basis size; the task then carries it as an inline mask,
so the worker fits it to each image exactly as any mask (nearest neighbour, stretched).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from io import BytesIO

import numpy as np
from PIL import Image

from photo_eraser.imaging.mask import MaskError

FRACTION_BASIS = (1000, 1000)
"""Size at which boxes given as fractions of the image are drawn: stretched to an image of up
to 5000 px a side, a box edge lands within 5 px (one basis pixel) of where the fraction puts it,
and the PNG stays a few kB."""


def draw_rectangles(
    boxes: Sequence[tuple[float, float, float, float]], width: int, height: int
) -> bytes:
    """A PNG of ``width`` x ``height``: white inside the boxes (x, y, w, h in its pixels),
    black elsewhere. Edges are rounded outwards, so a box never shrinks; a box that marks no
    pixel inside the basis is a `MaskError`."""
    marked = np.zeros((height, width), dtype=np.uint8)
    for i, (x, y, w, h) in enumerate(boxes):
        x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
        x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
        if x1 <= x0 or y1 <= y0:
            raise MaskError(f"box {i} marks no pixel of the {width}x{height} basis")
        marked[y0:y1, x0:x1] = 255
    out = BytesIO()
    Image.fromarray(marked).save(out, format="PNG")
    return out.getvalue()
