"""Whole-or-nothing file writes for the embedded store, and the sweep of what a killed writer left behind.

A write goes to a temp file in one staging folder beside the data (same filesystem, so the rename is
atomic) and is renamed onto its target. A SIGKILL or power cut between the two leaves only a temp file in
the staging folder, never a half-written object and never debris beside a result. Each temp file is named
for the process that writes it, so `sweep_staging` removes the leftovers of dead writers only and never a
file that a live process (another runtime on the same data dir) is about to rename.
"""
from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

STAGING = ".staging"
_serial = itertools.count()  # next() on a count is atomic under the GIL: one name per write in this process
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def staging_dir(root: Path) -> Path:
    return Path(root) / STAGING


def atomic_write(target: Path, data: bytes, staging: Path) -> None:
    """Write `data` to `target` whole or not at all (temp file in `staging`, then rename)."""
    _atomically(target, staging, lambda fd: _write_all(fd, data))


def atomic_copy(source: BinaryIO, target: Path, staging: Path) -> int:
    """Copy an open file to `target` whole or not at all, in the kernel (copy_file_range) where the filesystem
    allows, so a big image never passes through Python; returns the bytes copied."""
    return _atomically(target, staging, lambda fd: _copy_into(source, fd))


def _atomically(target: Path, staging: Path, fill: Callable[[int], int]) -> int:
    """`fill` a temp file in `staging`, then rename it onto `target`; nothing is left behind if anything fails.

    Folders are made only when a write finds them missing (the common write pays no mkdir), and the temp name is
    `<pid>-<serial>`, unique within the process without mkstemp's random retries.
    """
    tmp = os.path.join(staging, f"{os.getpid()}-{next(_serial)}")
    try:
        fd = os.open(tmp, _CREATE, 0o600)
    except FileNotFoundError:
        Path(staging).mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, _CREATE, 0o600)
    except FileExistsError:  # left by a dead process that had this pid (this process never reuses a serial)
        os.unlink(tmp)
        fd = os.open(tmp, _CREATE, 0o600)
    try:
        try:
            written = fill(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:  # the target's folder is new (the temp file is there: it was just written)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)


def _copy_into(source: BinaryIO, fd: int) -> int:
    copied, src = 0, source.fileno()
    if hasattr(os, "copy_file_range"):
        try:
            while chunk := os.copy_file_range(src, fd, 1 << 30):
                copied += chunk
            return copied
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM) or copied:
                raise
    while block := source.read(1 << 22):  # no kernel copy between these filesystems: through a 4 MiB buffer
        copied += _write_all(fd, block)
    return copied


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_staging(staging: Path) -> int:
    """Remove temp files whose writer is no longer running; returns how many. Safe beside live writers."""
    removed = 0
    try:
        entries = list(os.scandir(staging))
    except OSError:  # no staging folder yet (nothing was ever written), or it cannot be read
        return 0
    for entry in entries:
        pid_text = entry.name.split("-", 1)[0]
        if pid_text.isdigit() and (int(pid_text) == os.getpid() or _alive(int(pid_text))):
            continue  # a live writer's (this process's included): about to be renamed
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError:  # gone already, or a read-only disk: the next sweep tries again
            pass
    return removed
