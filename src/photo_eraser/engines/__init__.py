"""Restoration engines behind one interface, chosen by name (`registry`).

``auto`` is batch watermark recovery (``restore``), which falls back to the best inpainter
installed: LaMa when its model is installed, else OpenCV.
"""

from __future__ import annotations

from photo_eraser.engines.base import (
    Engine,
    EngineError,
    EngineSetup,
    EngineUnavailable,
    InpaintingEngine,
    Restored,
)

__all__ = [
    "Engine",
    "EngineError",
    "EngineSetup",
    "EngineUnavailable",
    "InpaintingEngine",
    "Restored",
]
