"""Files uploaded through ``POST /v3/pic/rw/upload``: their checks, their keys and links, and
how a task reads one.

An upload is kept in the blob store under ``uploads/<owner>/<upload_id>.<ext>`` (``owner`` is a
hash of the appkey, so a link does not show the appkey) and linked by the same signed, expiring
URL as a result: ``<base>/v3/pic/rw/files/uploads/<owner>/<upload_id>.<ext>?expires=..&signature=..``.

A task naming such a link (as an image or as the mask) does not download it over HTTP:
`parse_upload_link` recognises the path, whatever the host, port or path prefix (behind a load
balancer or a proxy they differ from what this process sees), and the worker reads the blob
after `check_upload_link` (signature, owner, expiry). The create request checks the same, so
a link of another key is refused there with a 400; the worker checks again because a task may
wait past the link's expiry."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qs, unquote, urlsplit

from photo_eraser.fetch import FetchError
from photo_eraser.imaging import ImageLimits, decode_image, sniff_format
from photo_eraser.pipeline import MaskCache
from photo_eraser.storage import UPLOADS, BlobStore, UrlSigner

FILE_TYPES = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpg", "image/jpeg"),
    "BMP": ("bmp", "image/bmp"),
    "GIF": ("gif", "image/gif"),
    "WEBP": ("webp", "image/webp"),
    "TIFF": ("tiff", "image/tiff"),
}
"""Extension and content type of an upload by its format (images: PNG, JPEG, BMP; a mask may
also be GIF, WEBP or TIFF). The extension ends the key, so it is how the type is kept."""
UPLOAD_TYPES = dict(FILE_TYPES.values())
"""Content type of an upload by its extension."""

_OWNER_CHARS = 24
_LINK_PATH = re.compile(
    r"/v3/pic/rw/files/(?P<key>uploads/(?P<owner>[0-9a-f]{24})/[0-9a-f]{32}\.(?P<ext>[a-z]+))$"
)


class UploadKind(StrEnum):
    """What an upload is for, which says what it is checked as."""

    IMAGE = "image"
    """An input image: the seed's formats and limits (PNG, JPEG, BMP; 256..5000 px; 4:1)."""
    MASK = "mask"
    """A mask: the mask rules (also GIF, WEBP, TIFF; any size up to the largest side; it
    must mark some pixel)."""


@dataclass(frozen=True)
class UploadInfo:
    """What an accepted upload is: its format and its size as displayed (EXIF applied)."""

    format: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return FILE_TYPES[self.format][0]


def check_upload(
    data: bytes, kind: UploadKind, limits: ImageLimits, masks: MaskCache
) -> UploadInfo:
    """Decode ``data`` as the worker will (so what is accepted here decodes there), by content
    whatever its declared type; raise `ImageError` or `MaskError` with a reason for users."""
    if kind == UploadKind.MASK:
        mask = masks.decode(data)  # sizes, format and "marks something"; cached for the task
        fmt = sniff_format(data)
        assert fmt is not None  # decode accepted it
        return UploadInfo(fmt, mask.shape[1], mask.shape[0])
    image = decode_image(data, limits)
    height, width = image.pixels.shape[:2]
    return UploadInfo(image.format, width, height)


def owner_of(appkey: str) -> str:
    """The folder of ``appkey``'s uploads: a hash, so that links do not carry the appkey."""
    return hashlib.sha256(appkey.encode()).hexdigest()[:_OWNER_CHARS]


def new_upload_key(appkey: str, info: UploadInfo) -> str:
    """A fresh key for an upload of ``appkey``."""
    return f"{UPLOADS}/{owner_of(appkey)}/{uuid.uuid4().hex}.{info.extension}"


@dataclass(frozen=True)
class UploadLink:
    """A link to an upload, as read from a URL (not yet checked)."""

    key: str
    owner: str
    expires: int
    signature: str


def parse_upload_link(url: str) -> UploadLink | None:
    """The upload a URL links to, if its path is this service's link to an upload (any host,
    port or path prefix); None for any other URL."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https"):
        return None
    match = _LINK_PATH.search(unquote(parts.path))
    if match is None or match["ext"] not in UPLOAD_TYPES:
        return None
    query = parse_qs(parts.query)
    expires = (query.get("expires") or [""])[-1]
    signature = (query.get("signature") or [""])[-1]
    return UploadLink(
        match["key"],
        match["owner"],
        int(expires) if expires.isdigit() and len(expires) < 16 else 0,
        signature,
    )


class UploadRefused(Exception):
    """A link to an upload that this key may not use; the reason is for users."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_upload_link(
    link: UploadLink, appkey: str, signer: UrlSigner | None, now: float | None = None
) -> None:
    """Raise `UploadRefused` unless ``appkey`` may use the upload now. Without a ``signer``
    (a cluster worker not given PHOTO_ERASER_SIGNING_SECRET) the signature is not checked
    again: the API checked it when the task was created."""
    if signer is not None and not signer.is_signed(link.key, link.expires, link.signature):
        raise UploadRefused("the upload link's signature is not valid")
    if link.owner != owner_of(appkey):
        raise UploadRefused("the upload belongs to another key")
    if link.expires < (time.time() if now is None else now):
        raise UploadRefused("the upload link has expired")


def read_upload(blobs: BlobStore, link: UploadLink, appkey: str, signer: UrlSigner | None) -> bytes:
    """The upload's bytes from the blob store, for a task of ``appkey``. A link it may not use,
    or an upload already deleted, is a `FetchError` (the image's failure, as for a download
    that fails); a store that cannot be reached is a `BlobStoreError` (ours: retried)."""
    try:
        check_upload_link(link, appkey, signer)
    except UploadRefused as exc:
        raise FetchError(exc.reason) from None
    blob = blobs.open(link.key)
    if blob is None:
        raise FetchError("the upload no longer exists")
    with blob.file as f:
        return f.read()
