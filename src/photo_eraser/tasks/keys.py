"""API keys: appkey/appsecret pairs, the secret kept only as a hash."""

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


class KeyQueries:
    """Create, list, revoke and verify keys (a part of `TaskStore`)."""

    engine: sa.Engine

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
        return result.rowcount > 0

    def verify_key(self, appkey: str, appsecret: str) -> bool:
        """Constant-time check of a key pair; revoked and unknown keys fail alike."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(api_keys.c.secret_sha256).where(
                    api_keys.c.appkey == appkey, api_keys.c.revoked_at.is_(None)
                )
            ).first()
        expected = row.secret_sha256 if row else "0" * 64
        return hmac.compare_digest(expected, _hash_secret(appsecret)) and row is not None
