"""A real HTTP server on 127.0.0.1 standing in for a customer's callback receiver: it records
every POST (headers, body) and answers each with the next status of its script."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes
    at: float


class CallbackReceiver:
    """Answers the n-th POST with ``script[n]`` (then 200; a 3xx points to ``/elsewhere``). An
    entry ``"hold"`` keeps that request unanswered until ``released`` is set (or 60 s): a
    sender can be killed mid-request."""

    def __init__(self, script: list[int | str] | None = None) -> None:
        self.script: list[int | str] = list(script or [])
        self.received: list[Received] = []
        self.released = threading.Event()
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    n = len(receiver.received)
                    receiver.received.append(Received(self.path, headers, body, time.time()))
                    receiver._lock.notify_all()
                answer = receiver.script[n] if n < len(receiver.script) else 200
                if answer == "hold":
                    receiver.released.wait(60)
                    return  # the connection closes without an answer
                self.send_response(int(answer))
                if 300 <= int(answer) < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The first ``count`` deliveries, once they have arrived (AssertionError if not)."""
        with self._lock:
            ok = self._lock.wait_for(lambda: len(self.received) >= count, timeout)
            got = list(self.received)
        assert ok, f"{len(got)} of {count} callbacks arrived within {timeout} s"
        return got[:count]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
