"""LaMa inpainting (Suvorov et al., WACV 2022) through ONNX Runtime, on crops around the mask.

- `model`: the model file, its ONNX Runtime session and the contract read from it;
- `crops`: one crop per group of masked pixels, with context, and their inference batches;
- `blend`: cutting each crop's inputs and blending its prediction into the masked pixels only;
- `engine`: `LamaEngine`, which runs the three for a batch of images, and for the registry
  whether it can run here (`unavailable_reason`) and how it is built (`build`).

Pixels outside the mask are never written. Work is proportional to the mask's extent, not the
image's size, apart from the output copy and one scan of the mask for its bounding box.
"""

from __future__ import annotations

from photo_eraser.engines.lama.blend import seam_weights
from photo_eraser.engines.lama.crops import MAX_GROUPS, MIN_DYNAMIC_SIDE
from photo_eraser.engines.lama.engine import LamaEngine, build, unavailable_reason

__all__ = [
    "MAX_GROUPS",
    "MIN_DYNAMIC_SIDE",
    "LamaEngine",
    "build",
    "seam_weights",
    "unavailable_reason",
]
