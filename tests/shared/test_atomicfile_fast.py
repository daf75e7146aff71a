"""atomic_write makes folders only when missing and survives a stale temp file of a dead process with its pid."""
from __future__ import annotations

import os
import shutil

from shared import atomicfile
from shared.atomicfile import atomic_write


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
