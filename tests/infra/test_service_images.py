"""What each service image holds (the Lambdas', and the gateway's), rebuilt without Docker: a clean virtual environment
with only the lock its Dockerfile installs (hashes checked, nothing resolved), and only the files its Dockerfile copies.
Its entry points must import there.

Slow (a virtual environment and an install per service; pip's cache makes repeats quicker), so it runs only
when asked for: `pytest -m slow tests/infra` or RADSTREAM_IMAGE_TESTS=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

SERVICES = {
    "validate": ["services.validate.handler.lambda_handler"],
    "prepare": ["services.prepare.handler.lambda_handler"],
    "triton": ["services.triton.handler.lambda_handler"],
    "store": ["services.store.handler.lambda_handler", "services.store.handler.record_failure_handler"],
    "telemetry": ["services.telemetry.handler.lambda_handler"],
    "export": ["services.export.handler.lambda_handler", "services.export.handler.deliver_handler"],
    "notify": ["services.notify.handler.lambda_handler"],
    # Not a Lambda: a long-running process whose image copies into /app (its CMD and HEALTHCHECK modules).
    "gateway": ["services.gateway.server.main", "services.gateway.probe.main"],
}


def copy_like_the_dockerfile(service: str, task_root: Path) -> None:
    """Follow the Dockerfile's `COPY <src>... ${LAMBDA_TASK_ROOT}/<dest>` (or /app/<dest>) lines (sources relative to the repo root)."""
    dockerfile = (ROOT / "services" / service / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        match = re.match(r"COPY\s+(.+)\s+(?:\$\{LAMBDA_TASK_ROOT\}|/app)/(\S*)$", line.strip())
        if not match:
            continue
        sources, dest = match.group(1).split(), task_root / match.group(2)
        for pattern in sources:
            for source in sorted(ROOT.glob(pattern.rstrip("/"))):
                if source.is_dir():
                    shutil.copytree(source, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "tests"))
                else:
                    target = dest / source.name if match.group(2).endswith("/") else dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)


def dockerfile_lock(service: str) -> Path:
    """The lock the Dockerfile copies in and installs with --require-hashes."""
    dockerfile = (ROOT / "services" / service / "Dockerfile").read_text()
    copied = re.search(r"^COPY\s+(\S+\.lock)\s+/tmp/requirements\.lock$", dockerfile, re.MULTILINE)
    assert copied, f"services/{service}/Dockerfile copies no lock"
    assert re.search(r"^RUN pip install .*--require-hashes --no-deps -r /tmp/requirements\.lock", dockerfile, re.MULTILINE)
    return ROOT / copied.group(1)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_image_installs_its_own_lock(service: str):
    assert dockerfile_lock(service) == ROOT / "services" / service / "requirements.lock"


@pytest.mark.slow
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_handler_imports_in_a_clean_environment(service: str, tmp_path: Path, request: pytest.FixtureRequest):
    if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("RADSTREAM_IMAGE_TESTS"):
        pytest.skip("builds a virtual environment per service (minutes): run with -m slow or RADSTREAM_IMAGE_TESTS=1")
    venv, task_root = tmp_path / "venv", tmp_path / "task"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(dockerfile_lock(service))],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    copy_like_the_dockerfile(service, task_root)
    imports = "; ".join(
        f"import importlib; m = importlib.import_module({h.rpartition('.')[0]!r}); assert callable(m.{h.rpartition('.')[2]})"
        for h in SERVICES[service]
    )
    # -I: no user site, no PYTHONPATH, no current directory: only the task root, as in the image.
    result = subprocess.run(
        [str(python), "-I", "-c", f"import sys; sys.path.insert(0, {str(task_root)!r}); {imports}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
