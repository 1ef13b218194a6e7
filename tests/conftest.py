from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ApiClient, ImageHost, ServerProcess
from tests.s3server import S3Server, running_s3


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One shared server (2 workers) for tests that do not need special settings."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), PHOTO_ERASER_WORKERS="2").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[ApiClient]:
    appkey, appsecret = server.create_key("client-a")
    c = ApiClient(server.base_url, appkey, appsecret)
    yield c
    c.close()


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS server for the run; each cluster takes a bucket of its own."""
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server
