"""Byte sizes as users read them (error messages, model listings)."""

from __future__ import annotations

_UNITS = (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10))


def format_size(n: int) -> str:
    """``52428800`` -> ``50 MB``, in the largest unit that holds it a whole number of times;
    a size that no unit holds exactly keeps one decimal and its exact count: ``1500000`` ->
    ``1.4 MB (1500000 bytes)``; under 1 KB, ``n bytes``. Units are binary (1 KB = 1024)."""
    for unit, size in _UNITS:
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    for unit, size in _UNITS:
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"
