"""The OpenAPI document describes the API exactly: schemathesis runs against the live server
with every check (status codes and response schemas included), and a client generated from
the document makes a task and reads its result."""

from __future__ import annotations

import base64
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.server import ServerProcess

# schemathesis and a generated client run as commands against a server process.
pytestmark = pytest.mark.process

# The create body cannot say everything in JSON Schema: a mask must decode and an image URL
# must have a host, so a schema-valid body may still be a 400; 6.0 is a JSON-Schema integer
# but the contract refuses floats for priority. Everything else is checked as it comes.
SCHEMATHESIS_CONFIG = """
[cache]
enabled = false
[generation]
max-examples = 30
deterministic = true
[[operations]]
include-path = "/v3/pic/rw/batch"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "429"]
# An upload must decode as an image (or a mask that marks something): a schema-valid binary
# body may still be a 400.
[[operations]]
include-path = "/v3/pic/rw/upload"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "413", "429"]
"""


@pytest.fixture(scope="module")
def accept_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No workers: nothing a generated request names is ever downloaded."""
    server = ServerProcess(
        tmp_path_factory.mktemp("openapi"),
        PHOTO_ERASER_WORKERS="0",
        PHOTO_ERASER_RATE_LIMIT_PER_MINUTE="0",
        PHOTO_ERASER_ALLOW_PRIVATE_URLS="0",
    ).start()
    yield server
    server.stop()


def basic(server: ServerProcess, name: str) -> str:
    appkey, appsecret = server.create_key(name)
    return "Basic " + base64.b64encode(f"{appkey}:{appsecret}".encode()).decode()


@pytest.mark.parametrize("auth", [True, False], ids=["with-auth", "without-auth"])
def test_schemathesis_finds_nothing(accept_only: ServerProcess, tmp_path: Path, auth: bool) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    headers = ["-H", f"Authorization: {basic(accept_only, 'schemathesis')}"] if auth else []
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "run",
            f"{accept_only.base_url}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
            "--output-truncate",
            "false",
            *headers,
        ],
        cwd=tmp_path,
        env={**os.environ, "HYPOTHESIS_STORAGE_DIRECTORY": str(tmp_path / "hypothesis")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-3000:]
    assert "No issues found" in out.stdout or "passed" in out.stdout, out.stdout[-3000:]


def test_a_client_generated_from_the_document_works(
    accept_only: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_bytes(httpx.get(f"{accept_only.base_url}/openapi.json").content)
    # The generator reads one binary type per response; ours are image/png, image/jpeg or
    # image/bmp (an upload).
    (tmp_path / "generator.yaml").write_text(
        "post_hooks: []\ncontent_type_overrides:\n"
        "  image/png: application/octet-stream\n  image/jpeg: application/octet-stream\n"
        "  image/bmp: application/octet-stream\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(spec),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "pe_client"),
            "--config",
            str(tmp_path / "generator.yaml"),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    monkeypatch.syspath_prepend(str(tmp_path))
    pe = importlib.import_module("pe_client")
    create = importlib.import_module("pe_client.api.tasks.create_task")
    result = importlib.import_module("pe_client.api.tasks.get_result")
    close = importlib.import_module("pe_client.api.tasks.close_task")
    models = importlib.import_module("pe_client.models")
    token = basic(accept_only, "generated").removeprefix("Basic ")
    # The document says "HTTP Basic" (a security scheme), so the client sends the header.
    with (
        pe.AuthenticatedClient(
            base_url=accept_only.base_url,
            token=token,
            prefix="Basic",
            raise_on_unexpected_status=True,
        ) as client,
        pe.Client(base_url=accept_only.base_url) as anonymous,
    ):
        body = models.CreateTaskRequest(
            images=["https://shop.example/a.jpg"], mask="https://shop.example/m.png", priority=3
        )
        created = create.sync_detailed(client=client, body=body)
        assert created.status_code == 200 and isinstance(created.parsed, models.Created)
        task_id = created.parsed.data.task_id
        got = result.sync(client=client, task_id=task_id)
        assert isinstance(got, models.Result)
        assert got.data.status == "1" and [i.status for i in got.data.list_] == ["1"]
        closed = close.sync(client=client, task_id=task_id)
        assert isinstance(closed, models.Closed) and closed.data.status == "5"
        refused = create.sync_detailed(client=anonymous, body=body)
        assert refused.status_code == 401 and isinstance(refused.parsed, models.Envelope)
        assert refused.parsed.code == 40101
