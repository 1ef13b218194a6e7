"""What a benchmark prints about where it ran: the machine, its load, versions, the code."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def first_line(argv: list[str]) -> str:
    """The first line a command prints (stdout, else stderr), or ``unknown``."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        lines = (done.stdout or done.stderr).strip().splitlines()
        if lines:
            return lines[0].strip()
    return "unknown"


def lscpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_line() -> str:
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
        ram = f"{kb / 2**20:.1f} GiB"
    return (
        f"machine: {lscpu_model()}, {len(os.sched_getaffinity(0))} usable cores "
        f"(of {os.cpu_count()}), RAM {ram}, {platform.system()} {platform.release()}"
    )


def version(name: str) -> str:
    """The installed version of a distribution, or ``-``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def code_line() -> str:
    """The commit measured, and whether src/ had uncommitted changes (or came from elsewhere)."""
    import photo_eraser

    head = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    src = Path(photo_eraser.__file__).resolve().parent.parent
    if src != REPO / "src":
        return f"code: photo_eraser imported from {src}, not this checkout (at {head})"
    changed: list[str] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        status = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "src"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        changed = [line[3:] for line in status.splitlines() if line.strip()]
    if not changed:
        return f"code: commit {head}"
    return f"code: commit {head} + uncommitted changes in {', '.join(changed)}"
