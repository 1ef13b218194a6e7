"""What every ``photo-eraser`` command shares: the ``--data-dir`` option, and settings from
the environment with the command's flags on top."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from photo_eraser.config import Settings

if TYPE_CHECKING:
    from photo_eraser.imaging import MaskPlacement

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


def placement_options(command: Any) -> Any:
    """``--mask-fit``, ``--mask-anchor``, ``--mask-dilate`` and ``--mask-invert``: how the one
    mask is placed on each image, as the API's ``mask_fit`` extension does (`MaskPlacement`)."""
    from photo_eraser.imaging.mask import ANCHORS, FITS, MAX_DILATE

    options = [
        click.option(
            "--mask-fit",
            type=click.Choice(FITS),
            default="stretch",
            show_default=True,
            help="stretch: resized to each image; contain: scaled to fit, centred; anchor: "
            "scaled by the short side and kept at --mask-anchor.",
        ),
        click.option(
            "--mask-anchor",
            type=click.Choice(ANCHORS),
            default=None,
            help="With --mask-fit anchor: the corner, edge or centre the mask keeps "
            "(default center).",
        ),
        click.option(
            "--mask-dilate",
            type=click.IntRange(0, MAX_DILATE),
            default=0,
            show_default=True,
            help="Grow the marked area by this many pixels.",
        ),
        click.option("--mask-invert", is_flag=True, help="Restore what the mask leaves unmarked."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def placement_from_options(
    mask_fit: str, mask_anchor: str | None, mask_dilate: int, mask_invert: bool
) -> MaskPlacement:
    """The `MaskPlacement` the placement options name; a usage error for an anchor without
    ``--mask-fit anchor`` (the API refuses the same with a 400)."""
    from photo_eraser.imaging import MaskPlacement

    if mask_anchor is not None and mask_fit != "anchor":
        raise click.UsageError(f"--mask-anchor needs --mask-fit anchor (it is {mask_fit})")
    return MaskPlacement(
        fit=mask_fit,  # type: ignore[arg-type]  # a click.Choice of FITS
        anchor=mask_anchor or "center",  # type: ignore[arg-type]  # a click.Choice of ANCHORS
        dilate=mask_dilate,
        invert=mask_invert,
    )
