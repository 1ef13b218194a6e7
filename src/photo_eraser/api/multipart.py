"""The one file of a ``multipart/form-data`` upload body, read from bytes already received
(their size limit and budget are `body.read_body`'s). Parsing is python-multipart's (the
parser Starlette uses); this module only picks the part that holds the file."""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from photo_eraser.api.errors import ApiError, Code

FIELD = "file"
"""The form field that carries the file."""
MAX_PARTS = 16
"""Parts looked at: a browser's form sends one or two."""


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)

    def disposition(self) -> tuple[str | None, str | None]:
        """The part's form field name and file name, if it is form data."""
        kind, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        if kind != b"form-data":
            return None, None
        name, filename = params.get(b"name"), params.get(b"filename")
        return (
            None if name is None else name.decode("utf-8", "replace"),
            None if filename is None else filename.decode("utf-8", "replace"),
        )


def form_file(body: bytes, content_type: str) -> bytes:
    """The content of the form field `FIELD` (or of the only part with a file name); 400 if
    the body is not multipart/form-data with such a part."""
    parts = _parts(body, _boundary(content_type))
    chosen: bytes | None = None
    files: list[bytes] = []
    for part in parts:
        name, filename = part.disposition()
        if name == FIELD:
            chosen = b"".join(part.chunks)
        elif filename is not None:
            files.append(b"".join(part.chunks))
    if chosen is None and len(files) == 1:
        chosen = files[0]
    if chosen is None:
        raise _bad(f"the form has no field {FIELD!r} holding the file")
    return chosen


def _parts(body: bytes, boundary: bytes) -> list[_Part]:
    parts: list[_Part] = []
    header: list[bytes] = [b"", b""]
    ended = False

    def begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise _bad(f"the body has more than {MAX_PARTS} parts")
        parts.append(_Part())

    def header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def header_end() -> None:
        parts[-1].headers[header[0].lower()] = header[1]
        header[0] = header[1] = b""

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].chunks.append(data[start:end])

    def finished() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_part_data": part_data,
            "on_end": finished,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise _bad(f"it is not well-formed multipart/form-data ({exc})") from None
    if not parts:
        raise _bad("the body has no part")
    if not ended:
        raise _bad("the body ends before its closing delimiter")
    return parts


def _boundary(content_type: str) -> bytes:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if boundary is None or not 1 <= len(boundary) <= 70:
        raise _bad("Content-Type multipart/form-data needs a boundary of 1 to 70 characters")
    if not boundary.isascii():
        raise _bad("the multipart boundary is not ASCII")
    return boundary


def _bad(reason: str) -> ApiError:
    return ApiError(Code.BAD_PARAMETER, f"body: {reason}")
