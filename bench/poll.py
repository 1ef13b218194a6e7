"""Poll-cost benchmark: server CPU per ``GET /v3/pic/rw/result/{task_id}`` by queue backlog.

For each backlog (``--backlogs``, waiting tasks of mixed priorities 0..9), a fresh data
directory is filled straight through the task store (a key, 20 finished tasks of 2 s each so
``wait_time`` has run times, then the backlog, then the polled task: priority 0, created last,
so every waiting task is ahead of it), and a real ``photo-eraser serve --workers 0`` is started
on it (nothing is claimed: the backlog stays). The bench then sends ``--polls`` sequential polls
of that task over a keep-alive HTTP/1.1 connection of 127.0.0.1 (one per round) and reads the
server process's CPU time (user + system, all threads) from ``/proc/<pid>/stat`` before and
after, plus, on PostgreSQL, that of the backends serving its database: CPU per poll = delta /
polls, minus the idle CPU rate (the maintenance pass), measured over ``--idle`` seconds first.

With ``--before DIR`` (a checkout of other code, e.g. ``git archive <commit> src | tar -x -C
DIR``; a file ``DIR/COMMIT`` names it in the output), the same is done for that code's ``src/``
at the same time: both servers run side by
side and the rounds alternate (before, after, after, before, ...), so machine noise hits both;
the ratio of medians is printed. The bench also checks that both servers answer the poll with
the same bytes (status, wait_time, list), and exits 1 if not.

    .venv/bin/python bench/poll.py [--backlogs 0,1000,10000] [--polls 2000] [--rounds 4] \
        [--before /tmp/poll-before] [--database-url postgresql+psycopg://...]

Requests go to 127.0.0.1 only; with ``--workers 0`` the example image URLs are never fetched.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import load_average, machine_line  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
HISTORY = 20
"""Finished tasks made before the backlog (``wait_time`` averages the last 20 run times)."""

FILL = r"""
import json, random, sys, time, uuid
sys.path.insert(0, sys.argv[1])
from photo_eraser.config import Settings
from photo_eraser.service import open_store
from photo_eraser.tasks.records import NewTask
from photo_eraser.tasks.status import TaskStatus

data_dir, backlog, history = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = open_store(Settings(data_dir=data_dir, create_demo_key=False))
appkey, appsecret = store.create_key("bench")
rng = random.Random(18)

def new(priority):
    return NewTask(task_id=str(uuid.uuid4()), appkey=appkey,
                   urls=["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/b.jpg"],
                   priority=priority, engine="opencv", mask_url="http://127.0.0.1:9/m.png",
                   mask_key=None, deadline_seconds=86400)

store.create_tasks([new(5) for _ in range(history)])
for _ in range(history):
    task = store.claim_next("bench", 60)
    store.finish(task.lease, TaskStatus.FAILED, "bench history")
with store.engine.begin() as conn:  # run times of 2 s: wait_time does not depend on timing
    conn.exec_driver_sql("UPDATE tasks SET started_at = finished_at - 2.0")
for start in range(0, backlog, 1000):
    store.create_tasks([new(rng.randrange(10)) for _ in range(min(1000, backlog - start))])
polled = new(0)
store.create_tasks([polled])
print(json.dumps({"appkey": appkey, "appsecret": appsecret, "task_id": polled.task_id}))
"""

SERVE = "import sys; sys.path.insert(0, sys.argv.pop(1)); from photo_eraser.cli import main; main()"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads (dead ones included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def backend_pids(database: str) -> list[int]:
    """PostgreSQL's backend processes serving ``database`` (their title names it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres:") and f" {database} " in title:
            pids.append(int(proc.name))
    return pids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``photo-eraser serve --workers 0`` of the code in ``src`` on a filled data directory."""

    name: str
    src: Path
    data_dir: Path
    database_url: str | None
    backlog: int
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    creds: dict[str, str] = field(default_factory=dict)
    idle_rate: float = 0.0
    per_poll: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    body: bytes = b""

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "PHOTO_ERASER_CREATE_DEMO_KEY": "0"}
        if self.database_url:
            env["PHOTO_ERASER_DATABASE_URL"] = self.database_url
        return env

    def fill(self) -> None:
        argv = [sys.executable, "-c", FILL, str(self.src), str(self.data_dir)]
        argv += [str(self.backlog), str(HISTORY)]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{self.name}: fill failed: {done.stderr[-3000:]}")
        self.creds = json.loads(done.stdout.strip().splitlines()[-1])

    def start(self) -> None:
        self.port = free_port()
        argv = [sys.executable, "-c", SERVE, str(self.src), "serve", "--workers", "0"]
        argv += ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: server exited, see {self.data_dir}/server.log")
            try:
                url = f"http://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no /healthz in 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds of the server process and, on PostgreSQL, of the backends serving its
        database (a backend that ended meanwhile is missed: the pool keeps them open)."""
        total = cpu_seconds(self.pid)
        if self.database_url:
            import sqlalchemy as sa

            database = sa.engine.make_url(self.database_url).database or ""
            for pid in backend_pids(database):
                try:
                    total += cpu_seconds(pid)
                except OSError:
                    pass
        return total

    def request(self) -> bytes:
        token = base64.b64encode(f"{self.creds['appkey']}:{self.creds['appsecret']}".encode())
        return (
            f"GET /v3/pic/rw/result/{self.creds['task_id']} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\nAuthorization: Basic {token.decode()}\r\n"
            "Content-Type: application/json\r\n\r\n"
        ).encode()


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time (responses have a length)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def exchange(self, request: bytes, status: bytes = b" 200 ") -> bytes:
        """Send ``request``, return the response body (fails on any other status)."""
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buf:
            self._read()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        if status not in lines[0]:
            raise RuntimeError(f"poll answered {lines[0]!r}: {self.buf[:300]!r}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length:")
        )
        while len(self.buf) < length:
            self._read()
        body, self.buf = self.buf[:length], self.buf[length:]
        return body

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def measure(server: Server, polls: int) -> None:
    """One round: ``polls`` sequential polls; the server's CPU per poll less its idle rate.
    A connection of its own (uvicorn closes one idle for 5 s), opened before the count."""
    lat: list[float] = []
    per_poll, server.body = _round(server, server.request(), b" 200 ", polls, lat)
    server.per_poll.append(per_poll)
    server.latency += lat


def measure_floor(server: Server, polls: int) -> None:
    """The same round of requests to a path no route has, with the same headers: a 404
    envelope through the whole middleware stack, no route, no key check, no database."""
    request = server.request().replace(b"/v3/pic/rw/result/", b"/v3/pic/rw/no-route/")
    per_request, _ = _round(server, request, b" 404 ", polls, [])
    server.floor.append(per_request)


def _round(
    server: Server, request: bytes, status: bytes, polls: int, lat: list[float]
) -> tuple[float, bytes]:
    conn = Connection(server.port)
    body = conn.exchange(request, status)
    wall0, cpu0 = time.monotonic(), server.cpu()
    for _ in range(polls):
        t = time.perf_counter()
        body = conn.exchange(request, status)
        lat.append(time.perf_counter() - t)
    wall1, cpu1 = time.monotonic(), server.cpu()
    conn.close()
    return (cpu1 - cpu0 - server.idle_rate * (wall1 - wall0)) / polls, body


def idle_rate(server: Server, seconds: float) -> float:
    cpu0, t0 = server.cpu(), time.monotonic()
    time.sleep(seconds)
    return (server.cpu() - cpu0) / (time.monotonic() - t0)


def fresh_database(base: str, name: str) -> str:
    """A new, empty PostgreSQL database ``name`` beside the one ``base`` names; its URL. (Not
    a schema: an embedded server takes a database-wide lock, so two need two databases.)"""
    import sqlalchemy as sa

    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)


def code_of(src: Path) -> str:
    root = src.parent
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    marker = root / "COMMIT"
    if marker.exists():
        return marker.read_text().strip()
    return done.stdout.strip() if done.returncode == 0 else str(root)


def run_backlog(args: argparse.Namespace, backlog: int, workdir: Path) -> list[Server]:
    codes = [("after", REPO / "src")]
    if args.before:
        codes.insert(0, ("before", Path(args.before).resolve() / "src"))
    servers = []
    for name, src in codes:
        data_dir = workdir / f"{name}-{backlog}"
        data_dir.mkdir()
        url = None
        if args.database_url:
            url = fresh_database(args.database_url, f"pe_poll_{name}")
        servers.append(Server(name, src, data_dir, url, backlog))
    try:
        for s in servers:
            s.fill()
            s.start()
        for s in servers:  # warm up: imports, the statement caches, the connection pool
            conn = Connection(s.port)
            for _ in range(200):
                conn.exchange(s.request())
            conn.close()
        for s in servers:
            s.idle_rate = idle_rate(s, args.idle)
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            for s in order:
                measure(s, args.polls)
            if args.floor:
                measure_floor(servers[-1], args.polls)
    finally:
        for s in servers:
            s.stop()
    return servers


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backlogs", default="0,1000,10000")
    p.add_argument("--polls", type=int, default=2000, help="polls per round and server")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--idle", type=float, default=3.0, help="seconds to measure idle CPU")
    p.add_argument("--before", help="a checkout of the code before (its src/ is run)")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also measure a 404 of no route on the 'after' server (the HTTP stack alone)",
    )
    p.add_argument(
        "--database-url",
        help="PostgreSQL instead of SQLite: a URL whose server the bench may make databases "
        "pe_poll_before and pe_poll_after on (dropped and made anew for each backlog)",
    )
    args = p.parse_args()
    print(machine_line())
    print(f"load average before: {load_average()}")
    print(
        f"python {sys.version.split()[0]}; server CPU from /proc/<pid>/stat (user+system, all "
        "threads), plus PostgreSQL's backends of its database when on PostgreSQL"
    )
    db = "PostgreSQL (" + args.database_url.split("@")[-1] + ")" if args.database_url else "SQLite"
    print(f"store: {db}; after = {code_of(REPO / 'src')}", end="")
    print(f", before = {code_of(Path(args.before).resolve() / 'src')}" if args.before else "")
    print(f"polls per round: {args.polls}, rounds: {args.rounds} (interleaved)\n")
    print(
        "| waiting tasks | code | CPU ms/poll (median of rounds) | rounds | idle CPU % "
        "| client p50 ms |"
    )
    print("|---|---|---|---|---|---|")
    failed = False
    with tempfile.TemporaryDirectory(prefix="pe-poll-") as tmp:
        for backlog in [int(x) for x in args.backlogs.split(",")]:
            servers = run_backlog(args, backlog, Path(tmp))
            for s in servers:
                rounds = " ".join(f"{x * 1000:.3f}" for x in s.per_poll)
                print(
                    f"| {backlog} | {s.name} | {statistics.median(s.per_poll) * 1000:.3f} "
                    f"| {rounds} | {s.idle_rate * 100:.1f} "
                    f"| {statistics.median(s.latency) * 1000:.2f} |"
                )
            if servers[-1].floor:
                floor = statistics.median(servers[-1].floor) * 1000
                print(
                    f"| {backlog} | after: 404 of no route (the HTTP stack alone) "
                    f"| {floor:.3f} | {' '.join(f'{x * 1000:.3f}' for x in servers[-1].floor)} "
                    "| | |"
                )
            if len(servers) == 2:
                before, after = servers
                ratio = statistics.median(before.per_poll) / statistics.median(after.per_poll)
                same = before.body == after.body
                failed |= not same
                print(
                    f"| {backlog} | ratio before/after | {ratio:.1f}x | "
                    f"| | bodies {'identical' if same else 'DIFFER'} |"
                )
                if not same:
                    print(f"before: {before.body!r}\nafter:  {after.body!r}", file=sys.stderr)
            print(f"  answer: {servers[-1].body.decode()}", file=sys.stderr)
    print(f"\nload average after: {load_average()}")
    cmd = shlex.join([sys.executable, "bench/poll.py", *sys.argv[1:]])
    print(f"reproduce: {cmd}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
