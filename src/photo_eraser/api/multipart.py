"""The one file of a ``multipart/form-data`` upload body, read from bytes already received
(their size limit and budget are `body.read_body`'s)."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesHeaderParser

from photo_eraser.api.errors import ApiError, Code

FIELD = "file"
"""The form field that carries the file."""
MAX_PARTS = 16
"""Parts looked at: a browser's form sends one or two."""


def form_file(body: bytes, content_type: str) -> bytes:
    """The content of the form field `FIELD` (or of the only part with a file name); 400 if
    the body is not multipart/form-data with such a part."""
    boundary = _boundary(content_type)
    delimiter = b"--" + boundary
    start = body.find(delimiter)
    if start < 0:
        raise _bad("the body has no part")
    chosen: bytes | None = None
    files: list[bytes] = []
    pos = start + len(delimiter)
    for _ in range(MAX_PARTS):
        if body.startswith(b"--", pos):  # the closing delimiter
            break
        if not body.startswith(b"\r\n", pos):
            raise _bad("a part delimiter is malformed")
        head_end = body.find(b"\r\n\r\n", pos + 2)
        if head_end < 0:
            raise _bad("a part has no end of headers")
        end = body.find(b"\r\n" + delimiter, head_end + 4)
        if end < 0:
            raise _bad("the body ends before its closing delimiter")
        headers = BytesHeaderParser().parsebytes(body[pos + 2 : head_end + 4])
        content = body[head_end + 4 : end]
        name, filename = _disposition(headers)
        if name == FIELD:
            chosen = content
        elif filename is not None:
            files.append(content)
        pos = end + 2 + len(delimiter)
    else:
        raise _bad(f"the body has more than {MAX_PARTS} parts")
    if chosen is None and len(files) == 1:
        chosen = files[0]
    if chosen is None:
        raise _bad(f"the form has no field {FIELD!r} holding the file")
    return chosen


def _boundary(content_type: str) -> bytes:
    message = Message()
    message["Content-Type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:
        raise _bad("Content-Type multipart/form-data needs a boundary of 1 to 70 characters")
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise _bad("the multipart boundary is not ASCII") from None


def _disposition(headers: Message) -> tuple[str | None, str | None]:
    if headers.get_content_disposition() != "form-data":
        return None, None
    name = headers.get_param("name", header="content-disposition")
    return (name if isinstance(name, str) else None), headers.get_filename()


def _bad(reason: str) -> ApiError:
    return ApiError(Code.BAD_PARAMETER, f"body: {reason}")
