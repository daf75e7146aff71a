"""Every environment installs from a lock: exact versions with sha256 hashes, resolved once by `make lock`.

A new release on PyPI (a botocore 1.44.18 beside the tested 1.44.8) must not change what a fresh clone installs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import ROOT

# What we ask for (*.txt) -> what is installed (*.lock), as scripts/lock.sh compiles them.
PAIRS = [
    ("requirements-dev.txt", "requirements-dev.lock"),
    ("requirements-triton.txt", "requirements-triton.lock"),
    ("requirements-infra.txt", "requirements-infra.lock"),
    ("requirements-triton-python.txt", "requirements-triton-python.lock"),
    ("requirements-lock.txt", "requirements-lock.lock"),
    ("training/requirements.txt", "training/requirements.lock"),
    *[
        (f"services/{d.name}/{name}.txt", f"services/{d.name}/{name}.lock")
        for d in sorted((ROOT / "services").iterdir())
        for name in ("requirements", "requirements-test")  # the image's, and its CI job's test environment
        if (d / f"{name}.txt").is_file()
    ],
]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)")


def asked_for(path: Path) -> dict[str, str]:
    """The pins of a requirements file, following its -r includes."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins.update(asked_for((path.parent / line[3:].strip()).resolve()))
        elif match := PIN.match(line):
            pins[normalise(match.group(1))] = match.group(2)
        elif line:
            pytest.fail(f"{path.relative_to(ROOT)}: {line!r} is not an exact pin (name==version)")
    return pins


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from a hashed lock."""
    entries: dict[str, tuple[str, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            name = normalise(match.group(1))
            entries[name] = (match.group(2).rstrip(" \\"), 0)
        elif name and line.strip().startswith("--hash=sha256:"):
            version, hashes = entries[name]
            entries[name] = (version, hashes + 1)
    return entries


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize(("wanted", "lock"), PAIRS, ids=[lock for _, lock in PAIRS])
def test_the_lock_holds_every_pin_at_its_version_with_hashes(wanted: str, lock: str):
    pins, entries = asked_for(ROOT / wanted), locked(ROOT / lock)
    assert entries, f"{lock} is empty"
    for name, version in pins.items():
        assert name in entries, f"{lock} lacks {name} (asked for in {wanted}): run make lock"
        assert entries[name][0] == version, f"{lock} has {name}=={entries[name][0]}, {wanted} asks {version}: run make lock"
    unhashed = [name for name, (_, hashes) in entries.items() if hashes == 0]
    assert not unhashed, f"{lock}: no hash for {unhashed}"


def test_botocore_is_pinned_where_boto3_is():
    # boto3 accepts a range of botocore; the newest in that range broke the emulator tests once.
    for _, lock in PAIRS:
        entries = locked(ROOT / lock)
        if "boto3" in entries:
            assert "botocore" in entries, lock


def install_lines() -> list[tuple[str, str]]:
    files = [
        ROOT / "Makefile",
        ROOT / "tests/infra/conftest.py",
        ROOT / "tests/infra/test_service_images.py",
        ROOT / "radstream/triton_server.py",
        *sorted(ROOT.glob("services/*/Dockerfile")),
        *sorted(ROOT.glob(".github/workflows/*.yml")),
    ]
    lines = []
    for path in files:
        text = path.read_text()
        # A Python argument list counts as one install up to its closing bracket, however it is wrapped; a shell line
        # up to its end (with the continuation lines that follow it).
        pattern = r"\"pip\",\s*\"install\"[^\]]*" if path.suffix == ".py" else r"pip\"?,?\s*\"?install\b[^\n]*(?:\n\s+[^\n]*){0,2}"
        for match in re.finditer(pattern, text):
            lines.append((str(path.relative_to(ROOT)), match.group(0)))
    return lines


def test_every_pip_install_checks_hashes():
    lines = install_lines()
    assert len(lines) >= 10, lines  # the Makefile, the Dockerfiles, the fixtures, the workflows
    for where, line in lines:
        if "-e ." in line:  # the project itself, from this checkout
            continue
        assert "require-hashes" in line or "PIP_LOCKED" in line, f"{where}: {line!r} installs without hashes"


@pytest.mark.parametrize("service", sorted(d.name for d in (ROOT / "services").iterdir() if (d / "requirements-test.lock").is_file()))
def test_a_services_tests_run_on_the_versions_its_image_installs(service: str):
    """The CI job's environment (requirements-test.lock) is the image's lock plus the test tools, never other versions."""
    image, tests = locked(ROOT / "services" / service / "requirements.lock"), locked(ROOT / "services" / service / "requirements-test.lock")
    for name, (version, _) in image.items():
        assert tests.get(name, (None,))[0] == version, f"services/{service}/requirements-test.lock: {name} is not at the image's {version}"
