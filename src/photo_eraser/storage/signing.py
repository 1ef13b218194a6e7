"""HMAC-signed, expiring result URLs."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path


class UrlSigner:
    """Signs ``(key, expires)`` pairs so a result URL works without credentials until it expires."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def from_data_dir(cls, data_dir: Path, configured: str | None = None) -> UrlSigner:
        """Use the configured secret, or one generated once and kept in ``DATA_DIR/signing.key``."""
        if configured:
            return cls(configured.encode())
        path = data_dir / "signing.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
            tmp.replace(path)
        return cls(path.read_text().strip().encode())

    def signature(self, key: str, expires: int) -> str:
        msg = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def verify(self, key: str, expires: int, signature: str, now: float | None = None) -> bool:
        """Whether the signature is ours and ``expires`` has not passed."""
        now = time.time() if now is None else now
        return expires >= now and self.is_signed(key, expires, signature)

    def is_signed(self, key: str, expires: int, signature: str) -> bool:
        """Whether ``signature`` is ours for ``(key, expires)``, expired or not."""
        # compare_digest refuses non-ASCII str, and a signature is a hex string: compare bytes.
        given = signature.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(self.signature(key, expires).encode(), given)
