"""A mask drawn from boxes (the ``rectangles`` extension of the create call).

With a known basis (``rect_basis``, or the fixed one of fractions) the boxes are drawn into a
PNG mask at creation; the task then carries it as an inline mask, so the worker fits it to each
image exactly as any mask (nearest neighbour, stretched). Pixel boxes without a basis refer to
the first image, whose size only the worker learns: the task's inline mask is then a small
JSON document of the boxes (`boxes_document`), drawn by the worker at that image's size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image

from photo_eraser.imaging.mask import MaskError

Box = tuple[float, float, float, float]
"""x, y, width, height in pixels of the basis."""

FRACTION_BASIS = (1000, 1000)
"""Size at which boxes given as fractions of the image are drawn: stretched to an image of up
to 5000 px a side, a box edge lands within 5 px (one basis pixel) of where the fraction puts it,
and the PNG stays a few kB."""

_DOCUMENT_KEY = "photo_eraser_boxes"
_DOCUMENT_HEAD = b'{"' + _DOCUMENT_KEY.encode() + b'"'


def draw_boxes(boxes: Sequence[Box], width: int, height: int) -> np.ndarray:
    """A bool ``height`` x ``width`` mask, True inside the boxes. Edges are rounded outwards,
    so a box never shrinks; a box that marks no pixel inside the basis is a `MaskError`."""
    marked = np.zeros((height, width), dtype=bool)
    for i, (x, y, w, h) in enumerate(boxes):
        x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
        x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
        if x1 <= x0 or y1 <= y0:
            raise MaskError(f"box {i} marks no pixel of the {width}x{height} basis")
        marked[y0:y1, x0:x1] = True
    return marked


def draw_rectangles(boxes: Sequence[Box], width: int, height: int) -> bytes:
    """`draw_boxes` as a PNG mask file (white = restore)."""
    out = BytesIO()
    Image.fromarray(draw_boxes(boxes, width, height).astype(np.uint8) * 255).save(out, "PNG")
    return out.getvalue()


@dataclass(frozen=True)
class PixelBoxes:
    """Boxes in pixels of the task's first image, to draw once its size is known."""

    boxes: tuple[Box, ...]

    def draw(self, width: int, height: int) -> np.ndarray:
        return draw_boxes(self.boxes, width, height)


def boxes_document(boxes: Sequence[Box]) -> bytes:
    """The inline mask of a task whose boxes are in pixels of its first image."""
    return json.dumps({_DOCUMENT_KEY: [list(b) for b in boxes]}, separators=(",", ":")).encode()


def parse_boxes_document(data: bytes) -> PixelBoxes | None:
    """The boxes of a `boxes_document`; None for anything else (a mask image)."""
    if not data.startswith(_DOCUMENT_HEAD):
        return None
    try:
        boxes = json.loads(data)[_DOCUMENT_KEY]
        return PixelBoxes(tuple((float(x), float(y), float(w), float(h)) for x, y, w, h in boxes))
    except (ValueError, TypeError, KeyError) as exc:
        raise MaskError(f"the task's boxes are unreadable: {exc}") from None
