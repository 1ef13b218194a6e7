"""The allocator tuning at start: every setting takes on glibc, and an operator's variable
wins over ours."""

from __future__ import annotations

import platform

import pytest

from photo_eraser import memory

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere the tuning is a no-op"
)


@glibc
def test_every_setting_takes_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    for _, variable in memory.TUNING.values():
        monkeypatch.delenv(variable, raising=False)
    assert memory.tune_allocator() == len(memory.TUNING) == 3


@glibc
def test_an_operators_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert memory.tune_allocator() == 1  # the trim threshold only
