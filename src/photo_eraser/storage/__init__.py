"""Where results live (blob stores) and how their URLs are signed."""

from photo_eraser.storage.local import LocalBlobStore
from photo_eraser.storage.signing import UrlSigner

__all__ = ["LocalBlobStore", "UrlSigner"]
