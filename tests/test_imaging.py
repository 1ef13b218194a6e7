"""Image handling: formats by content, inclusive limits from the header, decoding (EXIF, ICC,
alpha, palette, 16-bit, CMYK), result encoding, and every form of mask. Images are generated."""

from __future__ import annotations

import base64
import io
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin

from photo_eraser.imaging import (
    DecodedImage,
    ImageError,
    ImageLimits,
    MaskError,
    MaskSource,
    decode_image,
    decode_mask,
    encode_image,
    fit_mask,
    parse_mask_field,
    result_content_type,
)

LIMITS = ImageLimits()
ORIENTATION = 0x0112


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(image: Image.Image | np.ndarray, fmt: str, **params: object) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def blank(width: int, height: int, fmt: str = "PNG") -> bytes:
    """A cheap valid image of the given size (flat grey)."""
    return save(Image.new("L", (width, height), 128), fmt)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is rewritten to claim another size (a decompression bomb)."""
    data = bytearray(blank(1, 1))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(blank(16, 16, "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def reopen(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_each_accepted_format_decodes_and_encodes(fmt: str) -> None:
    pixels = noise(300, 400)
    data = save(pixels, fmt)

    decoded = decode_image(data, LIMITS)
    encoded = encode_image(decoded, decoded.format)

    assert (decoded.format, decoded.width, decoded.height) == (fmt, 400, 300)
    assert decoded.pixels.shape == (300, 400, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.alpha is None
    expected = ("image/jpeg", "jpg") if fmt == "JPEG" else ("image/png", "png")
    assert (result_content_type(f"0.{encoded.extension}"), encoded.extension) == expected
    assert reopen(encoded.data).format == ("JPEG" if fmt == "JPEG" else "PNG")
    if fmt != "JPEG":
        assert np.array_equal(decoded.pixels, pixels)
        assert np.array_equal(np.asarray(reopen(encoded.data)), pixels)


def test_format_is_decided_by_content_not_name() -> None:
    data = save(noise(300, 300), "BMP")
    assert decode_image(data, LIMITS).format == "BMP"


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (save(noise(300, 300), "GIF"), "GIF"),
        (save(noise(300, 300), "WEBP"), "WEBP"),
        (save(noise(300, 300), "TIFF"), "TIFF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64), "AVIF"),
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML"),
    ],
)
def test_unsupported_formats_are_named(data: bytes, name: str) -> None:
    with pytest.raises(ImageError, match=f"^unsupported format: {name}$"):
        decode_image(data, LIMITS)


def test_unknown_bytes_and_empty_input() -> None:
    with pytest.raises(ImageError, match="^unsupported format: not a PNG, JPEG or BMP image$"):
        decode_image(b"hello, world" * 10, LIMITS)
    with pytest.raises(ImageError, match="^image is empty$"):
        decode_image(b"", LIMITS)


# --- limits (inclusive) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [(256, 256), (256, 1024), (1024, 256), (5000, 1250), (1250, 5000), (4000, 3000)],
)
def test_sizes_just_inside_the_limits_are_accepted(width: int, height: int) -> None:
    decoded = decode_image(blank(width, height), LIMITS)
    assert (decoded.width, decoded.height) == (width, height)


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (255, 256, "resolution 255x256 is below 256x256"),
        (256, 255, "resolution 256x255 is below 256x256"),
        (200, 200, "resolution 200x200 is below 256x256"),
        (5001, 1300, "resolution 5001x1300 is above 5000x5000"),
        (1300, 5001, "resolution 1300x5001 is above 5000x5000"),
        (1025, 256, "aspect ratio 4.00:1 is above 4:1"),
        (1280, 256, "aspect ratio 5.00:1 is above 4:1"),
        (256, 1280, "aspect ratio 5.00:1 is above 4:1"),
    ],
)
def test_sizes_just_outside_the_limits_are_refused(width: int, height: int, message: str) -> None:
    with pytest.raises(ImageError) as refused:
        decode_image(blank(width, height), LIMITS)
    assert str(refused.value) == message


def test_aspect_ratio_message_uses_two_decimals() -> None:
    with pytest.raises(ImageError, match=r"^aspect ratio 4\.01:1 is above 4:1$"):
        decode_image(png_claiming(1604, 400), LIMITS)


def test_byte_limit_is_inclusive() -> None:
    data = blank(300, 300)
    assert decode_image(data, ImageLimits(max_bytes=len(data))).format == "PNG"
    with pytest.raises(ImageError, match="^image exceeds 1 KB$"):
        decode_image(data + bytes(1024), ImageLimits(max_bytes=1024))


@pytest.mark.parametrize("claiming", [png_claiming, jpeg_claiming])
def test_decompression_bomb_is_refused_from_the_header(
    claiming: Callable[[int, int], bytes],
) -> None:
    bomb = claiming(60000, 60000)
    assert len(bomb) < 2000
    with pytest.raises(ImageError, match="^resolution 60000x60000 is above 5000x5000$"):
        decode_image(bomb, LIMITS)


def test_bmp_bomb_is_refused_from_the_header() -> None:
    data = bytearray(blank(300, 300, "BMP"))
    data[18:26] = (60000).to_bytes(4, "little") + (-60000).to_bytes(4, "little", signed=True)
    with pytest.raises(ImageError, match="^resolution 60000x60000 is above 5000x5000$"):
        decode_image(bytes(data), LIMITS)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_images_are_refused(fmt: str, keep: float) -> None:
    data = save(noise(300, 300), fmt)
    with pytest.raises(ImageError, match="^image is truncated or corrupt$"):
        decode_image(data[: int(len(data) * keep)], LIMITS)


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n" + bytes(40), b"\xff\xd8\xff\xe0" + bytes(20)],
)
def test_headers_without_a_size_are_corrupt(data: bytes) -> None:
    with pytest.raises(ImageError, match="^image is truncated or corrupt$"):
        decode_image(data, LIMITS)


def test_corrupt_png_data_is_refused() -> None:
    data = bytearray(save(noise(300, 300), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    with pytest.raises(ImageError, match="^image is truncated or corrupt$"):
        decode_image(bytes(data), LIMITS)


# --- EXIF orientation ----------------------------------------------------------------------


def oriented_jpeg(width: int, height: int, orientation: int) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = (255, 0, 0)
    pixels[: height // 2, width // 2 :] = (0, 0, 255)
    pixels[height // 2 :, : width // 2] = (0, 255, 0)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return save(pixels, "JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    data = oriented_jpeg(400, 300, orientation)
    expected = np.asarray(ImageOps.exif_transpose(reopen(data)).convert("RGB"))

    decoded = decode_image(data, LIMITS)

    swapped = orientation >= 5
    assert (decoded.width, decoded.height) == ((300, 400) if swapped else (400, 300))
    assert np.array_equal(decoded.pixels, expected)


def test_results_carry_no_orientation_tag() -> None:
    decoded = decode_image(oriented_jpeg(400, 300, 6), LIMITS)
    result = reopen(encode_image(decoded, decoded.format).data)
    assert result.size == (300, 400)
    assert ORIENTATION not in result.getexif()


def test_limits_report_the_oriented_size() -> None:
    with pytest.raises(ImageError, match="^resolution 200x300 is below 256x256$"):
        decode_image(oriented_jpeg(300, 200, 6), LIMITS)


# --- colour: ICC, alpha, palette, grey, 16-bit, CMYK ---------------------------------------

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
LAB = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_icc_profile_is_kept_in_results(fmt: str) -> None:
    data = save(noise(300, 300), fmt, icc_profile=SRGB)
    decoded = decode_image(data, LIMITS)
    assert decoded.icc_profile == SRGB
    assert reopen(encode_image(decoded, fmt).data).info.get("icc_profile") == SRGB
    explicit = encode_image(decoded.pixels, fmt, icc_profile=decoded.icc_profile)
    assert reopen(explicit.data).info.get("icc_profile") == SRGB


def test_profile_that_does_not_fit_the_pixels_is_dropped() -> None:
    decoded = decode_image(save(noise(300, 300), "PNG", icc_profile=LAB), LIMITS)
    assert decoded.icc_profile is None


def fake_profile(space: bytes) -> bytes:
    """Bytes shaped like an ICC profile of a colour space (only the header field is real)."""
    return bytes(16) + space + bytes(108)


def test_grey_profile_is_kept_for_grey_images_and_results_stay_grey() -> None:
    grey = noise(300, 300)[:, :, 0]
    profile = fake_profile(b"GRAY")
    decoded = decode_image(save(grey, "PNG", icc_profile=profile), LIMITS)
    assert decoded.icc_profile == profile
    result = reopen(encode_image(decoded, "PNG").data)
    assert result.mode == "L" and result.info.get("icc_profile") == profile
    assert np.array_equal(np.asarray(result), grey)


def test_grey_profile_on_a_colour_image_is_dropped() -> None:
    data = save(noise(300, 300), "PNG", icc_profile=fake_profile(b"GRAY"))
    assert decode_image(data, LIMITS).icc_profile is None


def test_cmyk_jpeg_with_an_unreadable_profile_falls_back_to_plain_conversion() -> None:
    image = Image.fromarray(noise(300, 300)).convert("CMYK")
    data = save(image, "JPEG", icc_profile=fake_profile(b"CMYK"))
    decoded = decode_image(data, LIMITS)
    assert decoded.icc_profile is None
    assert np.array_equal(decoded.pixels, np.asarray(reopen(data).convert("RGB")))


def raw_png(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    height, width = samples.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    rows = samples.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, color_type, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_16_bit_colour_and_alpha_pngs_decode_to_8_bits() -> None:
    deep = np.random.default_rng(9).integers(0, 65536, (300, 300, 4), dtype=np.uint16)
    rgb = decode_image(raw_png(deep[:, :, :3], color_type=2), LIMITS)
    assert rgb.pixels.dtype == np.uint8 and rgb.alpha is None
    assert np.abs(rgb.pixels.astype(int) - (deep[:, :, :3] >> 8)).max() <= 1
    rgba = decode_image(raw_png(deep, color_type=6), LIMITS)
    assert rgba.alpha is not None
    assert np.abs(rgba.alpha.astype(int) - (deep[:, :, 3] >> 8)).max() <= 1


def test_png_round_trip_is_bit_exact() -> None:
    pixels = noise(333, 517, seed=3)
    decoded = decode_image(save(pixels, "PNG"), LIMITS)
    again = decode_image(encode_image(decoded.pixels, "PNG").data, LIMITS)
    assert np.array_equal(again.pixels, pixels)


def test_transparent_png_keeps_its_alpha_and_colours() -> None:
    rgba = np.random.default_rng(5).integers(0, 256, (300, 300, 4), dtype=np.uint8)
    decoded = decode_image(save(rgba, "PNG"), LIMITS)

    assert np.array_equal(decoded.pixels, rgba[:, :, :3])  # not composited
    assert decoded.alpha is not None and np.array_equal(decoded.alpha, rgba[:, :, 3])
    result = reopen(encode_image(decoded, "PNG").data)
    assert result.mode == "RGBA"
    assert np.array_equal(np.asarray(result), rgba)


def test_opaque_alpha_is_dropped_and_jpeg_results_have_none() -> None:
    rgba = np.dstack([noise(300, 300), np.full((300, 300), 255, np.uint8)])
    decoded = decode_image(save(rgba, "PNG"), LIMITS)
    assert decoded.alpha is None
    alpha = np.zeros((300, 300), np.uint8)
    assert reopen(encode_image(decoded.pixels, "JPEG", alpha=alpha).data).mode == "RGB"


def test_palette_png_with_and_without_transparency() -> None:
    image = Image.fromarray(noise(300, 300)).quantize(16)
    plain = decode_image(save(image, "PNG"), LIMITS)
    assert np.array_equal(plain.pixels, np.asarray(image.convert("RGB")))
    assert plain.alpha is None

    image.info["transparency"] = 0
    keyed = decode_image(save(image, "PNG", transparency=0), LIMITS)
    index = np.asarray(image)
    assert keyed.alpha is not None
    assert np.array_equal(keyed.alpha == 0, index == 0)


def test_grey_png_becomes_rgb_with_the_same_values() -> None:
    grey = noise(300, 300)[:, :, 0]
    decoded = decode_image(save(grey, "PNG"), LIMITS)
    assert np.array_equal(decoded.pixels, np.dstack([grey, grey, grey]))


def test_16_bit_grey_png_is_scaled_to_8_bits() -> None:
    deep = np.random.default_rng(7).integers(0, 65536, (300, 300), dtype=np.uint16)
    data = save(Image.fromarray(deep), "PNG")
    assert reopen(data).mode.startswith("I")
    decoded = decode_image(data, LIMITS)
    expected = np.round(deep / 65535 * 255).astype(np.uint8)
    assert np.array_equal(decoded.pixels[:, :, 1], expected)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    pixels = noise(300, 300)
    data = save(Image.fromarray(pixels).convert("CMYK"), "JPEG", quality=95)
    assert reopen(data).mode == "CMYK"
    decoded = decode_image(data, LIMITS)
    assert decoded.pixels.shape == (300, 300, 3)
    assert np.array_equal(decoded.pixels, np.asarray(reopen(data).convert("RGB")))
    assert decoded.icc_profile is None  # no CMYK profile: plain conversion, untagged


def test_jpeg_results_are_high_quality_4_4_4() -> None:
    pixels = np.asarray(Image.fromarray(noise(75, 100)).resize((400, 300), Image.BILINEAR))
    result = encode_image(pixels, "JPEG")
    image = reopen(result.data)
    assert JpegImagePlugin.get_sampling(image) == 0
    error = np.abs(np.asarray(image).astype(int) - pixels.astype(int)).mean()
    assert error < 3


def test_encode_rejects_what_is_not_rgb_uint8() -> None:
    with pytest.raises(ValueError):
        encode_image(np.zeros((10, 10), np.uint8), "PNG")
    with pytest.raises(ValueError):
        encode_image(np.zeros((10, 10, 3), np.float32), "PNG")
    with pytest.raises(ValueError):
        encode_image(np.zeros((10, 10, 3), np.uint8), "GIF")


def test_decoded_image_reports_its_size() -> None:
    decoded = DecodedImage(np.zeros((300, 400, 3), np.uint8), "PNG")
    assert (decoded.width, decoded.height) == (400, 300)


# --- masks ---------------------------------------------------------------------------------


def rect(height: int = 100, width: int = 120) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[21:63, 33:90] = True
    return mask


def test_grey_png_mask_non_zero_marks() -> None:
    grey = np.zeros((100, 120), np.uint8)
    grey[21:63, 33:90] = 255
    grey[0, 0] = 1  # lossless: any non-zero value marks
    expected = rect()
    expected[0, 0] = True
    assert np.array_equal(decode_mask(save(grey, "PNG"), 10**6), expected)


def test_rgb_mask_any_coloured_channel_marks() -> None:
    rgb = np.zeros((100, 120, 3), np.uint8)
    rgb[21:63, 33:90] = (255, 0, 0)  # pure red has little luminance but is clearly marked
    assert np.array_equal(decode_mask(save(rgb, "PNG"), 10**6), rect())


def test_rgba_mask_uses_alpha_when_not_fully_opaque() -> None:
    rgba = np.zeros((100, 120, 4), np.uint8)  # black strokes: colour alone would mark nothing
    rgba[21:63, 33:90, 3] = 255
    assert np.array_equal(decode_mask(save(rgba, "PNG"), 10**6), rect())


def test_opaque_rgba_mask_uses_colour() -> None:
    rgba = np.zeros((100, 120, 4), np.uint8)
    rgba[:, :, 3] = 255
    rgba[21:63, 33:90, :3] = 255
    assert np.array_equal(decode_mask(save(rgba, "PNG"), 10**6), rect())


def test_jpeg_compressed_mask_tolerates_noise() -> None:
    grey = rect().astype(np.uint8) * 255
    data = save(grey, "JPEG", quality=60)
    noisy = np.asarray(reopen(data))
    assert (noisy[~rect()] > 0).any()  # compression really left non-zero values outside

    mask = decode_mask(data, 10**6)
    assert (mask != rect()).sum() < 2 * (42 + 57)  # at most stray pixels along the edges


def test_inline_mask_forms_decode_to_the_same_bytes() -> None:
    png = save(rect().astype(np.uint8) * 255, "PNG")
    standard = base64.b64encode(png).decode()
    urlsafe = base64.urlsafe_b64encode(png).decode().rstrip("=")
    wrapped = "\n".join(standard[i : i + 76] for i in range(0, len(standard), 76))
    for value in (
        standard,
        urlsafe,
        wrapped,
        f"data:image/png;base64,{standard}",
        f"  DATA:image/png;charset=x;BASE64,{standard}  ",
        f"data:;base64,{standard.replace('+', '%2B')}",
    ):
        assert parse_mask_field(value) == MaskSource(data=png)
    assert np.array_equal(decode_mask(parse_mask_field(standard).data or b"", 10**6), rect())


def test_mask_urls_are_recognised() -> None:
    source = parse_mask_field(" https://example.com/mask.png?x=1 ")
    assert source == MaskSource(url="https://example.com/mask.png?x=1")  # nothing downloaded
    upper = "HTTP://example.com/m.png"
    assert parse_mask_field(upper) == MaskSource(url=upper)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "mask is empty"),
        ("   ", "mask is empty"),
        ("iVBOR$w0KGgo=", "invalid character '\\$' at position 5"),
        ("not a mask!", "invalid character '!' at position 10"),
        ("abcde", "truncated"),
        ("ab=cd", "padding"),
        ("data:image/png,iVBORw0KGgo=", "must be base64-encoded"),
        ("data:image/png;base64", "no ','"),
        ("ftp://example.com/m.png", "http or https"),
        ("https:///m.png", "no host"),
    ],
)
def test_bad_mask_fields_are_refused_with_a_reason(value: str, message: str) -> None:
    with pytest.raises(MaskError, match=message):
        parse_mask_field(value)


def test_mask_that_is_not_an_image_is_refused() -> None:
    data = parse_mask_field(base64.b64encode(b"hello world, not an image").decode()).data
    with pytest.raises(MaskError, match="not an image"):
        decode_mask(data or b"", 10**6)
    with pytest.raises(MaskError, match="truncated or corrupt"):
        decode_mask(save(rect().astype(np.uint8) * 255, "PNG")[:60], 10**6)


def test_all_zero_mask_is_refused() -> None:
    with pytest.raises(MaskError, match="^mask marks no pixels"):
        decode_mask(save(np.zeros((100, 100), np.uint8), "PNG"), 10**6)


def test_mask_limits() -> None:
    data = save(rect().astype(np.uint8) * 255, "PNG")
    with pytest.raises(MaskError, match="exceeds"):
        decode_mask(data, len(data) - 1)
    with pytest.raises(MaskError, match="above"):
        decode_mask(png_claiming(60000, 60000), 10**6)


def test_fit_mask_nearest_neighbour() -> None:
    small = np.array([[True, False], [False, True]])
    big = fit_mask(small, 4, 6)
    assert big.dtype == bool and big.shape == (4, 6)
    assert np.array_equal(big, np.kron(small, np.ones((2, 3), bool)))
    assert np.array_equal(fit_mask(big, 2, 2), small)
    assert fit_mask(small, 2, 2) is small


def _png_with_late_exif(pixels: np.ndarray, orientation: int) -> bytes:
    """A valid PNG whose eXIf chunk follows the image data (Pillow writes it before)."""
    import struct

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", exif=exif.tobytes())
    data = buf.getvalue()
    chunks, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos : pos + 12 + n]))
        pos += 12 + n
    body = b"".join(c for t, c in chunks if t not in (b"eXIf", b"IEND"))
    late = b"".join(c for t, c in chunks if t == b"eXIf")
    return data[:8] + body + late + b"".join(c for t, c in chunks if t == b"IEND")


def test_image_and_mask_from_the_same_png_turn_alike() -> None:
    pixels = np.zeros((300, 400, 3), np.uint8)
    pixels[:, :100] = 255
    for orientation in (1, 6):
        data = _png_with_late_exif(pixels, orientation)
        image = decode_image(data)
        mask = decode_mask(data, 10**8)
        assert image.pixels.shape[:2] == mask.shape
        assert np.array_equal(image.pixels[..., 0] > 0, mask)
