"""Decoding input images to upright RGB arrays, and encoding results in the input's format.

Decoding (`decode_image`): limits are checked from the header first (`open_checked`), then
pixels are decoded strictly (a truncated file is an error, never a grey-padded image), converted
to RGB uint8 HxWx3 and turned upright by the EXIF orientation. Conversions:

- palette, 1-bit and grayscale images become RGB (grey replicated, values unchanged);
- 16-bit images are scaled to 8 bits (results are 8-bit);
- CMYK JPEGs are converted to sRGB through their embedded CMYK ICC profile when they have
  one (the result is tagged sRGB), else by Pillow's plain formula (untagged);
- transparency (RGBA, LA, palette or colour-key transparency) is kept *beside* the pixels as
  an ``alpha`` plane, only when some pixel is not fully opaque; the RGB values under it are the
  stored colours, not composited over any background. Engines see RGB only; `encode_image`
  puts the alpha back into PNG results so transparent PNGs survive. JPEG results have none.

JPEGs in RGB or grey (nearly all photos) are decoded by libjpeg-turbo through simplejpeg straight
into the RGB array: 2-2.5x faster than through Pillow (which decodes to 4 bytes a pixel and then
copies), with the same pixels, as both run libjpeg-turbo's accurate DCT and smooth upsampling
(``tests/test_codec_fast.py`` holds the two paths equal on real files). simplejpeg's ``strict``
mode refuses any file libjpeg warns about (a truncated one above all); such a file is then given
to Pillow, whose verdict stands, so the fast path accepts and refuses exactly what Pillow does.
The header, EXIF orientation and ICC profile are still read by Pillow (without decoding).

ICC profiles are kept when they match the pixels: an RGB profile always, a grey profile for a
grey image (whose result is then written as grey, so the profile stays valid); a profile that
does not fit the image is dropped. The EXIF orientation is applied to the pixels, so results
carry no EXIF (and hence no orientation tag) at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import PurePosixPath

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageCms

from photo_eraser.imaging.limits import ImageError, ImageInfo, ImageLimits, open_checked, upright

__all__ = [
    "RESULT_TYPES",
    "DecodedImage",
    "EncodedImage",
    "decode_image",
    "decode_image_with_pillow",
    "encode_image",
    "result_content_type",
]

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_GREY_MODES = frozenset({"1", "L", "LA", "La"}) | _HIGH_DEPTH_MODES
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Input format -> (output format, file extension without dot).
_OUTPUTS = {
    "JPEG": ("JPEG", "jpg"),
    "JPG": ("JPEG", "jpg"),
    "PNG": ("PNG", "png"),
    "BMP": ("PNG", "png"),
}
RESULT_TYPES = {"jpg": "image/jpeg", "png": "image/png"}
"""Content type of a result by its file extension. The extension ends the result's blob key
(`storage.result_key`), which is stored with the task, so it is how a result's type is kept."""


@dataclass
class DecodedImage:
    """An input image ready for an engine."""

    pixels: np.ndarray
    """RGB uint8 HxWx3, upright (EXIF orientation applied)."""
    format: str
    """The input's format by content: ``PNG``, ``JPEG`` or ``BMP``."""
    icc_profile: bytes | None = None
    """The colour profile to embed in the result (see the module notes)."""
    alpha: np.ndarray | None = None
    """uint8 HxW opacity, present only if some pixel is not fully opaque."""

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


@dataclass(frozen=True)
class EncodedImage:
    """An encoded result: bytes plus how to name them (the name says how to serve them)."""

    data: bytes
    extension: str
    """Without the dot: ``jpg`` or ``png`` (a key of `RESULT_TYPES`)."""


def result_content_type(key: str) -> str:
    """The content type of the result stored under ``key`` (or a file name), from its
    extension; ``application/octet-stream`` for a name that no result has."""
    return RESULT_TYPES.get(PurePosixPath(key).suffix[1:], "application/octet-stream")


def decode_image(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Check ``data`` against the limits, then decode it; raise `ImageError` for users."""
    info, image = open_checked(data, limits or ImageLimits())
    with image:
        if info.format == "JPEG" and image.mode in _FAST_JPEG_MODES:
            fast = _decode_jpeg_fast(data, image, info.orientation)
            if fast is not None:
                return fast
        return _decode_with_pillow(image, info)


def decode_image_with_pillow(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """`decode_image` through Pillow alone (the reference the fast path is held equal to)."""
    info, image = open_checked(data, limits or ImageLimits())
    with image:
        return _decode_with_pillow(image, info)


_FAST_JPEG_MODES = frozenset({"RGB", "L"})
"""JPEG modes libjpeg turns into RGB exactly as Pillow does (CMYK goes through Pillow)."""

# EXIF orientation -> the same turn as `limits.upright` applies, on an array (OpenCV's
# transposes are blocked, 3-5x faster than numpy's strided copies).
_TURN: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.flip(a, -1),
    4: lambda a: cv2.flip(a, 0),
    5: cv2.transpose,
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.flip(cv2.transpose(a), -1),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def _decode_jpeg_fast(data: bytes, image: Image.Image, orientation: int) -> DecodedImage | None:
    """An RGB or grey JPEG decoded by simplejpeg; None when libjpeg warned (Pillow decides)."""
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None
    if pixels.shape[:2] != (image.height, image.width):
        return None
    turn = _TURN.get(orientation)
    if turn is not None:
        pixels = turn(pixels)
    icc_profile = image.info.get("icc_profile") or None
    space = _icc_space(icc_profile)
    if not (space == b"RGB " or (space == b"GRAY" and image.mode == "L")):
        icc_profile = None
    return DecodedImage(pixels, "JPEG", icc_profile, None)


def _decode_with_pillow(image: Image.Image, info: ImageInfo) -> DecodedImage:
    try:
        image.load()
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise ImageError("image is truncated or corrupt") from None
    color, alpha, icc_profile = _split(image, image.info.get("icc_profile") or None)
    # `color` may be `image` itself: take the arrays before the image is closed.
    pixels = np.array(upright(color, info.orientation), dtype=np.uint8)
    alpha_plane = (
        np.array(upright(alpha, info.orientation), dtype=np.uint8) if alpha is not None else None
    )
    if alpha_plane is not None and alpha_plane.min() == 255:
        alpha_plane = None
    return DecodedImage(pixels, info.format, icc_profile, alpha_plane)


def encode_image(
    image: DecodedImage | np.ndarray,
    fmt: str,
    *,
    icc_profile: bytes | None = None,
    alpha: np.ndarray | None = None,
    jpeg_quality: int = 95,
    png_compress_level: int = 4,
    consume: bool = False,
) -> EncodedImage:
    """Encode RGB pixels as the result for an input of format ``fmt``.

    JPEG stays JPEG (``jpeg_quality``, 4:4:4 chroma), PNG stays PNG, BMP becomes PNG (lossless
    either way). Given a `DecodedImage`, its profile and alpha are used unless overridden.

    ``consume=True`` hands the pixels over (they are garbage afterwards): a JPEG is then
    encoded by OpenCV from the same buffer turned to BGR in place, its profile put in as
    Pillow puts it, the same bytes as Pillow writes (both are libjpeg-turbo with the same
    settings; the tests hold them equal), 1.6x faster at 12 MP and without Pillow's
    4-byte-a-pixel copy of the image. (Not with a grey profile: that result is written grey.)
    """
    if isinstance(image, DecodedImage):
        pixels = image.pixels
        icc_profile = image.icc_profile if icc_profile is None else icc_profile
        alpha = image.alpha if alpha is None else alpha
    else:
        pixels = image
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected RGB uint8 HxWx3 pixels, got {pixels.dtype} {pixels.shape}")
    try:
        out_format, extension = _OUTPUTS[fmt.upper()]
    except KeyError:
        raise ValueError(f"no result format for input format {fmt!r}") from None
    grey_profile = _icc_space(icc_profile) == b"GRAY"
    if consume and out_format == "JPEG" and not grey_profile and pixels.flags.writeable:
        ok, data = cv2.imencode(
            ".jpg",
            _to_bgr_in_place(pixels),
            [
                cv2.IMWRITE_JPEG_QUALITY,
                jpeg_quality,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
            ],
        )
        if not ok:
            raise ValueError("OpenCV could not encode the result")
        return EncodedImage(_with_icc_profile(data.tobytes(), icc_profile), extension)
    result = Image.fromarray(np.ascontiguousarray(pixels))
    if grey_profile:
        result = result.convert("L")  # exact for grey pixels: Pillow's weights sum to 1
    params: dict[str, object] = {}
    if icc_profile:
        params["icc_profile"] = icc_profile
    if out_format == "JPEG":
        params.update(quality=jpeg_quality, subsampling=0)
    else:
        params["compress_level"] = png_compress_level
        if alpha is not None:
            if alpha.shape != pixels.shape[:2] or alpha.dtype != np.uint8:
                raise ValueError(f"alpha must be uint8 {pixels.shape[:2]}, got {alpha.shape}")
            result.putalpha(Image.fromarray(np.ascontiguousarray(alpha)))
    buffer = BytesIO()
    result.save(buffer, format=out_format, **params)
    return EncodedImage(buffer.getvalue(), extension)


def _to_bgr_in_place(pixels: np.ndarray, rows: int = 128) -> np.ndarray:
    """Swap red and blue in ``pixels`` itself, a band of rows at a time: OpenCV's own in-place
    conversion of a whole image is about four times slower, and a converted copy would cost
    the memory the in-place encode is there to save."""
    band_buffer = np.empty((rows, *pixels.shape[1:]), np.uint8)
    for y in range(0, pixels.shape[0], rows):
        band = pixels[y : y + rows]
        converted = band_buffer[: band.shape[0]]
        cv2.cvtColor(band, cv2.COLOR_RGB2BGR, dst=converted)
        np.copyto(band, converted)
    return pixels


_ICC_CHUNK = 65533 - 14  # a marker's most bytes, less "ICC_PROFILE\0", sequence and count


def _with_icc_profile(jpeg: bytes, profile: bytes | None) -> bytes:
    """``jpeg`` (as libjpeg writes it: SOI, then the JFIF APP0) with ``profile`` in APP2
    markers right after the APP0, split as Pillow splits it: Pillow's bytes for the same
    image (the tests hold them equal)."""
    if not profile:
        return jpeg
    if jpeg[:4] != b"\xff\xd8\xff\xe0":
        raise ValueError("expected a JPEG starting with a JFIF APP0 marker")
    end_of_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    chunks = [profile[i : i + _ICC_CHUNK] for i in range(0, len(profile), _ICC_CHUNK)]
    markers = b"".join(
        b"\xff\xe2"
        + (16 + len(chunk)).to_bytes(2, "big")
        + b"ICC_PROFILE\0"
        + bytes((n, len(chunks)))
        + chunk
        for n, chunk in enumerate(chunks, 1)
    )
    return jpeg[:end_of_app0] + markers + jpeg[end_of_app0:]


def _icc_space(profile: bytes | None) -> bytes | None:
    """The data colour space of an ICC profile (``b"RGB "``, ``b"GRAY"``, ``b"CMYK"``...)."""
    return profile[16:20] if profile and len(profile) >= 128 else None


def _split(
    image: Image.Image, icc_profile: bytes | None
) -> tuple[Image.Image, Image.Image | None, bytes | None]:
    """A decoded image as (RGB image, alpha or None, profile that fits the RGB result)."""
    if image.mode in _HIGH_DEPTH_MODES:
        deep = np.asarray(image).astype(np.float64)
        scaled = (np.clip(deep, 0, 65535) * (255 / 65535) + 0.5).astype(np.uint8)
        image = Image.fromarray(scaled)  # drops a 16-bit colour key; a rare case
    space = _icc_space(icc_profile)
    if image.mode == "CMYK":
        color, icc_profile = _cmyk_to_srgb(image, icc_profile if space == b"CMYK" else None)
        return color, None, icc_profile
    grey = image.mode in _GREY_MODES
    if not (space == b"RGB " or (space == b"GRAY" and grey)):
        icc_profile = None
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A"), icc_profile
    # An RGB image is used as it is: convert() would copy all its pixels for nothing.
    return (image if image.mode == "RGB" else image.convert("RGB")), None, icc_profile


def _cmyk_to_srgb(
    image: Image.Image, cmyk_profile: bytes | None
) -> tuple[Image.Image, bytes | None]:
    """CMYK to RGB: colour-managed to sRGB (and tagged so) when the file has a CMYK profile."""
    if cmyk_profile:
        try:
            converted = ImageCms.profileToProfile(
                image,
                ImageCms.ImageCmsProfile(BytesIO(cmyk_profile)),
                ImageCms.createProfile("sRGB"),
                renderingIntent=ImageCms.Intent.PERCEPTUAL,
                outputMode="RGB",
            )
        except (ImageCms.PyCMSError, OSError, ValueError):
            converted = None
        if converted is not None:
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
            return converted, srgb
    return image.convert("RGB"), None
