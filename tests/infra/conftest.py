"""The tools environment for the offline template checks.

checkov (pins boto3==1.35.49) and aws-sam-translator (pins pydantic~=2.13.3) cannot share the project's
environment (boto3==1.44.8, pydantic==2.14.4), so they live in .venv-infra, built from
requirements-infra.lock (hashes checked) on first use and rebuilt when that file changes (about 1.5 minutes with pip's
cache, 2-3 without). RADSTREAM_INFRA_PYTHON points at another interpreter that has them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
REQUIREMENTS = ROOT / "requirements-infra.lock"
VENV = ROOT / ".venv-infra"
NPM_DIR = VENV / "npm"  # the JavaScript checkers' packages (pinned), beside the Python tools
INSTALL_TIMEOUT_S = 900


def _build_venv() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements.sha256"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
    result = run_captured(
        [str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(REQUIREMENTS)],
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


def run_captured(args: Sequence[str], *, timeout: float, **options: Any) -> subprocess.CompletedProcess[str]:
    """`args` run to the end, their output captured as text; the caller judges the exit code."""
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False, **options)


def checkov_report(infra_python: Path, cwd: Path, *target: str, timeout: float = 600) -> dict:
    """checkov's JSON report on `target` (e.g. "-f", path, "--framework", "cloudformation"), offline, no SCA scan."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    command = [str(infra_python.parent / "checkov"), *target, "--skip-download", "-o", "json"]
    return json.loads(run_captured(command, timeout=timeout, env=env, cwd=cwd).stdout)


def checkov_passes(infra_python: Path, cwd: Path, *target: str, more_than: int, timeout: float = 600) -> dict:
    """checkov_report, held to no failed check, no parsing error and more than `more_than` checks passed."""
    report = checkov_report(infra_python, cwd, *target, timeout=timeout)
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > more_than
    return report


def assert_cloudformation_skips_say_why(resources: dict[str, dict[str, Any]], *, longer_than: int) -> None:
    """Every checkov skip in a template's Metadata names a real check id and gives a reason of some length."""
    for name, resource in resources.items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]) and len(skip.get("comment", "")) > longer_than, f"{name}: {skip}"


def npm_install(packages: Sequence[str]) -> str | None:
    """The pinned npm packages installed into NPM_DIR unless they are there: npm's error text, or None."""
    if all((NPM_DIR / "node_modules" / p.rsplit("@", 1)[0] / "package.json").exists() for p in packages):
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not on PATH"
    install = run_captured([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NPM_DIR), *packages], timeout=300)
    return None if install.returncode == 0 else install.stderr[-500:]


def node_json(script: Path, folder_variable: str, *args: str) -> Any:
    """What a node script prints (JSON), run with NPM_DIR in `folder_variable` and nothing else in its environment."""
    node = shutil.which("node")
    assert node, f"node runs {script.name}"
    result = run_captured([node, str(script), *args], timeout=120, env={folder_variable: str(NPM_DIR), "PATH": ""})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)
