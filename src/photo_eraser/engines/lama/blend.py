"""Pixels into and out of the model: cutting a crop's inputs, mapping its prediction back onto
the group's mask bounding box, and blending it into the masked pixels.

A crop is resized (or not) as planned in `crops`, padded by reflection to the model input, and
its prediction is resampled onto the hole box only and blended into masked pixels with a
feathered seam ``feather`` pixels wide inside the mask. Pixels outside the mask are never
written. Work is proportional to the hole's area, not the image's size.
"""

from __future__ import annotations

import cv2
import numpy as np

from photo_eraser.engines.lama.crops import Crop

_STRIP = 256
"""Rows of the hole composited at a time, to bound memory on huge masks."""


def model_inputs(image: np.ndarray, mask: np.ndarray, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
    """The model inputs for one crop: 3xHxW image in [0, 1] and 1xHxW mask in {0, 1}."""
    y0, y1, x0, x1 = crop.box
    (rh, rw), (in_h, in_w) = crop.resized, crop.input_size
    pixels: np.ndarray = image[y0:y1, x0:x1]
    if pixels.strides[0] < 0 or pixels.strides[1:] != (3, 1):
        pixels = np.ascontiguousarray(pixels)  # e.g. a rotated view; OpenCV needs plain rows
    holes: np.ndarray = mask[y0:y1, x0:x1].view(np.uint8)
    if (rh, rw) != (y1 - y0, x1 - x0):
        shrink = rh < y1 - y0 or rw < x1 - x0
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        pixels = cv2.resize(pixels, (rw, rh), interpolation=interpolation)
        # Any coverage makes a model pixel a hole, and so do its neighbours: resampling the
        # output back interpolates between neighbours, which must all be filled ones.
        coverage = cv2.resize(holes * np.uint8(255), (rw, rh), interpolation=interpolation)
        holes = cv2.dilate((coverage > 0).view(np.uint8), np.ones((3, 3), np.uint8))
    if (in_h, in_w) != (rh, rw):
        pad = ((0, in_h - rh), (0, in_w - rw))
        pixels = np.pad(pixels, (*pad, (0, 0)), mode="symmetric")
        holes = np.pad(holes, pad, mode="symmetric")
    image_in = np.empty((3, in_h, in_w), np.float32)
    np.multiply(pixels.transpose(2, 0, 1), np.float32(1 / 255), out=image_in)
    return image_in, holes[None].astype(np.float32)


def composite(
    out: np.ndarray,
    mask: np.ndarray,
    crop: Crop,
    output: np.ndarray,
    output_scale: float,
    feather: int,
) -> None:
    """Write one crop's raw model ``output`` (CxHxW) into the masked pixels of its hole box,
    feathering the seam.

    Works in strips of rows so that a hole as large as the image needs little memory.
    """
    source, origin = _source(crop, output, output_scale)
    hy0, hy1, hx0, hx1 = crop.hole
    hole_mask = mask[hy0:hy1, hx0:hx1]
    at_border = (hy0 == 0, hy1 == mask.shape[0], hx0 == 0, hx1 == mask.shape[1])
    levels = _seam_levels(hole_mask, feather, at_border)
    unit = np.float32(1 / (feather + 1))
    for row0 in range(0, hy1 - hy0, _STRIP):
        row1 = min(hy1 - hy0, row0 + _STRIP)
        inside = hole_mask[row0:row1]
        if not inside.any():
            continue
        region = out[hy0 + row0 : hy0 + row1, hx0:hx1]
        predicted = _prediction(crop, source, origin, row0, row1)[inside]
        original = region[inside].astype(np.float32)
        alpha = (levels[row0:row1][inside] * unit)[:, None]
        blended = predicted * alpha + original * (1 - alpha)
        region[inside] = np.rint(blended).astype(np.uint8)


def seam_weights(
    mask: np.ndarray, feather: int, at_border: tuple[bool, bool, bool, bool] = (False,) * 4
) -> np.ndarray:
    """Blend weight of the prediction per pixel: 0 outside ``mask``, 1 deep inside.

    Inside parts of the mask at least ``2 * feather + 1`` pixels thick, the weight ramps up as
    ``d / (feather + 1)`` with ``d`` the chessboard distance to the nearest unmasked pixel (1
    for pixels touching one); thinner strokes are filled fully, so they leave no residue.
    ``at_border`` (top, bottom, left, right) says which sides of the array are the image's
    edge, where there is nothing to blend with.
    """
    levels = _seam_levels(np.ascontiguousarray(mask, dtype=bool), feather, at_border)
    return levels.astype(np.float32) / np.float32(feather + 1)


def _source(
    crop: Crop, output: np.ndarray, output_scale: float
) -> tuple[np.ndarray, tuple[int, int]]:
    """The output pixels that resampling onto the hole box reads, as HxWx3 float32 in
    [0, 255], and their top-left corner in the resized crop. Costs the hole's area."""
    rh, rw = crop.resized
    (ty, sy), (tx, sx) = _sampling(crop)
    hy0, hy1, hx0, hx1 = crop.hole
    ry0, rx0 = max(0, int(np.floor(ty))), max(0, int(np.floor(tx)))
    ry1 = min(rh, int(np.floor(ty + (hy1 - hy0 - 1) * sy)) + 2)
    rx1 = min(rw, int(np.floor(tx + (hx1 - hx0 - 1) * sx)) + 2)
    source = np.ascontiguousarray(output[:, ry0:ry1, rx0:rx1].transpose(1, 2, 0), np.float32)
    np.multiply(source, np.float32(255 * output_scale), out=source)
    np.clip(source, 0, 255, out=source)
    return source, (ry0, rx0)


def _prediction(
    crop: Crop, source: np.ndarray, origin: tuple[int, int], row0: int, row1: int
) -> np.ndarray:
    """The prediction for rows ``row0:row1`` of the hole box, HxWx3 float32 in [0, 255].

    Bilinear, on the same sampling grid as ``cv2.resize`` from the resized crop back to the
    image, evaluated on these rows of the hole box alone.
    """
    (ty, sy), (tx, sx) = _sampling(crop)
    ry0, rx0 = origin
    width = crop.hole[3] - crop.hole[2]
    if sy == 1 and sx == 1:
        dy, dx = round(ty) - ry0 + row0, round(tx) - rx0
        return source[dy : dy + row1 - row0, dx : dx + width]
    matrix = np.array([[sx, 0, tx - rx0], [0, sy, ty + row0 * sy - ry0]], np.float64)
    return cv2.warpAffine(
        source,
        matrix,
        (width, row1 - row0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )


def _sampling(crop: Crop) -> tuple[tuple[float, float], tuple[float, float]]:
    """Per axis: where the hole box's first pixel centre falls in the resized crop, and the
    step per pixel (``cv2.resize``'s convention for pixel centres)."""
    rh, rw = crop.resized
    y0, y1, x0, x1 = crop.box
    sy, sx = rh / (y1 - y0), rw / (x1 - x0)
    return ((crop.hole[0] - y0 + 0.5) * sy - 0.5, sy), ((crop.hole[2] - x0 + 0.5) * sx - 0.5, sx)


def _seam_levels(
    mask: np.ndarray, feather: int, at_border: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """``uint8``: 0 outside the mask, ``min(d, feather + 1)`` inside, with ``d`` the chessboard
    distance to the nearest unmasked pixel; ``feather + 1`` in parts thinner than
    ``2 * feather + 1``. Sides flagged in ``at_border`` (top, bottom, left, right) are the
    image's edge: nothing to blend with there, so they do not count as unmasked."""
    inside = mask.view(np.uint8)
    if feather == 0:
        return inside.copy()
    top, bottom, left, right = (int(flag) for flag in at_border)
    padded = np.pad(inside, ((top, bottom), (left, right)), mode="edge")
    padded = np.pad(padded, ((1 - top, 1 - bottom), (1 - left, 1 - right)))
    levels: np.ndarray = padded.copy()
    eroded: np.ndarray = padded
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(feather):
        eroded = cv2.erode(eroded, kernel)  # pixels outside the array count as inside
        levels += eroded
    thick = cv2.morphologyEx(padded, cv2.MORPH_OPEN, np.ones((2 * feather + 1,) * 2, np.uint8))
    levels[(thick == 0) & (padded == 1)] = feather + 1
    return levels[1:-1, 1:-1]
