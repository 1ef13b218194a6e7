"""The seed contract's black-box tests (`test_api.py`) against a cluster: two API processes
behind a round-robin client and two worker processes (one task at a time each), on
PostgreSQL, RabbitMQ and SeaweedFS, with the local image host."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.client import ApiClient
from harness.cluster import Cluster, running_cluster
from harness.s3server import S3Server
from tests.test_api import *  # noqa: F403 - the same tests, collected again here

pytestmark = [pytest.mark.process, pytest.mark.services]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Iterator[Cluster]:
    """Replaces the embedded server of `test_api.py`: the tests use its base_url (the first
    API process), create_key(), revoke_key() and client()."""
    with running_cluster(tmp_path_factory.mktemp("cluster"), s3) as cluster:
        cluster.up(apis=2, workers=2)
        yield cluster


@pytest.fixture(scope="module")
def client(server: Cluster) -> Iterator[ApiClient]:
    c = server.client(*server.create_key("client-a"))
    yield c
    c.close()
