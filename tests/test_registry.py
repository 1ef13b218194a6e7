"""The engine registry: names, aliases, availability with its reason, and the restore fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from photo_eraser.engines.base import EngineUnavailable
from photo_eraser.engines.lama import LamaEngine
from photo_eraser.engines.opencv import OpenCVEngine
from photo_eraser.engines.registry import ENGINE_NAMES, EngineRegistry
from photo_eraser.models.manager import MANIFEST_ENV
from tests.test_lama import build_model


def test_names_and_availability_without_models(tmp_path: Path) -> None:
    registry = EngineRegistry(tmp_path)
    assert ENGINE_NAMES == ("auto", "opencv", "lama", "restore")
    assert registry.availability() == {"opencv": True, "lama": False, "restore": True}
    with pytest.raises(EngineUnavailable, match="unknown engine 'nope'; choose one of auto, "):
        registry.check("nope")
    registry.check("auto")  # the positive control


def test_auto_is_restore_falling_back_to_opencv_without_the_lama_model(tmp_path: Path) -> None:
    registry = EngineRegistry(tmp_path)
    restore = registry.get("auto")
    assert restore is registry.get("restore") and restore.name == "restore"
    assert isinstance(restore.fallback, OpenCVEngine)  # type: ignore[attr-defined]
    assert restore.fallback is registry.get("opencv")  # type: ignore[attr-defined]


def test_restore_falls_back_to_lama_when_its_model_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = build_model(tmp_path / "lama_fp32.onnx", "fill")
    entry = {"file": path.name, "size": path.stat().st_size, "sha256": "0" * 64, "url": "x"}
    (tmp_path / "manifest.json").write_text(json.dumps({"lama": {**entry, "license": "MIT"}}))
    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / "manifest.json"))
    registry = EngineRegistry(tmp_path, threads=2)
    assert registry.availability()["lama"] is True
    fallback = registry.get("restore").fallback  # type: ignore[attr-defined]
    assert isinstance(fallback, LamaEngine) and fallback.threads == 2
    assert fallback is registry.get("lama")
