"""What every ``photo-eraser`` command shares: the ``--data-dir`` option, and settings from
the environment with the command's flags on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from photo_eraser.config import Settings

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory (default: $PHOTO_ERASER_DATA_DIR or ./data); models are kept in "
    "DATA_DIR/models unless PHOTO_ERASER_MODEL_DIR is set.",
)


def load_settings(data_dir: Path | None, **overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags (when given) taking precedence."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return Settings(**values)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        ]
        raise click.UsageError("invalid settings:\n" + "\n".join(lines)) from None
