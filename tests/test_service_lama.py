"""The service with a LaMa model installed by the CLI (a stand-in ONNX model built here)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.images import b64, encode, photo, rect_mask
from harness.server import ServerProcess
from tests.test_lama import build_model

# `photo-eraser models import` and a server process that loads what it installed.
pytestmark = pytest.mark.process

W, H = 400, 300
BOX = (100, 160, 150, 250)  # y0, y1, x0, x1


def test_lama_installed_by_import_serves_requests(tmp_path: Path, image_host: ImageHost) -> None:
    data_dir = tmp_path / "data"
    model = build_model(tmp_path / "stand_in.onnx", kind="fill", size=(64, 64))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "photo_eraser",
            "models",
            "import",
            "lama",
            str(model),
            "--no-verify",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "warning" in (out.stdout + out.stderr).lower()

    server = ServerProcess(data_dir).start()
    try:
        assert httpx.get(server.base_url + "/healthz").json()["data"]["engines"]["lama"] is True
        c = ApiClient(server.base_url, *server.create_key())
        original = photo(W, H, seed=7)
        url = image_host.add("/lama/a.png", encode(original))
        mask = b64(encode(rect_mask(H, W, BOX)))
        for engine, method in (("lama", "lama"), ("auto", None)):
            data = c.wait(c.create_ok([url], mask, engine=engine))
            assert data["status"] == "3", data
            item = data["list"][0]
            if method:
                assert item["method"] == method
            else:  # one image: restore cannot estimate the mark and hands it to LaMa
                assert "lama" in item["method"]
            result = np.asarray(
                Image.open(io.BytesIO(httpx.get(item["image_result"]).content)).convert("RGB")
            )
            inside = rect_mask(H, W, BOX)
            assert np.array_equal(result[~inside], original[~inside])
            y0, y1, x0, x1 = BOX
            core = result[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4]  # away from the feathered seam
            assert (core == 102).all()  # the stand-in model paints 0.4 * 255
        c.close()
    finally:
        server.stop()
