"""Whole-or-nothing file writes for the embedded store, and the sweep of what a killed writer left behind.

A write goes to a temp file in one staging folder beside the data (same filesystem, so the rename is
atomic) and is renamed onto its target. A SIGKILL or power cut between the two leaves only a temp file in
the staging folder, never a half-written object and never debris beside a result. Each temp file is named
for the process that writes it, so `sweep_staging` removes the leftovers of dead writers only and never a
file that a live process (another runtime on the same data dir) is about to rename.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

STAGING = ".staging"


def staging_dir(root: Path) -> Path:
    return Path(root) / STAGING


def atomic_write(target: Path, data: bytes, staging: Path) -> None:
    """Write `data` to `target` whole or not at all (temp file in `staging`, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=staging, prefix=f"{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
