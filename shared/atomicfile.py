"""Whole-or-nothing, durable file writes for the embedded store, and the sweep of what a killed writer left behind.

A write goes to a temp file in one staging folder beside the data (same filesystem, so the rename is
atomic), is fsynced, renamed onto its target, and the target's folder is fsynced: once `atomic_write` returns,
a power cut or an operating-system crash leaves the whole new file, and before that the whole old one (or none),
never a torn or zero-filled one. A SIGKILL or power cut before the rename leaves only a temp file in the staging
folder, never a half-written object and never debris beside a result. Each temp file is named for the process
that writes it, so `sweep_staging` removes the leftovers of dead writers only and never a file that a live
process (another runtime on the same data dir) is about to rename. `append_durably` is the same promise for a
journal line: written whole, then fsynced before the caller goes on.

RADSTREAM_SYNC_LOG (tests and benchmarks/crash_bench.py only): a file that each durable write appends
`<path>\t<inode>\t<size>\t<mtime_ns>` to once its bytes are on disk, so a crash simulator knows what an OS crash could
not touch (a file whose inode, size and mtime still match a line; of an appended file, the first <size> bytes).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

STAGING = ".staging"
SYNC_LOG = "RADSTREAM_SYNC_LOG"
_serial = itertools.count()  # next() on a count is atomic under the GIL: one name per write in this process
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


_deferred = threading.local()  # per thread: the folders whose fsync one_dir_sync() holds until its block ends


@contextlib.contextmanager
def one_dir_sync() -> Iterator[None]:
    """Durable writes and links inside the block (this thread's) fsync their folder once, when the block ends, instead
    of once per file: several files of one folder (a study's result and report, its upload's image and sidecar) cost
    one folder fsync. Each file's bytes are still fsynced before its rename; nothing is durable-by-name, so nothing
    may be promised, until the block has ended. New folders are still synced in their parent at once (make_dirs)."""
    outer = getattr(_deferred, "folders", None)
    if outer is not None:  # nested: the outermost block syncs
        yield
        return
    folders: dict[str, None] = {}
    _deferred.folders = folders
    try:
        yield
    finally:
        _deferred.folders = None
        for folder in folders:
            fsync_dir(folder)


def _sync_folder(folder: Path | str) -> None:
    folders = getattr(_deferred, "folders", None)
    if folders is None:
        fsync_dir(folder)
    else:
        folders[str(folder)] = None


def staging_dir(root: Path) -> Path:
    return Path(root) / STAGING


def atomic_write(target: Path, data: bytes, staging: Path, *, durable: bool = True) -> None:
    """Write `data` to `target` whole or not at all (temp file in `staging`, fsync, rename, fsync of the folder).

    `durable=False` only for files nothing is promised on (a trace): whole or nothing against a kill, not a power cut.
    """
    _atomically(target, staging, lambda fd: _write_all(fd, data), durable)


def atomic_copy(source: BinaryIO, target: Path, staging: Path) -> int:
    """Copy an open file to `target` whole or not at all, in the kernel (copy_file_range) where the filesystem
    allows, so a big image never passes through Python; returns the bytes copied. Durable as atomic_write."""
    return _atomically(target, staging, lambda fd: _copy_into(source, fd), True)


# A link cannot be made here: another filesystem, a filesystem without hard links, or a kernel that refuses to link
# another user's file (fs.protected_hardlinks). The caller copies instead.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})


def atomic_link(source: Path | str, target: Path, staging: Path) -> int | None:
    """Register an existing file under `target` without copying it: a hard link made under a temp name in `staging`,
    the inode fsynced, renamed onto `target`, the folder fsynced (as durable as atomic_write). Returns its size, or
    None where no link can be made (another filesystem, say): the caller copies.

    The object and the source are then one inode: the bytes are the source's, so a later in-place edit of the
    source shows through (an editor that saves by rename, or a new upload, does not). Readers that must hold the
    bytes to the ones validated compare the sha256 validate recorded, as they do in S3.
    """
    tmp = os.path.join(staging, f"{os.getpid()}-{next(_serial)}")
    try:
        try:
            os.link(source, tmp)
        except FileNotFoundError:
            if not os.path.isdir(staging):
                Path(staging).mkdir(parents=True, exist_ok=True)
                os.link(source, tmp)
            else:
                raise
    except OSError as e:
        if e.errno in _NO_LINK:
            return None
        raise
    try:
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(fd).st_size
            os.fsync(fd)  # the source's bytes (and the new link count) on disk before the name points at them
            _record_sync(target, fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:
            make_dirs(Path(target).parent)
            os.replace(tmp, target)
        _sync_folder(Path(target).parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return size


def create_once(target: Path, data: bytes, staging: Path) -> bool:
    """Create `target` whole and durable unless it exists (the first writer wins, as O_EXCL): written and fsynced under a
    temp name, then hard-linked to its name. Returns whether this call created it. The temp file has mode 0600."""
    tmp = Path(staging) / f"{os.getpid()}-{next(_serial)}"
    make_dirs(Path(staging))
    fd = os.open(tmp, _CREATE, 0o600)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            _record_sync(target, fd)
        finally:
            os.close(fd)
        make_dirs(Path(target).parent)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        fsync_dir(Path(target).parent)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def append_durably(fd: int, data: bytes, path: Path | str) -> None:
    """Append whole lines to an open file (O_APPEND) and fsync it before returning: a journal's write-ahead step."""
    _write_all(fd, data)
    os.fsync(fd)
    _record_sync(path, fd)


def fsync_dir(folder: Path | str) -> None:
    """Make a folder's entries (a rename, a new file, a new subfolder) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path) -> None:
    """mkdir -p whose new folders survive a power cut: each new folder's entry is fsynced in its parent."""
    missing: list[Path] = []
    current = Path(folder)
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:  # made meanwhile by another writer: its entry is that writer's to sync (and ours too, below)
            pass
        fsync_dir(new.parent)


def create_durably(path: Path, flags: int = os.O_WRONLY | os.O_APPEND, mode: int = 0o644) -> int:
    """Create a new file (O_EXCL) whose entry survives a power cut; returns its descriptor (a journal's)."""
    make_dirs(path.parent)
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _record_sync(path: Path | str, fd: int | None = None) -> None:
    log = os.environ.get(SYNC_LOG)
    if not log:
        return
    st = os.fstat(fd) if fd is not None else os.stat(path)
    line = f"{os.path.abspath(path)}\t{st.st_ino}\t{st.st_size}\t{st.st_mtime_ns}\n".encode()
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(log_fd, line)
    finally:
        os.close(log_fd)


def _atomically(target: Path, staging: Path, fill: Callable[[int], int], durable: bool) -> int:
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
            if durable:
                os.fsync(fd)  # the bytes on disk before the name points at them: a power cut never shows a torn file
                _record_sync(target, fd)  # this inode's content is on disk, whichever name it has when the power goes
        finally:
            os.close(fd)
        try:
            os.replace(tmp, target)
        except FileNotFoundError:  # the target's folder is new (the temp file is there: it was just written)
            if durable:
                make_dirs(Path(target).parent)
            else:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        if durable:
            _sync_folder(Path(target).parent)  # the rename itself survives a power cut (now, or when one_dir_sync's block ends)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
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
