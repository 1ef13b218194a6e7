"""Auto-pull: the embedded server downloads the LaMa model in the background on start.

``photo-eraser serve`` with ``PHOTO_ERASER_AUTO_PULL`` on (the default) and no LaMa model
installed runs the verified ``models pull`` in a thread: the service answers at once with the
weight-free engines, logs the download's progress, and ``auto`` takes LaMa from the first task
after the model is installed (the registry rebuilds ``restore`` when its fallback changes).
Offline, or when the download fails its checks, one warning line says so and nothing else
changes; the next start tries again and resumes a partial download.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from photo_eraser.models.manager import ModelError, get_spec, installed_path, pull

log = logging.getLogger(__name__)

PROGRESS_STEP = 10
"""Log the download's progress every this many percent."""


class Stopped(Exception):
    """The server is stopping: the download ends here and its part file is kept."""


class AutoPull:
    """Downloads model ``name`` into ``model_dir`` in a daemon thread unless installed."""

    def __init__(self, name: str, model_dir: Path, *, timeout: float = 30.0) -> None:
        self.name = name
        self.model_dir = Path(model_dir)
        self.timeout = timeout
        self.outcome: str | None = None
        """``installed``, ``failed`` or ``stopped`` once the thread has ended."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged = -1

    def start(self) -> bool:
        """Start the download unless the model is installed (or unknown); whether it started."""
        try:
            if installed_path(self.name, self.model_dir) is not None:
                return False
            spec = get_spec(self.name)
        except ModelError as exc:
            log.warning("model auto-pull skipped: %s", exc, extra={"model": self.name})
            return False
        log.info(
            "model auto-pull started: serving with the weight-free engines until it is installed",
            extra={"model": self.name, "url": spec.url, "total_bytes": spec.size},
        )
        self._thread = threading.Thread(target=self._run, name="model-pull", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the download to stop (the part file is kept) and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> str | None:
        """Wait for the thread to end; its outcome (None if still running)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.outcome

    def _run(self) -> None:
        started = time.monotonic()
        try:
            path = pull(
                self.name,
                self.model_dir,
                progress=False,
                timeout=self.timeout,
                on_progress=self._progress,
            )
        except Stopped:
            self.outcome = "stopped"
            log.info(
                "model auto-pull stopped; the next start resumes it", extra={"model": self.name}
            )
        except ModelError as exc:
            self.outcome = "failed"
            # One line, whatever went wrong: offline hosts see it on every start.
            log.warning(
                "model auto-pull failed, serving with the weight-free engines "
                "(`photo-eraser models pull %s` retries; PHOTO_ERASER_AUTO_PULL=0 turns this "
                "off): %s",
                self.name,
                exc,
                extra={"model": self.name},
            )
        except Exception:  # a bug must not take the server down: it serves without the model
            self.outcome = "failed"
            log.exception("model auto-pull failed", extra={"model": self.name})
        else:
            self.outcome = "installed"
            log.info(
                "model auto-pull installed the model; `auto` uses it from the next task",
                extra={
                    "model": self.name,
                    "path": str(path),
                    "seconds": round(time.monotonic() - started, 1),
                },
            )

    def _progress(self, done: int, total: int) -> None:
        if self._stop.is_set():
            raise Stopped
        percent = done * 100 // max(1, total)
        step = percent - percent % PROGRESS_STEP
        if step > self._logged:
            self._logged = step
            log.info(
                "model download progress",
                extra={
                    "model": self.name,
                    "percent": step,
                    "done_bytes": done,
                    "total_bytes": total,
                },
            )
