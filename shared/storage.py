"""Object store port and its two adapters: folders on disk (embedded default) and S3 (boto3)."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import ObjectNotFound, PermanentError, StorageUnavailable


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    size: int


class ObjectStore(Protocol):
    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject: ...

    def get_bytes(self, bucket: str, key: str) -> bytes: ...

    def head(self, bucket: str, key: str) -> StoredObject | None: ...

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]: ...


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise PermanentError(f"unsafe object key {key!r}")


class LocalObjectStore:
    """Buckets are folders under a data dir. Writes are atomic (temp file + rename), like S3's PUT."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, bucket: str, key: str) -> Path:
        _check_key(bucket)
        _check_key(key)
        return self.root / bucket / key

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject:
        target = self.path(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return StoredObject(bucket, key, len(data))

    def get_bytes(self, bucket: str, key: str) -> bytes:
        try:
            return self.path(bucket, key).read_bytes()
        except FileNotFoundError as e:
            raise ObjectNotFound(f"no object s3://{bucket}/{key}") from e

    def head(self, bucket: str, key: str) -> StoredObject | None:
        try:
            return StoredObject(bucket, key, self.path(bucket, key).stat().st_size)
        except FileNotFoundError:
            return None

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        base = self.root / bucket
        # Walk only the folder the prefix names (results/ of a bucket holding failed/ too), with scandir: a
        # listing of tens of thousands of keys costs a directory walk, not a stat and a Path per file.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = base / folder if folder and ".." not in folder.split("/") else base
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _, filenames in os.walk(start):
            rel = os.path.relpath(dirpath, base).replace(os.sep, "/")
            rel = "" if rel == "." else rel + "/"
            keys.extend(rel + name for name in filenames if not name.startswith(".tmp-"))
        return sorted(k for k in keys if k.startswith(prefix))


_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}
_PERMANENT = {"AccessDenied", "InvalidBucketName", "InvalidArgument", "KMS.DisabledException"}


def _translate(e: Exception, what: str) -> Exception:
    if isinstance(e, ClientError):
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in _NOT_FOUND:
            return ObjectNotFound(f"no object {what}")
        if code in _PERMANENT:
            return PermanentError(f"{what}: {code}")
    return StorageUnavailable(f"{what}: {type(e).__name__}")


class S3ObjectStore:
    """S3 through a boto3 client that the caller builds (so tests pass an emulator's endpoint)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject:
        _check_key(key)
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"s3://{bucket}/{key}") from e
        return StoredObject(bucket, key, len(data))

    def get_bytes(self, bucket: str, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"s3://{bucket}/{key}") from e

    def head(self, bucket: str, key: str) -> StoredObject | None:
        try:
            response = self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            translated = _translate(e, f"s3://{bucket}/{key}")
            if isinstance(translated, ObjectNotFound):
                return None
            raise translated from e
        return StoredObject(bucket, key, int(response["ContentLength"]))

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as e:
            raise _translate(e, f"s3://{bucket}/{prefix}") from e
        return sorted(keys)
