"""Task-creation load benchmark: latency and throughput of ``POST /v3/pic/rw/batch`` under load.

Measures the create path only (auth, body parsing, inline-mask decode, the durable insert), on a
real ``photo-eraser serve --workers 0`` that this script starts in a child process with a fresh
data directory (embedded SQLite by default), or on a server already running (``--url``).

- Open loop (``--rates``): requests at a fixed arrival rate (exact intervals, or ``--arrivals
  poisson``), sent whether or not earlier ones have answered, over a pool of keep-alive
  connections that grows up to ``--max-connections``. Latency counts from the *scheduled* send
  time, so a slow server cannot hide its queue (no coordinated omission).
- Closed loop (``--clients``): N clients, each sending its next request when the previous one
  answered; latency counts from the actual send.

Each step runs ``--warmup`` seconds (not counted) then ``--seconds`` measured; only requests
scheduled (open loop) or sent (closed loop) in the measured window enter the figures, and the
throughput is the number of 200s that *completed* in the window divided by its length. Every loop
stops at its deadline, every request at ``--timeout`` (counted as an error, never retried), and
the whole run at ``--max-requests``.

The load comes from this process, not the server's: a minimal HTTP/1.1 keep-alive client on raw
asyncio streams (uvloop when installed), with the request bytes encoded once at start. Against a
trivial local server it used ~25-50 us of CPU per request in closed loop and ~0.1-0.2 ms in open
loop at 400-1000 req/s (timer wake-ups cost most on a VM), a few percent of the server's own
2-4 ms per created task. It still shares the cores with the server, so each step prints the CPU
seconds it used (``time.process_time()``), the server's (from /proc) and the rest of the
machine's (busy time from /proc/stat minus both; clock ticks make it +-0.1 s). Requests go to 127.0.0.1 only; with ``--workers 0`` the server never downloads
the example URLs, so nothing leaves the machine.

Durability: after the load, with the server stopped, the tasks in its database are counted; the
count must equal the number of 200 responses (a task is durable before its 200), otherwise a loud
FAILED line and exit status 1. Skipped with ``--url``.

    .venv/bin/python bench/create_load.py [--mode both] [--rates 100,200,400,800] \
        [--clients 1,16,64,256] [--seconds 10] [--json FILE]
    .venv/bin/python bench/create_load.py --url http://127.0.0.1:8080 --appkey K --appsecret S

Prints what it measured, on what machine, and how to reproduce it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import importlib.metadata
import io
import ipaddress
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
CREATE_PATH = "/v3/pic/rw/batch"
# Reuse a pooled connection only if it has been idle for less than this; uvicorn closes idle
# keep-alive connections after 5 s, and a POST sent on a connection the server is closing would
# show up as a spurious connection error.
IDLE_MAX_SECONDS = 2.0
# The open-loop scheduler fires a request up to this much before its time rather than sleep less
# (uvloop timers have 1 ms granularity: a shorter sleep returns at once and the loop would spin).
EARLY = 0.001
REQUEST_VARIANTS = 256  # distinct pre-encoded request bodies, picked at random per request
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Outcome codes besides the HTTP status.
CONN_ERROR = -1  # connect refused/reset, EOF, malformed response
TIMEOUT = -2  # no response within --timeout
BAD_200 = -3  # a 200 whose body has no task_id (counted as "other")

# (scheduled or send time, scheduler lag, completion time, status or code, request bytes written,
#  latency)
Outcome = tuple[float, float, float, int, bool, float]
# (outcomes, measured window start, window end, connection figures)
StepRun = tuple[list[Outcome], float, float, dict[str, int]]


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.x response we understand."""


# ---------------------------------------------------------------------------------------------
# The client: one request at a time per connection, keep-alive, no pipelining.


class Conn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


async def connect(host: str, port: int) -> Conn:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Conn(reader, writer)


async def exchange(conn: Conn, request: bytes) -> tuple[int, bool]:
    """Send one request, read the whole response; return (status, connection reusable)."""
    conn.writer.write(request)
    await conn.writer.drain()
    reader = conn.reader
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(lines[0][:80].decode("latin-1"))
    status = int(parts[1])
    close = parts[0] == b"HTTP/1.0"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    if chunked:
        body = await _read_chunked(reader)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body, close = await reader.read(), True
    if status == 200 and b'"task_id"' not in body:
        status = BAD_200
    return status, not close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


NETWORK_ERRORS = (
    OSError,
    EOFError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
    ProtocolError,
    ValueError,
)


class Pool:
    """Keep-alive connections, opened on demand up to ``cap``; waiters are served first come."""

    def __init__(self, host: str, port: int, cap: int) -> None:
        self.host, self.port, self.cap = host, port, cap
        self.idle: list[Conn] = []
        self.size = 0
        self.peak = 0
        self.opened = 0
        self.waiters: deque[asyncio.Future[Conn | None]] = deque()

    async def acquire(self) -> Conn:
        while True:
            now = time.perf_counter()
            while self.idle:
                conn = self.idle.pop()  # most recently used first
                if now - conn.idle_since < IDLE_MAX_SECONDS:
                    return conn
                self.discard(conn)
            if self.size < self.cap:
                self.size += 1
                self.peak = max(self.peak, self.size)
                try:
                    conn = await connect(self.host, self.port)
                except BaseException:
                    self.size -= 1
                    self._wake()
                    raise
                self.opened += 1
                return conn
            fut: asyncio.Future[Conn | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            try:
                got = await fut
            except asyncio.CancelledError:
                # Timed out while a connection (or a free slot) was being handed to us: pass it on.
                if fut.done() and not fut.cancelled():
                    handed = fut.result()
                    if handed is None:
                        self._wake()
                    else:
                        self.release(handed)
                raise
            if got is not None:
                return got
            # None: a slot was freed; loop and open a connection in it.

    def release(self, conn: Conn) -> None:
        conn.idle_since = time.perf_counter()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self.idle.append(conn)

    def discard(self, conn: Conn) -> None:
        conn.close()
        self.size -= 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def close_all(self) -> None:
        while self.idle:
            self.discard(self.idle.pop())


@dataclass
class Budget:
    """The hard cap on requests over the whole run."""

    left: int
    hit: bool = False

    def take(self) -> bool:
        if self.left <= 0:
            self.hit = True
            return False
        self.left -= 1
        return True


# ---------------------------------------------------------------------------------------------
# Load shapes.


@dataclass
class Target:
    host: str
    port: int
    requests: list[bytes]
    timeout: float


async def _open_one(
    pool: Pool, target: Target, request: bytes, sched: float, out: list[Outcome]
) -> None:
    start = time.perf_counter()
    conn: Conn | None = None
    wrote = False
    status = CONN_ERROR
    try:
        async with asyncio.timeout(sched + target.timeout - start):
            conn = await pool.acquire()
            wrote = True
            status, keep = await exchange(conn, request)
        if keep:
            pool.release(conn)
        else:
            pool.discard(conn)
        conn = None
    except TimeoutError:
        status = TIMEOUT
    except NETWORK_ERRORS:
        status = CONN_ERROR
    if conn is not None:
        pool.discard(conn)
    end = time.perf_counter()
    # From the scheduled time, or from the start when the scheduler fired up to EARLY before it.
    out.append((sched, start - sched, end, status, wrote, end - max(sched, start)))


async def open_loop(
    target: Target,
    rate: float,
    warmup: float,
    seconds: float,
    max_connections: int,
    poisson: bool,
    rng: random.Random,
    budget: Budget,
) -> StepRun:
    """Requests at ``rate``/s for warmup+seconds, independent of the responses."""
    pool = Pool(target.host, target.port, max_connections)
    out: list[Outcome] = []
    pending: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter() + 0.01
    w0, end = t0 + warmup, t0 + warmup + seconds
    sched = t0
    while sched < end:
        now = time.perf_counter()
        if sched - now > EARLY:
            await asyncio.sleep(sched - now)
            now = time.perf_counter()
        while sched <= now + EARLY and sched < end:
            if not budget.take():
                break
            task = asyncio.create_task(
                _open_one(pool, target, rng.choice(target.requests), sched, out)
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
            sched += rng.expovariate(rate) if poisson else 1.0 / rate
        if budget.hit:
            break
    while pending:  # each request ends by itself at its timeout
        await asyncio.gather(*list(pending), return_exceptions=True)
    pool.close_all()
    return out, w0, w0 + seconds, {"peak_connections": pool.peak, "opened": pool.opened}


async def closed_loop(
    target: Target,
    clients: int,
    warmup: float,
    seconds: float,
    rng: random.Random,
    budget: Budget,
) -> StepRun:
    """``clients`` connections, each sending its next request when the previous answered."""
    out: list[Outcome] = []
    t0 = time.perf_counter()
    w0, end = t0 + warmup, t0 + warmup + seconds
    opened = 0

    async def client() -> None:
        nonlocal opened
        conn: Conn | None = None
        while time.perf_counter() < end and budget.take():
            start = time.perf_counter()
            wrote = False
            status = CONN_ERROR
            keep = False
            try:
                async with asyncio.timeout(target.timeout):
                    if conn is None:
                        conn = await connect(target.host, target.port)
                        opened += 1
                    wrote = True
                    status, keep = await exchange(conn, rng.choice(target.requests))
            except TimeoutError:
                status = TIMEOUT
            except NETWORK_ERRORS:
                status = CONN_ERROR
            done = time.perf_counter()
            out.append((start, 0.0, done, status, wrote, done - start))
            if not keep and conn is not None:
                conn.close()
                conn = None
            if status < 0:
                await asyncio.sleep(0.01)  # no hot loop against a refusing server
        if conn is not None:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)), return_exceptions=True)
    return out, w0, w0 + seconds, {"peak_connections": clients, "opened": opened}


# ---------------------------------------------------------------------------------------------
# Figures.


def pct(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "inf"
    return f"{seconds * 1000:.1f}"


@dataclass
class CpuSample:
    wall: float
    bench: float
    server: float | None
    busy_ticks: int
    steal_ticks: int
    total_ticks: int


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def machine_ticks() -> tuple[int, int, int]:
    """(busy excluding steal, steal, total) clock ticks over all cores, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0, 0, 0
    user, nice, system, idle, iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq
    return busy, steal, busy + steal + idle + iowait


def cpu_sample(server_pid: int | None) -> CpuSample:
    busy, steal, total = machine_ticks()
    return CpuSample(
        time.perf_counter(),
        time.process_time(),
        proc_cpu_seconds(server_pid) if server_pid else None,
        busy,
        steal,
        total,
    )


@dataclass
class Step:
    mode: str  # "open" or "closed"
    load: float  # offered req/s (open) or clients (closed)
    seconds: float
    scheduled: int = 0  # requests scheduled/sent in the measured window
    ok_per_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    in_doubt: int = 0
    lat_ok: dict[str, float | None] = field(default_factory=dict)
    lat_all: dict[str, float | None] = field(default_factory=dict)
    p99_strict: float | None = None  # p99 with every non-200 counted as infinitely slow
    sched_lag_p99: float | None = None
    connections: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    bench_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    other_cpu_s: float | None = None
    steal_s: float = 0.0
    idle_pct: float | None = None
    accepted_before: int = 0  # 200s earlier in the run = tasks already in the database
    ok_whole_step: int = 0  # 200s of the step including warm-up and drain
    in_doubt_whole_step: int = 0


def summarize(
    step: Step, out: list[Outcome], w0: float, w1: float, before: CpuSample, after: CpuSample
) -> None:
    window = [o for o in out if w0 <= o[0] < w1]
    step.scheduled = len(window)
    ok_done = sum(1 for o in out if o[3] == 200 and w0 <= o[2] < w1)
    step.ok_per_s = ok_done / (w1 - w0)
    counts = {"200": 0, "503": 0, "429": 0, "other": 0, "conn_err": 0, "timeout": 0}
    for o in window:
        s = o[3]
        key = {200: "200", 503: "503", 429: "429", CONN_ERROR: "conn_err", TIMEOUT: "timeout"}
        counts[key.get(s, "other")] += 1
    step.counts = counts
    step.in_doubt = sum(1 for o in window if o[3] in (CONN_ERROR, TIMEOUT) and o[4])
    ok = sorted(o[5] for o in window if o[3] == 200)
    answered = sorted(o[5] for o in window if o[3] > 0 or o[3] == BAD_200)
    step.lat_ok = {"p50": pct(ok, 50), "p99": pct(ok, 99), "max": ok[-1] if ok else None}
    step.lat_all = {
        "p50": pct(answered, 50),
        "p99": pct(answered, 99),
        "max": answered[-1] if answered else None,
    }
    strict = ok + [math.inf] * (len(window) - len(ok))
    step.p99_strict = pct(strict, 99)
    if step.mode == "open":
        step.sched_lag_p99 = pct(sorted(max(0.0, o[1]) for o in window), 99)
    step.wall_seconds = after.wall - before.wall
    step.bench_cpu_s = after.bench - before.bench
    if after.server is not None and before.server is not None:
        step.server_cpu_s = after.server - before.server
    total = after.total_ticks - before.total_ticks
    if total > 0:
        busy_s = (after.busy_ticks - before.busy_ticks) / CLK_TCK
        step.other_cpu_s = busy_s - step.bench_cpu_s - (step.server_cpu_s or 0.0)
        step.steal_s = (after.steal_ticks - before.steal_ticks) / CLK_TCK
        busy_all = (after.busy_ticks - before.busy_ticks) + (after.steal_ticks - before.steal_ticks)
        step.idle_pct = 100 * (1 - busy_all / total)


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


OPEN_HEAD = (
    "| offered/s | sent | 200/s | 200 | 503 | 429 | other | conn err | timeout | in doubt "
    "| 200 p50 | 200 p99 | 200 max | all p50 | all p99 | all max | sched lag p99 | conns "
    "| bench CPU s | server CPU s | other CPU s | idle % |\n"
    "|" + "---|" * 22
)
CLOSED_HEAD = (
    "| clients | sent | 200/s | 200 | 503 | 429 | other | conn err | timeout | in doubt "
    "| 200 p50 | 200 p99 | 200 max | all p50 | all p99 | all max "
    "| bench CPU s | server CPU s | other CPU s | idle % |\n"
    "|" + "---|" * 20
)


def row(step: Step) -> str:
    c = step.counts
    cells = [
        f"{step.load:g}",
        str(step.scheduled),
        f"{step.ok_per_s:.1f}",
        *(str(c[k]) for k in ("200", "503", "429", "other", "conn_err", "timeout")),
        str(step.in_doubt),
        *(ms(step.lat_ok[k]) for k in ("p50", "p99", "max")),
        *(ms(step.lat_all[k]) for k in ("p50", "p99", "max")),
    ]
    if step.mode == "open":
        cells += [ms(step.sched_lag_p99), str(step.connections.get("peak_connections", 0))]
    cells += [
        f"{step.bench_cpu_s:.2f}",
        _num(step.server_cpu_s, ".2f"),
        _num(None if step.other_cpu_s is None else max(0.0, step.other_cpu_s), ".2f"),
        _num(step.idle_pct, ".0f"),
    ]
    return "| " + " | ".join(cells) + " |"


# ---------------------------------------------------------------------------------------------
# The request body.


def mask_png() -> bytes:
    """256x256 one-bit PNG: a bottom-right block and a logo-like ellipse (313 bytes)."""
    im = Image.new("1", (256, 256), 0)
    draw = ImageDraw.Draw(im)
    draw.rectangle((160, 200, 240, 240), fill=1)
    draw.ellipse((20, 20, 90, 70), fill=1)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def build_requests(
    host: str, port: int, appkey: str, appsecret: str, rng: random.Random
) -> tuple[list[bytes], list[int]]:
    """Pre-encoded HTTP requests (so the client spends nothing on JSON) and their body sizes."""
    token = base64.b64encode(f"{appkey}:{appsecret}".encode()).decode()
    mask = base64.b64encode(mask_png()).decode()
    requests, sizes = [], []
    for _ in range(REQUEST_VARIANTS):
        urls = [
            f"https://images.example.com/p/{rng.randrange(1, 1_000_000)}.jpg"
            for _ in range(rng.randint(1, 3))
        ]
        body = json.dumps({"images": urls, "mask": mask, "priority": rng.randint(0, 9)}).encode()
        head = (
            f"POST {CREATE_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Basic {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        requests.append(head + body)
        sizes.append(len(body))
    return requests, sizes


# ---------------------------------------------------------------------------------------------
# The server.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_path() -> Path:
    beside = Path(sys.executable).with_name("photo-eraser")
    return beside if beside.exists() else REPO / ".venv" / "bin" / "photo-eraser"


def hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


class Server:
    """``photo-eraser serve --workers 0`` in a child process, stopped with SIGTERM then kill."""

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self.data_dir = data_dir
        self.env_overrides = {
            "PHOTO_ERASER_RATE_LIMIT_PER_MINUTE": "0",
            # One key sends every request and no worker runs: the per-key cap on unfinished
            # tasks would turn the run into 429s after 1000.
            "PHOTO_ERASER_MAX_OPEN_TASKS_PER_KEY": "0",
            "PHOTO_ERASER_CREATE_DEMO_KEY": "0",
        }
        if database_url:
            self.env_overrides["PHOTO_ERASER_DATABASE_URL"] = database_url
        self.env = {**os.environ, **self.env_overrides}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "server.log"
        self.argv: list[str] = []

    def create_key(self) -> tuple[str, str]:
        argv = [str(cli_path()), "keys", "create", "--name", "bench", "--json"]
        argv += ["--data-dir", str(self.data_dir)]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"keys create failed: {done.stderr[-2000:]}")
        creds = json.loads(done.stdout.strip().splitlines()[-1])
        return str(creds["appkey"]), str(creds["appsecret"])

    def start(self) -> Server:
        for _ in range(3):
            self.port = free_port()
            if self._start_once():
                return self
        raise RuntimeError("no free port after 3 tries")

    def _start_once(self) -> bool:
        self.argv = [str(cli_path()), "serve", "--workers", "0", "--port", str(self.port)]
        self.argv += ["--data-dir", str(self.data_dir)]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log_path.read_text(errors="replace")[log_start:]
                if "address already in use" in text.lower():
                    return False
                raise RuntimeError(f"server exited: {text[-3000:]}")
            try:
                url = f"http://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not answer /healthz in 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def command(self) -> str:
        env = " ".join(
            f"{k}={shlex.quote(hide_password(v))}" for k, v in self.env_overrides.items()
        )
        return f"{env} {shlex.join(self.argv)}"


def db_url_for(data_dir: Path, database_url: str | None) -> str:
    """The database the server uses: the same rule as ``Settings.db_url``."""
    from photo_eraser.config import Settings

    values: dict[str, Any] = {"data_dir": data_dir}
    if database_url:
        values["database_url"] = database_url
    return Settings(**values).db_url


def count_tasks(db_url: str) -> int:
    if db_url.startswith("sqlite:///"):
        con = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        try:
            return int(con.execute("SELECT count(*) FROM tasks").fetchone()[0])
        finally:
            con.close()
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM tasks")).scalar_one())
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# Header.


def machine_lines() -> list[str]:
    cores = len(os.sched_getaffinity(0))
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:", 1)[1].split()[0])
        ram = f"{kb / 2**20:.1f} GiB"
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return [
        f"machine: {model}, {cores} usable cores (of {os.cpu_count()}), RAM {ram}, "
        f"{platform.system()} {platform.release()}, load average {' '.join(load)}",
        f"python: {platform.python_implementation()} {platform.python_version()}",
    ]


def code_version() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = [line for line in dirty if line.strip()]
    suffix = f" + uncommitted changes in {len(changed)} file(s) under src/" if changed else ""
    return f"commit {head or 'unknown'}{suffix}"


def repro_command(args: argparse.Namespace) -> str:
    argv = [".venv/bin/python", "bench/create_load.py", "--mode", args.mode]
    if args.mode in ("open", "both"):
        argv += ["--rates", ",".join(f"{r:g}" for r in args.rates)]
        argv += ["--arrivals", args.arrivals, "--max-connections", str(args.max_connections)]
    if args.mode in ("closed", "both"):
        argv += ["--clients", ",".join(str(c) for c in args.clients)]
    argv += ["--seconds", f"{args.seconds:g}", "--warmup", f"{args.warmup:g}"]
    argv += ["--timeout", f"{args.timeout:g}", "--max-requests", str(args.max_requests)]
    argv += ["--seed", str(args.seed), "--loop", args.loop]
    if args.url:
        argv += ["--url", args.url, "--appkey", args.appkey, "--appsecret", "APPSECRET"]
    if args.database_url:
        argv += ["--database-url", hide_password(args.database_url)]
    if args.json:
        argv += ["--json", str(args.json)]
    return shlex.join(argv).replace("APPSECRET", "$APPSECRET")


# ---------------------------------------------------------------------------------------------
# Run.


def loop_factory(name: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    if name in ("auto", "uvloop"):
        try:
            import uvloop

            return uvloop.new_event_loop, f"uvloop {importlib.metadata.version('uvloop')}"
        except ImportError:
            if name == "uvloop":
                raise
    return asyncio.new_event_loop, "asyncio (default loop)"


async def run_steps(
    args: argparse.Namespace,
    target: Target,
    server_pid: int | None,
    budget: Budget,
    emit: Callable[[str], None],
) -> list[Step]:
    rng = random.Random(args.seed + 1)
    steps: list[Step] = []
    accepted = 0
    plans: list[tuple[str, float, Callable[[], Awaitable[StepRun]]]] = []
    run: Callable[[], Awaitable[StepRun]]
    if args.mode in ("open", "both"):
        for rate in args.rates:
            run = functools.partial(
                open_loop,
                target,
                rate,
                args.warmup,
                args.seconds,
                args.max_connections,
                args.arrivals == "poisson",
                rng,
                budget,
            )
            plans.append(("open", rate, run))
    if args.mode in ("closed", "both"):
        for clients in args.clients:
            run = functools.partial(
                closed_loop, target, clients, args.warmup, args.seconds, rng, budget
            )
            plans.append(("closed", clients, run))
    mode = ""
    for kind, load, run in plans:
        if budget.hit:
            emit(f"(request cap {args.max_requests} reached: {kind} {load:g} not run)")
            continue
        if kind != mode:
            mode = kind
            if kind == "open":
                emit(
                    f"\n## Open loop: {args.arrivals} arrivals, {args.warmup:g} s warm-up + "
                    f"{args.seconds:g} s measured per rate, up to {args.max_connections} "
                    f"keep-alive connections, timeout {args.timeout:g} s; latency in ms from "
                    "the scheduled send time"
                )
                emit(OPEN_HEAD)
            else:
                emit(
                    f"\n## Closed loop: one keep-alive connection per client, next request when "
                    f"the previous answered, {args.warmup:g} s warm-up + {args.seconds:g} s "
                    f"measured, timeout {args.timeout:g} s; latency in ms from the send"
                )
                emit(CLOSED_HEAD)
        before = cpu_sample(server_pid)
        out, w0, w1, conns = await run()
        after = cpu_sample(server_pid)
        step = Step(kind, load, args.seconds, connections=conns, accepted_before=accepted)
        summarize(step, out, w0, w1, before, after)
        # All 200s of the step (warm-up and drain too) are tasks in the database.
        step_ok = sum(1 for o in out if o[3] == 200)
        step_doubt = sum(1 for o in out if o[3] in (CONN_ERROR, TIMEOUT) and o[4])
        step.ok_whole_step, step.in_doubt_whole_step = step_ok, step_doubt
        accepted += step_ok
        steps.append(step)
        emit(row(step))
        await asyncio.sleep(args.pause)
    return steps


def verdicts(args: argparse.Namespace, steps: list[Step]) -> list[str]:
    lines = []
    at400 = [s for s in steps if s.mode == "open" and s.load == 400]
    if at400:
        s = at400[0]
        met = s.p99_strict is not None and s.p99_strict < 0.050
        lines.append(
            f"p99 < 50 ms at 400 req/s (p99 over every request scheduled in the window, a "
            f"non-200 counting as infinitely slow): {ms(s.p99_strict)} ms, "
            f"{s.ok_per_s:.1f} 200/s -> {'MET' if met else 'NOT MET'}"
        )
    closed = sorted((s for s in steps if s.mode == "closed" and s.load >= 16), key=lambda s: s.load)
    if len(closed) >= 2:
        tol = args.tolerance
        falls = [
            f"{a.load:g}->{b.load:g}"
            for a, b in zip(closed, closed[1:], strict=False)
            if b.ok_per_s < a.ok_per_s * (1 - tol)
        ]
        chain = " -> ".join(f"{s.ok_per_s:.0f}/s@{s.load:g}" for s in closed)
        lines.append(
            f"closed-loop throughput never falls as clients rise ({tol:.0%} tolerance for noise): "
            f"{chain} -> " + ("MET" if not falls else f"NOT MET (falls at {', '.join(falls)})")
        )
    return lines


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def loopback_target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit("--url must be http://HOST:PORT (plain HTTP; this client has no TLS)")
    host = parts.hostname
    try:
        loop_ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop_ok = False
    if not loop_ok:
        raise SystemExit("--url must point at this machine (127.0.0.1, ::1 or localhost)")
    return host, parts.port or 80


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mode", choices=("open", "closed", "both"), default="both")
    parser.add_argument("--rates", type=parse_floats, default=[100, 200, 400, 800])
    parser.add_argument("--clients", type=parse_ints, default=[1, 16, 64, 256])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per step")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time per step")
    parser.add_argument("--arrivals", choices=("uniform", "poisson"), default="uniform")
    parser.add_argument("--max-connections", type=int, default=512, help="open-loop pool cap")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap over the run")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument(
        "--tolerance", type=float, default=0.05, help="noise allowed in 'never falls'"
    )
    parser.add_argument("--url", help="an already running server (then no durability check)")
    parser.add_argument("--appkey")
    parser.add_argument("--appsecret")
    parser.add_argument("--database-url", help="passed to the server as PHOTO_ERASER_DATABASE_URL")
    parser.add_argument(
        "--data-dir", type=Path, help="server data directory (default: a fresh temporary one)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.url and not (args.appkey and args.appsecret):
        parser.error("--url needs --appkey and --appsecret")
    if args.url and args.data_dir:
        parser.error("--data-dir is for the server this script starts, not with --url")
    if min(args.rates, default=1) <= 0 or min(args.clients, default=1) <= 0:
        parser.error("rates and client counts must be positive")

    factory, loop_name = loop_factory(args.loop)
    header: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)

    server: Server | None = None
    tmp: tempfile.TemporaryDirectory[str] | None = None
    tasks_before = 0
    db_url = ""
    try:
        if args.url:
            host, port = loopback_target(args.url)
            appkey, appsecret = args.appkey, args.appsecret
            server_desc = f"already running at {args.url} (not started by this benchmark)"
            db_desc = (
                hide_password(args.database_url) + " (as stated by --database-url)"
                if args.database_url
                else "whatever that server is configured with"
            )
        else:
            if args.data_dir is None:
                tmp = tempfile.TemporaryDirectory(prefix="create-load-")
                data_dir = Path(tmp.name)
            else:
                data_dir = args.data_dir.resolve()
                data_dir.mkdir(parents=True, exist_ok=True)
            server = Server(data_dir, args.database_url)
            appkey, appsecret = server.create_key()  # also creates and migrates the database
            db_url = db_url_for(data_dir, args.database_url)
            tasks_before = count_tasks(db_url)
            server.start()
            host, port = "127.0.0.1", server.port
            server_desc = server.command()
            db_desc = hide_password(db_url)
        requests, sizes = build_requests(host, port, appkey, appsecret, random.Random(args.seed))
        target = Target(host, port, requests, args.timeout)

        header.append("# Photo Eraser task-creation load benchmark")
        for line in machine_lines():
            header.append(line)
        header.append(
            f"load generator: this process (pid {os.getpid()}), raw asyncio streams, {loop_name}"
        )
        header.append(f"code: {code_version()}")
        header.append(f"server: {server_desc}")
        inherited = sorted(k for k in os.environ if k.startswith("PHOTO_ERASER_") and not args.url)
        if inherited:
            header.append(f"server also inherits from this environment: {', '.join(inherited)}")
        header.append(f"database: {db_desc}")
        header.append(
            f"request: POST {CREATE_PATH}, JSON body {min(sizes)}-{max(sizes)} bytes "
            f"(mean {sum(sizes) / len(sizes):.0f}): 1-3 image URLs, inline base64 256x256 "
            "one-bit PNG mask, priority 0-9"
        )
        header.append(f"command: {repro_command(args)}")
        header.append(
            "columns: sent = requests scheduled (open) or sent (closed) in the measured window; "
            "200/s = 200s completed in the window per second; in doubt = timeouts and "
            "connection errors after the request was written (the server may have created the "
            "task); all = every response with a status; sched lag = client delay before a "
            "scheduled request started; CPU s over the whole step incl. warm-up and drain; "
            "other CPU = the rest of the machine"
            + (" (with --url, the server too)" if args.url else "")
        )

        for line in header:
            emit(line)

        budget = Budget(args.max_requests)
        server_pid = server.proc.pid if server and server.proc else None
        with asyncio.Runner(loop_factory=factory) as runner:
            steps = runner.run(run_steps(args, target, server_pid, budget, emit))
    finally:
        if server is not None:
            server.stop()

    exit_code = 0
    ok_total = sum(s.ok_whole_step for s in steps)
    doubt_total = sum(s.in_doubt_whole_step for s in steps)
    durability: dict[str, Any] = {"checked": False}
    emit("")
    if budget.hit:
        emit(f"WARNING: the request cap ({args.max_requests}) was reached; steps were cut short")
    for line in verdicts(args, steps):
        emit(f"target: {line}")
    if server is not None:
        tasks = count_tasks(db_url) - tasks_before
        durability = {
            "checked": True,
            "tasks_created": tasks,
            "responses_200": ok_total,
            "in_doubt": doubt_total,
        }
        if tasks == ok_total:
            emit(
                f"durability: {tasks} tasks in the database after the server stopped = "
                f"{ok_total} responses 200 -> OK"
            )
        else:
            if tasks < ok_total:
                why = f"{ok_total - tasks} tasks answered 200 are MISSING"
            else:
                why = (
                    f"{tasks - ok_total} tasks without a 200; {doubt_total} requests were in "
                    "doubt (sent, then timed out or cut, so the server may have created them "
                    "after the client gave up)"
                )
            emit(
                f"FAILED: durability: {tasks} tasks in the database after the server stopped "
                f"!= {ok_total} responses 200 ({why})"
            )
            exit_code = 1
        durability["ok"] = exit_code == 0
    else:
        emit("durability: not checked (--url: the server is not ours to stop)")
    if tmp is not None:
        tmp.cleanup()

    if args.json:
        doc = {
            "command": repro_command(args),
            "header": header,
            "steps": [asdict(s) for s in steps],
            "durability": durability,
            "request_cap_hit": budget.hit,
            "verdicts": verdicts(args, steps),
        }
        args.json.write_text(json.dumps(_finite(doc), indent=2, allow_nan=False) + "\n")
        print(f"figures written to {args.json}")
    return exit_code


def _finite(value: Any) -> Any:
    """JSON has no infinity: a latency that never came is written as null."""
    if isinstance(value, float) and math.isinf(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
