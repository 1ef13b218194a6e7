"""The mask: where it comes from (`parse_mask_field`), what it marks (`decode_mask`), and
fitting it to each image (`fit_mask`, and `place_mask` for the ``mask_fit`` extension).

Semantics (the mask is a bool HxW array, True = restore this pixel):

- Accepted formats, by content: PNG, JPEG, BMP, and also GIF, WEBP and TIFF.
- A mask with transparency where some pixel is not fully opaque: the alpha channel is the mask
  (paint strokes on a transparent layer), whatever the colours.
- Otherwise the colour is the mask: a pixel is marked when its brightest channel is above a
  threshold, so white, grey or any colour marks and only black does not.
- The threshold (for alpha and colour alike) is 0 for lossless formats (PNG, BMP, GIF, TIFF:
  "non-zero = restore", exactly) and 127 for lossy ones (JPEG, WEBP), whose compression noise
  turns black into small non-zero values near edges.
- EXIF orientation is applied to masks as to images.
- A mask that marks no pixel is an error. A mask whose size differs from an image's is resized
  to it with nearest-neighbour sampling (stretched if the aspect ratio differs), unless the task
  asks for another placement (`MaskPlacement`: contain, or anchored at a corner or edge; then
  optionally dilated and inverted).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from io import BytesIO
from typing import Literal, get_args
from urllib.parse import unquote_to_bytes, urlsplit

import cv2
import numpy as np
from PIL import Image

from photo_eraser.imaging.formats import ACCEPTED_FORMATS, header_size, sniff_format
from photo_eraser.imaging.limits import read_orientation, upright
from photo_eraser.sizes import format_size

__all__ = [
    "ANCHORS",
    "DEFAULT_MAX_SIDE",
    "FITS",
    "MAX_DILATE",
    "MaskError",
    "MaskPlacement",
    "MaskSource",
    "decode_mask",
    "encode_mask",
    "fit_mask",
    "parse_mask_field",
    "place_mask",
]

MASK_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
_LOSSY_FORMATS = frozenset({"JPEG", "WEBP"})
_LOSSY_THRESHOLD = 127
_WHITESPACE = re.compile(r"\s+")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/\-_=]")
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class MaskError(Exception):
    """The mask cannot be used; the message is for users (``mask marks no pixels``)."""


@dataclass(frozen=True)
class MaskSource:
    """Where the mask is: a URL to download, or the bytes given inline."""

    url: str | None = None
    data: bytes | None = None


def parse_mask_field(value: str) -> MaskSource:
    """Tell an http(s) URL from inline data (a ``data:`` URI or raw base64) and decode the latter.

    Only the transport is checked here; `decode_mask` checks that the bytes are a usable mask.
    """
    if not isinstance(value, str):
        raise MaskError("mask must be a string")
    text = value.strip()
    if not text:
        raise MaskError("mask is empty")
    head = text[:16].lower()
    if head.startswith(("http://", "https://")):
        try:
            host = urlsplit(text).hostname
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise MaskError(f"mask URL is malformed: {exc}") from None
        if not host:
            raise MaskError("mask URL has no host")
        return MaskSource(url=text)
    if head.startswith("data:"):
        return MaskSource(data=_decode_data_uri(text))
    if "://" in head:
        raise MaskError("mask URL must use http or https")
    return MaskSource(data=_decode_base64(text))


DEFAULT_MAX_SIDE = 5000
"""A mask may be as large as the largest image accepted (``PHOTO_ERASER_MAX_SIDE``)."""


def decode_mask(data: bytes, max_bytes: int, *, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """Decode mask image bytes to a bool HxW array (True = restore); raise `MaskError`.

    Memory: the size is checked from the header before anything is decoded, and only one
    8-bit plane at a time is taken from the decoded image (which Pillow holds at 4 bytes a
    pixel for RGBA; CMYK or float TIFF masks take up to 8), so a 5000x5000 RGBA mask peaks
    near 170 MB while decoding and holds 25 MB after."""
    if not data:
        raise MaskError("mask is empty")
    if len(data) > max_bytes:
        raise MaskError(f"mask exceeds {format_size(max_bytes)}")
    fmt = sniff_format(data)
    if fmt not in MASK_FORMATS:
        raise MaskError(
            f"mask format {fmt} is not supported (use PNG, JPEG or BMP)"
            if fmt
            else "mask is not an image (use PNG, JPEG or BMP)"
        )
    too_large = f"is above {max_side}x{max_side} (the largest image size accepted)"
    size = header_size(data, fmt) if fmt in ACCEPTED_FORMATS else None
    if size is not None and max(size) > max_side:
        raise MaskError(f"mask resolution {size[0]}x{size[1]} {too_large}")
    try:
        image = Image.open(BytesIO(data), formats=[fmt])  # reads the header only
    except Image.DecompressionBombError:
        raise MaskError(f"mask resolution {too_large}") from None
    except Exception:  # Pillow raises many types on malformed headers
        raise MaskError("mask image is truncated or corrupt") from None
    with image:
        width, height = image.size
        if max(width, height) > max_side:
            raise MaskError(f"mask resolution {width}x{height} {too_large}")
        # Read before decoding, exactly as for images, so a mask and its image turn alike.
        orientation = read_orientation(image)
        try:
            image.load()
        except Exception:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error, ...
            raise MaskError("mask image is truncated or corrupt") from None
        marked = _marked_pixels(image, _LOSSY_THRESHOLD if fmt in _LOSSY_FORMATS else 0)
    if not marked.any():
        raise MaskError("mask marks no pixels (white or non-zero pixels mark the area)")
    if orientation > 1:
        turned = upright(Image.fromarray(marked.view(np.uint8)), orientation)
        marked = np.asarray(turned).astype(bool)
    return marked


def encode_mask(mask: np.ndarray) -> bytes:
    """A bool mask as a greyscale PNG (white = restore), as `decode_mask` reads it back."""
    buf = BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(buf, format="PNG")
    return buf.getvalue()


def fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """The mask resized to ``height`` x ``width`` (nearest neighbour); unchanged if it fits."""
    if mask.shape == (height, width):
        return mask
    resized = cv2.resize(
        np.ascontiguousarray(mask, dtype=np.uint8),
        (width, height),
        interpolation=cv2.INTER_NEAREST_EXACT,
    )
    return resized.astype(bool)


Fit = Literal["stretch", "contain", "anchor"]
Anchor = Literal[
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
]
FITS: tuple[str, ...] = get_args(Fit)
ANCHORS: tuple[str, ...] = get_args(Anchor)
MAX_DILATE = 64

# Where the placed mask goes along one axis: 0 = start, 1 = centre, 2 = end.
_ANCHOR_AXES: dict[str, tuple[int, int]] = {  # anchor -> (horizontal, vertical)
    "top-left": (0, 0),
    "top": (1, 0),
    "top-right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom-left": (0, 2),
    "bottom": (1, 2),
    "bottom-right": (2, 2),
}


@dataclass(frozen=True)
class MaskPlacement:
    """How the task's one mask is placed on each image (the ``mask_fit`` extension).

    - ``stretch`` (default): resized to the image, aspect ignored (`fit_mask`).
    - ``contain``: scaled uniformly to the largest size that fits inside the image, centred;
      the rest of the image is unmarked.
    - ``anchor``: scaled uniformly by image short side / mask short side and placed at
      ``anchor`` (a corner, an edge's middle, or the centre); what falls outside the image is
      cut off. A mask drawn for a landscape photo thus keeps its corner, and its margins scale
      with the image, on a portrait one.

    Then the marked area is grown by ``dilate`` pixels (every pixel within that Euclidean
    distance of a marked one), then ``invert`` swaps marked and unmarked."""

    fit: Fit = "stretch"
    anchor: Anchor = "center"
    dilate: int = 0
    invert: bool = False

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ValueError(f"unknown fit {self.fit!r}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {self.anchor!r}")
        if not 0 <= self.dilate <= MAX_DILATE:
            raise ValueError(f"dilate {self.dilate} is outside 0..{MAX_DILATE}")

    @property
    def is_default(self) -> bool:
        return self == MaskPlacement()


def place_mask(
    mask: np.ndarray, height: int, width: int, placement: MaskPlacement | None = None
) -> np.ndarray:
    """The mask placed on a ``height`` x ``width`` image as ``placement`` says (default:
    exactly `fit_mask`). May return ``mask`` itself; never writes into it."""
    placement = placement if placement is not None else MaskPlacement()
    if placement.fit == "stretch":
        placed = fit_mask(mask, height, width)
    else:
        placed = _scaled_and_placed(mask, height, width, placement)
    if placement.dilate and placed.any():
        # Every pixel within ``dilate`` px (Euclidean) of a marked one. A distance transform
        # costs the same for any radius; a 129 px disc kernel took seconds on 25 Mpx.
        unmarked = np.ascontiguousarray(~placed, dtype=np.uint8)
        distance = cv2.distanceTransform(unmarked, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        placed = distance <= placement.dilate
    if placement.invert:
        placed = ~placed
    return placed


def _scaled_and_placed(
    mask: np.ndarray, height: int, width: int, placement: MaskPlacement
) -> np.ndarray:
    mh, mw = mask.shape
    if placement.fit == "contain":
        scale = min(width / mw, height / mh)
        h_axis, v_axis = 1, 1
    else:
        scale = min(width, height) / min(mw, mh)
        h_axis, v_axis = _ANCHOR_AXES[placement.anchor]
    if placement.fit == "contain":
        sw = min(width, max(1, round(mw * scale)))
        sh = min(height, max(1, round(mh * scale)))
    else:
        sw, sh = max(1, round(mw * scale)), max(1, round(mh * scale))
    # Top-left corner of the scaled mask on the image; negative = cut off on that side.
    x = (0, (width - sw) // 2, width - sw)[h_axis]
    y = (0, (height - sh) // 2, height - sh)[v_axis]
    placed = np.zeros((height, width), dtype=bool)
    ix0, iy0 = max(0, x), max(0, y)
    ix1, iy1 = min(width, x + sw), min(height, y + sh)
    if ix1 > ix0 and iy1 > iy0:
        # Only the visible part is sampled: a thin mask scaled by the short sides may be far
        # larger than the image (a 5000x1 mask on a 5000 px square: 25 million px wide).
        placed[iy0:iy1, ix0:ix1] = mask[
            np.ix_(_nearest(iy0 - y, iy1 - y, sh, mh), _nearest(ix0 - x, ix1 - x, sw, mw))
        ]
    return placed


def _nearest(start: int, stop: int, scaled: int, source: int) -> np.ndarray:
    """Source indices of scaled positions ``start..stop`` (nearest neighbour, pixel centres:
    as OpenCV's INTER_NEAREST_EXACT), in exact integer arithmetic."""
    positions = np.arange(start, stop, dtype=np.int64)
    return np.minimum((2 * positions + 1) * source // (2 * scaled), source - 1)


def _marked_pixels(image: Image.Image, threshold: int) -> np.ndarray:
    """Which pixels the mask marks, from one 8-bit plane at a time (never a float copy)."""
    if image.mode == "P" or ("transparency" in image.info and image.mode not in _ALPHA_MODES):
        # Palette and colour-keyed images: their alpha exists only once expanded.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        alpha = np.asarray(image.getchannel(len(image.getbands()) - 1))  # "A" or "a"
        if alpha.min() < 255:
            return alpha > threshold
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(image) > 0
    if image.mode in ("L", "1"):
        return np.asarray(image.convert("L")) > threshold
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    # Brightest channel above the threshold = any channel above it.
    marked = np.asarray(image.getchannel(0)) > threshold
    for band in (1, 2):
        marked |= np.asarray(image.getchannel(band)) > threshold
    return marked


def _decode_data_uri(text: str) -> bytes:
    header, comma, payload = text[5:].partition(",")
    if not comma:
        raise MaskError("mask data URI has no ',' before its data")
    if "base64" not in (p.strip().lower() for p in header.split(";")):
        raise MaskError("mask data URI must be base64-encoded (data:image/png;base64,...)")
    if "%" in payload:  # percent-encoded base64 (e.g. %2B for '+')
        payload = unquote_to_bytes(payload).decode("ascii", "replace")
    return _decode_base64(payload)


def _decode_base64(text: str) -> bytes:
    """Decode standard or URL-safe base64, padding optional, whitespace ignored."""
    compact = _WHITESPACE.sub("", text)
    bad = _NOT_BASE64.search(compact)
    if bad is not None:
        # Report the position in the text as the user sent it.
        position = _position_in(text, bad.start())
        raise MaskError(
            f"mask is not valid base64 (or an http/https URL): "
            f"invalid character {bad.group()!r} at position {position}"
        )
    encoded = compact.rstrip("=")
    if "=" in encoded:
        raise MaskError("mask is not valid base64: '=' padding in the middle of the data")
    if len(encoded) % 4 == 1:
        raise MaskError("mask is not valid base64: the data is truncated (impossible length)")
    encoded = encoded.translate(str.maketrans("-_", "+/"))
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as exc:
        raise MaskError(f"mask is not valid base64: {exc}") from None
    if not decoded:
        raise MaskError("mask is empty")
    return decoded


def _position_in(text: str, compact_index: int) -> int:
    """Index in ``text`` of the character at ``compact_index`` once whitespace is removed."""
    seen = -1
    for position, char in enumerate(text):
        if not char.isspace():
            seen += 1
            if seen == compact_index:
                return position
    return len(text)
