"""Input limits for images and the header-only check against them (`open_checked`).

Limits are inclusive: with the defaults a side of 256 or 5000 px is accepted, 255 or 5001 is
not, and an aspect ratio of exactly 4:1 is accepted. They apply to the image as displayed,
i.e. after its EXIF orientation; since every limit is symmetric in width and height, rotation
changes only how the size is reported, never whether an image passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from typing import TYPE_CHECKING

from PIL import Image

from photo_eraser.imaging.formats import ACCEPTED_FORMATS, header_size, sniff_format
from photo_eraser.sizes import format_size

if TYPE_CHECKING:
    from photo_eraser.config import Settings

__all__ = ["ImageError", "ImageInfo", "ImageLimits", "open_checked"]

# EXIF orientations 5..8 turn the image by a quarter, swapping width and height.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112


class ImageError(Exception):
    """An input image cannot be used; the message is for users (``unsupported format: GIF``)."""


@dataclass(frozen=True)
class ImageLimits:
    """What an input image may be (the seed's table); every bound is inclusive."""

    max_bytes: int = 50 * 1024 * 1024
    min_side: int = 256
    max_side: int = 5000
    max_aspect: float = 4.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        """The limits configured for the service."""
        return cls(
            max_bytes=settings.max_image_bytes,
            min_side=settings.min_side,
            max_side=settings.max_side,
            max_aspect=settings.max_aspect,
        )


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: format, displayed size and EXIF orientation (1 = upright)."""

    format: str
    width: int
    height: int
    orientation: int = 1


def open_checked(data: bytes, limits: ImageLimits) -> tuple[ImageInfo, Image.Image]:
    """Check format, byte size and resolution from the header, without decoding pixels; return
    what the header says and the lazily opened (not yet decoded) Pillow image."""
    if not data:
        raise ImageError("image is empty")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image exceeds {format_size(limits.max_bytes)}")
    fmt = sniff_format(data)
    if fmt not in ACCEPTED_FORMATS:
        raise ImageError(
            f"unsupported format: {fmt}"
            if fmt
            else "unsupported format: not a PNG, JPEG or BMP image"
        )
    size = header_size(data, fmt)
    if size is None:
        raise ImageError("image is truncated or corrupt")
    if size[0] * size[1] > (Image.MAX_IMAGE_PIXELS or size[0] * size[1]):
        # Pillow would refuse it as a bomb before telling us the orientation; report it as
        # stored (only the order of the two sides could differ).
        check_resolution(*size, limits)
    try:
        image = Image.open(BytesIO(data), formats=[fmt])
    except Exception:  # Pillow raises many types on malformed headers
        raise ImageError("image is truncated or corrupt") from None
    try:
        if image.size != size:
            raise ImageError("image is truncated or corrupt")
        orientation = read_orientation(image)
        width, height = size
        if orientation in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        check_resolution(width, height, limits)
    except ImageError:
        image.close()
        raise
    return ImageInfo(fmt, width, height, orientation), image


def check_resolution(width: int, height: int, limits: ImageLimits) -> None:
    """Raise `ImageError` if a size is outside the (inclusive) limits."""
    short, long = sorted((width, height))
    if long > limits.max_side:
        raise ImageError(
            f"resolution {width}x{height} is above {limits.max_side}x{limits.max_side}"
        )
    if short < limits.min_side:
        raise ImageError(
            f"resolution {width}x{height} is below {limits.min_side}x{limits.min_side}"
        )
    if long > limits.max_aspect * short:
        raise ImageError(f"aspect ratio {long / short:.2f}:1 is above {limits.max_aspect:g}:1")


def read_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of a lazily opened image, without decoding its pixels."""
    # PNG keeps EXIF in an eXIf chunk; Pillow only has it before decoding if the chunk
    # precedes the image data, and asking for it otherwise would decode the whole image.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF: treat as upright rather than fail the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """The image turned as its EXIF orientation (from `read_orientation`) says."""
    transpose = _TRANSPOSE.get(orientation)
    return image if transpose is None else image.transpose(transpose)
