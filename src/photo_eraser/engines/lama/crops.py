"""Where the model looks: one crop around each group of masked pixels, and their batches.

Each connected group of masked pixels gets one crop: a box with the model's aspect ratio
(square for square models), at least three times the group's extent so the mask's extent is
repeated as context on each side, and never smaller than the model's input (fixed-size models)
or ``MIN_DYNAMIC_SIDE`` (dynamic ones), clamped to the image. Groups whose crops would reach
into another group's mask are merged first. A crop is resized to the model size (fixed) or
only padded to a multiple of 8 when it is at most ``max_dynamic_side`` (dynamic).

``size`` below is the model's fixed input ``(height, width)``, or ``None`` for a model with
dynamic spatial dimensions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

MIN_DYNAMIC_SIDE = 256
"""Smallest crop side for dynamic-size models, so small masks still get context."""
MAX_GROUPS = 32
"""Above this many connected components, nearby ones are joined by dilation first."""

Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)``, end-exclusive, in image coordinates."""


@dataclass(frozen=True)
class Crop:
    """Where one model input is cut from one image, and where its prediction goes back."""

    image_index: int
    box: Box
    hole: Box
    """Bounding box of the group's masked pixels; the only region written back."""
    resized: tuple[int, int]
    """Size of the crop after resizing, before padding to the model input."""
    input_size: tuple[int, int]
    """Model input ``(height, width)``: ``resized`` padded by reflection."""


def find_holes(mask: np.ndarray) -> list[Box]:
    """Bounding boxes of the connected groups of masked pixels (at most ``MAX_GROUPS``)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return []
    y, h = int(rows[0]), int(rows[-1]) + 1 - int(rows[0])
    cols = np.flatnonzero(mask[y : y + h].any(axis=0))
    x, w = int(cols[0]), int(cols[-1]) + 1 - int(cols[0])
    sub = mask[y : y + h, x : x + w].view(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(sub, connectivity=8)
    radius = 1
    while count - 1 > MAX_GROUPS:
        # Many specks: join neighbours; a box may then hold a few unmasked pixels, harmless.
        joined = cv2.dilate(sub, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
        count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
        radius *= 2
    boxes = []
    for left, top, width, height, _ in stats[1:]:
        y0, x0 = y + int(top), x + int(left)
        boxes.append((y0, y0 + int(height), x0, x0 + int(width)))
    return boxes


def group_holes(
    holes: list[Box], shape: tuple[int, int], size: tuple[int, int] | None
) -> list[Box]:
    """Merge mask groups until no group's crop reaches into another group's mask."""
    holes = list(holes)
    merged = True
    while merged and len(holes) > 1:
        merged = False
        boxes = [crop_box(hole, shape, size) for hole in holes]
        for i in range(len(holes)):
            for j in range(i + 1, len(holes)):
                if _overlap(boxes[i], holes[j]) or _overlap(boxes[j], holes[i]):
                    holes[i] = _union(holes[i], holes[j])
                    del holes[j]
                    merged = True
                    break
            if merged:
                break
    return holes


def crop_box(hole: Box, shape: tuple[int, int], size: tuple[int, int] | None) -> Box:
    """The context box of a mask group: model aspect ratio, 3x the extent, clamped."""
    y0, y1, x0, x1 = hole
    if size is not None:
        min_h, min_w = size
    else:
        min_h = min_w = MIN_DYNAMIC_SIDE
    aspect = min_w / min_h
    side_h = max(3 * (y1 - y0), int(np.ceil(3 * (x1 - x0) / aspect)), min_h)
    side_w = max(int(round(side_h * aspect)), 3 * (x1 - x0), min_w)
    by0, by1 = _window((y0 + y1) // 2, side_h, shape[0])
    bx0, bx1 = _window((x0 + x1) // 2, side_w, shape[1])
    return (by0, by1, bx0, bx1)


def plan_crop(
    index: int,
    hole: Box,
    shape: tuple[int, int],
    size: tuple[int, int] | None,
    max_dynamic_side: int,
) -> Crop:
    """The crop around ``hole`` and its sizes once resized and padded for the model."""
    box = crop_box(hole, shape, size)
    ch, cw = box[1] - box[0], box[3] - box[2]
    if size is not None:
        in_h, in_w = size
        scale = min(in_h / ch, in_w / cw)
        rh, rw = min(in_h, max(1, round(ch * scale))), min(in_w, max(1, round(cw * scale)))
    else:
        scale = min(1.0, max_dynamic_side / max(ch, cw))
        rh, rw = max(1, round(ch * scale)), max(1, round(cw * scale))
        in_h, in_w = -(-rh // 8) * 8, -(-rw // 8) * 8
    return Crop(index, box, hole, (rh, rw), (in_h, in_w))


def batches(crops: list[Crop], step: int) -> Iterator[list[Crop]]:
    """Crops of equal input size, at most ``step`` at a time."""
    by_size: dict[tuple[int, int], list[Crop]] = {}
    for crop in crops:
        by_size.setdefault(crop.input_size, []).append(crop)
    for group in by_size.values():
        for start in range(0, len(group), step):
            yield group[start : start + step]


def _window(center: int, side: int, length: int) -> tuple[int, int]:
    """A window of ``side`` around ``center``, shifted inside ``[0, length)`` and clamped."""
    start = min(max(0, center - side // 2), max(0, length - side))
    return start, min(length, start + side)


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _union(a: Box, b: Box) -> Box:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
