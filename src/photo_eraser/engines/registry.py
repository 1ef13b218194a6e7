"""Engine names, whether each can run here, and lazy construction.

The table `_ENGINES` is the registry: a name, how to build the engine, and how to tell whether
it can run on this installation (with the reason for users when not). A new engine is a module
and one line there. ``auto`` is an alias of ``restore``, whose fallback inpainter is LaMa when
its model is installed, else the texture-aware fill (Telea on smooth surroundings, PatchMatch
on texture; OpenCV alone where PatchMatch cannot load), or the one
``PHOTO_ERASER_RESTORE_FILL`` names when it can run here. A model installed while the server
runs (``PHOTO_ERASER_AUTO_PULL``) is used from the next task on: ``restore`` is rebuilt when
the fallback it would choose changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from photo_eraser.engines import lama, patchmatch
from photo_eraser.engines.base import Engine, EngineSetup, EngineUnavailable, InpaintingEngine
from photo_eraser.engines.fill import TextureAwareFill
from photo_eraser.engines.opencv import OpenCVEngine

if TYPE_CHECKING:
    from photo_eraser.config import Settings


def _always(setup: EngineSetup) -> str | None:
    return None


@dataclass(frozen=True)
class _Entry:
    build: Callable[[EngineRegistry], Engine]
    """Makes the engine; it may ask the registry for other engines (``restore`` does)."""
    unavailable_reason: Callable[[EngineSetup], str | None] = _always
    """Why the engine cannot run here (for users), or None when it can."""
    variant: Callable[[EngineRegistry], object] = lambda engines: None
    """What the built engine depends on that may change while the process runs; the engine
    is built again when it does (``restore`` once LaMa's model is installed)."""


FALLBACKS = ("lama", "fill", "opencv")
"""``restore``'s fallbacks, best first: ``best`` takes the first that can run here."""


def _fallback_name(engines: EngineRegistry) -> str:
    def can_run(name: str) -> bool:
        return engines.can_run("patchmatch" if name == "fill" else name)

    chosen = engines.setup.restore_fill
    if chosen != "best" and can_run(chosen):
        return chosen
    return next(name for name in FALLBACKS if can_run(name))


def _restore(engines: EngineRegistry) -> Engine:
    from photo_eraser.engines.restore import RestoreParams, WatermarkRecoveryEngine
    from photo_eraser.engines.restore.params import ExactFitParams

    name = _fallback_name(engines)
    fallback: Engine
    if name == "fill":
        telea, texture = engines.get("opencv"), engines.get("patchmatch")
        assert isinstance(telea, InpaintingEngine) and isinstance(texture, InpaintingEngine)
        fallback = TextureAwareFill(telea, texture, threads=engines.setup.image_threads)
    else:
        fallback = engines.get(name)
    exact = ExactFitParams(enabled=engines.setup.restore_exact_fit)
    return WatermarkRecoveryEngine(
        fallback, RestoreParams(exact=exact), threads=engines.setup.image_threads
    )


_ENGINES: dict[str, _Entry] = {
    "opencv": _Entry(lambda engines: OpenCVEngine()),
    "lama": _Entry(lambda engines: lama.build(engines.setup), lama.unavailable_reason),
    "patchmatch": _Entry(
        lambda engines: patchmatch.PatchMatchEngine(), patchmatch.unavailable_reason
    ),
    "restore": _Entry(_restore, variant=_fallback_name),
}
_ALIASES = {"auto": "restore"}

ENGINE_NAMES = (*_ALIASES, *_ENGINES)
"""Every name a request may give, aliases first."""


class EngineRegistry:
    """Builds each engine once per process and shares it between workers."""

    def __init__(
        self,
        model_dir: Path,
        threads: int = 1,
        restore_exact_fit: bool = True,
        image_threads: int = 1,
        restore_fill: str = "best",
    ) -> None:
        self.setup: EngineSetup = EngineSetup(
            Path(model_dir), max(1, threads), restore_exact_fit, max(1, image_threads), restore_fill
        )
        self._engines: dict[str, tuple[object, Engine]] = {}
        """Name -> (the variant it was built for, the engine)."""
        self._lock = threading.RLock()  # reentrant: building ``restore`` gets its fallback

    @classmethod
    def from_settings(cls, settings: Settings, threads: int) -> EngineRegistry:
        """The registry the service's settings describe; ``threads``: each engine's own
        threads (the caller knows how many workers share the cores)."""
        return cls(
            settings.models_path,
            threads=threads,
            restore_exact_fit=settings.restore_exact_fit,
            image_threads=settings.image_threads,
            restore_fill=settings.restore_fill,
        )

    def availability(self) -> dict[str, bool]:
        """Whether each engine (aliases aside) can run here now."""
        return {name: self.can_run(name) for name in _ENGINES}

    def can_run(self, name: str) -> bool:
        """Whether engine (or alias) ``name`` exists and can run here now."""
        try:
            self.check(name)
        except EngineUnavailable:
            return False
        return True

    def check(self, name: str) -> None:
        """Raise ``EngineUnavailable`` (user-facing message) if ``name`` cannot run here."""
        entry = _ENGINES.get(_ALIASES.get(name, name))
        if entry is None:
            raise EngineUnavailable(
                f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}"
            )
        reason = entry.unavailable_reason(self.setup)
        if reason is not None:
            raise EngineUnavailable(reason)

    def get(self, name: str) -> Engine:
        """The engine (built on first use) for ``name``; ``EngineUnavailable`` if it cannot run."""
        self.check(name)
        name = _ALIASES.get(name, name)
        entry = _ENGINES[name]
        with self._lock:
            variant = entry.variant(self)
            built = self._engines.get(name)
            if built is None or built[0] != variant:
                built = (variant, entry.build(self))
                self._engines[name] = built
            return built[1]
