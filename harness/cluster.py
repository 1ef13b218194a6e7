"""A real cluster for tests: `photo-eraser api` and `photo-eraser worker` processes on a
PostgreSQL schema, a RabbitMQ vhost and a bucket of a SeaweedFS server, all of their own."""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

from harness.client import ApiClient
from harness.postgres import fresh_schema
from harness.rabbit import fresh_vhost
from harness.s3server import S3Server, unique_bucket
from harness.server import EnvCommands, free_port


class Node:
    """One process of the cluster, in a session of its own (a kill takes its children too)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "photo_eraser", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the main process (a worker finishes the tasks under way: its children
        must not get the signal themselves), then SIGKILL to what is left."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._reap_group()

    def kill9(self) -> None:
        """SIGKILL to the process and all its children at once, as a vanished host."""
        if self.proc is not None:
            self._reap_group()
            self.proc.wait()

    def _reap_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ApiNode(Node):
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        super().__init__(["api", "--port", str(self.port)], env, log_path)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiNode:
        self.spawn()
        return self.ready()

    def ready(self) -> ApiNode:
        """Wait until it answers /healthz."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"API process exited: {self.log()[-3000:]}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"API process not up in 60 s: {self.log()[-3000:]}")


class WorkerNode(Node):
    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int) -> None:
        super().__init__(["worker", "--concurrency", str(concurrency)], env, log_path)

    def spawn(self) -> None:
        self._log_offset = len(self.log())
        super().spawn()

    def start(self) -> WorkerNode:
        self.spawn()
        return self.ready()

    def ready(self) -> WorkerNode:
        """Wait until Celery says it is (``celery@host ready.``)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"worker exited: {self.log()[-3000:]}")
            if " ready." in self.log()[self._log_offset :]:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in 60 s: {self.log()[-3000:]}")


class Cluster(EnvCommands):
    """The processes of one cluster and the settings they share."""

    def __init__(
        self, root: Path, database_url: str, broker_url: str, s3: S3Server, **env: str
    ) -> None:
        self.root = root
        self.s3 = s3
        self.bucket = s3.make_bucket(unique_bucket())
        self.env = {
            **os.environ,
            **s3.env(),
            "PHOTO_ERASER_DATABASE_URL": database_url,
            "PHOTO_ERASER_BROKER_URL": broker_url,
            "PHOTO_ERASER_STORAGE_URL": f"s3://{self.bucket}/cluster",
            "PHOTO_ERASER_SIGNING_SECRET": secrets.token_hex(32),
            "PHOTO_ERASER_ALLOW_PRIVATE_URLS": "1",
            "PHOTO_ERASER_DATA_DIR": str(root / "data"),
            **env,
        }
        self.apis: list[ApiNode] = []
        self.workers: list[WorkerNode] = []
        self._names = itertools.count()

    @property
    def base_url(self) -> str:
        return self.apis[0].base_url

    def up(
        self, apis: int = 1, workers: int = 1, concurrency: int = 1
    ) -> tuple[list[ApiNode], list[WorkerNode]]:
        """Start API processes and workers all at once (as a deployment does: they migrate
        in turn) and wait until every one is ready."""
        new_apis = [
            ApiNode(self.env, self.root / f"api{next(self._names)}.log") for _ in range(apis)
        ]
        new_workers = [
            WorkerNode(self.env, self.root / f"worker{next(self._names)}.log", concurrency)
            for _ in range(workers)
        ]
        for node in [*new_apis, *new_workers]:
            node.spawn()
        self.apis += new_apis
        self.workers += new_workers
        for node in [*new_apis, *new_workers]:
            node.ready()
        return new_apis, new_workers

    def add_api(self) -> ApiNode:
        node = ApiNode(self.env, self.root / f"api{next(self._names)}.log").start()
        self.apis.append(node)
        return node

    def add_worker(self, concurrency: int = 1) -> WorkerNode:
        log = self.root / f"worker{next(self._names)}.log"
        node = WorkerNode(self.env, log, concurrency).start()
        self.workers.append(node)
        return node

    def client(self, appkey: str, appsecret: str) -> ApiClient:
        """A client whose requests go to the API processes in turn, as behind a load
        balancer: a task created on one is read and closed on another."""
        client = ApiClient(self.apis[0].base_url, appkey, appsecret)
        turn = itertools.cycle(range(len(self.apis)))

        def balance(request: httpx.Request) -> None:
            live = [a for a in self.apis if a.alive] or self.apis
            node = live[next(turn) % len(live)]
            request.url = request.url.copy_with(port=node.port)
            request.headers["Host"] = f"127.0.0.1:{node.port}"  # result links name it too

        client.http.event_hooks["request"].append(balance)
        return client

    def stop(self) -> None:
        """At the end of a test: kill -9 at once (the graceful stop is a test of its own)."""
        for node in [*self.apis, *self.workers]:
            node.kill9()

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.log_path.name}\n{n.log()[-4000:]}" for n in [*self.apis, *self.workers]
        )


@contextmanager
def running_cluster(root: Path, s3: S3Server, **env: str) -> Iterator[Cluster]:
    """A `Cluster` with no processes yet on fresh PostgreSQL, RabbitMQ and S3 spaces."""
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_schema())
        broker_url = stack.enter_context(fresh_vhost())
        root.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(root, database_url, broker_url, s3, **env)
        try:
            yield cluster
        finally:
            cluster.stop()
