"""Blob store in an S3 bucket (AWS S3, MinIO, SeaweedFS, ...), for when several servers and
workers share results.

Keys are the same relative names as on the local disk, below an optional prefix in the bucket.
Credentials and region come from boto3's usual chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ...). Every failure of the store itself is a
`BlobStoreError`; a missing object or an invalid key is None, as in the local store."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from photo_eraser.storage.base import BlobStoreError, OpenBlob, is_valid_key

_CONFIG = Config(
    signature_version="s3v4",
    # Path-style (endpoint/bucket/key): SeaweedFS and MinIO have no per-bucket host names.
    s3={"addressing_style": "path"},
    connect_timeout=5,
    read_timeout=30,
    # Bounded, so a store that is down fails the request within seconds, not minutes.
    retries={"mode": "standard", "total_max_attempts": 3},
    # An open blob holds its connection until it is read; downloads stream in parallel.
    max_pool_connections=32,
    # Checksums only where the API demands them: S3-compatible stores lag behind AWS's newer
    # default checksum headers and reject or mis-store such uploads.
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)
_BATCH = 1000
"""The most keys one DeleteObjects request may name."""
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
"""Error codes of a missing object. A HEAD has no body, so "404" may also be a missing bucket."""
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MAX_EXPIRY = 7 * 24 * 3600
"""The longest a SigV4 presigned URL may be valid."""


class S3BlobStore:
    """A `BlobStore` in an S3 bucket, below ``prefix`` (``""`` for the whole bucket).

    ``endpoint_url`` is the store's API address (None for AWS); ``public_endpoint_url`` the
    address clients outside reach it at, used only to sign download URLs. ``client`` replaces
    the boto3 client this store would make (it must be configured like `_CONFIG`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        client: Any | None = None,
    ) -> None:
        if not _BUCKET.match(bucket):
            raise ValueError(f"invalid S3 bucket name: {bucket!r}")
        prefix = prefix.strip("/")
        if prefix and not is_valid_key(prefix):
            raise ValueError(f"invalid S3 key prefix: {prefix!r}")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self._where = f"object store {endpoint_url or 's3'}"
        try:
            # One client per store: boto3 clients are thread-safe, sessions are not.
            self._client = client if client is not None else _make_client(endpoint_url)
            self._signing_client = (
                _make_client(public_endpoint_url) if public_endpoint_url else self._client
            )
        except BotoCoreError as exc:
            self._fail(exc)

    @classmethod
    def from_url(
        cls, url: str, endpoint_url: str | None = None, *, public_endpoint_url: str | None = None
    ) -> S3BlobStore:
        """The store named by ``s3://bucket`` or ``s3://bucket/prefix``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"expected an S3 URL such as s3://bucket/optional/prefix: {url!r}")
        return cls(
            parts.netloc,
            parts.path,
            endpoint_url=endpoint_url,
            public_endpoint_url=public_endpoint_url,
        )

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Store ``data`` under ``key``; an S3 PUT is atomic for readers, and durable once it
        is answered (``durable`` changes nothing here)."""
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        self._call("put_object", Key=self._name(key), Body=data, ContentType=content_type)

    def make_durable(self, keys: Sequence[str]) -> None:
        """Nothing to do: every PUT was durable when it was answered."""

    def open(self, key: str) -> OpenBlob | None:
        """The blob streaming from the store (close it when done), or None."""
        if not is_valid_key(key):
            return None
        response = self._call("get_object", Key=self._name(key), missing_ok=True)
        if response is None:
            return None
        body = _Body(response["Body"], self._where)
        return OpenBlob(response["ContentLength"], body)  # type: ignore[arg-type]

    def size(self, key: str) -> int | None:
        if not is_valid_key(key):
            return None
        head = self._call("head_object", Key=self._name(key), missing_ok=True)
        return None if head is None else int(head["ContentLength"])

    def delete(self, key: str) -> None:
        """Delete a blob, and its folder if that is now empty (as on the local disk)."""
        name = self._name(key)
        folder, _, _ = name.rpartition("/")
        keys = [name]
        if folder and folder != self.prefix:
            # SeaweedFS lists an emptied folder until its "folder/" key is deleted (and ignores
            # that while the folder holds blobs); elsewhere the key is absent or a placeholder.
            keys.append(folder + "/")
        self._delete_keys(keys)

    def delete_prefix(self, key: str) -> None:
        """Delete every blob under the folder ``key``, and the folder itself."""
        folder = self._name(key) + "/"
        markers = {folder}
        for page in self._pages(folder):
            names = [item["Key"] for item in page.get("Contents", [])]
            markers.update(_folders_between(folder, names))
            self._delete_keys(names)
        # The empty folders SeaweedFS keeps (see `delete`), deepest first.
        self._delete_keys(sorted(markers, key=lambda m: m.count("/"), reverse=True))

    def folders(self, key: str) -> list[str]:
        """Names of the folders directly under ``key`` (e.g. the task ids under ``results``)."""
        folder = self._name(key) + "/"
        names = {
            common["Prefix"][len(folder) :].rstrip("/")
            for page in self._pages(folder, delimiter="/")
            for common in page.get("CommonPrefixes", [])
        }
        return sorted(name for name in names if name)

    def modified(self, key: str) -> float | None:
        """When the blob ``key`` was stored, or for a folder the newest blob in it (seconds
        since the epoch); None if there is neither."""
        if not is_valid_key(key):
            return None
        name = self._name(key)
        head = self._call("head_object", Key=name, missing_ok=True)
        if head is not None:
            return float(head["LastModified"].timestamp())
        newest = [
            float(item["LastModified"].timestamp())
            for page in self._pages(name + "/")
            for item in page.get("Contents", [])
        ]
        return max(newest, default=None)

    def list_blobs(self, key: str) -> list[tuple[str, float]]:
        folder = self._name(key) + "/"
        start = len(self.prefix) + 1 if self.prefix else 0
        return sorted(
            (item["Key"][start:], float(item["LastModified"].timestamp()))
            for page in self._pages(folder)
            for item in page.get("Contents", [])
            if not item["Key"].endswith("/")  # SeaweedFS's folder markers (see `delete`)
        )

    def presigned_url(self, key: str, expires_in: int) -> str:
        """A URL that downloads the blob without credentials for ``expires_in`` seconds, at
        least 1 s and at most 7 days (SigV4's limit)."""
        expires_in = max(1, min(expires_in, _MAX_EXPIRY))
        params = {"Bucket": self.bucket, "Key": self._name(key)}
        try:
            # Signing happens here, without a request; the host is part of the signature.
            url: str = self._signing_client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in
            )
        except BotoCoreError as exc:
            self._fail(exc)
        return url

    def check(self) -> None:
        """Raise `BlobStoreError`, saying what to fix, unless the bucket can be reached."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = _code(exc)
            if code in {"404", "NoSuchBucket", "NotFound"}:
                self._fail(exc, f"bucket {self.bucket!r} does not exist")
            if code in {"403", "AccessDenied", "Forbidden"}:
                self._fail(
                    exc,
                    f"access to bucket {self.bucket!r} refused (403): check AWS_ACCESS_KEY_ID"
                    " and AWS_SECRET_ACCESS_KEY, and that they may use this bucket",
                )
            self._fail(exc)
        except BotoCoreError as exc:
            self._fail(exc)

    def _name(self, key: str) -> str:
        """The object name of ``key`` in the bucket."""
        if not is_valid_key(key):
            raise ValueError(f"invalid blob key: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, operation: str, *, missing_ok: bool = False, **params: Any) -> Any:
        """Run one S3 operation on the bucket; None for a missing object if ``missing_ok``."""
        try:
            return getattr(self._client, operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            if missing_ok and _code(exc) in _NOT_FOUND:
                return None
            self._fail(exc)
        except BotoCoreError as exc:
            self._fail(exc)

    def _pages(self, prefix: str, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
        """The pages of a listing of the objects whose names start with ``prefix``."""
        params = {"Bucket": self.bucket, "Prefix": prefix}
        if delimiter:
            params["Delimiter"] = delimiter
        try:
            yield from self._client.get_paginator("list_objects_v2").paginate(**params)
        except (ClientError, BotoCoreError) as exc:
            self._fail(exc)

    def _delete_keys(self, names: list[str]) -> None:
        for start in range(0, len(names), _BATCH):
            batch = [{"Key": name} for name in names[start : start + _BATCH]]
            response = self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})
            # DeleteObjects answers 200 and lists the keys it could not delete.
            failed = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                raise BlobStoreError(
                    f"{self._where}: could not delete {len(failed)} object(s), e.g."
                    f" {first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                )

    def _fail(self, exc: Exception, reason: str | None = None) -> NoReturn:
        raise BlobStoreError(f"{self._where}: {reason or _reason(exc)}") from exc


def _make_client(endpoint_url: str | None) -> Any:
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=_CONFIG)


def _folders_between(folder: str, names: list[str]) -> set[str]:
    """The folders (``a/b/``) below ``folder`` that hold the objects ``names``."""
    found = set()
    for name in names:
        parts = name[len(folder) :].split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            found.add(folder + "/".join(parts[:depth]) + "/")
    return found


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reason(exc: Exception) -> str:
    """A short reason for a failed request, saying what to check where that is clear."""
    if isinstance(exc, ClientError):
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "SignatureDoesNotMatch":
            return "credentials refused (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY"
        if code == "InvalidAccessKeyId":
            return "unknown access key (InvalidAccessKeyId): check AWS_ACCESS_KEY_ID"
        if code == "NoSuchBucket":
            return "the bucket does not exist (NoSuchBucket)"
        message = exc.response.get("Error", {}).get("Message") or ""
        return f"{code or status} {message}".strip()
    if isinstance(exc, EndpointConnectionError):
        return "cannot connect: is the endpoint right and the store running?"
    if isinstance(exc, ConnectTimeoutError):
        return "connecting timed out: is the endpoint right and the store running?"
    if isinstance(exc, ReadTimeoutError):
        return "the store did not answer in time"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class _Body:
    """An object's streaming body whose read errors (the store went away mid-read) are
    `BlobStoreError`s, like every other failure of the store."""

    def __init__(self, body: Any, where: str) -> None:
        self._body = body
        self._where = where

    def read(self, size: int = -1) -> bytes:
        try:
            data: bytes = self._body.read(size if size >= 0 else None)
        except (BotoCoreError, OSError) as exc:
            raise BlobStoreError(f"{self._where}: reading failed: {exc}") from exc
        return data

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
