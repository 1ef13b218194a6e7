"""``photo-eraser models``: list, pull and import model files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from photo_eraser.cli_settings import data_dir_option, load_settings
from photo_eraser.models.manager import ModelError, import_model, list_models, pull
from photo_eraser.sizes import format_size


def _model_dir(data_dir: Path | None) -> Path:
    return load_settings(data_dir).models_path


@click.group("models")
def models() -> None:
    """Manage model files (LaMa, ...) for the neural engines."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@data_dir_option
def list_command(as_json: bool, data_dir: Path | None) -> None:
    """List known models and whether they are installed."""
    model_dir = _model_dir(data_dir)
    try:
        statuses = list_models(model_dir)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        document = {"model_dir": str(model_dir), "models": [s.to_dict() for s in statuses]}
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(f"model directory: {model_dir}")
    for status in statuses:
        spec = status.spec
        if not status.installed:
            state = "not installed"
        elif status.verified:
            state = f"installed at {status.path}"
        else:
            state = f"installed (unverified) at {status.path}"
        click.echo(f"{spec.name}: {state}")
        click.echo(f"  file     {spec.file}, {format_size(spec.size)}")
        click.echo(f"  sha256   {spec.sha256}")
        click.echo(f"  license  {spec.license}")
        click.echo(f"  source   {spec.url}")


@models.command("pull")
@click.argument("name")
@data_dir_option
def pull_command(name: str, data_dir: Path | None) -> None:
    """Download model NAME, verify its size and SHA-256, and install it."""
    model_dir = _model_dir(data_dir)
    try:
        path = pull(name, model_dir)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"model {name!r} installed at {path}")


@models.command("import")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--no-verify", is_flag=True, help="Install without checking size and SHA-256.")
@data_dir_option
def import_command(name: str, path: Path, no_verify: bool, data_dir: Path | None) -> None:
    """Install model NAME from a file at PATH (for hosts without internet access)."""
    model_dir = _model_dir(data_dir)
    if no_verify:
        click.echo(
            f"warning: installing {path} as model {name!r} without checking its checksum; "
            "a wrong or damaged file will fail when the engine loads it",
            err=True,
        )
    try:
        installed = import_model(name, path, model_dir, verify=not no_verify)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"model {name!r} installed at {installed}")


if __name__ == "__main__":
    models()
