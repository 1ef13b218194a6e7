from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.client import ApiClient
from harness.imagehost import ImageHost
from harness.postgres import fresh_schema
from harness.s3server import S3Server, running_s3
from photo_eraser.config import Settings
from photo_eraser.runtime import open_store
from photo_eraser.tasks.store import TaskStore
from tests.inprocess import LocalServer

# No test may download from the internet: every server and CLI run that the tests start (in
# this process or as a child, which inherits this) has the model auto-pull off unless the
# test turns it on, against a local server.
os.environ["PHOTO_ERASER_AUTO_PULL"] = "0"


@pytest.fixture(scope="session")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One shared in-process server (2 workers, also listening on a real port) for tests that
    do not need special settings."""
    local = LocalServer(tmp_path_factory.mktemp("server"), listen=True, workers=2).start()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[ApiClient]:
    c = server.new_client("client-a")
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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskStore]:
    """The task store on SQLite (the embedded default) and on PostgreSQL (a fresh schema);
    modules with a store of their own define ``store`` themselves."""
    if request.param == "sqlite":
        yield open_store(Settings(data_dir=tmp_path))
        return
    with fresh_schema() as url:
        store = open_store(Settings(data_dir=tmp_path, database_url=url))
        yield store
        store.engine.dispose()
