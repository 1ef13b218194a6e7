"""The downloader against a real local HTTP server: statuses, redirects, limits, timeouts, the
per-host limit, and SSRF refusals. Nothing is ever sent to a non-loopback address: every
refusal below happens before a connection is opened."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from photo_eraser.fetch import Fetcher, FetchError, is_public_address, parse_url

BODY = bytes(range(256)) * 40  # 10 KiB
LIMIT = 64 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.stop = threading.Event()
        self.paths: list[str] = []
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    def send_body(self, body: bytes, status: int = 200, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str | None, status: int = 302) -> None:
        self.send_response(status)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        with self.server.lock:
            self.server.paths.append(path)
        try:
            self.route(path, query)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, as it should at a limit

    def route(self, path: str, query: dict[str, str]) -> None:
        stop = self.server.stop
        if path == "/image":
            self.send_body(BODY)
        elif path == "/host":
            self.send_body(self.headers.get("Host", "").encode())
        elif path == "/exact":
            self.send_body(b"x" * int(query["n"]))
        elif path == "/missing":
            self.send_body(b"no such image", status=404)
        elif path == "/error":
            self.send_body(b"boom", status=500)
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])  # redirects still to come
            if left:
                self.redirect(f"/hop/{left - 1}", status=301)
            else:
                self.send_body(BODY)
        elif path == "/loop":
            self.redirect("/loop")
        elif path == "/relative/dir/start":
            self.redirect("../image-alias", status=307)
        elif path == "/relative/image-alias":
            self.redirect("/image", status=308)
        elif path == "/to":
            self.redirect(query["url"], status=303)
        elif path == "/no-location":
            self.redirect(None)
        elif path == "/declared-huge":
            # Announces a body far over the limit, then sends nothing: only an early refusal
            # (from the Content-Length) can end this without a timeout.
            self.send_response(200)
            self.send_header("Content-Length", str(10 * 1024**3))
            self.end_headers()
            self.wfile.flush()
            stop.wait(3)
        elif path == "/endless":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the body ends when the connection does
            chunk = b"\0" * 65536
            for _ in range(4096):  # at most 256 MiB, if the client never stopped reading
                if stop.is_set():
                    break
                self.wfile.write(chunk)
        elif path == "/short":
            self.send_body(b"only a part", length=1000)
        elif path == "/slow-headers":
            stop.wait(3)
            self.send_body(BODY)
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(200):
                if stop.wait(0.05):
                    break
                self.wfile.write(b"x")
                self.wfile.flush()
        elif path == "/gate":
            with self.server.lock:
                self.server.active += 1
                self.server.max_active = max(self.server.max_active, self.server.active)
            stop.wait(0.15)
            with self.server.lock:
                self.server.active -= 1
            self.send_body(BODY)
        else:
            self.send_body(b"?", status=404)


def _start(host: str, tls: ssl.SSLContext | None = None) -> _Server:
    server = _Server((host, 0))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def _stop(server: _Server) -> None:
    server.stop.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    server = _start("127.0.0.1")
    yield server
    _stop(server)


def base(server: _Server, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}"


def make_fetcher(**overrides: object) -> Fetcher:
    settings: dict[str, object] = {
        "allow_private": True,
        "max_bytes": LIMIT,
        "connect_timeout": 5.0,
        "read_timeout": 5.0,
        "total_timeout": 20.0,
        "max_redirects": 3,
        "per_host": 4,
    }
    settings.update(overrides)
    return Fetcher(**settings)  # type: ignore[arg-type]


def fetch(url: str, **overrides: object) -> bytes:
    async def run() -> bytes:
        async with make_fetcher(**overrides) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(run())


def refusal(url: str, **overrides: object) -> str:
    with pytest.raises(FetchError) as refused:
        fetch(url, **overrides)
    message = str(refused.value)
    assert message.startswith("download failed: ")
    return message


# --- statuses, redirects, limits -----------------------------------------------------------


def test_downloads_an_image(server: _Server) -> None:
    assert fetch(f"{base(server)}/image") == BODY


def test_sends_the_original_host_header(server: _Server) -> None:
    port = server.server_address[1]
    assert fetch(f"{base(server, 'localhost')}/host") == f"localhost:{port}".encode()


@pytest.mark.parametrize(("path", "status"), [("/missing", 404), ("/error", 500)])
def test_http_errors_name_the_status(server: _Server, path: str, status: int) -> None:
    assert refusal(f"{base(server)}{path}") == f"download failed: HTTP {status}"


def test_follows_up_to_the_redirect_limit(server: _Server) -> None:
    assert fetch(f"{base(server)}/hop/3") == BODY
    assert refusal(f"{base(server)}/hop/4") == "download failed: too many redirects"
    assert fetch(f"{base(server)}/hop/1", max_redirects=1) == BODY
    assert refusal(f"{base(server)}/hop/1", max_redirects=0).endswith("too many redirects")


def test_redirect_loop_ends(server: _Server) -> None:
    assert refusal(f"{base(server)}/loop") == "download failed: too many redirects"
    assert server.paths.count("/loop") == 4  # the first request plus three redirects


def test_relative_redirects_resolve_against_the_original_url(server: _Server) -> None:
    assert fetch(f"{base(server)}/relative/dir/start") == BODY


def test_redirect_without_location(server: _Server) -> None:
    assert "HTTP 302 without a Location" in refusal(f"{base(server)}/no-location")


def test_redirect_to_another_scheme_is_refused(server: _Server) -> None:
    message = refusal(f"{base(server)}/to?url=file:///etc/passwd")
    assert message == "download failed: only http and https URLs are accepted"


def test_body_of_exactly_the_limit_is_accepted(server: _Server) -> None:
    assert len(fetch(f"{base(server)}/exact?n={LIMIT}")) == LIMIT
    assert refusal(f"{base(server)}/exact?n={LIMIT + 1}") == "download failed: image exceeds 64 KB"


def test_declared_oversize_is_refused_before_reading(server: _Server) -> None:
    message = refusal(f"{base(server)}/declared-huge", read_timeout=30.0, total_timeout=60.0)
    assert message == "download failed: image exceeds 64 KB"


def test_endless_body_is_cut_at_the_limit(server: _Server) -> None:
    assert refusal(f"{base(server)}/endless") == "download failed: image exceeds 64 KB"


def test_limit_is_reported_in_megabytes(server: _Server) -> None:
    message = refusal(f"{base(server)}/endless", max_bytes=50 * 1024 * 1024)
    assert message == "download failed: image exceeds 50 MB"


def test_body_shorter_than_announced(server: _Server) -> None:
    assert "closed the connection" in refusal(f"{base(server)}/short")


def test_read_timeout(server: _Server) -> None:
    assert refusal(f"{base(server)}/slow-headers", read_timeout=0.3) == "download failed: timed out"


def test_total_timeout_covers_a_trickling_body(server: _Server) -> None:
    message = refusal(f"{base(server)}/trickle", read_timeout=5.0, total_timeout=0.5)
    assert message == "download failed: timed out"


def test_connection_refused() -> None:
    probe = _start("127.0.0.1")
    port = probe.server_address[1]
    _stop(probe)
    assert refusal(f"http://127.0.0.1:{port}/image") == (
        "download failed: could not connect to 127.0.0.1"
    )


def test_per_host_concurrency_limit(server: _Server) -> None:
    async def run() -> list[bytes]:
        async with make_fetcher(per_host=2) as fetcher:
            return await asyncio.gather(*(fetcher.fetch(f"{base(server)}/gate") for _ in range(6)))

    assert asyncio.run(run()) == [BODY] * 6
    assert 1 <= server.max_active <= 2


# --- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/a.png", "only http and https URLs are accepted"),
        ("file:///etc/passwd", "only http and https URLs are accepted"),
        ("example.com/a.png", "only http and https URLs are accepted"),
        ("http:///a.png", "URL has no host"),
        ("http://user:secret@example.com/a.png", "URLs with credentials"),
        ("http://user@example.com/a.png", "URLs with credentials"),
    ],
)
def test_unacceptable_urls(url: str, reason: str) -> None:
    with pytest.raises(FetchError, match=reason):
        parse_url(url)
    assert reason in refusal(url, allow_private=False)


# --- SSRF ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("[::1]", "::1"),
        ("10.1.2.3", "10.1.2.3"),
        ("172.16.0.1", "172.16.0.1"),
        ("192.168.1.1", "192.168.1.1"),
        ("169.254.169.254", "169.254.169.254"),
        ("100.64.0.1", "100.64.0.1"),
        ("0.0.0.0", "0.0.0.0"),
        ("224.0.0.1", "224.0.0.1"),
        ("240.0.0.1", "240.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe"),
        ("[fe80::1]", "fe80::1"),
        ("[fc00::1]", "fc00::1"),
        ("[ff02::1]", "ff02::1"),
        ("[::]", "::"),
        ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1"),
        ("[2002:7f00:1::]", "2002:7f00:1::"),
        ("2130706433", "127.0.0.1"),  # decimal IPv4, resolved by getaddrinfo
        ("0x7f.1", "127.0.0.1"),
    ],
)
def test_private_addresses_are_refused_by_default(server: _Server, host: str, address: str) -> None:
    port = server.server_address[1]
    message = refusal(f"http://{host}:{port}/image", allow_private=False)
    if host == "localhost" and "::1" in message:
        address = "::1"  # some systems resolve localhost to ::1 first
    assert message == f"download failed: address {address} is not allowed (private/loopback)"
    assert server.paths == []  # refused before connecting


def test_redirect_to_a_blocked_address_is_refused(server: _Server) -> None:
    port = server.server_address[1]
    target = f"http://127.0.0.2:{port}/image"
    policy = {"allow_private": False, "blocked_networks": ["127.0.0.2/32"]}
    message = refusal(f"{base(server)}/to?url={target}", **policy)
    assert message == "download failed: address 127.0.0.2 is not allowed (private/loopback)"
    assert server.paths == ["/to"]


def test_redirect_to_a_name_resolving_to_a_blocked_address_is_refused() -> None:
    try:
        origin = _start("127.0.0.2")
    except OSError:
        pytest.skip("127.0.0.2 is not a local address here")
    try:
        port = origin.server_address[1]
        policy = {"blocked_networks": ["127.0.0.1/32", "::1/128"], "allow_private": False}
        assert fetch(f"http://127.0.0.2:{port}/image", **policy) == BODY
        target = f"http://localhost:{port}/image"
        message = refusal(f"http://127.0.0.2:{port}/to?url={target}", **policy)
        assert message.endswith("is not allowed (private/loopback)")
        assert origin.paths == ["/image", "/to"]
    finally:
        _stop(origin)


def test_blocked_networks_replace_the_default_policy(server: _Server) -> None:
    policy = {"allow_private": False, "blocked_networks": ["127.0.0.2/32"]}
    assert fetch(f"{base(server)}/image", **policy) == BODY
    message = refusal(f"http://[::ffff:127.0.0.2]:{server.server_address[1]}/image", **policy)
    assert message.endswith("is not allowed (private/loopback)")


def test_default_policy_allows_public_addresses() -> None:
    for public in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]:
        assert is_public_address(ipaddress.ip_address(public)), public
    for private in ["127.0.0.1", "10.0.0.1", "::1", "fd00::1", "::ffff:10.0.0.1", "192.0.2.1"]:
        assert not is_public_address(ipaddress.ip_address(private)), private


# --- TLS: connect to the checked address, verify the certificate against the name ----------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, ssl.SSLContext]]:
    """An https server on 127.0.0.1 whose certificate names only ``localhost``."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=photo-eraser test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=tmp_path)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=tmp_path)  # fmt: skip
    (tmp_path / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "1",
             "-extfile", "ext.cnf", cwd=tmp_path)  # fmt: skip
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    client_context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    server = _start("127.0.0.1", tls=server_context)
    yield server, client_context
    _stop(server)


def test_https_connects_to_the_checked_address_and_verifies_the_name(
    tls_server: tuple[_Server, ssl.SSLContext],
) -> None:
    server, trust = tls_server
    port = server.server_address[1]
    assert fetch(f"https://localhost:{port}/host", verify=trust) == f"localhost:{port}".encode()
    message = refusal(f"https://127.0.0.1:{port}/image", verify=trust)
    assert message == "download failed: TLS certificate of 127.0.0.1 is not valid"
    assert server.paths == ["/host"]


def test_fetcher_from_settings_follows_the_private_url_switch() -> None:
    from photo_eraser.config import Settings

    loopback = ipaddress.ip_address("127.0.0.1")

    async def allowed(switch: bool) -> bool:
        async with Fetcher.from_settings(Settings(allow_private_urls=switch)) as fetcher:
            return fetcher.is_allowed(loopback)

    assert asyncio.run(allowed(False)) is False
    assert asyncio.run(allowed(True)) is True
