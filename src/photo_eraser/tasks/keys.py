"""API keys: appkey/appsecret pairs, the secret kept only as a hash; and `VerifiedKeys`, the
process's memory of keys it checked recently, so that a poll does not read the database."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import sqlalchemy as sa

from photo_eraser.tasks.records import ApiKey
from photo_eraser.tasks.tables import api_keys


def _hash_secret(secret: str) -> str:
    # Secrets are 256-bit random tokens, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A random webhook secret (256 bits); the whole string is the HMAC key."""
    return "whsec_" + secrets.token_urlsafe(32)


KEY_CACHE_LIMIT = 10_000
"""Keys remembered at most (only valid keys are remembered); past it the memory starts over."""


class VerifiedKeys:
    """Keys this process read from the database within the last ``seconds``: appkey -> the
    hash of its secret. A revocation committed elsewhere (``photo-eraser keys revoke``, another
    API process) is seen once the entry is older than ``seconds``: an entry is stamped when the
    read that made it *began*, so any revocation committed before then is in it, and one
    committed later is seen at most ``seconds`` after it. A revocation through this store
    drops the entry at once. Unknown and revoked keys are never remembered: every such request
    reads the database, as before. ``seconds`` 0 remembers nothing."""

    def __init__(self, seconds: float, limit: int = KEY_CACHE_LIMIT) -> None:
        self.seconds = seconds
        self.limit = limit
        # Single dict operations are atomic under the GIL: threads and the event loop share it.
        self._entries: dict[str, tuple[str, float]] = {}

    def get(self, appkey: str) -> str | None:
        """The secret hash of ``appkey`` if it was read less than ``seconds`` ago."""
        entry = self._entries.get(appkey)
        if entry is None or time.monotonic() - entry[1] >= self.seconds:
            return None
        return entry[0]

    def put(self, appkey: str, secret_sha256: str, read_at: float) -> None:
        if self.seconds <= 0:
            return
        if len(self._entries) >= self.limit:
            self._entries.clear()
        self._entries[appkey] = (secret_sha256, read_at)

    def drop(self, appkey: str) -> None:
        self._entries.pop(appkey, None)


class KeyQueries:
    """Create, list, revoke and verify keys (a part of `TaskStore`)."""

    engine: sa.Engine
    verified_keys: VerifiedKeys

    def create_key(self, name: str) -> tuple[str, str]:
        """Create a key; return ``(appkey, appsecret)``. The secret is stored only as a hash.
        The key gets a webhook secret too (`webhook_secret`)."""
        appkey = "pe_" + secrets.token_hex(12)
        appsecret = secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    appkey=appkey,
                    name=name,
                    secret_sha256=_hash_secret(appsecret),
                    created_at=time.time(),
                    webhook_secret=new_webhook_secret(),
                )
            )
        return appkey, appsecret

    def webhook_secret(self, appkey: str) -> str | None:
        """The secret that signs ``appkey``'s callbacks; None for an unknown key or one made
        before callbacks existed (until it is rotated). Stored as it is: signing needs it."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys.c.webhook_secret).where(api_keys.c.appkey == appkey)
            ).first()
        return None if row is None else row.webhook_secret

    def rotate_webhook_secret(self, appkey: str) -> str | None:
        """Give ``appkey`` a new webhook secret and return it (None: no active key). Callbacks
        sent from now on, retries included, are signed with it."""
        secret = new_webhook_secret()
        with self.engine.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.appkey == appkey, api_keys.c.revoked_at.is_(None))
                .values(webhook_secret=secret)
            )
        return secret if result.rowcount else None

    def list_keys(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    api_keys.c.appkey, api_keys.c.name, api_keys.c.created_at, api_keys.c.revoked_at
                ).order_by(api_keys.c.created_at)
            ).all()
        return [ApiKey(r.appkey, r.name, r.created_at, r.revoked_at) for r in rows]

    def revoke_key(self, appkey: str) -> bool:
        with self.engine.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.appkey == appkey, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        self.verified_keys.drop(appkey)
        return result.rowcount > 0

    def verify_key(self, appkey: str, appsecret: str) -> bool:
        """Constant-time check of a key pair; revoked and unknown keys fail alike. Reads the
        database unless the key was read within ``verified_keys.seconds``."""
        known = self.remembered_key(appkey, appsecret)
        if known is not None:
            return known
        read_at = time.monotonic()
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys.c.secret_sha256).where(
                    api_keys.c.appkey == appkey, api_keys.c.revoked_at.is_(None)
                )
            ).first()
        if row is None:
            self.verified_keys.drop(appkey)
        else:
            self.verified_keys.put(appkey, row.secret_sha256, read_at)
        expected = row.secret_sha256 if row else "0" * 64
        return hmac.compare_digest(expected, _hash_secret(appsecret)) and row is not None

    def remembered_key(self, appkey: str, appsecret: str) -> bool | None:
        """The verdict on a key pair from `VerifiedKeys` alone (no database read), or ``None``
        if the key was not read recently. Cheap enough for the event loop."""
        expected = self.verified_keys.get(appkey)
        if expected is None:
            return None
        return hmac.compare_digest(expected, _hash_secret(appsecret))
