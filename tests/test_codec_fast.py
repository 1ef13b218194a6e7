"""The fast JPEG decoder against the Pillow path it replaces: the same pixels, orientation,
profile and verdict on real files (chroma subsamplings, odd sizes, progressive, restart
markers, grey, every EXIF orientation, ICC profiles, truncated and corrupt files)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from photo_eraser.imaging import DecodedImage, ImageError, ImageLimits, decode_image, encode_image
from photo_eraser.imaging.codec import decode_image_with_pillow

LIMITS = ImageLimits()
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour with detail and noise: every DCT coefficient and chroma path matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [128 + 100 * np.sin(x / 17) * np.cos(y / 23), 128 + 90 * np.cos((x + y) / 31), x % 255],
        axis=-1,
    )
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray, **params: object) -> bytes:
    buf = io.BytesIO()
    mode = "L" if pixels.ndim == 2 else "RGB"
    Image.fromarray(pixels, mode).save(buf, "JPEG", **params)
    return buf.getvalue()


def with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def assert_same(data: bytes) -> DecodedImage:
    """The fast path and the Pillow path agree on everything a decode returns."""
    fast = decode_image(data, LIMITS)
    slow = decode_image_with_pillow(data, LIMITS)
    assert fast.pixels.dtype == np.uint8 and fast.pixels.flags.c_contiguous
    assert fast.pixels.shape == slow.pixels.shape
    assert np.array_equal(fast.pixels, slow.pixels)
    assert (fast.format, fast.icc_profile, fast.alpha) == (slow.format, slow.icc_profile, None)
    assert slow.alpha is None
    return fast


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("size", [(300, 400), (257, 333), (1001, 777)])
def test_pixels_match_pillow_across_subsamplings_and_odd_sizes(
    subsampling: int, size: tuple[int, int]
) -> None:
    pixels = photo_like(*size, seed=size[0])
    for quality in (75, 95):
        assert_same(jpeg(pixels, quality=quality, subsampling=subsampling))


def test_progressive_optimized_and_restart_marker_files_match() -> None:
    pixels = photo_like(480, 640)
    assert_same(jpeg(pixels, quality=90, progressive=True))
    assert_same(jpeg(pixels, quality=90, optimize=True))
    ok, restart = cv2.imencode(
        ".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_RST_INTERVAL, 4]
    )
    assert ok and b"\xff\xdd" in restart.tobytes()  # a DRI marker: restart intervals are on
    assert_same(restart.tobytes())


def test_grey_jpeg_becomes_rgb_like_pillow() -> None:
    grey = photo_like(300, 420)[:, :, 0]
    decoded = assert_same(jpeg(grey, quality=90))
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches(orientation: int) -> None:
    data = jpeg(photo_like(300, 420), quality=90, exif=with_orientation(orientation))
    decoded = assert_same(data)
    assert decoded.pixels.shape[:2] == ((420, 300) if orientation >= 5 else (300, 420))


def test_icc_profiles_are_kept_or_dropped_like_pillow() -> None:
    pixels = photo_like(300, 400)
    rgb = assert_same(jpeg(pixels, quality=90, icc_profile=SRGB, exif=with_orientation(6)))
    assert rgb.icc_profile == SRGB
    # A large profile is split over several APP2 markers.
    big = SRGB + bytes(200_000)
    assert assert_same(jpeg(pixels, quality=90, icc_profile=big)).icc_profile == big
    grey_profile = bytes(16) + b"GRAY" + bytes(108)
    grey = pixels[:, :, 1]
    assert assert_same(jpeg(grey, icc_profile=grey_profile)).icc_profile == grey_profile
    # A grey profile does not fit RGB pixels: dropped by both.
    assert assert_same(jpeg(pixels, icc_profile=grey_profile)).icc_profile is None


def test_cmyk_jpeg_takes_the_pillow_path() -> None:
    cmyk = Image.fromarray(photo_like(300, 300)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=90)
    assert_same(buf.getvalue())


@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_files_are_refused_like_pillow(progressive: bool) -> None:
    data = jpeg(photo_like(600, 800), quality=90, progressive=progressive)
    for cut in (len(data) // 3, len(data) // 2, len(data) - 200):
        with pytest.raises(ImageError, match="truncated or corrupt"):
            decode_image_with_pillow(data[:cut], LIMITS)
        with pytest.raises(ImageError, match="truncated or corrupt"):
            decode_image(data[:cut], LIMITS)
    # Only the end-of-image marker missing: simplejpeg's strict mode refuses it, and Pillow's
    # verdict stands, as before the fast path (it accepts a baseline file, not a progressive).
    if progressive:
        with pytest.raises(ImageError):
            decode_image_with_pillow(data[:-2], LIMITS)
        with pytest.raises(ImageError):
            decode_image(data[:-2], LIMITS)
    else:
        assert_same(data[:-2])


def test_files_libjpeg_warns_about_get_pillows_verdict() -> None:
    """Bytes flipped inside the entropy-coded data: libjpeg warns and simplejpeg's strict mode
    refuses; the verdict is then Pillow's, whichever it is, with Pillow's pixels."""
    data = bytearray(jpeg(photo_like(300, 400), quality=90))
    start = data.index(b"\xff\xda") + 20
    rng = np.random.default_rng(1)
    verdicts = set()
    for pos in rng.integers(start, len(data) - 10, 40):
        bad = bytearray(data)
        bad[pos] ^= 0x5A
        try:
            slow = decode_image_with_pillow(bytes(bad), LIMITS)
        except ImageError:
            verdicts.add("refused")
            with pytest.raises(ImageError):
                decode_image(bytes(bad), LIMITS)
            continue
        verdicts.add("accepted")
        assert np.array_equal(decode_image(bytes(bad), LIMITS).pixels, slow.pixels)
    assert "accepted" in verdicts  # the pixel comparison ran


@pytest.mark.parametrize("size", [(300, 400), (257, 333), (1080, 1920)])
def test_consumed_jpeg_results_are_pillows_bytes(size: tuple[int, int]) -> None:
    pixels = photo_like(*size, seed=3)
    for quality in (50, 90, 95, 100):
        pillow = encode_image(pixels, "JPEG", jpeg_quality=quality)
        handed_over = pixels.copy()
        fast = encode_image(handed_over, "JPEG", jpeg_quality=quality, consume=True)
        assert fast == pillow
        assert not np.array_equal(handed_over, pixels)  # the buffer was used (BGR now)
    # With a profile (one APP2 marker, or several for a large one), the same bytes too.
    for profile in (SRGB, SRGB + bytes(200_000)):
        with_profile = encode_image(pixels.copy(), "JPEG", icc_profile=profile, consume=True)
        assert with_profile == encode_image(pixels, "JPEG", icc_profile=profile)
        assert Image.open(io.BytesIO(with_profile.data)).info["icc_profile"] == profile
    # A grey profile makes the result grey: Pillow's path, the pixels left alone.
    grey_profile = bytes(16) + b"GRAY" + bytes(108)
    handed_over = pixels.copy()
    grey = encode_image(handed_over, "JPEG", icc_profile=grey_profile, consume=True)
    assert grey == encode_image(pixels, "JPEG", icc_profile=grey_profile)
    assert np.array_equal(handed_over, pixels)
