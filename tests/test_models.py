"""Model manifest, install check, download (against a local HTTP server) and import."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from photo_eraser.models.cli import models
from photo_eraser.models.manager import (
    MANIFEST_ENV,
    ModelError,
    get_spec,
    import_model,
    installed_path,
    list_models,
    load_manifest,
    pull,
)

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class FileServer:
    """What the test server serves and what it saw."""

    body: bytes = PAYLOAD
    supports_range: bool = True
    cut_after: int | None = None
    """Send the full Content-Length but close the connection after this many body bytes."""
    delay: float = 0.0
    """Seconds to wait before sending the body (a slow download)."""
    ranges: list[str | None] = field(default_factory=list)
    url: str = ""


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/file")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path != "/file":
                self.send_error(404)
                return
            requested = self.headers.get("Range")
            state.ranges.append(requested)
            start = 0
            if requested and state.supports_range:
                start = int(requested.removeprefix("bytes=").split("-")[0])
                if start >= len(state.body):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header(
                    "Content-Range", f"bytes {start}-{len(state.body) - 1}/{len(state.body)}"
                )
            else:
                self.send_response(200)
            body = state.body[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            time.sleep(state.delay)
            if state.cut_after is not None:
                self.wfile.write(body[: state.cut_after])
                self.wfile.flush()
                self.close_connection = True
                state.cut_after = None
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    state = FileServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _write_manifest(path: Path, url: str, size: int = len(PAYLOAD), sha: str = PAYLOAD_SHA) -> Path:
    entry = {"file": "tiny.onnx", "size": size, "sha256": sha, "license": "MIT", "url": url}
    path.write_text(json.dumps({"tiny": entry}))
    return path


@pytest.fixture
def manifest(tmp_path: Path, server: FileServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = _write_manifest(tmp_path / "manifest.json", server.url + "/file")
    monkeypatch.setenv(MANIFEST_ENV, str(path))
    return path


def test_builtin_manifest_has_lama(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MANIFEST_ENV, raising=False)
    spec = get_spec("lama")
    assert spec.file == "lama_fp32.onnx"
    assert spec.size == 208044816
    assert spec.sha256 == "1faef5301d78db7dda502fe59966957ec4b79dd64e16f03ed96913c7a4eb68d6"
    assert spec.license == "Apache-2.0"
    assert spec.url == "https://huggingface.co/Carve/LaMa-ONNX/resolve/main/lama_fp32.onnx"


def test_extra_manifest_adds_entries(manifest: Path) -> None:
    specs = load_manifest()
    assert set(specs) == {"lama", "tiny"}
    with pytest.raises(ModelError, match="unknown model 'nope'; known models: lama, tiny"):
        get_spec("nope")


def test_bad_manifest_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {"x": {"file": "../evil", "size": 1, "sha256": "0", "license": "?", "url": "http://x"}}
        )
    )
    with pytest.raises(ModelError, match="bad file name"):
        load_manifest(bad)
    bad.write_text(json.dumps({"x": {"file": "a"}}))
    with pytest.raises(ModelError, match="bad entry 'x'"):
        load_manifest(bad)


def test_installed_path_checks_existence_and_size(tmp_path: Path, manifest: Path) -> None:
    assert installed_path("tiny", tmp_path) is None
    assert installed_path("unknown", tmp_path) is None
    (tmp_path / "tiny.onnx").write_bytes(PAYLOAD[:-1])
    assert installed_path("tiny", tmp_path) is None
    (tmp_path / "tiny.onnx").write_bytes(PAYLOAD)
    assert installed_path("tiny", tmp_path) == tmp_path / "tiny.onnx"


def test_pull_downloads_verifies_and_installs(
    tmp_path: Path, server: FileServer, manifest: Path
) -> None:
    model_dir = tmp_path / "models"
    path = pull("tiny", model_dir, progress=False)
    assert path == model_dir / "tiny.onnx"
    assert path.read_bytes() == PAYLOAD
    assert not (model_dir / "tiny.onnx.part").exists()
    assert installed_path("tiny", model_dir) == path
    assert server.ranges == [None]
    # Already installed: no second request.
    assert pull("tiny", model_dir, progress=False) == path
    assert server.ranges == [None]


def test_pull_follows_redirects(
    tmp_path: Path, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        MANIFEST_ENV, str(_write_manifest(tmp_path / "m.json", server.url + "/moved"))
    )
    assert pull("tiny", tmp_path, progress=False).read_bytes() == PAYLOAD


def test_pull_resumes_an_interrupted_download(
    tmp_path: Path, server: FileServer, manifest: Path
) -> None:
    server.cut_after = 40_000
    with pytest.raises(ModelError, match="interrupted.*run the same command again to resume"):
        pull("tiny", tmp_path, progress=False)
    part = tmp_path / "tiny.onnx.part"
    assert part.read_bytes() == PAYLOAD[:40_000]
    assert installed_path("tiny", tmp_path) is None

    path = pull("tiny", tmp_path, progress=False)
    assert server.ranges == [None, "bytes=40000-"]
    assert path.read_bytes() == PAYLOAD
    assert not part.exists()


def test_pull_restarts_when_the_server_ignores_range(
    tmp_path: Path, server: FileServer, manifest: Path
) -> None:
    server.supports_range = False
    (tmp_path / "tiny.onnx.part").write_bytes(b"garbage that must not be kept")
    path = pull("tiny", tmp_path, progress=False)
    assert server.ranges == ["bytes=29-"]
    assert path.read_bytes() == PAYLOAD


def test_pull_checksum_mismatch_deletes_the_part_file(
    tmp_path: Path, server: FileServer, manifest: Path
) -> None:
    server.body = bytes(len(PAYLOAD))  # right size, wrong content
    with pytest.raises(ModelError, match=f"failed verification.*expected {PAYLOAD_SHA}"):
        pull("tiny", tmp_path, progress=False)
    assert list(tmp_path.glob("tiny.onnx*")) == []


def test_pull_size_mismatch_deletes_the_part_file(
    tmp_path: Path, server: FileServer, manifest: Path
) -> None:
    server.body = PAYLOAD[:-10]
    with pytest.raises(ModelError, match="has 102390 bytes, expected 102400"):
        pull("tiny", tmp_path, progress=False)
    assert list(tmp_path.glob("tiny.onnx*")) == []

    server.body = PAYLOAD + b"more"
    with pytest.raises(ModelError, match="larger than the expected 102400 bytes"):
        pull("tiny", tmp_path, progress=False)
    assert list(tmp_path.glob("tiny.onnx*")) == []


def test_pull_http_error_is_clear(
    tmp_path: Path, server: FileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        MANIFEST_ENV, str(_write_manifest(tmp_path / "m.json", server.url + "/missing"))
    )
    with pytest.raises(ModelError, match="failed: HTTP 404"):
        pull("tiny", tmp_path / "models", progress=False)


def test_import_verifies_by_default(tmp_path: Path, manifest: Path) -> None:
    good = tmp_path / "good.bin"
    good.write_bytes(PAYLOAD)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(len(PAYLOAD)))
    model_dir = tmp_path / "models"

    with pytest.raises(ModelError, match="SHA-256"):
        import_model("tiny", bad, model_dir)
    assert installed_path("tiny", model_dir) is None

    path = import_model("tiny", good, model_dir)
    assert path.read_bytes() == PAYLOAD
    [status] = [s for s in list_models(model_dir) if s.spec.name == "tiny"]
    assert status.installed and status.verified and status.path == path


def test_import_without_verification(tmp_path: Path, manifest: Path) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"a different export the user trusts")
    model_dir = tmp_path / "models"
    path = import_model("tiny", other, model_dir, verify=False)
    assert installed_path("tiny", model_dir) == path
    [status] = [s for s in list_models(model_dir) if s.spec.name == "tiny"]
    assert status.installed and not status.verified
    # A verified import afterwards clears the "unverified" state.
    good = tmp_path / "good.bin"
    good.write_bytes(PAYLOAD)
    import_model("tiny", good, model_dir)
    [status] = [s for s in list_models(model_dir) if s.spec.name == "tiny"]
    assert status.verified


# --- the click group -------------------------------------------------------------------------


def test_cli_list_json(tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHOTO_ERASER_MODEL_DIR", raising=False)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.onnx").write_bytes(PAYLOAD)
    result = CliRunner().invoke(models, ["list", "--json", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["model_dir"] == str(tmp_path / "models")
    by_name = {m["name"]: m for m in document["models"]}
    assert by_name["lama"]["installed"] is False and by_name["lama"]["path"] is None
    assert by_name["lama"]["size"] == 208044816
    assert by_name["tiny"] == {
        "name": "tiny",
        "file": "tiny.onnx",
        "size": len(PAYLOAD),
        "sha256": PAYLOAD_SHA,
        "license": "MIT",
        "url": by_name["tiny"]["url"],
        "description": "",
        "installed": True,
        "path": str(tmp_path / "models" / "tiny.onnx"),
        "verified": True,
    }


def test_cli_list_text_honors_model_dir_env(
    tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PHOTO_ERASER_MODEL_DIR", str(tmp_path / "elsewhere"))
    result = CliRunner().invoke(models, ["list", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"model directory: {tmp_path / 'elsewhere'}" in result.output
    assert "lama: not installed" in result.output
    assert "1faef5301d78db7dda502fe59966957ec4b79dd64e16f03ed96913c7a4eb68d6" in result.output
    assert "Apache-2.0" in result.output


def test_cli_pull_and_failures(
    tmp_path: Path, server: FileServer, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PHOTO_ERASER_MODEL_DIR", raising=False)
    runner = CliRunner()
    result = runner.invoke(models, ["pull", "tiny", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "tiny.onnx").read_bytes() == PAYLOAD

    result = runner.invoke(models, ["pull", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown model 'nope'" in result.output

    server.body = bytes(len(PAYLOAD))
    other = tmp_path / "other"
    result = runner.invoke(models, ["pull", "tiny", "--data-dir", str(other)])
    assert result.exit_code != 0
    assert "failed verification" in result.output
    assert list((other / "models").iterdir()) == []


def test_cli_import(tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHOTO_ERASER_MODEL_DIR", raising=False)
    runner = CliRunner()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not the model")
    result = runner.invoke(models, ["import", "tiny", str(bad), "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "expected 102400" in result.output
    assert installed_path("tiny", tmp_path / "models") is None

    result = runner.invoke(
        models, ["import", "tiny", str(bad), "--no-verify", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "without checking" in result.output
    assert installed_path("tiny", tmp_path / "models") == tmp_path / "models" / "tiny.onnx"


def test_pull_replaces_an_unverified_import(
    tmp_path: Path, server: FileServer, manifest: Path
) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"some other export")
    import_model("tiny", other, tmp_path, verify=False)
    path = pull("tiny", tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    [status] = [s for s in list_models(tmp_path) if s.spec.name == "tiny"]
    assert status.verified


def test_two_pulls_at_once_download_once(
    tmp_path: Path, server: FileServer, manifest: Path
) -> None:
    """The CLI beside a server's auto-pull: the second waits for the first, then finds it."""
    server.delay = 0.5
    paths: list[Path] = []
    pullers = [
        threading.Thread(target=lambda: paths.append(pull("tiny", tmp_path, progress=False)))
        for _ in range(2)
    ]
    for puller in pullers:
        puller.start()
    for puller in pullers:
        puller.join(30)
    assert paths == [tmp_path / "tiny.onnx"] * 2
    assert paths[0].read_bytes() == PAYLOAD
    assert server.ranges == [None]  # one download, not two writers on one part file


def test_pull_reports_progress_and_a_raising_callback_keeps_the_part_file(
    tmp_path: Path, server: FileServer, manifest: Path
) -> None:
    class Stop(Exception):
        pass

    seen: list[tuple[int, int]] = []

    def stop_early(done: int, total: int) -> None:
        seen.append((done, total))
        raise Stop

    with pytest.raises(Stop):
        pull("tiny", tmp_path, progress=False, on_progress=stop_early)
    kept = (tmp_path / "tiny.onnx.part").stat().st_size
    assert seen == [(kept, len(PAYLOAD))] and 0 < kept < len(PAYLOAD)
    progress: list[int] = []
    pull("tiny", tmp_path, progress=False, on_progress=lambda done, total: progress.append(done))
    assert server.ranges == [None, f"bytes={kept}-"]
    assert progress[-1] == len(PAYLOAD) and progress == sorted(progress)
