"""Cluster benchmark: throughput and per-task overhead of `photo-eraser serve` against a cluster.

    .venv/bin/python bench/cluster.py [--rounds 2] [--images 40] [--tasks 8] [--tiny 30]
        [--quiet 30] [--quiet-wait 120] [--only embedded-1,cluster-1,...]

Four configurations, each on a fresh server or cluster, run interleaved ``--rounds`` times:

- ``embedded-1`` / ``embedded-2``: ``photo-eraser serve`` with ``PHOTO_ERASER_WORKERS`` 1 / 2
  (SQLite and blobs in a fresh data directory; harness.server.ServerProcess);
- ``cluster-1`` / ``cluster-2``: one ``photo-eraser api`` process and 1 / 2 ``photo-eraser
  worker --concurrency 1`` processes on a fresh PostgreSQL schema, RabbitMQ vhost and S3 bucket
  (harness.cluster; the S3 server is one SeaweedFS ``weed mini`` for the whole run).

**Throughput.** ``--images`` different photo-like 1920x1080 JPEGs (q90, harness.images.photo with
seeds 0..N-1), served by a loopback image host in this process, with an inline base64 PNG mask
of one 288x144 box (2.0 % of the area), engine ``opencv``, sent as ``--tasks`` tasks created
back to back from one client. Timed from the first create to the poll (every ``--poll`` s,
0.1) that saw the last task finished; the same span from the database (first create to the last
``finished_at``) is printed beside it. Before the timed part, two tiny tasks per worker slot
warm the workers up (a Celery child builds its engines, database pool and S3 client on its
first task). CPU seconds per component over the timed part come from /proc. The polls are not
free: a poll of an unfinished task costs a cluster's API about twice the CPU of the embedded
server's (PostgreSQL round trips instead of SQLite calls), and 8 open tasks polled every 0.1 s
take a good part of a core; ``--poll 1`` shows the workers without most of that (read the
rate from the DB span then, as a 1 s poll rounds the wall time).

**Per-task overhead** (embedded-1 and cluster-1, on the same server after the throughput part):
``--tiny`` tasks one after the other of one 320x256 JPEG with the same kind of 2 % box mask,
each created and then polled every 20 ms until finished. Each end-to-end latency is split with
the task's row (TaskStore.get_task) into: create request until ``created_at`` (request, mask
decode, mask put in the blob store), ``created_at`` -> ``started_at`` (commit, dispatch, claim),
``started_at`` -> ``finished_at`` (the run, incl. the results' put), and ``finished_at`` until
the client saw it (poll interval and the poll's own cost). The workers' "task stages" log lines
give the run's stages.

The cores may be shared with other jobs: before each timed part the bench waits (at most
``--quiet-wait`` s) until the machine is under ``--quiet`` % busy over 2 s, and prints the
load average, that busy share and, per run, the CPU seconds of every component and of the rest
of the machine. To measure a fixed version while the checkout changes, export it and put its
``src`` first: ``git archive HEAD src | tar -x -C /tmp/pe-head`` then
``PYTHONPATH=/tmp/pe-head/src .venv/bin/python bench/cluster.py`` (the child processes
inherit it; the "code" line says which was used).

Everything listens on 127.0.0.1; every server and cluster is stopped whatever happens. Needs
the services of the cluster tests (PostgreSQL, RabbitMQ with rabbitmqctl, the ``weed`` binary):
without them it says which is missing and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import (  # noqa: E402
    code_line,
    first_line,
    load_average,
    machine_line,
    pct,
    version,
)
from harness.client import ApiClient  # noqa: E402
from harness.cluster import ApiNode, WorkerNode, running_cluster  # noqa: E402
from harness.imagehost import ImageHost  # noqa: E402
from harness.images import b64, encode, photo, rect_mask  # noqa: E402
from harness.postgres import base_url as postgres_url  # noqa: E402
from harness.s3server import S3Server, running_s3  # noqa: E402
from harness.server import ServerProcess  # noqa: E402
from photo_eraser.config import Settings  # noqa: E402
from photo_eraser.runtime import open_store  # noqa: E402

BIG = (1920, 1080)
TINY = (320, 256)
MASK_SHARE = 0.02
FINISHED = ("3", "4", "5", "6")
TINY_POLL = 0.02
RUN_TIMEOUT = 600.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
DISTURBED = 0.10
"""A run during which the rest of the machine used more than this share of all cores is
marked (*) and left out of the "quiet runs" medians."""


@dataclass(frozen=True)
class Config:
    name: str
    cluster: bool
    slots: int


CONFIGS = (
    Config("embedded-1", False, 1),
    Config("embedded-2", False, 2),
    Config("cluster-1", True, 1),
    Config("cluster-2", True, 2),
)


# ---------------------------------------------------------------------------------------------
# Inputs.


def box_mask(width: int, height: int) -> tuple[bytes, tuple[int, int, int, int]]:
    """A PNG mask of one 2:1 box covering MASK_SHARE of the image, near the bottom right corner
    as a watermark would be; and the box, (y0, y1, x0, x1) end-exclusive."""
    h = round(math.sqrt(MASK_SHARE * width * height / 2))
    w = 2 * h
    x1, y1 = width - width // 20, height - height // 20
    box = (y1 - h, y1, x1 - w, x1)
    return encode(rect_mask(height, width, box), "PNG"), box


@dataclass
class Inputs:
    host: ImageHost
    big_urls: list[str]
    big_mask: str
    big_box: tuple[int, int, int, int]
    tiny_url: str
    tiny_mask: str
    tiny_box: tuple[int, int, int, int]
    big_jpeg_bytes: int
    probe_jpeg: bytes


def make_inputs(images: int) -> Inputs:
    host = ImageHost()
    sizes = []
    urls = []
    bodies = []
    for seed in range(images):
        body = encode(photo(*BIG, seed=seed), "JPEG", quality=90)
        bodies.append(body)
        sizes.append(len(body))
        urls.append(host.add(f"/big/{seed}.jpg", body, content_type="image/jpeg"))
    tiny = encode(photo(*TINY, seed=1000), "JPEG", quality=90)
    tiny_url = host.add("/tiny.jpg", tiny, content_type="image/jpeg")
    big_mask, big_box = box_mask(*BIG)
    tiny_mask, tiny_box = box_mask(*TINY)
    return Inputs(
        host,
        urls,
        b64(big_mask),
        big_box,
        tiny_url,
        b64(tiny_mask),
        tiny_box,
        round(statistics.mean(sizes)),
        bodies[0],
    )


def cpu_probe(inputs: Inputs, repeat: int = 5) -> float:
    """Median ms of one image's CPU work done here, single-threaded (decode a 1920x1080 JPEG,
    Telea r=3 on the mask's box padded by 32 px, encode JPEG q95): a gauge of how fast the
    cores are at that moment. On a shared VM the host's other guests slow them without
    anything showing in this machine's /proc."""
    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    y0, y1, x0, x1 = inputs.big_box
    pad = 32
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        img = cv2.imdecode(np.frombuffer(inputs.probe_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None
        crop = img[y0 - pad : y1 + pad, x0 - pad : x1 + pad]
        hole = np.zeros(crop.shape[:2], np.uint8)
        hole[pad:-pad, pad:-pad] = 255
        crop[:] = cv2.inpaint(crop, hole, 3, cv2.INPAINT_TELEA)
        cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc.


def _proc_table() -> dict[int, tuple[str, int, float]]:
    """pid -> (command name, process group, CPU seconds so far) of every live process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # fields[0] is the state (stat field 3): pgrp is field 5, utime 14, stime 15.
        cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        table[int(entry.name)] = (comm, int(fields[2]), cpu)
    return table


def _machine_busy() -> tuple[float, float]:
    """(busy incl. steal, total) CPU seconds of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq + steal
    return busy / CLK_TCK, (busy + idle + iowait) / CLK_TCK


COMPONENTS = ("server/API", "workers", "PostgreSQL", "RabbitMQ", "SeaweedFS", "bench", "rest")
"""CPU columns: this server's or API's processes, the worker processes (Celery parent and
children), every PostgreSQL process (shared with anything else on the machine), RabbitMQ's
Erlang VM (shared too), the S3 server, this process (client and image host), and the rest of
the machine (other jobs, the kernel)."""


@dataclass
class Processes:
    """Who is who on the machine, for one configuration."""

    server_groups: set[int]
    worker_groups: set[int]
    weed_pid: int | None

    def classify(self, pid: int, comm: str, pgrp: int) -> str | None:
        if pgrp in self.server_groups or pid in self.server_groups:
            return "server/API"
        if pgrp in self.worker_groups:
            return "workers"
        if comm == "postgres":
            return "PostgreSQL"
        if comm in ("beam.smp", "erl_child_setup", "epmd", "inet_gethost"):
            return "RabbitMQ"
        if pid == self.weed_pid:
            return "SeaweedFS"
        if pid == os.getpid():
            return "bench"
        return None


@dataclass
class CpuSnapshot:
    table: dict[int, tuple[str, int, float]]
    busy: float
    total: float
    wall: float


def cpu_snapshot() -> CpuSnapshot:
    busy, total = _machine_busy()
    return CpuSnapshot(_proc_table(), busy, total, time.perf_counter())


def cpu_by_component(procs: Processes, before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds per component between two snapshots (a process born in between counts
    from zero; one that ended in between is lost to "rest"), and the machine's idle share."""
    out = dict.fromkeys(COMPONENTS, 0.0)
    for pid, (comm, pgrp, cpu) in after.table.items():
        kind = procs.classify(pid, comm, pgrp)
        if kind is None:
            continue
        prior = before.table.get(pid)
        start = prior[2] if prior is not None and prior[0] == comm else 0.0
        out[kind] += max(0.0, cpu - start)
    busy = after.busy - before.busy
    out["rest"] = max(0.0, busy - sum(v for k, v in out.items() if k != "rest"))
    total = after.total - before.total
    out["idle %"] = 100 * (1 - busy / total) if total > 0 else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# Servers and clusters.


@dataclass
class Target:
    """A started configuration: its client, processes, database and logs."""

    config: Config
    client: ApiClient
    procs: Processes
    settings: Settings
    logs: Callable[[], list[Path]]


@contextlib.contextmanager
def embedded(config: Config, root: Path) -> Iterator[Target]:
    server = ServerProcess(root / "data", PHOTO_ERASER_WORKERS=str(config.slots))
    try:
        server.start()
        assert server.proc is not None
        client = ApiClient(server.base_url, *server.create_key("bench"))
        try:
            yield Target(
                config,
                client,
                Processes({server.proc.pid}, set(), None),
                Settings(data_dir=server.data_dir, database_url=None),
                lambda: [server.log_path],
            )
        finally:
            client.close()
    finally:
        server.stop()


@contextlib.contextmanager
def clustered(config: Config, root: Path, s3: S3Server) -> Iterator[Target]:
    with running_cluster(root, s3) as cluster:
        # Each node is in the cluster's lists before it starts, so it is stopped even if its
        # start fails half-way (Cluster.add_api appends only once the node is up).
        api = ApiNode(cluster.env, root / "api.log")
        cluster.apis.append(api)
        api.start()
        for n in range(config.slots):
            worker = WorkerNode(cluster.env, root / f"worker{n}.log", 1)
            cluster.workers.append(worker)
            worker.start()
        client = cluster.client(*cluster.create_key("bench"))
        try:
            yield Target(
                config,
                client,
                Processes(
                    {_pid(api)},
                    {_pid(w) for w in cluster.workers},
                    s3.proc.pid if s3.proc else None,
                ),
                Settings(
                    data_dir=root / "reader",
                    database_url=cluster.env["PHOTO_ERASER_DATABASE_URL"],
                ),
                lambda: [n.log_path for n in cluster.workers],
            )
        finally:
            client.close()
            # Stopped here (and again, a no-op, by running_cluster) so that the nodes are gone
            # before the schema, vhost and bucket are dropped.
            cluster.stop()


def _pid(node: ApiNode | WorkerNode) -> int:
    assert node.proc is not None
    return node.proc.pid


@contextlib.contextmanager
def started(config: Config, root: Path, s3: S3Server | None) -> Iterator[Target]:
    if config.cluster:
        assert s3 is not None
        with clustered(config, root, s3) as target:
            yield target
    else:
        with embedded(config, root) as target:
            yield target


@dataclass(frozen=True)
class Stamps:
    """When a task was created, claimed and finished (``time.time()`` of the process that
    wrote each; all on this machine's clock)."""

    created: float
    started: float
    finished: float


def task_stamps(settings: Settings, task_ids: list[str]) -> dict[str, Stamps]:
    """The stamps of these finished tasks, from their rows (read while the database exists)."""
    store = open_store(settings)
    try:
        rows = {tid: store.get_task(tid) for tid in task_ids}
    finally:
        store.engine.dispose()
    out = {}
    for tid, row in rows.items():
        if row is None or row.started_at is None or row.finished_at is None:
            raise RuntimeError(f"task {tid} is not a finished task in the database: {row}")
        out[tid] = Stamps(row.created_at, row.started_at, row.finished_at)
    return out


def stage_lines(logs: list[Path], task_ids: set[str]) -> dict[str, dict[str, float]]:
    """task id -> stage seconds, from the workers' "task stages" log lines."""
    out: dict[str, dict[str, float]] = {}
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if '"task stages"' not in line:
                continue
            with contextlib.suppress(ValueError):
                record = json.loads(line[line.index("{") :])
                if record.get("task_id") in task_ids:
                    out[record["task_id"]] = record["stages"]
    return out


# ---------------------------------------------------------------------------------------------
# Measurements.


def wait_all(client: ApiClient, task_ids: list[str], poll: float) -> tuple[float, dict[str, Any]]:
    """Poll every ``poll`` seconds until every task finished; (perf_counter when the last was
    seen, final data per task)."""
    left = list(task_ids)
    done: dict[str, Any] = {}
    deadline = time.perf_counter() + RUN_TIMEOUT
    next_poll = time.perf_counter()
    while left:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{len(left)} tasks not finished after {RUN_TIMEOUT:g} s")
        next_poll = max(next_poll + poll, time.perf_counter())  # no burst after a slow poll
        time.sleep(max(0.0, next_poll - time.perf_counter()))
        for tid in list(left):
            r = client.result(tid)
            r.raise_for_status()
            data = r.json()["data"]
            if data["status"] in FINISHED:
                done[tid] = data
                left.remove(tid)
    return time.perf_counter(), done


def bad_images(done: dict[str, Any]) -> int:
    return sum(
        1
        for data in done.values()
        for item in data["list"]
        if data["status"] != "3" or item["status"] != "3"
    )


def warm_up(target: Target, inputs: Inputs) -> None:
    ids = [
        target.client.create_ok([inputs.tiny_url], inputs.tiny_mask, engine="opencv")
        for _ in range(2 * target.config.slots)
    ]
    _, done = wait_all(target.client, ids, TINY_POLL)
    if bad_images(done):
        raise RuntimeError(f"warm-up tasks failed on {target.config.name}: {done}")


@dataclass
class ThroughputRun:
    round: int
    config: str
    load: str
    busy_before: float
    probe_ms: tuple[float, float]
    """`cpu_probe` just before and just after the timed part."""
    images: int
    seconds: float
    seconds_db: float
    failed_images: int
    cpu: dict[str, float]
    stages: dict[str, float]
    """Seconds per image in each stage of the workers' "task stages" lines."""

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def disturbed(self) -> bool:
        """Other jobs took more than DISTURBED of the machine during the run."""
        return self.cpu["rest"] > DISTURBED * self.seconds * len(os.sched_getaffinity(0))

    @property
    def rate_db(self) -> float:
        return self.images / self.seconds_db


def busy_before(seconds: float = 2.0) -> float:
    """Share of all cores busy over the next ``seconds`` (before a run starts: other jobs,
    and the idle server or cluster); load averages lag a minute and include our last run."""
    busy0, total0 = _machine_busy()
    time.sleep(seconds)
    busy1, total1 = _machine_busy()
    return 100 * (busy1 - busy0) / max(1e-9, total1 - total0)


def wait_quiet(threshold: float, max_wait: float) -> float:
    """Wait until the machine is less than ``threshold`` % busy over 2 s (other jobs share
    these cores), at most ``max_wait`` seconds; the last busy share measured."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = busy_before()
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def throughput(
    target: Target, inputs: Inputs, args: argparse.Namespace, round_no: int
) -> ThroughputRun:
    urls = inputs.big_urls
    tasks = args.tasks
    groups = [urls[i * len(urls) // tasks : (i + 1) * len(urls) // tasks] for i in range(tasks)]
    busy = wait_quiet(args.quiet, args.quiet_wait)
    probe = cpu_probe(inputs)
    load = load_average()
    before = cpu_snapshot()
    wall0 = time.time()
    t0 = time.perf_counter()
    ids = [target.client.create_ok(g, inputs.big_mask, engine="opencv") for g in groups]
    t_end, done = wait_all(target.client, ids, args.poll)
    after = cpu_snapshot()
    probe_after = cpu_probe(inputs)
    last = max(st.finished for st in task_stamps(target.settings, ids).values())
    stages: dict[str, float] = {}
    for per_task in stage_lines(target.logs(), set(ids)).values():
        for stage, seconds in per_task.items():
            stages[stage] = stages.get(stage, 0.0) + seconds / len(urls)
    return ThroughputRun(
        round_no,
        target.config.name,
        load,
        busy,
        (probe, probe_after),
        len(urls),
        t_end - t0,
        last - wall0,
        bad_images(done),
        cpu_by_component(target.procs, before, after),
        stages,
    )


@dataclass
class TinySample:
    e2e: float
    to_created: float
    queued: float
    ran: float
    seen_after: float
    stages: dict[str, float] = field(default_factory=dict)


def tiny_latency(
    target: Target, inputs: Inputs, args: argparse.Namespace
) -> tuple[str, list[TinySample]]:
    n = args.tiny
    busy = wait_quiet(args.quiet, args.quiet_wait)
    load = f"{load_average()}, {busy:.0f} % busy, probe {cpu_probe(inputs):.0f} ms"
    before = cpu_snapshot()
    marks = []
    client = target.client
    for _ in range(n):
        wall0 = time.time()
        t0 = time.perf_counter()
        tid = client.create_ok([inputs.tiny_url], inputs.tiny_mask, engine="opencv")
        t_seen, done = wait_all(client, [tid], TINY_POLL)
        if bad_images(done):
            raise RuntimeError(f"tiny task failed on {target.config.name}: {done}")
        marks.append((tid, wall0, t_seen - t0))
    after = cpu_snapshot()
    rest = cpu_by_component(target.procs, before, after)["rest"]
    cores = len(os.sched_getaffinity(0))
    load += f", others {100 * rest / ((after.wall - before.wall) * cores):.0f} % during"
    stamps = task_stamps(target.settings, [tid for tid, _, _ in marks])
    stages = stage_lines(target.logs(), set(stamps))
    samples = []
    for tid, wall0, e2e in marks:
        st = stamps[tid]
        samples.append(
            TinySample(
                e2e,
                st.created - wall0,
                st.started - st.created,
                st.finished - st.started,
                wall0 + e2e - st.finished,
                stages.get(tid, {}),
            )
        )
    return load, samples


# ---------------------------------------------------------------------------------------------
# Report.


def versions(s3: S3Server | None) -> list[str]:
    import cv2
    import sqlalchemy as sa

    pg = "unknown"
    with contextlib.suppress(Exception):
        engine = sa.create_engine(postgres_url())
        with engine.connect() as conn:
            pg = str(conn.execute(sa.text("SHOW server_version")).scalar_one()).split()[0]
        engine.dispose()
    rabbit = first_line(["rabbitmqctl", "-q", "version"])
    weed = first_line([s3.weed, "version"]) if s3 else "not used"
    v = version
    return [
        f"{code_line()} (photo-eraser {v('photo-eraser')})",
        f"python: {platform.python_implementation()} {platform.python_version()}; "
        f"OpenCV {cv2.__version__}, celery {v('celery')}, kombu {v('kombu')}, "
        f"SQLAlchemy {v('SQLAlchemy')}, psycopg {v('psycopg')}, boto3 {v('boto3')}, "
        f"uvicorn {v('uvicorn')}",
        f"services: PostgreSQL {pg}, RabbitMQ {rabbit}, SeaweedFS {weed.removeprefix('version ')}",
    ]


def command(args: argparse.Namespace) -> str:
    argv = [".venv/bin/python", "bench/cluster.py", "--rounds", str(args.rounds)]
    if os.environ.get("PYTHONPATH"):
        argv.insert(0, f"PYTHONPATH={os.environ['PYTHONPATH']}")
    argv += ["--images", str(args.images), "--tasks", str(args.tasks), "--tiny", str(args.tiny)]
    argv += ["--poll", f"{args.poll:g}"]
    argv += ["--quiet", f"{args.quiet:g}", "--quiet-wait", f"{args.quiet_wait:g}"]
    if args.only:
        argv += ["--only", ",".join(args.only)]
    return shlex.join(argv)


def throughput_table(runs: list[ThroughputRun]) -> list[str]:
    cpu_cols = list(COMPONENTS)
    lines = [
        "| round | configuration | load avg before | busy % before | probe ms before/after "
        "| wall s | images/s "
        "| images/s (DB) "
        "| failed | " + " | ".join(f"CPU s {c}" for c in cpu_cols) + " | idle % |",
        "|" + "---|" * (10 + len(cpu_cols)),
    ]
    for r in runs:
        cells = [
            str(r.round),
            r.config,
            r.load,
            f"{r.busy_before:.0f}",
            f"{r.probe_ms[0]:.0f} / {r.probe_ms[1]:.0f}",
            f"{r.seconds:.2f}",
            f"**{r.rate:.2f}**" + (" (*)" if r.disturbed else ""),
            f"{r.rate_db:.2f}",
            str(r.failed_images),
            *(f"{r.cpu[c]:.2f}" for c in cpu_cols),
            f"{r.cpu['idle %']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_lines(runs: list[ThroughputRun], configs: list[Config]) -> list[str]:
    medians: dict[str, float] = {}
    quiet_medians: dict[str, float] = {}
    lines = [
        f"(*) = disturbed: the rest of the machine used more than {DISTURBED:.0%} of its cores "
        "during the run",
        "",
        "| configuration | images/s per run | median | median (DB span) | median of quiet runs "
        "| service CPU s per image (server/API, workers, PostgreSQL, RabbitMQ, SeaweedFS) |",
        "|---|---|---|---|---|---|",
    ]
    for config in configs:
        mine = [r for r in runs if r.config == config.name]
        if not mine:
            continue
        medians[config.name] = statistics.median(r.rate for r in mine)
        quiet = [r.rate for r in mine if not r.disturbed]
        if quiet:
            quiet_medians[config.name] = statistics.median(quiet)
        busy = statistics.median(
            sum(v for k, v in r.cpu.items() if k not in ("rest", "bench", "idle %")) / r.images
            for r in mine
        )
        per_run = ", ".join(f"{r.rate:.2f}" + (" (*)" if r.disturbed else "") for r in mine)
        quiet_cell = f"{quiet_medians[config.name]:.2f}" if quiet else "-"
        lines.append(
            f"| {config.name} | {per_run} | **{medians[config.name]:.2f}** "
            f"| {statistics.median(r.rate_db for r in mine):.2f} | {quiet_cell} | {busy:.3f} |"
        )
    lines.append("")
    for two, one in (("cluster-2", "cluster-1"), ("embedded-2", "embedded-1")):
        if two in medians and one in medians:
            per_round = [
                f"{a.rate / b.rate:.2f}"
                for a in runs
                if a.config == two
                for b in runs
                if b.config == one and b.round == a.round
            ]
            lines.append(
                f"- {two} / {one}: **{medians[two] / medians[one]:.2f}x** (medians; per round "
                f"{', '.join(per_round)})"
            )
            if two in quiet_medians and one in quiet_medians:
                lines.append(f"  - quiet runs only: {quiet_medians[two] / quiet_medians[one]:.2f}x")
    if "cluster-1" in medians and "embedded-1" in medians:
        lines.append(
            f"- cluster-1 / embedded-1: {medians['cluster-1'] / medians['embedded-1']:.2f}x; "
            f"cluster-2 / embedded-2: "
            f"{medians.get('cluster-2', math.nan) / medians.get('embedded-2', math.nan):.2f}x"
        )
    stage_names: list[str] = []
    for r in runs:
        stage_names += [k for k in r.stages if k not in stage_names]
    if stage_names:
        lines += [
            "",
            "Worker stages, ms per image (median over runs; stages of concurrent tasks overlap):",
            "",
            "| configuration | " + " | ".join(stage_names) + " |",
            "|---" * (len(stage_names) + 1) + "|",
        ]
        for config in configs:
            mine = [r for r in runs if r.config == config.name and r.stages]
            if mine:
                cells = [
                    f"{statistics.median(r.stages.get(k, 0.0) for r in mine) * 1000:.1f}"
                    for k in stage_names
                ]
                lines.append(f"| {config.name} | " + " | ".join(cells) + " |")
    return lines


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def tiny_lines(tiny: dict[str, list[tuple[int, str, list[TinySample]]]]) -> list[str]:
    parts = [
        ("end to end", lambda s: s.e2e),
        ("create request -> created_at", lambda s: s.to_created),
        ("created_at -> started_at (commit, dispatch, claim)", lambda s: s.queued),
        ("started_at -> finished_at (run, incl. result put)", lambda s: s.ran),
        ("finished_at -> seen by the client (20 ms poll)", lambda s: s.seen_after),
    ]
    names = [name for name in ("embedded-1", "cluster-1") if tiny.get(name)]
    pooled = {name: [s for _, _, runs in tiny[name] for s in runs] for name in names}
    loads = {name: "; ".join(f"r{r}: {load}" for r, load, _ in tiny[name]) for name in names}
    lines = [
        "| ms (median / p90) | " + " | ".join(names) + " | difference of medians |",
        "|---" * (len(names) + 2) + "|",
    ]
    for label, get in parts:
        cells = [
            f"{ms(statistics.median(map(get, pooled[n])))} / {ms(pct(list(map(get, pooled[n])), 90))}"
            for n in names
        ]
        diff = "-"
        if len(names) == 2:
            a, b = (statistics.median(map(get, pooled[n])) for n in names)
            diff = f"{(b - a) * 1000:+.1f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {diff} |")
    stage_names: list[str] = []
    for n in names:
        for s in pooled[n]:
            stage_names += [k for k in s.stages if k not in stage_names]
    for stage in stage_names:
        cells = []
        values = {}
        for n in names:
            got = [s.stages[stage] for s in pooled[n] if stage in s.stages]
            values[n] = statistics.median(got) if got else math.nan
            cells.append(f"{ms(values[n])} / {ms(pct(got, 90))}" if got else "-")
        diff = "-"
        if len(names) == 2:
            diff = f"{(values[names[1]] - values[names[0]]) * 1000:+.1f}"
        lines.append(
            f"| &nbsp; stage `{stage}` (worker log) | " + " | ".join(cells) + f" | {diff} |"
        )
    lines.append("")
    lines.append("tasks: " + ", ".join(f"{n} {len(pooled[n])}" for n in names))
    lines.append(
        "load average, busy share and probe before, and the rest of the machine's share "
        "during: " + " · ".join(f"{n}: {loads[n]}" for n in names)
    )
    if len(names) == 2:
        a, b = (statistics.median(s.e2e for s in pooled[n]) for n in names)
        pa, pb = (pct([s.e2e for s in pooled[n]], 90) for n in names)
        lines.append(
            f"cluster-1 / embedded-1 end to end: median {b / a:.2f}x ({(b - a) * 1000:+.1f} ms), "
            f"p90 {pb / pa:.2f}x ({(pb - pa) * 1000:+.1f} ms)"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# Run.


def run(args: argparse.Namespace) -> int:
    bench_started = time.perf_counter()
    configs = [c for c in CONFIGS if not args.only or c.name in args.only]
    print("# Photo Eraser cluster benchmark", flush=True)
    print(f"{machine_line()}; load average at start {load_average()}", flush=True)
    print("preparing inputs ...", flush=True)
    inputs = make_inputs(args.images)
    runs: list[ThroughputRun] = []
    tiny: dict[str, list[tuple[int, str, list[TinySample]]]] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(inputs.host.close)
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pe-cb-")))
        s3 = None
        if any(c.cluster for c in configs):
            s3 = stack.enter_context(running_s3(root / "s3"))
        header = [
            f"{machine_line()}; load average at start {load_average()}",
            *versions(s3),
            f"inputs: {args.images} JPEG q90 {BIG[0]}x{BIG[1]} photo-like images "
            f"(mean {inputs.big_jpeg_bytes / 1e6:.2f} MB) in {args.tasks} tasks, inline PNG "
            f"box mask {inputs.big_box} (2.0 %), engine opencv; tiny: {TINY[0]}x{TINY[1]} "
            f"JPEG, box {inputs.tiny_box}; image host: this process on 127.0.0.1",
            "probe: cpu_probe(), median of 5 x (decode one of the JPEGs, Telea r=3 on the "
            "box + 32 px, encode JPEG q95), one thread, in this process: how fast the cores are "
            "at that moment",
            "settings: defaults (lease 60 s, JPEG q95 results, rate limit 600/min/key), "
            "PHOTO_ERASER_ALLOW_PRIVATE_URLS=1; embedded: PHOTO_ERASER_WORKERS=1|2; cluster: "
            "1 API, N x `photo-eraser worker --concurrency 1`",
            f"command: {command(args)}",
        ]
        for round_no in range(1, args.rounds + 1):
            for config in configs:
                where = root / f"r{round_no}-{config.name}-{uuid.uuid4().hex[:4]}"
                print(f"round {round_no}: {config.name} ...", flush=True)
                with started(config, where, s3) as target:
                    warm_up(target, inputs)
                    result = throughput(target, inputs, args, round_no)
                    runs.append(result)
                    print(
                        f"  {result.rate:.2f} images/s ({result.seconds:.2f} s, DB span "
                        f"{result.seconds_db:.2f} s, load before {result.load}, "
                        f"{result.busy_before:.0f} % busy, probe "
                        f"{result.probe_ms[0]:.0f}/{result.probe_ms[1]:.0f} ms, "
                        f"{result.failed_images} failed)",
                        flush=True,
                    )
                    if args.tiny and config.slots == 1:
                        load, samples = tiny_latency(target, inputs, args)
                        tiny.setdefault(config.name, []).append((round_no, load, samples))
                        print(
                            f"  tiny: median {ms(statistics.median(s.e2e for s in samples))} "
                            f"ms, p90 {ms(pct([s.e2e for s in samples], 90))} ms",
                            flush=True,
                        )
    elapsed = time.perf_counter() - bench_started

    print()
    for line in header:
        print(line)
    print()
    print("## Throughput")
    print()
    for line in throughput_table(runs):
        print(line)
    print()
    for line in summary_lines(runs, configs):
        print(line)
    if tiny:
        print()
        print("## Per-task overhead (sequential tiny tasks)")
        print()
        for line in tiny_lines(tiny):
            print(line)
    print()
    print(f"bench run time: {elapsed:.0f} s")
    failed = sum(r.failed_images for r in runs)
    if failed:
        print(f"FAILED: {failed} images did not complete")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all configs")
    parser.add_argument("--images", type=int, default=40, help="1920x1080 images per run")
    parser.add_argument("--tasks", type=int, default=8, help="tasks the images are split into")
    parser.add_argument(
        "--tiny", type=int, default=30, help="sequential tiny tasks (embedded-1, cluster-1)"
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=0.1,
        help="throughput part: seconds between polls of the open tasks (the DB span does not "
        "depend on it)",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=30.0,
        help="before each timed part, wait until the machine is below this %% busy over 2 s",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=120.0, help="but wait at most this many seconds"
    )
    parser.add_argument(
        "--only",
        type=lambda s: [x for x in s.split(",") if x],
        default=[],
        help="comma-separated configurations (" + ", ".join(c.name for c in CONFIGS) + ")",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.tasks < 1 or args.images < args.tasks or args.tiny < 0:
        parser.error("need --rounds >= 1, 1 <= --tasks <= --images, --tiny >= 0")
    if args.poll <= 0:
        parser.error("--poll must be positive")
    if math.ceil(args.images / args.tasks) > 20:
        parser.error("at most 20 images per task")
    unknown = set(args.only) - {c.name for c in CONFIGS}
    if unknown:
        parser.error(f"unknown configurations: {', '.join(sorted(unknown))}")
    try:
        return run(args)
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        print(f"cannot run the benchmark: a service is missing: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
