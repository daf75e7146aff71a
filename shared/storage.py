"""Object store port and its two adapters: folders on disk (embedded default) and S3 (boto3)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator
from typing import Any, BinaryIO, Literal, Protocol

from shared.atomicfile import atomic_copy, atomic_link, atomic_write, one_dir_sync, staging_dir
from shared.aws_errors import translated
from shared.errors import InvalidImage, ObjectNotFound, PermanentError, StorageUnavailable


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    size: int


class ObjectStore(Protocol):
    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject: ...

    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str = "application/octet-stream") -> StoredObject:
        """Put a file's content (an upload): the adapter moves it as it moves files best, never through Python where it can
        (the local folders register the file itself by a hard link on the same filesystem)."""
        ...

    def get_bytes(self, bucket: str, key: str) -> bytes: ...

    def head(self, bucket: str, key: str) -> StoredObject | None: ...

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]: ...

    def delete(self, bucket: str, key: str) -> None:
        """Remove an object; removing one that is not there is not an error (as S3's DeleteObject)."""
        ...


@contextlib.contextmanager
def durable_together() -> Iterator[None]:
    """Objects this thread puts inside the block are all durable when it ends, and not before: the local folders fsync
    each folder once there, not once per object (S3's PUT is durable when it returns). For several objects promised
    together, e.g. a study's result and its report. A folder that cannot be synced is an outage, as in a put."""
    deferred = one_dir_sync()
    deferred.__enter__()
    try:
        yield
    finally:
        with _disk("syncing the folders of the objects just written"):
            deferred.__exit__(None, None, None)


def get_validated_bytes(store: ObjectStore, bucket: str, key: str, sha256: str, study_id: str) -> bytes:
    """The very bytes validate checked (the sha256 it recorded): an object replaced in the bucket since is refused."""
    data = store.get_bytes(bucket, key)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InvalidImage("the DICOM file changed in the images bucket after it was validated; upload it again", study_id=study_id)
    return data


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise PermanentError(f"unsafe object key {key!r}")


class LocalObjectStore:
    """Buckets are folders under a data dir. Writes are atomic (temp file in `.staging/` + rename), like S3's PUT.

    A disk that is full, read-only or failing is an outage of this store, as a throttled S3 is: every OSError
    but "no such file" becomes StorageUnavailable (retried by the workflow; a study it stops stays resumable).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, bucket: str, key: str) -> Path:
        _check_key(bucket)
        _check_key(key)
        return self.root / bucket / key

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject:
        target = self.path(bucket, key)
        with _disk(f"writing s3://{bucket}/{key}"):
            self._write(target, data)
        return StoredObject(bucket, key, len(data))

    def _write(self, target: Path, data: bytes) -> None:
        atomic_write(target, data, staging_dir(self.root))

    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str = "application/octet-stream") -> StoredObject:
        target = self.path(bucket, key)
        with open(path, "rb") as source:  # opened outside _disk: an unreadable source is the caller's error, not an outage
            with _disk(f"writing s3://{bucket}/{key}"):
                size = self._copy(source, target)
        return StoredObject(bucket, key, size)

    def _copy(self, source: BinaryIO, target: Path) -> int:
        """A hard link where the source is on the data dir's filesystem (no byte moves), else a copy in the kernel."""
        if isinstance(source.name, str):
            linked = atomic_link(source.name, target, staging_dir(self.root))
            if linked is not None:
                return linked
        return atomic_copy(source, target, staging_dir(self.root))

    def get_bytes(self, bucket: str, key: str) -> bytes:
        try:
            with _disk(f"reading s3://{bucket}/{key}"):
                return self._read(self.path(bucket, key))
        except FileNotFoundError as e:
            raise ObjectNotFound(f"no object s3://{bucket}/{key}") from e

    def _read(self, path: Path) -> bytes:
        return path.read_bytes()

    def head(self, bucket: str, key: str) -> StoredObject | None:
        try:
            with _disk(f"reading s3://{bucket}/{key}"):
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
        keys: list[str] = []
        with _disk(f"listing s3://{bucket}/{prefix}"):
            for dirpath, _, filenames in os.walk(start):
                rel = os.path.relpath(dirpath, base).replace(os.sep, "/")
                rel = "" if rel == "." else rel + "/"
                keys.extend(rel + name for name in filenames if not name.startswith(".tmp-"))
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, bucket: str, key: str) -> None:
        with _disk(f"deleting s3://{bucket}/{key}"):
            self.path(bucket, key).unlink(missing_ok=True)


class MemoryObjectStore:
    """Objects in this process's memory: the embedded mode's artifacts bucket (the tensors prepare hands inference).

    Tensors live for one execution: prepare writes them, the three inference tasks (and their retries) read them,
    and the local runtime drops the study's prefix when the execution ends, whatever its end. A crash loses them
    with the execution that needed them; `resume` runs the study from the start, prepare included. Keeping them
    off the disk saves a write and a read per tensor (the disk copy was never read by anything else).
    """

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject:
        _check_key(bucket)
        _check_key(key)
        data = bytes(data)
        with self._lock:
            self._objects[(bucket, key)] = data
        return StoredObject(bucket, key, len(data))

    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str = "application/octet-stream") -> StoredObject:
        return self.put_bytes(bucket, key, Path(path).read_bytes(), content_type=content_type)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with self._lock:
            data = self._objects.get((bucket, key))
        if data is None:
            raise ObjectNotFound(f"no object s3://{bucket}/{key}")
        return data

    def head(self, bucket: str, key: str) -> StoredObject | None:
        with self._lock:
            data = self._objects.get((bucket, key))
        return None if data is None else StoredObject(bucket, key, len(data))

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for b, k in self._objects if b == bucket and k.startswith(prefix))

    def delete(self, bucket: str, key: str) -> None:
        with self._lock:
            self._objects.pop((bucket, key), None)

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Drop every object under `prefix` (an execution's tensors); returns how many."""
        with self._lock:
            doomed = [k for k in self._objects if k[0] == bucket and k[1].startswith(prefix)]
            for k in doomed:
                del self._objects[k]
        return len(doomed)


class RoutedObjectStore:
    """One port, two adapters: the named buckets go to `memory`, every other to `inner` (the folders)."""

    def __init__(self, inner: ObjectStore, memory: ObjectStore, buckets: frozenset[str]) -> None:
        self.inner = inner
        self.memory = memory
        self.buckets = buckets

    def _for(self, bucket: str) -> ObjectStore:
        return self.memory if bucket in self.buckets else self.inner

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject:
        return self._for(bucket).put_bytes(bucket, key, data, content_type=content_type)

    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str = "application/octet-stream") -> StoredObject:
        return self._for(bucket).put_file(bucket, key, path, content_type=content_type)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self._for(bucket).get_bytes(bucket, key)

    def head(self, bucket: str, key: str) -> StoredObject | None:
        return self._for(bucket).head(bucket, key)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        return self._for(bucket).list_keys(bucket, prefix)

    def delete(self, bucket: str, key: str) -> None:
        self._for(bucket).delete(bucket, key)

    def __getattr__(self, name: str) -> Any:
        """The folders' own attributes (`path`, `root`, a fault injector's counts) as the inner store has them."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


class _disk:
    """OSError (but FileNotFoundError) -> StorageUnavailable naming the errno, e.g. ENOSPC."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, error: BaseException | None, tb: object) -> Literal[False]:
        if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
            name = errno.errorcode.get(error.errno or 0, type(error).__name__)
            raise StorageUnavailable(
                f"local store: {name} ({os.strerror(error.errno) if error.errno else 'I/O error'}) {self.what}"
            ) from error
        return False


disk_errors = _disk  # for local adapters that keep files of their own (the telemetry sink's buffers)


class S3ObjectStore:
    """S3 through a boto3 client that the caller builds (so tests pass an emulator's endpoint)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> StoredObject:
        _check_key(key)
        with translated(f"s3://{bucket}/{key}", "the *_BUCKET settings"):
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        return StoredObject(bucket, key, len(data))

    def put_file(self, bucket: str, key: str, path: Path, *, content_type: str = "application/octet-stream") -> StoredObject:
        _check_key(key)
        with open(path, "rb") as body:
            size = os.fstat(body.fileno()).st_size
            with translated(f"s3://{bucket}/{key}", "the *_BUCKET settings"):
                self.client.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        return StoredObject(bucket, key, size)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        with translated(f"s3://{bucket}/{key}", "the *_BUCKET settings"):
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def head(self, bucket: str, key: str) -> StoredObject | None:
        try:
            with translated(f"s3://{bucket}/{key}", "the *_BUCKET settings"):
                response = self.client.head_object(Bucket=bucket, Key=key)
        except ObjectNotFound:
            return None
        return StoredObject(bucket, key, int(response["ContentLength"]))

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        with translated(f"s3://{bucket}/{prefix}", "the *_BUCKET settings"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, bucket: str, key: str) -> None:
        _check_key(key)
        with translated(f"s3://{bucket}/{key}", "the *_BUCKET settings"):
            self.client.delete_object(Bucket=bucket, Key=key)
