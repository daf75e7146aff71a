"""atomic_write makes folders only when missing and survives a stale temp file of a dead process with its pid."""

from __future__ import annotations

import os
import shutil

from shared import atomicfile
from shared.atomicfile import atomic_write
from datetime import UTC


def test_writes_into_new_folders_and_again_after_they_are_removed(tmp_path):
    staging = tmp_path / ".staging"
    target = tmp_path / "bucket" / "a" / "b" / "object.json"
    atomic_write(target, b"one", staging)
    assert target.read_bytes() == b"one"
    shutil.rmtree(tmp_path / "bucket")
    shutil.rmtree(staging)
    atomic_write(target, b"two", staging)
    assert target.read_bytes() == b"two"
    assert os.listdir(staging) == []
    assert oct(target.stat().st_mode & 0o777) == oct(0o600)


def test_a_stale_temp_file_with_this_pid_and_the_next_serial_is_replaced(tmp_path, monkeypatch):
    staging = tmp_path / ".staging"
    staging.mkdir()
    serial = 10**9
    monkeypatch.setattr(atomicfile, "_serial", iter([serial]))
    (staging / f"{os.getpid()}-{serial}").write_bytes(b"left by a dead process that had this pid")
    target = tmp_path / "object"
    atomic_write(target, b"fresh", staging)
    assert target.read_bytes() == b"fresh"
    assert os.listdir(staging) == []


def test_put_file_copies_whole_and_leaves_no_temp_file(tmp_path):
    from shared.storage import LocalObjectStore, MemoryObjectStore

    source = tmp_path / "in" / "image.png"
    source.parent.mkdir()
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    store = LocalObjectStore(tmp_path / "data")
    stored = store.put_file("images", "incoming/s1/image.png", source)
    assert stored.size == source.stat().st_size
    assert store.get_bytes("images", "incoming/s1/image.png") == source.read_bytes()
    assert os.listdir(tmp_path / "data" / ".staging") == []
    memory = MemoryObjectStore()
    assert memory.put_file("artifacts", "k", source).size == stored.size and memory.get_bytes("artifacts", "k") == source.read_bytes()


def test_put_file_without_a_kernel_copy_falls_back_to_a_buffered_copy(tmp_path, monkeypatch):
    import errno

    from shared.storage import LocalObjectStore

    def no_kernel_copy(*args):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", no_kernel_copy)
    monkeypatch.setattr(os, "link", no_kernel_copy)  # another filesystem: no link either
    source = tmp_path / "image.png"
    source.write_bytes(os.urandom(9 * 1024 * 1024 + 3))
    store = LocalObjectStore(tmp_path / "data")
    assert store.put_file("images", "incoming/s1/image.png", source).size == source.stat().st_size
    assert store.get_bytes("images", "incoming/s1/image.png") == source.read_bytes()


def test_put_file_on_a_full_disk_is_an_outage_and_an_unreadable_source_is_not(tmp_path, monkeypatch):
    import errno

    import pytest

    from shared.errors import StorageUnavailable
    from shared.storage import LocalObjectStore

    source = tmp_path / "image.png"
    source.write_bytes(b"x" * 4096)
    store = LocalObjectStore(tmp_path / "data")
    with pytest.raises(FileNotFoundError):
        store.put_file("images", "incoming/s1/missing.png", tmp_path / "missing.png")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    def cross_device(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", full)
    monkeypatch.setattr(os, "link", cross_device)  # the source on another filesystem: copied, and the copy finds the disk full
    with pytest.raises(StorageUnavailable, match="ENOSPC"):
        store.put_file("images", "incoming/s1/image.png", source)
    assert store.head("images", "incoming/s1/image.png") is None
    assert os.listdir(tmp_path / "data" / ".staging") == []
    monkeypatch.setattr(os, "link", full)  # the same filesystem, full: the link's own failure is the outage
    with pytest.raises(StorageUnavailable, match="ENOSPC"):
        store.put_file("images", "incoming/s1/image.png", source)
    assert store.head("images", "incoming/s1/image.png") is None


def test_put_file_on_the_data_dirs_filesystem_links_the_file_instead_of_copying_it(tmp_path, monkeypatch):
    """The upload registers the image in place (issue 23): one inode, no byte copied, fsynced and renamed as a write is;
    across filesystems (EXDEV) it is copied."""
    import errno

    from shared.storage import LocalObjectStore

    synced = _fsynced(monkeypatch)
    source = tmp_path / "in" / "image.png"
    source.parent.mkdir()
    source.write_bytes(os.urandom(2 * 1024 * 1024))
    store = LocalObjectStore(tmp_path / "data")

    def no_copy(*args):
        raise AssertionError("copied, not linked")

    monkeypatch.setattr(os, "copy_file_range", no_copy)
    stored = store.put_file("images", "incoming/s1/image.png", source)
    target = store.path("images", "incoming/s1/image.png")
    assert stored.size == source.stat().st_size and target.read_bytes() == source.read_bytes()
    assert target.stat().st_ino == source.stat().st_ino and source.stat().st_nlink == 2
    assert os.listdir(tmp_path / "data" / ".staging") == []
    assert str(target.parent) in synced, "the link's folder is fsynced"
    assert [p for p in synced if p.startswith(str(tmp_path / "data" / ".staging"))], "the linked inode is fsynced before the rename"

    def cross_device(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    monkeypatch.undo()
    monkeypatch.setattr(os, "link", cross_device)
    other = store.put_file("images", "incoming/s2/image.png", source)
    copied = store.path("images", "incoming/s2/image.png")
    assert other.size == stored.size and copied.read_bytes() == source.read_bytes() and copied.stat().st_ino != source.stat().st_ino


def _fsynced(monkeypatch) -> list[str]:
    """Record what each fsync made durable (the file or folder behind the descriptor)."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(atomicfile.os, "fsync", fsync)
    return synced


def test_a_promised_write_is_fsynced_then_renamed_then_its_folder_fsynced(tmp_path, monkeypatch):
    synced = _fsynced(monkeypatch)
    staging, target = tmp_path / ".staging", tmp_path / "results" / "results" / "s1" / "result.json"
    atomic_write(target, b"{}", staging)
    temp = [p for p in synced if p.startswith(str(staging))]
    assert temp, "the temp file's bytes reach the disk before the rename"
    assert synced[-1] == str(target.parent), "the rename reaches the disk before the write returns"
    # each folder the write made has its entry synced in its parent
    assert {str(tmp_path), str(tmp_path / "results"), str(tmp_path / "results" / "results")} <= set(synced)


def test_an_upload_and_an_object_of_the_local_store_are_durable(tmp_path, monkeypatch):
    from shared.storage import LocalObjectStore

    synced = _fsynced(monkeypatch)
    source = tmp_path / "image.png"
    source.write_bytes(b"x" * 1000)
    store = LocalObjectStore(tmp_path / "data")
    store.put_file("images", "incoming/s1/image.png", source)
    store.put_bytes("results", "results/s1/result.json", b"{}")
    assert str(tmp_path / "data" / "images" / "incoming" / "s1") in synced
    assert str(tmp_path / "data" / "results" / "results" / "s1") in synced


def test_a_telemetry_buffer_append_is_fsynced_before_send_returns(tmp_path, monkeypatch):
    from datetime import datetime

    from shared.contracts import TelemetryRecord
    from shared.storage import LocalObjectStore
    from shared.telemetry import BufferedLakeSink

    synced = _fsynced(monkeypatch)
    sink = BufferedLakeSink(LocalObjectStore(tmp_path), "telemetry", tmp_path / "telemetry", timer=False)
    record = TelemetryRecord(
        event_id="e1", time=datetime.now(UTC), study_id="s1", execution_id="s1-0", stage="validate", status="succeeded", duration_ms=1.0
    )
    sink.send([record])
    assert any(p.endswith(".ndjson") for p in synced), "the record is on disk when send returns"
    sink.close()


def test_the_sync_log_names_what_is_on_disk(tmp_path, monkeypatch):
    log = tmp_path / "sync.log"
    monkeypatch.setenv(atomicfile.SYNC_LOG, str(log))
    target = tmp_path / "a" / "object"
    atomic_write(target, b"12345", tmp_path / ".staging")
    atomic_write(tmp_path / "trace", b"1", tmp_path / ".staging", durable=False)
    path, inode, size, mtime = log.read_text().splitlines()[0].split("\t")
    assert (path, int(inode), int(size), int(mtime)) == (str(target), target.stat().st_ino, 5, target.stat().st_mtime_ns)
    assert len(log.read_text().splitlines()) == 1, "a write that is not durable is not logged as on disk"


def test_one_dir_sync_fsyncs_each_folder_once_when_its_block_ends(tmp_path, monkeypatch) -> None:
    """Issue 23: a study's result and report (and its upload's two files) share a folder; one fsync of it, not one each.
    Each file's bytes are still fsynced before its rename, and the folder's fsync comes before the block returns."""
    synced: list[str] = []
    monkeypatch.setattr(atomicfile, "fsync_dir", lambda folder: synced.append(str(folder)))
    files: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomicfile.os, "fsync", lambda fd: files.append(fd) or real_fsync(fd))
    staging, folder = tmp_path / ".staging", tmp_path / "results" / "s1"
    folder.mkdir(parents=True)
    source = tmp_path / "image.png"
    source.write_bytes(b"png")
    with atomicfile.one_dir_sync():
        atomicfile.atomic_write(folder / "result.json", b"{}", staging)
        atomicfile.atomic_write(folder / "report.txt", b"report", staging)
        atomicfile.atomic_link(source, folder / "image.png", staging)
        atomicfile.atomic_write(tmp_path / "lake.gz", b"rows", staging)
        assert synced == [] and len(files) == 4  # every file's bytes on disk; the folders wait for the block's end
    assert sorted(synced) == sorted([str(folder), str(tmp_path)])
    atomicfile.atomic_write(folder / "result.json", b"{}", staging)  # outside a block: at once, as before
    assert synced[-1] == str(folder) and len(synced) == 3
