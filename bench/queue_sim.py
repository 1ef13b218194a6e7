"""Discrete-event simulation of the cluster's priority queue: waiting time per priority.

Model: ``--workers`` identical workers, each running one task at a time to completion (Celery
with prefetch 1: a worker holds no task it is not running, and a running task is never
preempted). Tasks arrive as a Poisson process, optionally with a peak (the rate multiplied by
FACTOR for LEN_H hours from START_H). Each task draws a priority from ``--mix`` and a number of
images k from ``--images``; its service time is ``--overhead`` plus k per-image times, each
lognormal with mean ``--image-seconds`` and coefficient of variation ``--cv``. The queue serves
the highest priority first and, within a priority, the earliest arrival (one heap). The load is
rho = arrival rate x mean service time / workers, with the mean service time computed exactly
from the model; with a peak, ``--load`` is the off-peak load and the peak runs at FACTOR x it.

Arrivals stop after ``--tasks`` tasks (or ``--hours``); the queue then drains, so every task
has a wait. "queued at end" counts the tasks still waiting when the last one arrived. With
``--expire`` a task still waiting ``--deadline`` seconds after arrival is dropped without using
a worker, as the service's deadline sweeper does (status 6); without it the queue keeps every
task, which shows whether a priority starves.

Left out: network and download time, worker cold starts and crashes, retries, the broker's own
delivery (RabbitMQ hands messages to consumers one by one, and its priority order holds only
among messages not yet delivered), and any per-key cap.

    python3 bench/queue_sim.py [--load 0.7,0.9,0.95,1.05] [--workers 100] [--tasks 1000000]
    python3 bench/queue_sim.py --hours 24 --load 0.18 --peak 5:12:1
    python3 bench/queue_sim.py --check     # the simulator against Erlang C and Cobham's formula

Prints what it measured, on what machine, and how to reproduce it.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np

MAX_PRIORITY = 9
# Heap key = (MAX_PRIORITY - priority) << INDEX_BITS | arrival index: one int per waiting task
# orders by priority, then FIFO, and compares faster than a tuple.
INDEX_BITS = 40
INDEX_MASK = (1 << INDEX_BITS) - 1


@dataclass(frozen=True)
class Workload:
    """What arrives: the priority mix, the images per task and the per-image time."""

    mix: dict[int, float]
    images: dict[int, float]
    image_seconds: float
    cv: float
    overhead: float

    def mean_service(self) -> float:
        """Exact mean service time in seconds."""
        return self.overhead + self.image_seconds * sum(k * p for k, p in self.images.items())

    def second_moment(self) -> float:
        """Exact E[S^2]: given k, S has mean o + k m and variance k (cv m)^2."""
        m, o, var = self.image_seconds, self.overhead, (self.cv * self.image_seconds) ** 2
        return sum(p * (k * var + (o + k * m) ** 2) for k, p in self.images.items())


@dataclass(frozen=True)
class Peak:
    """The arrival rate times ``factor`` for ``hours`` hours starting at ``start_hour``."""

    factor: float
    start_hour: float
    hours: float


@dataclass
class Run:
    """One simulated run: per-task arrays in arrival order."""

    arrival: np.ndarray
    priority: np.ndarray
    wait: np.ndarray
    expired: np.ndarray
    seconds: float


def parse_mix(text: str) -> dict[int, float]:
    """``"9:0.1,0:0.9"`` -> {9: 0.1, 0: 0.9}, normalised to sum to 1."""
    pairs = [item.split(":") for item in text.split(",") if item.strip()]
    mix = {int(k): float(p) for k, p in pairs}
    total = sum(mix.values())
    if total <= 0 or any(p < 0 for p in mix.values()):
        raise ValueError(f"bad mix {text!r}")
    return {k: p / total for k, p in sorted(mix.items())}


def parse_images(text: str) -> dict[int, float]:
    """``"1-20"`` (uniform) or a mix ``"1:0.6,20:0.4"`` -> {images per task: probability}."""
    if ":" in text:
        return parse_mix(text)
    lo, hi = (int(v) for v in text.split("-"))
    return {k: 1 / (hi - lo + 1) for k in range(lo, hi + 1)}


def parse_peak(text: str) -> Peak:
    factor, start, length = (float(v) for v in text.split(":"))
    return Peak(factor, start, length)


def draw_choice(rng: np.random.Generator, table: dict[int, float], n: int) -> np.ndarray:
    return rng.choice(np.array(list(table), dtype=np.int64), size=n, p=list(table.values()))


def draw_service(rng: np.random.Generator, work: Workload, n: int) -> np.ndarray:
    """Service times of n tasks: overhead + a sum of k lognormal per-image times."""
    k = draw_choice(rng, work.images, n)
    sigma2 = math.log1p(work.cv**2)
    per_image = rng.lognormal(math.log(work.image_seconds) - sigma2 / 2, math.sqrt(sigma2), k.sum())
    owner = np.repeat(np.arange(n), k)
    return work.overhead + np.bincount(owner, weights=per_image, minlength=n)


def arrival_times(
    rng: np.random.Generator, rate: float, tasks: int | None, hours: float | None, peak: Peak | None
) -> np.ndarray:
    """Poisson arrivals in seconds: a unit-rate process mapped through the cumulative rate."""
    # Breakpoints of the piecewise-constant rate, and the cumulative rate Lambda(t) at each.
    if peak is None:
        knots_t = np.array([0.0, 1.0])
        knots_rate = np.array([rate])
    else:
        a, b = peak.start_hour * 3600, (peak.start_hour + peak.hours) * 3600
        knots_t = np.array([0.0, a, b, b + 1.0])
        knots_rate = np.array([rate, rate * peak.factor, rate])
    knots_cum = np.concatenate([[0.0], np.cumsum(np.diff(knots_t) * knots_rate)])

    def to_time(u: np.ndarray) -> np.ndarray:
        t = np.interp(u, knots_cum, knots_t)
        beyond = u > knots_cum[-1]  # past the last knot the rate is the base rate
        t[beyond] = knots_t[-1] + (u[beyond] - knots_cum[-1]) / knots_rate[-1]
        return t

    if tasks is not None:
        return to_time(np.cumsum(rng.exponential(1.0, tasks)))
    assert hours is not None
    horizon = float(cumulative_rate(knots_t, knots_cum, knots_rate, hours * 3600))
    n = rng.poisson(horizon)
    return to_time(np.sort(rng.uniform(0.0, horizon, n)))


def cumulative_rate(
    knots_t: np.ndarray, knots_cum: np.ndarray, knots_rate: np.ndarray, t: float
) -> float:
    """Lambda(t): the expected number of arrivals by time t."""
    if t <= knots_t[-1]:
        return float(np.interp(t, knots_t, knots_cum))
    return float(knots_cum[-1] + (t - knots_t[-1]) * knots_rate[-1])


def simulate(
    arrival: np.ndarray,
    priority: np.ndarray,
    service: np.ndarray,
    workers: int,
    deadline: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Start time of each task (arrival order), and which ones expired unserved.

    Events are the (sorted) arrivals and the completions in ``busy``, a heap of finish times.
    Invariant: a task waits only while no worker is free, so ``free > 0`` implies an empty queue.
    With ``deadline``, a task that reaches the head of the queue later than that after its
    arrival is dropped there: it would have been timed out while waiting and used no worker.
    """
    n = len(arrival)
    if n > INDEX_MASK:
        raise ValueError("too many tasks")
    arr: list[float] = arrival.tolist()
    svc: list[float] = service.tolist()
    keys: list[int] = (
        ((MAX_PRIORITY - priority.astype(np.int64)) << INDEX_BITS) | np.arange(n, dtype=np.int64)
    ).tolist()
    start = [math.nan] * n
    expired = bytearray(n)
    limit = math.inf if deadline is None else deadline
    busy: list[float] = []
    waiting: list[int] = []
    free = workers
    push, pop, replace = heapq.heappush, heapq.heappop, heapq.heapreplace

    def next_task(now: float) -> int:
        """Index of the task a worker freed at ``now`` takes, or -1 if none is waiting."""
        while waiting:
            j = pop(waiting) & INDEX_MASK
            if now - arr[j] <= limit:
                return j
            expired[j] = 1
        return -1

    for i in range(n):
        t = arr[i]
        while busy and busy[0] <= t:
            done = busy[0]
            j = next_task(done) if waiting else -1
            if j >= 0:
                start[j] = done
                replace(busy, done + svc[j])
            else:
                pop(busy)
                free += 1
        if free:
            free -= 1
            start[i] = t
            push(busy, t + svc[i])
        else:
            push(waiting, keys[i])
    # Arrivals have stopped: drain the queue.
    while waiting:
        done = busy[0]
        j = next_task(done)
        if j < 0:
            break
        start[j] = done
        replace(busy, done + svc[j])
    return np.array(start), np.frombuffer(bytes(expired), dtype=np.uint8).astype(bool)


def run_once(
    seed: int,
    work: Workload,
    workers: int,
    load: float,
    tasks: int | None,
    hours: float | None,
    peak: Peak | None,
    deadline: float | None,
) -> Run:
    """Draw one workload at ``load`` and simulate it."""
    rng = np.random.default_rng(seed)
    rate = load * workers / work.mean_service()
    arrival = arrival_times(rng, rate, tasks, hours, peak)
    n = len(arrival)
    priority = draw_choice(rng, work.mix, n)
    service = draw_service(rng, work, n)
    t0 = time.perf_counter()
    start, expired = simulate(arrival, priority, service, workers, deadline)
    seconds = time.perf_counter() - t0
    return Run(arrival, priority, start - arrival, expired, seconds)


def fmt_seconds(s: float) -> str:
    if math.isnan(s):
        return "-"
    if s < 1:
        return f"{s:.3f}"
    if s < 100:
        return f"{s:.1f}"
    return f"{s:,.0f}"


def table(run: Run, deadline: float, expire: bool, mask: np.ndarray | None = None) -> str:
    """Markdown table per priority (highest first) of the waits in ``run`` (within ``mask``)."""
    last = run.arrival[-1] if len(run.arrival) else 0.0
    late_header = "timed out" if expire else f"wait > {deadline:g} s"
    lines = [
        f"| priority | tasks | mean wait s | p50 s | p95 s | p99 s | max s | {late_header} "
        "| queued at end |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keep = np.ones(len(run.arrival), dtype=bool) if mask is None else mask
    for p in sorted(np.unique(run.priority[keep]).tolist(), reverse=True):
        sel = keep & (run.priority == p)
        served = sel & ~run.expired
        w = run.wait[served]
        if len(w):
            p50, p95, p99 = np.percentile(w, [50, 95, 99])
            mean, worst = float(w.mean()), float(w.max())
        else:
            p50 = p95 = p99 = mean = worst = math.nan
        late = run.expired[sel] if expire else run.wait[sel] > deadline
        # Still waiting when the last task arrived: started later, or dropped later.
        queued = (run.arrival[sel] + np.nan_to_num(run.wait[sel], nan=deadline)) > last
        lines.append(
            f"| {p} | {int(sel.sum()):,} | {fmt_seconds(mean)} | {fmt_seconds(p50)} "
            f"| {fmt_seconds(p95)} | {fmt_seconds(p99)} | {fmt_seconds(worst)} "
            f"| {100 * late.mean():.2f} % | {int(queued.sum()):,} |"
        )
    return "\n".join(lines)


def starvation_line(run: Run, mean_service: float, expire: bool) -> str:
    """Does the lowest priority's wait grow over the run? Compare the first and last thirds."""
    lowest = int(run.priority.min())
    t_end = run.arrival[-1]
    sel = (run.priority == lowest) & ~run.expired
    first = run.wait[sel & (run.arrival < t_end / 3)]
    last = run.wait[sel & (run.arrival >= 2 * t_end / 3)]
    if not len(first) or not len(last):
        return f"priority {lowest}: too few tasks to compare thirds"
    a, b = float(first.mean()), float(last.mean())
    # Noise between thirds of a stable run is a few tens of percent of a small number;
    # growth means both a doubling and more than 10 mean service times.
    grows = b > 2 * a and b - a > 10 * mean_service
    if not grows:
        verdict = "stays bounded (no sign of starvation)"
    elif expire:
        verdict = "GROWS up to the deadline (starves: its tasks time out)"
    else:
        verdict = "GROWS without bound (starves)"
    return (
        f"priority {lowest} mean wait: first third of arrivals {fmt_seconds(a)} s, "
        f"last third {fmt_seconds(b)} s -> {verdict}"
    )


# --- checks against queueing theory -------------------------------------------------------


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load a = lambda / mu (Erlang B recursion)."""
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return c * b / (c - a * (1 - b))


def mmc_priority_waits(c: int, mu: float, rates: list[float]) -> list[float]:
    """Cobham: mean waits of non-preemptive priority classes in M/M/c, highest class first.

    With a common exponential service rate, W_k = C(c, a) / (c mu) / ((1 - s_{k-1})(1 - s_k)),
    s_k being the load of classes 1..k. One class gives Erlang C's C / (c mu - lambda).
    """
    a = sum(rates) / mu
    w0 = erlang_c(c, a) / (c * mu)
    waits, above = [], 0.0
    for lam in rates:
        below = above + lam / (c * mu)
        waits.append(w0 / ((1 - above) * (1 - below)))
        above = below
    return waits


def mg1_priority_waits(work: Workload, rates: list[float]) -> list[float]:
    """Cobham with Pollaczek-Khinchine: non-preemptive priority M/G/1, highest class first."""
    es, es2 = work.mean_service(), work.second_moment()
    w0 = sum(rates) * es2 / 2
    waits, above = [], 0.0
    for lam in rates:
        below = above + lam * es
        waits.append(w0 / ((1 - above) * (1 - below)))
        above = below
    return waits


def batch_mean_ci(w: np.ndarray, batches: int = 20) -> tuple[float, float]:
    """Mean and 95 % half-width from batch means (waits are correlated in time)."""
    means = np.array([b.mean() for b in np.array_split(w, batches)])
    return float(w.mean()), 2.093 * float(means.std(ddof=1)) / math.sqrt(batches)


@dataclass(frozen=True)
class CheckCase:
    name: str
    workers: int
    load: float
    mix: dict[int, float]
    exponential: bool


def run_checks(seed: int, tasks: int, work: Workload, tolerance: float) -> bool:
    """Simulate cases with a known answer; each class's mean wait must be within tolerance."""
    # Few servers and a moderate load: the mean wait of a run then settles within ~1 % in a
    # few million tasks (at 100 workers the same precision takes ~100x more). The event loop
    # does not depend on the number of workers.
    cases = [
        CheckCase("M/M/c, 1 class (Erlang C)", 4, 0.7, {0: 1.0}, True),
        CheckCase("M/M/c, 2 classes (Cobham)", 4, 0.7, {9: 0.3, 0: 0.7}, True),
        CheckCase("M/G/1, this mix and service (Cobham, P-K)", 1, 0.7, work.mix, False),
    ]
    print(
        f"Each case: {tasks:,} tasks, seed {seed}; the first and last 5 % of arrivals are left "
        "out (empty start, drain). Simulated mean wait +- 95 % batch-means half-width; "
        f"PASS if within {100 * tolerance:g} % of theory.\n"
    )
    print("| case | workers | load | priority | theory s | simulated s | +- s | diff | result |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    ok = True
    for case in cases:
        rng = np.random.default_rng(seed)
        mean_s = work.mean_service()
        rate = case.load * case.workers / mean_s
        arrival = np.cumsum(rng.exponential(1 / rate, tasks))
        priority = draw_choice(rng, case.mix, tasks)
        if case.exponential:
            service = rng.exponential(mean_s, tasks)
        else:
            service = draw_service(rng, work, tasks)
        start, _ = simulate(arrival, priority, service, case.workers)
        wait = start - arrival
        classes = sorted(case.mix, reverse=True)
        rates = [rate * case.mix[p] for p in classes]
        if case.exponential:
            theory = mmc_priority_waits(case.workers, 1 / mean_s, rates)
        else:
            theory = mg1_priority_waits(work, rates)
        steady = np.zeros(tasks, dtype=bool)
        steady[tasks // 20 : tasks - tasks // 20] = True
        for p, expect in zip(classes, theory, strict=True):
            got, half = batch_mean_ci(wait[steady & (priority == p)])
            diff = got / expect - 1
            passed = abs(diff) <= tolerance
            ok &= passed
            print(
                f"| {case.name} | {case.workers} | {case.load} | {p} | {expect:.4f} | "
                f"{got:.4f} | {half:.4f} | {100 * diff:+.2f} % | {'PASS' if passed else 'FAIL'} |"
            )
    print(f"\ncheck: {'PASS' if ok else 'FAIL'}")
    return ok


# --- report -------------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--load", default="0.9", help="comma-separated loads, e.g. 0.7,0.9")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tasks", type=int, help="tasks per run (default 1e6; --check: 4e6)")
    size.add_argument("--hours", type=float, help="simulated hours of arrivals per run")
    parser.add_argument("--image-seconds", type=float, default=0.25, help="mean time per image")
    parser.add_argument("--cv", type=float, default=0.3, help="per-image time's CV")
    parser.add_argument("--overhead", type=float, default=0.05, help="seconds per task")
    parser.add_argument("--images", default="1-20", help='"1-20" uniform, or "1:0.6,20:0.4"')
    parser.add_argument("--mix", default="9:0.1,5:0.2,1:0.2,0:0.5", help="priority:share,...")
    parser.add_argument("--peak", type=parse_peak, help="FACTOR:START_H:LEN_H")
    parser.add_argument("--deadline", type=float, default=3600.0, help="task deadline, s")
    parser.add_argument("--expire", action="store_true", help="drop tasks past the deadline")
    parser.add_argument("--check", action="store_true", help="verify against queueing theory")
    parser.add_argument("--tolerance", type=float, default=0.03, help="--check's relative bound")
    args = parser.parse_args()

    work = Workload(
        parse_mix(args.mix), parse_images(args.images), args.image_seconds, args.cv, args.overhead
    )
    if not all(0 <= p <= MAX_PRIORITY for p in work.mix):
        parser.error(f"priorities must be 0..{MAX_PRIORITY}")

    print("# Priority queue simulation\n")
    print(f"command: {shlex.join(['python3', *sys.argv])}")
    print(f"seed: {args.seed}")
    print(f"machine: {machine()}")
    mean_s = work.mean_service()
    print(
        f"service: {work.overhead:g} s + k x {work.image_seconds:g} s per image (lognormal, "
        f"CV {work.cv:g}), k from {args.images}; mean {mean_s:.3f} s, "
        f"CV {math.sqrt(work.second_moment() - mean_s**2) / mean_s:.2f}"
    )
    print(f"priority mix: {', '.join(f'{p}: {100 * s:g} %' for p, s in work.mix.items())}\n")

    t0 = time.perf_counter()
    if args.check:
        ok = run_checks(args.seed, args.tasks or 4_000_000, work, args.tolerance)
        print(f"wall time: {time.perf_counter() - t0:.1f} s")
        return 0 if ok else 1

    if args.tasks is None and args.hours is None:
        args.tasks = 1_000_000
    deadline = args.deadline if args.expire else None
    for load in (float(v) for v in args.load.split(",")):
        run = run_once(
            args.seed, work, args.workers, load, args.tasks, args.hours, args.peak, deadline
        )
        rate = load * args.workers / mean_s
        span_h = run.arrival[-1] / 3600
        peak = ""
        if args.peak:
            p = args.peak
            mean_load = load * (
                1 + (p.factor - 1) * min(p.hours, max(0.0, span_h - p.start_hour)) / span_h
            )
            peak = (
                f", peak x{p.factor:g} ({load * p.factor:.3g}) for {p.hours:g} h from "
                f"hour {p.start_hour:g}, mean load {mean_load:.3g}"
            )
        print(
            f"## {args.workers} workers, load {load:g}{peak}\n\n"
            f"{len(run.arrival):,} tasks over {span_h:.1f} h at {rate:.2f} tasks/s"
            f"{' off-peak' if args.peak else ''}; simulated in {run.seconds:.1f} s\n"
        )
        print(table(run, args.deadline, args.expire))
        print()
        print(starvation_line(run, mean_s, args.expire))
        if args.peak:
            a = args.peak.start_hour * 3600
            in_peak = (run.arrival >= a) & (run.arrival < a + args.peak.hours * 3600)
            print(f"\nTasks that arrived during the peak ({int(in_peak.sum()):,}):\n")
            print(table(run, args.deadline, args.expire, in_peak))
        print()
    print(f"wall time: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
