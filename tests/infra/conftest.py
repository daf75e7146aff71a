"""The tools environment for the offline template checks.

checkov (pins boto3==1.35.49) and aws-sam-translator (pins pydantic~=2.13.3) cannot share the project's
environment (boto3==1.44.8, pydantic==2.14.4), so they live in .venv-infra, built from
requirements-infra.lock (hashes checked) on first use and rebuilt when that file changes (about 1.5 minutes with pip's
cache, 2-3 without). RADSTREAM_INFRA_PYTHON points at another interpreter that has them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
REQUIREMENTS = ROOT / "requirements-infra.lock"
VENV = ROOT / ".venv-infra"
INSTALL_TIMEOUT_S = 900


def _build_venv() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(REQUIREMENTS)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    if result.returncode != 0:
        pytest.fail(f"could not install {REQUIREMENTS.name} into {VENV.name}:\n{result.stderr[-3000:]}")
    stamp.write_text(digest)
    return python


@pytest.fixture(scope="session")
def infra_python() -> Path:
    override = os.environ.get("RADSTREAM_INFRA_PYTHON")
    return Path(override) if override else _build_venv()


def checkov_report(infra_python: Path, cwd: Path, *target: str, timeout: float = 600) -> dict:
    """checkov's JSON report on `target` (e.g. "-f", path, "--framework", "cloudformation"), offline, no SCA scan."""
    import json

    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(
        [str(infra_python.parent / "checkov"), *target, "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        check=False,
    )
    return json.loads(result.stdout)
