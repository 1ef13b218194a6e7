"""LaMa inpainting (Suvorov et al., WACV 2022) through ONNX Runtime, on crops around the mask.

The model contract, read from the session rather than assumed: two inputs, the image as RGB
NCHW in [0, 1] and the mask as N1HW with 1 = fill (float32 or float16), and one output image,
NCHW in [0, 1] or [0, 255] (detected once, at load). Spatial sizes are either fixed (the public
export is 512x512) or dynamic; the batch dimension is fixed or dynamic.

Each connected group of masked pixels gets one crop: a box with the model's aspect ratio
(square for square models), at least three times the group's extent so the mask's extent is
repeated as context on each side, and never smaller than the model's input (fixed-size models)
or ``MIN_DYNAMIC_SIDE`` (dynamic ones), clamped to the image. Groups whose crops would reach
into another group's mask are merged first. A crop is resized to the model size (fixed) or
only padded to a multiple of 8 when it is at most ``max_dynamic_side`` (dynamic), padded by
reflection, inferred in batches, mapped back onto the group's mask bounding box only, and
blended into masked pixels with a feathered seam ``feather`` pixels wide inside the mask.
Pixels outside the mask are never written. Work is proportional to the mask's extent, not the
image's size, apart from the output copy and one scan of the mask for its bounding box.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from photo_eraser.engines.base import EngineError, InpaintingEngine

log = logging.getLogger(__name__)

MIN_DYNAMIC_SIDE = 256
"""Smallest crop side for dynamic-size models, so small masks still get context."""
MAX_GROUPS = 32
"""Above this many connected components, nearby ones are joined by dilation first."""
_STRIP = 256
"""Rows of the hole composited at a time, to bound memory on huge masks."""

_DTYPES: dict[str, type[np.floating]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}
_Box = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)``, end-exclusive, in image coordinates."""


@dataclass(frozen=True)
class _Model:
    """A loaded session and the contract read from it."""

    session: ort.InferenceSession
    image_input: str
    mask_input: str
    output: str
    dtype: type[np.floating]
    size: tuple[int, int] | None
    """Fixed input ``(height, width)``, or ``None`` for dynamic spatial dimensions."""
    batch: int | None
    """Fixed batch size, or ``None`` when any batch size is accepted."""
    output_scale: float
    """Multiplier bringing the output to [0, 1]: 1 or 1/255."""


@dataclass(frozen=True)
class _Crop:
    """Where one model input is cut from one image, and where its prediction goes back."""

    image_index: int
    box: _Box
    hole: _Box
    """Bounding box of the group's masked pixels; the only region written back."""
    resized: tuple[int, int]
    """Size of the crop after resizing, before padding to the model input."""
    input_size: tuple[int, int]
    """Model input ``(height, width)``: ``resized`` padded by reflection."""


class LamaEngine(InpaintingEngine):
    """Large-mask inpainting with LaMa on CPU. Good on wide regions; needs its model file."""

    name = "lama"

    def __init__(
        self,
        model_path: Path,
        threads: int = 1,
        *,
        feather: int = 2,
        max_batch: int = 4,
        max_dynamic_side: int = 1024,
    ) -> None:
        self.model_path = Path(model_path)
        self.threads = max(1, threads)
        self.feather = max(0, feather)
        self.max_batch = max(1, max_batch)
        self.max_dynamic_side = max(8, max_dynamic_side)
        self._model: _Model | None = None
        self._failure: tuple[tuple[int, int] | None, str] | None = None
        self._lock = threading.Lock()

    def is_available(self) -> bool:
        return self.model_path.is_file()

    def restore_in_place(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        """Inpaint every image in place; crops of all images share inference batches."""
        masks = [_check(image, mask) for image, mask in zip(images, masks, strict=True)]
        holes = [_holes(mask) for mask in masks]
        if not any(holes):
            return
        model = self.load()
        crops = [
            self._plan(index, box, masks[index].shape, model)
            for index, groups in enumerate(holes)
            for box in self._group(groups, masks[index].shape, model)
        ]
        # No crop holds another crop's masked pixels (see _group), and only masked pixels are
        # written, so each batch can be composited before the next one is cut.
        for batch in self._batches(crops, model):
            self._run(batch, images, masks, model)

    # --- the session ---------------------------------------------------------------------

    def load(self) -> _Model:
        """Open the model once (thread-safe); ``EngineError`` if it is missing or corrupt.

        A failure is remembered, so later calls fail fast instead of re-reading a bad file,
        until the file changes on disk.
        """
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is not None:
                return self._model
            stamp = self._stamp()
            if self._failure is not None and self._failure[0] == stamp:
                raise EngineError(self._failure[1])
            try:
                self._model = self._open(stamp)
            except EngineError as exc:
                self._failure = (stamp, str(exc))
                raise
            self._failure = None
            return self._model

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.model_path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def _open(self, stamp: tuple[int, int] | None) -> _Model:
        path = self.model_path
        hint = (
            "reinstall it with `photo-eraser models pull lama` "
            "(or `photo-eraser models import lama FILE`)"
        )
        if stamp is None:
            raise EngineError(f"LaMa model file {path} is missing; {hint}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(
                f"LaMa model file {path} cannot be loaded ({reason}); it may be damaged: {hint}"
            ) from exc
        model = _read_contract(session, path)
        log.info(
            "loaded LaMa model %s: size %s, batch %s, output range %s, %d thread(s)",
            path,
            "x".join(map(str, model.size)) if model.size else "dynamic",
            model.batch or "dynamic",
            "[0, 255]" if model.output_scale != 1.0 else "[0, 1]",
            self.threads,
        )
        return model

    def _infer(self, model: _Model, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """The model call alone: NCHW inputs in, the raw NCHW output out."""
        feeds = {
            model.image_input: images.astype(model.dtype, copy=False),
            model.mask_input: masks.astype(model.dtype, copy=False),
        }
        return np.asarray(model.session.run([model.output], feeds)[0])

    # --- crops -----------------------------------------------------------------------------

    def _group(self, holes: list[_Box], shape: tuple[int, int], model: _Model) -> list[_Box]:
        """Merge mask groups until no group's crop reaches into another group's mask."""
        holes = list(holes)
        merged = True
        while merged and len(holes) > 1:
            merged = False
            boxes = [self._crop_box(hole, shape, model) for hole in holes]
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

    def _crop_box(self, hole: _Box, shape: tuple[int, int], model: _Model) -> _Box:
        """The context box of a mask group: model aspect ratio, 3x the extent, clamped."""
        y0, y1, x0, x1 = hole
        if model.size is not None:
            min_h, min_w = model.size
        else:
            min_h = min_w = MIN_DYNAMIC_SIDE
        aspect = min_w / min_h
        side_h = max(3 * (y1 - y0), int(np.ceil(3 * (x1 - x0) / aspect)), min_h)
        side_w = max(int(round(side_h * aspect)), 3 * (x1 - x0), min_w)
        by0, by1 = _window((y0 + y1) // 2, side_h, shape[0])
        bx0, bx1 = _window((x0 + x1) // 2, side_w, shape[1])
        return (by0, by1, bx0, bx1)

    def _plan(self, index: int, hole: _Box, shape: tuple[int, int], model: _Model) -> _Crop:
        """The crop around ``hole`` and its sizes once resized and padded for the model."""
        box = self._crop_box(hole, shape, model)
        ch, cw = box[1] - box[0], box[3] - box[2]
        if model.size is not None:
            in_h, in_w = model.size
            scale = min(in_h / ch, in_w / cw)
            rh, rw = min(in_h, max(1, round(ch * scale))), min(in_w, max(1, round(cw * scale)))
        else:
            scale = min(1.0, self.max_dynamic_side / max(ch, cw))
            rh, rw = max(1, round(ch * scale)), max(1, round(cw * scale))
            in_h, in_w = -(-rh // 8) * 8, -(-rw // 8) * 8
        return _Crop(index, box, hole, (rh, rw), (in_h, in_w))

    def _batches(self, crops: list[_Crop], model: _Model) -> Iterator[list[_Crop]]:
        """Crops of equal input size, at most a batch at a time."""
        by_size: dict[tuple[int, int], list[_Crop]] = {}
        for crop in crops:
            by_size.setdefault(crop.input_size, []).append(crop)
        step = model.batch or self.max_batch
        for group in by_size.values():
            for start in range(0, len(group), step):
                yield group[start : start + step]

    def _run(
        self,
        batch: list[_Crop],
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        model: _Model,
    ) -> None:
        """Cut the batch's inputs, run the model once, composite every prediction."""
        inputs = [_inputs(images[c.image_index], masks[c.image_index], c) for c in batch]
        if model.batch is not None:
            # A fixed batch size larger than the batch is filled with repeats.
            inputs += [inputs[-1]] * (model.batch - len(inputs))
        image_in = np.stack([image for image, _ in inputs])
        mask_in = np.stack([mask for _, mask in inputs])
        try:
            raw = self._infer(model, image_in, mask_in)
        except Exception as exc:  # onnxruntime's own exception types
            raise EngineError(f"LaMa inference failed on a {image_in.shape} input: {exc}") from exc
        if raw.shape != (len(inputs), 3, *image_in.shape[2:]):
            raise EngineError(
                f"LaMa model {self.model_path} returned shape {raw.shape} "
                f"for an input of shape {image_in.shape}"
            )
        for crop, output in zip(batch, raw, strict=False):
            source, origin = _source(crop, output, model.output_scale)
            self._composite(images[crop.image_index], masks[crop.image_index], crop, source, origin)

    def _composite(
        self,
        out: np.ndarray,
        mask: np.ndarray,
        crop: _Crop,
        source: np.ndarray,
        origin: tuple[int, int],
    ) -> None:
        """Write the prediction into the masked pixels of the hole box, feathering the seam.

        Works in strips of rows so that a hole as large as the image needs little memory.
        """
        hy0, hy1, hx0, hx1 = crop.hole
        hole_mask = mask[hy0:hy1, hx0:hx1]
        at_border = (hy0 == 0, hy1 == mask.shape[0], hx0 == 0, hx1 == mask.shape[1])
        levels = _seam_levels(hole_mask, self.feather, at_border)
        unit = np.float32(1 / (self.feather + 1))
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


def _inputs(image: np.ndarray, mask: np.ndarray, crop: _Crop) -> tuple[np.ndarray, np.ndarray]:
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


def _source(
    crop: _Crop, output: np.ndarray, output_scale: float
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
    crop: _Crop, source: np.ndarray, origin: tuple[int, int], row0: int, row1: int
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


def _sampling(crop: _Crop) -> tuple[tuple[float, float], tuple[float, float]]:
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


def _read_contract(session: ort.InferenceSession, path: Path) -> _Model:
    """Identify inputs and output, their shapes and dtype, and the output range."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    signature = ", ".join(f"{i.name}{list(i.shape)}" for i in inputs)
    if len(inputs) != 2 or not outputs or any(len(i.shape) != 4 for i in (*inputs, outputs[0])):
        raise EngineError(
            f"{path} is not a LaMa-style model (expected image and mask NCHW inputs and an "
            f"NCHW output, found inputs {signature})"
        )
    named = [i for i in inputs if "mask" in i.name.lower()]
    single = [i for i in inputs if i.shape[1] == 1]
    mask_input = named[0] if len(named) == 1 else single[0] if len(single) == 1 else None
    if mask_input is None:
        raise EngineError(f"{path}: cannot tell the mask input from the image input ({signature})")
    image_input = inputs[1] if mask_input is inputs[0] else inputs[0]
    dtype = _DTYPES.get(image_input.type)
    if dtype is None:
        raise EngineError(f"{path}: unsupported input type {image_input.type}")
    n, _, h, w = image_input.shape
    size = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
    batch = n if isinstance(n, int) and n > 0 else None
    model = _Model(
        session, image_input.name, mask_input.name, outputs[0].name, dtype, size, batch, 1.0
    )
    # One test run: proves the file works and shows the output range on a mid-grey image.
    ph, pw = size or (64, 64)
    probe = np.full((batch or 1, 3, ph, pw), 0.5, np.float32)
    probe_mask = np.zeros((batch or 1, 1, ph, pw), np.float32)
    probe_mask[..., ph // 4 : ph - ph // 4, pw // 4 : pw - pw // 4] = 1
    try:
        raw = np.asarray(
            session.run(
                [model.output],
                {
                    model.image_input: probe.astype(dtype),
                    model.mask_input: probe_mask.astype(dtype),
                },
            )[0]
        )
    except Exception as exc:  # onnxruntime's own exception types
        raise EngineError(f"LaMa model {path} failed its test run: {exc}") from exc
    if raw.shape[:2] != probe.shape[:2]:
        raise EngineError(f"LaMa model {path} returned shape {raw.shape} for {probe.shape}")
    scale = 1 / 255 if float(np.nanmax(raw)) > 2.0 else 1.0
    return _Model(
        session, image_input.name, mask_input.name, outputs[0].name, dtype, size, batch, scale
    )


def _check(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    return np.ascontiguousarray(mask, dtype=bool)


def _holes(mask: np.ndarray) -> list[_Box]:
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


def _window(center: int, side: int, length: int) -> tuple[int, int]:
    """A window of ``side`` around ``center``, shifted inside ``[0, length)`` and clamped."""
    start = min(max(0, center - side // 2), max(0, length - side))
    return start, min(length, start + side)


def _overlap(a: _Box, b: _Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _union(a: _Box, b: _Box) -> _Box:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
