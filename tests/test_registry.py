"""The engine registry: names, aliases, availability with its reason, and the restore fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from photo_eraser.config import Settings
from photo_eraser.engines.base import EngineUnavailable
from photo_eraser.engines.fill import TextureAwareFill
from photo_eraser.engines.lama import LamaEngine
from photo_eraser.engines.opencv import OpenCVEngine
from photo_eraser.engines.registry import ENGINE_NAMES, EngineRegistry
from photo_eraser.models.manager import MANIFEST_ENV
from tests.test_lama import build_model


def test_names_and_availability_without_models(tmp_path: Path) -> None:
    registry = EngineRegistry(tmp_path)
    assert ENGINE_NAMES == ("auto", "opencv", "lama", "patchmatch", "restore")
    assert registry.availability() == {
        "opencv": True,
        "lama": False,
        "patchmatch": True,
        "restore": True,
    }
    with pytest.raises(EngineUnavailable, match="unknown engine 'nope'; choose one of auto, "):
        registry.check("nope")
    registry.check("auto")  # the positive control


def test_auto_is_restore_falling_back_to_the_texture_aware_fill_without_the_lama_model(
    tmp_path: Path,
) -> None:
    registry = EngineRegistry(tmp_path)
    restore = registry.get("auto")
    assert restore is registry.get("restore") and restore.name == "restore"
    fallback = restore.fallback  # type: ignore[attr-defined]
    assert isinstance(fallback, TextureAwareFill)
    assert fallback.smooth is registry.get("opencv") and isinstance(fallback.smooth, OpenCVEngine)
    assert fallback.textured is registry.get("patchmatch")


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


@pytest.mark.parametrize(
    ("setting", "kind"),
    [("opencv", OpenCVEngine), ("fill", TextureAwareFill), ("best", TextureAwareFill)],
)
def test_restore_fill_setting_names_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, kind: type
) -> None:
    monkeypatch.setenv("PHOTO_ERASER_RESTORE_FILL", setting)
    settings = Settings(data_dir=tmp_path)
    registry = EngineRegistry(tmp_path, restore_fill=settings.restore_fill)
    assert type(registry.get("auto").fallback) is kind  # type: ignore[attr-defined]


def test_restore_fill_named_but_not_installed_falls_back_to_the_best_there_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = EngineRegistry(tmp_path / "models", restore_fill="lama")  # no LaMa model here
    assert isinstance(registry.get("auto").fallback, TextureAwareFill)  # type: ignore[attr-defined]
    monkeypatch.setenv("PHOTO_ERASER_RESTORE_FILL", "telea")
    with pytest.raises(ValidationError, match="best.*lama.*fill.*opencv"):
        Settings(data_dir=tmp_path)


def test_restore_takes_lama_once_its_model_is_installed_while_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model(tmp_path / "built.onnx", "fill")
    entry = {"file": "lama_fp32.onnx", "size": model.stat().st_size, "sha256": "0" * 64}
    manifest = {"lama": {**entry, "url": "x", "license": "MIT"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / "manifest.json"))
    models = tmp_path / "models"
    registry = EngineRegistry(models)
    before = registry.get("auto")
    assert isinstance(before.fallback, TextureAwareFill)  # type: ignore[attr-defined]
    assert registry.get("auto") is before  # built once while nothing changes
    models.mkdir()
    model.rename(models / "lama_fp32.onnx")  # as `models pull` installs: one rename
    after = registry.get("auto")
    assert after is not before
    assert after.fallback is registry.get("lama")  # type: ignore[attr-defined]
