"""The LaMa engine: crops of every image of a batch share the model's inference batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from photo_eraser.engines.base import EngineError, EngineSetup, EngineUnavailable, InpaintingEngine
from photo_eraser.engines.lama.blend import composite, model_inputs
from photo_eraser.engines.lama.crops import Crop, batches, find_holes, group_holes, plan_crop
from photo_eraser.engines.lama.model import LamaModel, ModelFile

_NEEDS_MODEL = (
    "engine 'lama' needs its model: run `photo-eraser models pull lama` "
    "(or `photo-eraser models import lama FILE` on an air-gapped host)"
)


def unavailable_reason(setup: EngineSetup) -> str | None:
    """Why LaMa cannot run here (for users), or None: it needs its model installed."""
    return _NEEDS_MODEL if _installed_model(setup) is None else None


def build(setup: EngineSetup) -> LamaEngine:
    """The engine on the installed model; `EngineUnavailable` if there is none."""
    path = _installed_model(setup)
    if path is None:
        raise EngineUnavailable(_NEEDS_MODEL)
    return LamaEngine(path, threads=setup.threads)


def _installed_model(setup: EngineSetup) -> Path | None:
    from photo_eraser.models.manager import installed_path

    return installed_path("lama", setup.model_dir)


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
        self._file = ModelFile(self.model_path, self.threads)

    def restore_in_place(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        """Inpaint every image in place; crops of all images share inference batches."""
        masks = [_check(image, mask) for image, mask in zip(images, masks, strict=True)]
        holes = [find_holes(mask) for mask in masks]
        if not any(holes):
            return
        model = self.load()
        crops = [
            plan_crop(index, box, masks[index].shape, model.size, self.max_dynamic_side)
            for index, groups in enumerate(holes)
            for box in group_holes(groups, masks[index].shape, model.size)
        ]
        # No crop holds another crop's masked pixels (see group_holes), and only masked pixels
        # are written, so each batch can be composited before the next one is cut.
        for batch in batches(crops, model.batch or self.max_batch):
            self._run(batch, images, masks, model)

    def load(self) -> LamaModel:
        """Open the model once (thread-safe); ``EngineError`` if it is missing or corrupt.

        A failure is remembered, so later calls fail fast instead of re-reading a bad file,
        until the file changes on disk.
        """
        return self._file.load()

    def _infer(self, model: LamaModel, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """The model call alone: NCHW inputs in, the raw NCHW output out (a seam for timing)."""
        return model.infer(images, masks)

    def _run(
        self,
        batch: list[Crop],
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        model: LamaModel,
    ) -> None:
        """Cut the batch's inputs, run the model once, composite every prediction."""
        inputs = [model_inputs(images[c.image_index], masks[c.image_index], c) for c in batch]
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
            composite(
                images[crop.image_index],
                masks[crop.image_index],
                crop,
                output,
                model.output_scale,
                self.feather,
            )


def _check(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {image.shape[:2]}")
    return np.ascontiguousarray(mask, dtype=bool)
