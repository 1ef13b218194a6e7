"""Settings, read once from the environment (prefix ``PHOTO_ERASER_``) or CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def usable_cores() -> int:
    """Cores this process may run on (respects CPU affinity, e.g. taskset or containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _default_workers() -> int:
    return usable_cores()


class Settings(BaseSettings):
    """Every tunable of the service. Env var = ``PHOTO_ERASER_`` + field name in capitals."""

    model_config = SettingsConfigDict(env_prefix="PHOTO_ERASER_", extra="ignore")

    data_dir: Path = Field(default=Path("data"), description="SQLite database, blobs and models")
    model_dir: Path | None = Field(default=None, description="defaults to DATA_DIR/models")
    database_url: str | None = Field(default=None, description="defaults to SQLite in DATA_DIR")
    public_url: str | None = Field(
        default=None, description="base of result URLs; defaults to the request's own host"
    )
    host: str = "127.0.0.1"
    port: int = 8080

    workers: int = Field(default_factory=_default_workers, ge=0, description="0 = accept only")
    image_threads: int = Field(
        default_factory=usable_cores,
        ge=1,
        description="images of one task decoded, restored and encoded at once (a process runs "
        "at most max(workers, image_threads) such stages at a time)",
    )
    allow_private_urls: bool = False
    max_body_bytes: int = 10 * 1024 * 1024
    max_body_buffer_mb: int = Field(
        default=256,
        ge=1,
        description="request bodies held in memory at once, over all requests; past it 503",
    )
    body_timeout_seconds: float = Field(
        default=30.0, gt=0, description="a create body must arrive within this (else 408)"
    )
    max_image_bytes: int = 50 * 1024 * 1024
    min_side: int = 256
    max_side: int = 5000
    max_aspect: float = 4.0
    max_images: int = 20

    download_connect_timeout: float = 10.0
    download_read_timeout: float = 30.0
    download_total_timeout: float = 120.0
    download_max_redirects: int = 3
    download_per_host: int = 4

    task_deadline_seconds: float = 3600.0
    max_attempts: int = 3
    result_ttl_seconds: int = 24 * 3600
    signing_secret: str | None = Field(
        default=None, description="HMAC key for result URLs; generated into DATA_DIR if unset"
    )
    rate_limit_per_minute: int = Field(
        default=600, ge=0, description="task creations per key; 0 = off"
    )
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    restore_exact_fit: bool = Field(
        default=True,
        description="let `restore` fit an exact blend on all-lossless (PNG/BMP) batches",
    )
    restore_fill: Literal["best", "lama", "fill", "opencv"] = Field(
        default="best",
        description="what `restore` (and `auto`) fills the pixels it cannot recover with: best = "
        "LaMa when its model is installed, else fill (Telea on smooth surroundings, PatchMatch on "
        "texture), else opencv (Telea alone: the cheapest, a smear over texture); a named one "
        "that cannot run here falls back to best",
    )
    max_pending_creates: int = Field(
        default=256,
        ge=1,
        description="create requests being handled at once (after their body arrived) at most; "
        "past it creates get 503 with Retry-After instead of an ever longer wait",
    )
    max_open_tasks_per_key: int = Field(
        default=1000,
        ge=0,
        description="unfinished (waiting or running) tasks one key may have; past it creates "
        "get 429 with Retry-After, so one key cannot fill the queue; 0 = no cap",
    )
    auto_pull: bool = Field(
        default=True,
        description="`serve` downloads the LaMa model in the background when it is not "
        "installed (verified like `models pull`); offline it logs one line and serves with "
        "the weight-free engines; 0 = never download",
    )
    create_demo_key: bool = True
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="an API process trusts a key it read from the database this long: a key "
        "revoked meanwhile is refused at most this long after the revocation; 0 = read it "
        "on every request",
    )
    lease_seconds: float = Field(
        default=60.0,
        ge=2,
        description="a worker holds a task this long and renews it every third of it; a task "
        "whose worker stopped renewing (a host that vanished) is re-queued once it expires",
    )

    # ---- Callbacks (the callback_url extension; docs/webhooks.md) ----
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="one callback attempt (connect, send, answer) at most"
    )
    webhook_backoff_seconds: float = Field(
        default=10.0,
        gt=0,
        description="pause after a callback's first failed attempt; doubled after each further "
        "one (plus up to 10% jitter), up to PHOTO_ERASER_WEBHOOK_BACKOFF_MAX_SECONDS",
    )
    webhook_backoff_max_seconds: float = Field(
        default=3600.0, gt=0, description="longest pause between two callback attempts"
    )
    webhook_retry_seconds: float = Field(
        default=24 * 3600.0,
        ge=0,
        description="a callback is retried until this long after its task finished, then "
        "given up (failed); the first attempt is always made",
    )
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, description="how often each API process looks for due callbacks"
    )

    # ---- Distributed mode (`photo-eraser api` and `photo-eraser worker`) ----
    broker_url: str | None = Field(
        default=None, description="amqp://user:pass@host:5672/vhost (RabbitMQ, for Celery)"
    )
    storage_url: str | None = Field(
        default=None, description="s3://bucket/prefix for masks and results; default local disk"
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="the S3 API's address when it is not AWS (SeaweedFS, MinIO)"
    )
    s3_public_url: str | None = Field(
        default=None,
        description="if set, result links are presigned S3 URLs on this address instead of "
        "links to the API (which then streams from the store)",
    )
    republish_after_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a waiting task whose message the broker never confirmed is published "
        "again after this long (an API process that stopped between commit and publish)",
    )
    min_free_disk_mb: int = Field(
        default=256,
        ge=0,
        description="below this free space on the data directory the server is degraded: "
        "/healthz answers 503, new tasks are refused with 503 and no new task starts; 0 = off",
    )

    @model_validator(mode="after")
    def _one_body_fits_the_buffer(self) -> Settings:
        if self.max_body_buffer_mb << 20 < self.max_body_bytes:
            raise ValueError(
                f"PHOTO_ERASER_MAX_BODY_BUFFER_MB ({self.max_body_buffer_mb}) must hold at least "
                f"one body of PHOTO_ERASER_MAX_BODY_BYTES ({self.max_body_bytes})"
            )
        return self

    def distributed_problems(self, role: str) -> list[str]:
        """What is missing or wrong for ``role`` (``api`` or ``worker``) of a cluster."""
        problems = []
        if not (self.database_url or "").startswith("postgresql"):
            problems.append("PHOTO_ERASER_DATABASE_URL must be postgresql+psycopg://...")
        if not (self.broker_url or "").startswith(("amqp://", "amqps://")):
            problems.append("PHOTO_ERASER_BROKER_URL must be amqp://user:pass@host:5672/vhost")
        if not (self.storage_url or "").startswith("s3://"):
            problems.append("PHOTO_ERASER_STORAGE_URL must be s3://bucket/prefix")
        if role == "api" and not self.signing_secret:
            problems.append(
                "PHOTO_ERASER_SIGNING_SECRET is required: every API process must sign result "
                "links with the same secret"
            )
        return problems

    @property
    def models_path(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.data_dir / "models"

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'photo-eraser.db').resolve()}"
