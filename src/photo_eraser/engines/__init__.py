"""Restoration engines behind one interface, chosen by name.

``auto`` picks the best engine available: batch watermark recovery (``restore``) when it is
installed, which itself falls back to the best inpainter; else LaMa when its model is installed;
else OpenCV.
"""

from __future__ import annotations

from photo_eraser.engines.base import (
    Engine,
    EngineError,
    EngineUnavailable,
    InpaintingEngine,
    Restored,
)

__all__ = ["Engine", "EngineError", "EngineUnavailable", "InpaintingEngine", "Restored"]
