"""Image formats recognised by content (magic bytes) and sizes read from file headers.

Sizes come from the header alone, without Pillow, so that a file claiming huge dimensions
(a decompression bomb) is refused before any decoder allocates memory for it.
"""

from __future__ import annotations

ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP")
LOSSLESS_FORMATS = frozenset({"PNG", "BMP"})
"""Formats whose pixels are exactly what was saved (no lossy compression)."""

_ISO_BRANDS = {
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"heic": "HEIC",
    b"heix": "HEIC",
    b"hevc": "HEIC",
    b"hevx": "HEIC",
    b"heim": "HEIC",
    b"heis": "HEIC",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"jxl ": "JPEG XL",
    b"jp2 ": "JPEG 2000",
    b"qt  ": "QuickTime video",
}
# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def sniff_format(data: bytes) -> str | None:
    """Name the format of ``data`` from its first bytes; ``None`` when unknown.

    Returns one of `ACCEPTED_FORMATS` or the name of a recognised but unsupported format
    (``GIF``, ``WEBP``, ``TIFF``, ``HEIC``, ``AVIF``, ``HTML``, ...).
    """
    head = data[:64]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"BM") and len(head) >= 26:
        return "BMP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head[4:8] == b"ftyp":
        return _ISO_BRANDS.get(head[8:12], "MP4 video")
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "JPEG XL"
    if head.startswith(b"\x00\x00\x00\x0cjP  "):
        return "JPEG 2000"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith((b"P1", b"P2", b"P3", b"P4", b"P5", b"P6")) and head[2:3].isspace():
        return "PNM"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    if text.startswith((b"<svg", b"<?xml")):
        return "SVG" if b"<svg" in data[:4096].lower() else "XML"
    if text.startswith((b"{", b"[")):
        return "JSON"
    return None


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """``(width, height)`` as stored in the header of an accepted format; ``None`` if unreadable.

    The stored size, before any EXIF orientation is applied.
    """
    size: tuple[int, int] | None
    if fmt == "PNG":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        size = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    elif fmt == "BMP":
        size = _bmp_size(data)
    elif fmt == "JPEG":
        size = _jpeg_size(data)
    else:
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    dib_size = int.from_bytes(data[14:18], "little")
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sides
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)
    return width, abs(height)  # a negative height means rows are stored top-down


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        if marker in _JPEG_SOF:
            if pos + 9 > end:
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None
