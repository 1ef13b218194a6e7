"""The ``photo-eraser`` command: serve, keys, erase, submit, models."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from photo_eraser.cli_settings import (
    data_dir_option,
    load_settings,
    placement_from_options,
    placement_options,
)
from photo_eraser.config import Settings

if TYPE_CHECKING:
    from photo_eraser.imaging import MaskPlacement


@click.group()
@click.version_option(package_name="photo-eraser")
def main() -> None:
    """Photo Eraser: restore the masked area of images, as a service or offline."""


@main.command()
@click.option("--host", default=None, help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8080).")
@click.option("--workers", type=int, default=None, help="Worker count (default: one per core).")
@data_dir_option
def serve(host: str | None, port: int | None, workers: int | None, data_dir: Path | None) -> None:
    """Run the HTTP service with its workers.

    Without the LaMa model it downloads it in the background (verified; see docs/engines.md)
    unless PHOTO_ERASER_AUTO_PULL=0, and serves with the weight-free engines meanwhile."""
    import uvicorn

    from photo_eraser import logs
    from photo_eraser.api.app import create_app
    from photo_eraser.memory import tune_allocator
    from photo_eraser.service import open_store

    settings = load_settings(data_dir, host=host, port=port, workers=workers)
    logs.configure()
    tune_allocator()
    store = open_store(settings)
    if settings.create_demo_key and not store.list_keys():
        appkey, appsecret = store.create_key("demo")
        _print_demo(settings, appkey, appsecret)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


@main.command()
@click.option("--host", default=None, help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8080).")
def api(host: str | None, port: int | None) -> None:
    """Run one API process of a cluster (HTTP only; the work goes to `photo-eraser worker`).

    Needs PHOTO_ERASER_DATABASE_URL (PostgreSQL), PHOTO_ERASER_BROKER_URL (RabbitMQ),
    PHOTO_ERASER_STORAGE_URL (s3://bucket/prefix) and PHOTO_ERASER_SIGNING_SECRET. Run as many
    as you like behind a load balancer."""
    import uvicorn

    from photo_eraser import logs
    from photo_eraser.api.app import create_app

    settings = load_settings(None, host=host, port=port)
    _require_cluster(settings, "api")
    logs.configure()
    try:
        app = create_app(settings, distributed=True)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


@main.command()
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Tasks at once on this host (default: one per core).",
)
def worker(concurrency: int | None) -> None:
    """Run the worker of one host of a cluster (a Celery worker on RabbitMQ).

    Needs PHOTO_ERASER_DATABASE_URL, PHOTO_ERASER_BROKER_URL and PHOTO_ERASER_STORAGE_URL, as
    the API processes have them. Stop it with SIGTERM: it finishes the tasks under way."""
    from photo_eraser import logs
    from photo_eraser.celery_worker import WorkerHost
    from photo_eraser.config import usable_cores
    from photo_eraser.memory import tune_allocator
    from photo_eraser.runtime import check_blob_store, open_blob_store, open_store

    settings = load_settings(None)
    _require_cluster(settings, "worker")
    logs.configure()
    tune_allocator()
    open_store(settings).engine.dispose()  # the schema is migrated before any child starts
    try:
        check_blob_store(open_blob_store(settings))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    WorkerHost(settings).start(concurrency or usable_cores())


def _require_cluster(settings: Settings, role: str) -> None:
    try:
        import boto3  # noqa: F401
        import celery  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise click.UsageError(
            f"`photo-eraser {role}` needs the cluster extra ({exc.name} is missing): "
            "pip install 'photo-eraser[cluster]'"
        ) from None
    problems = settings.distributed_problems(role)
    if problems:
        raise click.UsageError(
            f"`photo-eraser {role}` runs in a cluster and needs:\n  " + "\n  ".join(problems)
        )


def _print_demo(settings: Settings, appkey: str, appsecret: str) -> None:
    import base64

    token = base64.b64encode(f"{appkey}:{appsecret}".encode()).decode()
    base = settings.public_url or f"http://{settings.host}:{settings.port}"
    click.echo(
        f"""
First start: created a demo key (shown once; the secret is stored only as a hash).
  appkey:    {appkey}
  appsecret: {appsecret}

Try it:
  curl -s {base}/v3/pic/rw/batch -H 'Content-Type: application/json' \\
    -H 'Authorization: Basic {token}' \\
    -d '{{"images": ["https://example.com/photo.jpg"], "mask": "https://example.com/mask.png", "priority": 1}}'
  curl -s {base}/v3/pic/rw/result/TASK_ID -H 'Authorization: Basic {token}'
API docs: {base}/docs
Studio (upload, paint a mask, compare): {base}/
""",
        err=True,
    )


@main.group()
def keys() -> None:
    """Manage API keys (appkey/appsecret pairs)."""


@keys.command("create")
@click.option("--name", required=True, help="Who the key is for.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last line.")
@data_dir_option
def keys_create(name: str, as_json: bool, data_dir: Path | None) -> None:
    """Create a key and print its secret and webhook secret (shown only this once)."""
    from photo_eraser.service import open_store

    store = open_store(load_settings(data_dir))
    appkey, appsecret = store.create_key(name)
    webhook_secret = store.webhook_secret(appkey)
    if as_json:
        click.echo(
            json.dumps({"appkey": appkey, "appsecret": appsecret, "webhook_secret": webhook_secret})
        )
    else:
        click.echo(
            f"appkey:         {appkey}\nappsecret:      {appsecret}\n"
            f"webhook secret: {webhook_secret}\n"
            "(the secrets are not shown again; the webhook secret signs callbacks)"
        )


@keys.command("rotate-webhook-secret")
@click.argument("appkey")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_dir_option
def keys_rotate_webhook_secret(appkey: str, as_json: bool, data_dir: Path | None) -> None:
    """Give a key a new webhook secret and print it (shown only this once). Callbacks sent
    from now on, retries of earlier ones included, are signed with it."""
    from photo_eraser.service import open_store

    secret = open_store(load_settings(data_dir)).rotate_webhook_secret(appkey)
    if secret is None:
        raise click.ClickException(f"no active key {appkey}")
    if as_json:
        click.echo(json.dumps({"appkey": appkey, "webhook_secret": secret}))
    else:
        click.echo(f"webhook secret: {secret}\n(not shown again)")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@data_dir_option
def keys_list(as_json: bool, data_dir: Path | None) -> None:
    """List keys (never their secrets)."""
    from photo_eraser.service import open_store

    rows = open_store(load_settings(data_dir)).list_keys()
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows]))
        return
    for r in rows:
        state = "revoked" if r.revoked_at else "active"
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at))
        click.echo(f"{r.appkey}  {state:7}  {created}  {r.name}")


@keys.command("revoke")
@click.argument("appkey")
@data_dir_option
def keys_revoke(appkey: str, data_dir: Path | None) -> None:
    """Revoke a key: its requests get 401 from now on."""
    from photo_eraser.service import open_store

    if not open_store(load_settings(data_dir)).revoke_key(appkey):
        raise click.ClickException(f"no active key {appkey}")
    click.echo(f"revoked {appkey}")


@main.command()
@click.option(
    "--mask",
    "mask_arg",
    required=True,
    metavar="FILE|auto",
    help="The mask file, or auto: find the watermark the images share (at least 4 images; "
    "the mask found is written to --out as detected-mask.png).",
)
@click.argument(
    "images", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--engine", default="auto", show_default=True, help="auto, opencv, lama, patchmatch or restore"
)
@placement_options
@data_dir_option
def erase(
    mask_arg: str,
    images: tuple[Path, ...],
    out_dir: Path,
    engine: str,
    data_dir: Path | None,
    **placement: Any,
) -> None:
    """Restore IMAGES offline with the service's pipeline; results go to --out."""
    from tqdm import tqdm

    from photo_eraser.engines.base import EngineError
    from photo_eraser.engines.registry import EngineRegistry
    from photo_eraser.imaging import (
        ImageError,
        ImageLimits,
        MaskError,
        decode_image,
        decode_mask,
        encode_mask,
    )
    from photo_eraser.imaging.detect import detect_watermark
    from photo_eraser.pipeline import restore_images

    settings = load_settings(data_dir)
    mask_placement = placement_from_options(**placement)
    limits = ImageLimits.from_settings(settings)
    registry = EngineRegistry.from_settings(settings, threads=settings.workers)
    auto = mask_arg == "auto"
    mask_path = Path(mask_arg)
    if not auto and not mask_path.is_file():
        raise click.BadParameter(f"no such file: {mask_arg} (or give auto)", param_hint="--mask")
    if auto and (mask_placement.fit != "stretch" or mask_placement.invert):
        # As the API: the mask found in one frame is stretched onto each image.
        raise click.BadParameter(
            "only stretch, not inverted, with --mask auto", param_hint="--mask-fit"
        )
    try:
        registry.check(engine)
        mask = None
        if not auto:
            mask = decode_mask(
                mask_path.read_bytes(), settings.max_image_bytes, max_side=settings.max_side
            )
    except (EngineError, MaskError) as exc:
        raise click.ClickException(str(exc)) from None
    decoded, names, failed = [], [], 0
    for path in tqdm(images, desc="decode", unit="img", file=sys.stderr):
        try:
            decoded.append(decode_image(path.read_bytes(), limits))
            names.append(path)
        except ImageError as exc:
            failed += 1
            click.echo(f"{path}: {exc}", err=True)
    if not decoded:
        raise click.ClickException("no image could be read")
    detected = None
    if mask is None:
        found = detect_watermark([im.pixels for im in decoded])
        if found.mask is None:
            raise click.ClickException(found.reason)  # nothing written
        mask, detected = found.mask, found
    click.echo(f"restoring {len(decoded)} image(s) with engine {engine}", err=True)
    try:
        results = restore_images(
            decoded,
            mask,
            registry.get(engine),
            jpeg_quality=settings.jpeg_quality,
            placement=mask_placement,
        )
    except EngineError as exc:
        raise click.ClickException(str(exc)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    if detected is not None:
        target = out_dir / "detected-mask.png"
        target.write_bytes(encode_mask(mask))
        click.echo(f"detected mask -> {target} (confidence {detected.confidence:.2f})")
    for path, result in tqdm(
        list(zip(names, results, strict=True)), desc="write", unit="img", file=sys.stderr
    ):
        target = out_dir / f"{path.stem}.{result.encoded.extension}"
        target.write_bytes(result.encoded.data)
        click.echo(f"{path} -> {target} ({result.restored.method})")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--mask", required=True, help="Mask: a local file (uploaded first) or a URL.")
@click.option(
    "--server",
    envvar="PHOTO_ERASER_SERVER",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The service's base URL (env PHOTO_ERASER_SERVER).",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--engine", default="auto", show_default=True, help="auto, opencv, lama, patchmatch or restore"
)
@click.option("--priority", type=click.IntRange(0, 9), default=5, show_default=True)
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds to wait.")
@placement_options
def submit(
    images: tuple[str, ...],
    mask: str,
    server: str,
    out_dir: Path,
    engine: str,
    priority: int,
    timeout: float,
    **placement: Any,
) -> None:
    """Restore IMAGE_OR_URL... on a Photo Eraser server (the remote twin of `erase`).

    Local files are uploaded first; keys come from PHOTO_ERASER_APPKEY and
    PHOTO_ERASER_APPSECRET. Results go to --out; exits 1 if any image failed."""
    import os

    from tqdm import tqdm

    from photo_eraser.client import Client, PhotoEraserError, TaskResult

    appkey = os.environ.get("PHOTO_ERASER_APPKEY", "")
    appsecret = os.environ.get("PHOTO_ERASER_APPSECRET", "")
    if not appkey or not appsecret:
        raise click.ClickException("set PHOTO_ERASER_APPKEY and PHOTO_ERASER_APPSECRET")
    extensions = _placement_fields(placement_from_options(**placement))
    try:
        with Client(server, appkey, appsecret) as client:
            task = client.submit(list(images), mask, priority=priority, engine=engine, **extensions)
            click.echo(f"task {task.id}", err=True)
            with tqdm(total=len(images), desc="restore", unit="img", file=sys.stderr) as bar:

                def progress(result: TaskResult) -> None:
                    bar.update(result.done_count - bar.n)

                result = task.wait(timeout, on_poll=progress)
            files = task.download(out_dir)
            task.close()
    except PhotoEraserError as exc:
        raise click.ClickException(str(exc)) from None
    failed = 0
    for source, image, target in zip(images, result.images, files, strict=True):
        if target is not None:
            click.echo(f"{source} -> {target} ({image.method or 'done'})")
        else:
            failed += 1
            click.echo(f"{source}: {image.reason or 'no result'}", err=True)
    if result.status.name != "COMPLETE" or failed:
        click.echo(f"task {task.id}: status {result.status.name.lower()}", err=True)
        sys.exit(1)


def _placement_fields(placement: MaskPlacement) -> dict[str, Any]:
    """The API's extension fields for ``placement``; none for the default, so a server that
    predates them is sent exactly the seed's request."""
    fields: dict[str, Any] = {}
    if placement.fit != "stretch":
        fields["mask_fit"] = placement.fit
    if placement.fit == "anchor":
        fields["mask_anchor"] = placement.anchor
    if placement.dilate:
        fields["mask_dilate"] = placement.dilate
    if placement.invert:
        fields["mask_invert"] = True
    return fields


def _register_models() -> None:
    from photo_eraser.models.cli import models

    main.add_command(models)


_register_models()
