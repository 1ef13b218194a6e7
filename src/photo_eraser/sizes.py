"""Byte sizes as users read them in error messages."""

from __future__ import annotations


def format_size(n: int) -> str:
    """``52428800`` -> ``50 MB``; exact units only, else bytes."""
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"
