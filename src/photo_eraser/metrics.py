"""Prometheus metrics of one server process (``GET /metrics``).

Each `Metrics` has a registry of its own (no global state). Labels are few and bounded:
priorities, stages, engine names, outcomes and reason classes; never a task id or a key.
Queue depth and running tasks are read from the task store when scraped, so they are right
whatever wrote the rows.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from photo_eraser import __version__

# Seconds: a poll to a long task, and a 20-image batch of large photos.
_TASK_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _StoreGauges(Collector):
    """Queue depth by priority and running tasks, counted by the store at scrape time."""

    def __init__(self, counts: Callable[[], tuple[Mapping[int, int], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        waiting, running = self._counts()
        depth = GaugeMetricFamily(
            "photo_eraser_queue_depth", "Tasks waiting to start, by priority", labels=["priority"]
        )
        for priority in range(10):
            depth.add_metric([str(priority)], waiting.get(priority, 0))
        yield depth
        yield GaugeMetricFamily("photo_eraser_tasks_running", "Tasks in progress", value=running)


class Metrics:
    """The service's metrics; the worker and the API record into it."""

    def __init__(self, store_counts: Callable[[], tuple[Mapping[int, int], int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Info("photo_eraser_build", "Version of the running server", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.tasks_created = Counter(
            "photo_eraser_tasks_created", "Tasks accepted, by priority", ["priority"], registry=r
        )
        self.tasks_finished = Counter(
            "photo_eraser_tasks_finished",
            "Tasks that reached a final status, by status",
            ["status"],
            registry=r,
        )
        self.callback_attempts = Counter(
            "photo_eraser_callback_attempts",
            "Callback attempts, by outcome: delivered, retry (failed, due again), failed "
            "(given up)",
            ["outcome"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "photo_eraser_queue_wait_seconds",
            "From creation to the start of the attempt that ran it",
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        self.task_duration = Histogram(
            "photo_eraser_task_duration_seconds",
            "Run time of a task attempt that reached a final status",
            buckets=_TASK_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "photo_eraser_stage_seconds",
            "Seconds per task spent in each stage",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.engine_seconds = Histogram(
            "photo_eraser_engine_seconds",
            "Seconds per task in the engine, by the engine asked for",
            ["engine"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "photo_eraser_images",
            "Images with a verdict, by the method that restored them and outcome",
            ["engine", "outcome"],
            registry=r,
        )
        self.download_failures = Counter(
            "photo_eraser_download_failures",
            "Failed downloads (images and masks), by reason class",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "photo_eraser_task_retries",
            "Task attempts given back to the queue, by cause",
            ["cause"],
            registry=r,
        )
        self.creates_refused = Counter(
            "photo_eraser_creates_refused",
            "Create requests refused by load shedding, quota or disk space, by cause",
            ["cause"],
            registry=r,
        )
        # The HTTP metrics: the names, labels and buckets prometheus-fastapi-instrumentator
        # gave them (its `requests` and `latency`), recorded by `api.http_metrics`.
        self.http_requests = Counter(
            "http_requests",
            "Total number of requests by method, status and handler.",
            ["handler", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Duration of HTTP requests in seconds",
            ["handler", "method", "status"],
            registry=r,
        )
        r.register(_StoreGauges(store_counts))


def download_reason_class(reason: str) -> str:
    """A small fixed set of classes for a `FetchError` reason (the label of a failure)."""
    text = reason.lower()
    for needle, label in (
        ("timed out", "timeout"),
        ("exceeds", "too_large"),
        ("not allowed", "address_refused"),
        ("could not resolve", "dns"),
        ("could not connect", "connect"),
        ("tls", "tls"),
        ("redirect", "redirect"),
        ("http ", "http_status"),
        ("url", "invalid_url"),
    ):
        if needle in text:
            return label
    return "other"
