"""``photo-eraser submit``, the remote twin of ``erase``: the CLI in a process of its own,
against the real server (``LocalServer`` on a real socket)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.imagehost import ImageHost
from harness.images import encode, photo, rect_mask
from harness.server import run_cli
from tests.inprocess import LocalServer

pytestmark = pytest.mark.process

W, H = 320, 256
BOX = (100, 140, 120, 200)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    local = LocalServer(tmp_path_factory.mktemp("remote"), listen=True).start()
    yield local
    local.stop()


def cli_env(server: LocalServer, **extra: str) -> dict[str, str]:
    appkey, appsecret = server.create_key("cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTO_ERASER_")}
    return {**env, "PHOTO_ERASER_APPKEY": appkey, "PHOTO_ERASER_APPSECRET": appsecret, **extra}


def test_submit_uploads_files_takes_urls_and_writes_results(
    remote: LocalServer, image_host: ImageHost, tmp_path: Path
) -> None:
    pixels = photo(W, H, seed=5)
    local = tmp_path / "local.png"
    local.write_bytes(encode(pixels))
    mask = tmp_path / "mask.png"
    mask.write_bytes(encode(rect_mask(H, W, BOX)))
    url = image_host.add("/cli/remote.png", encode(pixels))
    out = tmp_path / "out"
    done = run_cli(
        cli_env(remote),
        "submit", str(local), url, "--mask", str(mask), "--server", remote.base_url,
        "--out", str(out), "--engine", "opencv",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["local.png", "remote.png"]
    assert f"{local} -> {out / 'local.png'} (opencv)" in done.stdout
    assert "restore" in done.stderr and "2/2" in done.stderr  # the progress bar
    keep = ~rect_mask(H, W, BOX)
    restored = np.asarray(Image.open(out / "local.png").convert("RGB"))
    assert (restored[keep] == pixels[keep]).all()


def test_submit_reports_failures_and_missing_keys(
    remote: LocalServer, image_host: ImageHost, tmp_path: Path
) -> None:
    mask = tmp_path / "mask.png"
    mask.write_bytes(encode(rect_mask(H, W, BOX)))
    missing = image_host.url("/cli/missing.png")
    env = cli_env(remote, PHOTO_ERASER_SERVER=remote.base_url)
    failed = run_cli(env, "submit", missing, "--mask", str(mask), "--out", str(tmp_path / "o"))
    assert failed.returncode == 1
    assert f"{missing}: download failed: HTTP 404" in failed.stderr
    no_keys = {k: v for k, v in env.items() if k != "PHOTO_ERASER_APPSECRET"}
    refused = run_cli(no_keys, "submit", missing, "--mask", str(mask), "--out", str(tmp_path))
    assert refused.returncode == 1 and "PHOTO_ERASER_APPSECRET" in refused.stderr
    wrong = {**env, "PHOTO_ERASER_APPSECRET": "wrong"}
    denied = run_cli(wrong, "submit", missing, "--mask", str(mask), "--out", str(tmp_path))
    assert denied.returncode == 1 and "40102" in denied.stderr


def test_submit_sends_the_placement_flags(
    remote: LocalServer, image_host: ImageHost, tmp_path: Path
) -> None:
    """``--mask-fit anchor --mask-anchor top-left --mask-invert`` reach the server as the
    extension fields: everything but the anchored mark is restored."""
    from photo_eraser.imaging import MaskPlacement, place_mask

    pixels = photo(H, W, seed=6)  # portrait: W x H swapped
    url = image_host.add("/cli/portrait.png", encode(pixels))
    mask_pixels = rect_mask(H, W, (0, 60, 0, 200))
    mask = tmp_path / "mask.png"
    mask.write_bytes(encode(mask_pixels))
    out = tmp_path / "out"
    done = run_cli(
        cli_env(remote),
        "submit", url, "--mask", str(mask), "--server", remote.base_url, "--out", str(out),
        "--engine", "opencv", "--mask-fit", "anchor", "--mask-anchor", "top-left",
        "--mask-invert",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    kept = ~place_mask(
        mask_pixels, W, H, MaskPlacement(fit="anchor", anchor="top-left", invert=True)
    )
    assert kept.any() and kept.mean() < 0.5
    restored = np.asarray(Image.open(out / "portrait.png").convert("RGB"))
    assert (restored[kept] == pixels[kept]).all()
    assert (restored[~kept] != pixels[~kept]).any(axis=1).mean() > 0.5
