"""The ``photo-eraser`` command as a user runs it: keys and offline erase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.images import encode, photo, rect_mask
from harness.server import run_cli

# The `photo-eraser` command itself, in processes of its own.
pytestmark = pytest.mark.process


def run(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "photo_eraser", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_create_json_list_revoke(tmp_path: Path) -> None:
    out = run("keys", "create", "--name", "shop", "--json", data_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    creds = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(creds) == {"appkey", "appsecret", "webhook_secret"}
    assert creds["webhook_secret"].startswith("whsec_")
    listing = run("keys", "list", "--json", data_dir=tmp_path)
    [key] = json.loads(listing.stdout)
    assert key["appkey"] == creds["appkey"] and key["name"] == "shop"
    assert creds["appsecret"] not in listing.stdout
    assert creds["webhook_secret"] not in listing.stdout
    rotated = run("keys", "rotate-webhook-secret", creds["appkey"], "--json", data_dir=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)
    assert new["appkey"] == creds["appkey"]
    assert (
        new["webhook_secret"].startswith("whsec_")
        and new["webhook_secret"] != creds["webhook_secret"]
    )
    assert run("keys", "revoke", creds["appkey"], data_dir=tmp_path).returncode == 0
    listing = run("keys", "list", data_dir=tmp_path)
    assert creds["appkey"] in listing.stdout and "revoked" in listing.stdout
    assert creds["appsecret"] not in listing.stdout
    again = run("keys", "revoke", creds["appkey"], data_dir=tmp_path)
    assert again.returncode != 0 and "no active key" in again.stderr
    revoked = run("keys", "rotate-webhook-secret", creds["appkey"], data_dir=tmp_path)
    assert revoked.returncode != 0 and "no active key" in revoked.stderr


def test_erase_restores_local_files(tmp_path: Path) -> None:
    images = []
    for i, fmt in enumerate(["PNG", "JPEG"]):
        path = tmp_path / f"in{i}.{fmt.lower()}"
        path.write_bytes(encode(photo(400, 300, seed=i), fmt))
        images.append(path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    mask = tmp_path / "mask.png"
    mask.write_bytes(encode(rect_mask(300, 400, (10, 40, 10, 60))))
    out_dir = tmp_path / "out"
    out = run(
        "erase",
        "--mask",
        str(mask),
        *map(str, images),
        str(bad),
        "--out",
        str(out_dir),
        "--engine",
        "opencv",
        data_dir=tmp_path,
    )
    assert out.returncode == 1, out.stderr  # one input was unreadable
    assert "bad.png" in out.stderr
    png = np.asarray(Image.open(out_dir / "in0.png").convert("RGB"))
    original = photo(400, 300, seed=0)
    keep = ~rect_mask(300, 400, (10, 40, 10, 60))
    assert np.array_equal(png[keep], original[keep])
    assert Image.open(out_dir / "in1.jpg").format == "JPEG"


def test_erase_places_the_mask_as_the_placement_flags_say(tmp_path: Path) -> None:
    """A landscape mask kept at the bottom-right corner of a portrait photo: only the pixels
    of the anchored, dilated mark change (the stretched mask would cover others)."""
    from photo_eraser.imaging import MaskPlacement, place_mask

    portrait = photo(300, 400, seed=3)
    (tmp_path / "portrait.png").write_bytes(encode(portrait))
    landscape_mask = rect_mask(300, 400, (255, 285, 330, 390))
    (tmp_path / "mask.png").write_bytes(encode(landscape_mask))
    placement = MaskPlacement(fit="anchor", anchor="bottom-right", dilate=4)
    anchored = place_mask(landscape_mask, 400, 300, placement)
    assert anchored.any() and (anchored & ~place_mask(landscape_mask, 400, 300)).any()
    out = run(
        "erase", "--mask", str(tmp_path / "mask.png"), str(tmp_path / "portrait.png"),
        "--out", str(tmp_path / "out"), "--engine", "opencv",
        "--mask-fit", "anchor", "--mask-anchor", "bottom-right", "--mask-dilate", "4",
        data_dir=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    restored = np.asarray(Image.open(tmp_path / "out" / "portrait.png").convert("RGB"))
    changed = (restored != portrait).any(axis=2)
    assert not changed[~anchored].any()
    assert changed[anchored].mean() > 0.5

    refused = run(
        "erase", "--mask", str(tmp_path / "mask.png"), str(tmp_path / "portrait.png"),
        "--out", str(tmp_path / "o2"), "--mask-anchor", "top",
        data_dir=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2 and "--mask-anchor needs --mask-fit anchor" in refused.stderr


def test_erase_without_lama_model_explains(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    img.write_bytes(encode(photo(300, 300)))
    mask = tmp_path / "m.png"
    mask.write_bytes(encode(rect_mask(300, 300, (1, 9, 1, 9))))
    out = run(
        "erase",
        "--mask",
        str(mask),
        str(img),
        "--out",
        str(tmp_path / "o"),
        "--engine",
        "lama",
        data_dir=tmp_path,
    )
    assert out.returncode != 0 and "models pull lama" in out.stderr


def test_cluster_commands_refuse_to_start_without_their_settings(tmp_path: Path) -> None:
    """`photo-eraser api` and `worker` name every setting that is missing, and the API
    refuses to run without a shared signing secret (links signed by one API process must
    verify on the others); a worker signs nothing and needs none."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTO_ERASER_")}
    env["PHOTO_ERASER_DATA_DIR"] = str(tmp_path)
    cluster_settings = ("DATABASE_URL", "BROKER_URL", "STORAGE_URL")
    api, worker = run_cli(env, "api"), run_cli(env, "worker")
    for out in (api, worker):
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert all(f"PHOTO_ERASER_{name}" in out.stderr for name in cluster_settings)
    assert "PHOTO_ERASER_SIGNING_SECRET" in api.stderr
    assert "PHOTO_ERASER_SIGNING_SECRET" not in worker.stderr
    env.update(
        PHOTO_ERASER_DATABASE_URL="postgresql+psycopg://u@127.0.0.1:1/x",
        PHOTO_ERASER_BROKER_URL="amqp://guest:guest@127.0.0.1:1/x",
        PHOTO_ERASER_STORAGE_URL="s3://bucket/prefix",
    )
    api_again = run_cli(env, "api")
    assert api_again.returncode == 2
    assert "PHOTO_ERASER_SIGNING_SECRET is required" in api_again.stderr
    assert "DATABASE_URL" not in api_again.stderr
