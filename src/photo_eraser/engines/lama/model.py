"""The LaMa model file: an ONNX Runtime session opened once, and the contract read from it.

The contract is read from the session rather than assumed: two inputs, the image as RGB NCHW
in [0, 1] and the mask as N1HW with 1 = fill (float32 or float16), and one output image, NCHW
in [0, 1] or [0, 255] (detected once, at load, by a test run). Spatial sizes are either fixed
(the public export is 512x512) or dynamic; the batch dimension is fixed or dynamic.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from photo_eraser.engines.base import EngineError

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

_DTYPES: dict[str, type[np.floating]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}
_REINSTALL = (
    "reinstall it with `photo-eraser models pull lama` (or `photo-eraser models import lama FILE`)"
)


@dataclass(frozen=True)
class LamaModel:
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

    def infer(self, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """The model call alone: NCHW inputs in, the raw NCHW output out."""
        feeds = {
            self.image_input: images.astype(self.dtype, copy=False),
            self.mask_input: masks.astype(self.dtype, copy=False),
        }
        return np.asarray(self.session.run([self.output], feeds)[0])


class ModelFile:
    """Opens the model at ``path`` once (thread-safe), and remembers a failure until the file
    changes on disk, so later calls fail fast instead of re-reading a bad file."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path = path
        self.threads = threads
        self._model: LamaModel | None = None
        self._failure: tuple[tuple[int, int] | None, str] | None = None
        self._lock = threading.Lock()

    def load(self) -> LamaModel:
        """The loaded model; ``EngineError`` (message for users) if it is missing or corrupt."""
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
                if stamp is None:
                    raise EngineError(f"LaMa model file {self.path} is missing; {_REINSTALL}")
                self._model = open_model(self.path, self.threads)
            except EngineError as exc:
                self._failure = (stamp, str(exc))
                raise
            self._failure = None
            return self._model

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns)


def open_model(path: Path, threads: int) -> LamaModel:
    """Open a session on ``path`` (CPU, ``threads`` intra-op threads) and read its contract."""
    import onnxruntime as ort  # here: ~150 ms and ~20 MB that processes without LaMa never pay

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
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
            f"LaMa model file {path} cannot be loaded ({reason}); it may be damaged: {_REINSTALL}"
        ) from exc
    model = read_contract(session, path)
    log.info(
        "loaded LaMa model %s: size %s, batch %s, output range %s, %d thread(s)",
        path,
        "x".join(map(str, model.size)) if model.size else "dynamic",
        model.batch or "dynamic",
        "[0, 255]" if model.output_scale != 1.0 else "[0, 1]",
        threads,
    )
    return model


def read_contract(session: ort.InferenceSession, path: Path) -> LamaModel:
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
    model = LamaModel(
        session, image_input.name, mask_input.name, outputs[0].name, dtype, size, batch, 1.0
    )
    # One test run: proves the file works and shows the output range on a mid-grey image.
    ph, pw = size or (64, 64)
    probe = np.full((batch or 1, 3, ph, pw), 0.5, np.float32)
    probe_mask = np.zeros((batch or 1, 1, ph, pw), np.float32)
    probe_mask[..., ph // 4 : ph - ph // 4, pw // 4 : pw - pw // 4] = 1
    try:
        raw = model.infer(probe, probe_mask)
    except Exception as exc:  # onnxruntime's own exception types
        raise EngineError(f"LaMa model {path} failed its test run: {exc}") from exc
    if raw.shape[:2] != probe.shape[:2]:
        raise EngineError(f"LaMa model {path} returned shape {raw.shape} for {probe.shape}")
    scale = 1 / 255 if float(np.nanmax(raw)) > 2.0 else 1.0
    return LamaModel(
        session, image_input.name, mask_input.name, outputs[0].name, dtype, size, batch, scale
    )
