"""Engine names, lazy construction, and the ``auto`` choice."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from photo_eraser.engines.base import Engine, EngineUnavailable
from photo_eraser.engines.opencv import OpenCVEngine

log = logging.getLogger(__name__)

ENGINE_NAMES = ("auto", "opencv", "lama", "restore")


class EngineRegistry:
    """Builds each engine once per process and shares it between workers."""

    def __init__(self, model_dir: Path, threads: int = 1, restore_exact_fit: bool = True) -> None:
        self.model_dir = model_dir
        self.threads = max(1, threads)
        self.restore_exact_fit = restore_exact_fit
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def lama_model_path(self) -> Path | None:
        from photo_eraser.models.manager import installed_path

        return installed_path("lama", self.model_dir)

    def availability(self) -> dict[str, bool]:
        return {"opencv": True, "lama": self.lama_model_path() is not None, "restore": True}

    def check(self, name: str) -> None:
        """Raise ``EngineUnavailable`` (user-facing message) if ``name`` cannot run here."""
        if name not in ENGINE_NAMES:
            raise EngineUnavailable(
                f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}"
            )
        if name == "lama" and self.lama_model_path() is None:
            raise EngineUnavailable(
                "engine 'lama' needs its model: run `photo-eraser models pull lama` "
                "(or `photo-eraser models import lama FILE` on an air-gapped host)"
            )

    def get(self, name: str) -> Engine:
        self.check(name)
        if name == "auto":
            name = "restore"
        with self._lock:
            engine = self._engines.get(name)
            if engine is None:
                engine = self._build(name)
                self._engines[name] = engine
            return engine

    def best_inpainter(self) -> Engine:
        return self.get("lama") if self.lama_model_path() is not None else self.get("opencv")

    def _build(self, name: str) -> Engine:
        if name == "opencv":
            return OpenCVEngine()
        if name == "lama":
            from photo_eraser.engines.lama import LamaEngine

            path = self.lama_model_path()
            assert path is not None
            return LamaEngine(path, threads=self.threads)
        if name == "restore":
            from photo_eraser.engines.restore import RestoreParams, WatermarkRecoveryEngine
            from photo_eraser.engines.restore.params import ExactFitParams

            params = RestoreParams(exact=ExactFitParams(enabled=self.restore_exact_fit))
            return WatermarkRecoveryEngine(self._fallback_for_restore(), params)
        raise EngineUnavailable(f"unknown engine {name!r}")

    def _fallback_for_restore(self) -> Engine:
        # Called with the lock held: build the inpainter directly rather than via get().
        name = "lama" if self.lama_model_path() is not None else "opencv"
        engine = self._engines.get(name)
        if engine is None:
            engine = self._build(name)
            self._engines[name] = engine
        return engine
