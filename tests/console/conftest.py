"""The console's test rig: the demo studies run into a data dir, `radstream console` started on a free loopback port,
and Debian's Chromium driven by Playwright (no browser download: /usr/bin/chromium, which `make test` installs).

Chromium that cannot start fails the tests: it does not skip them.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from radstream.cli import main as radstream
from synthetic.peers import CHROMIUM_ARGS, start_console as start_console_process

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("RADSTREAM_CHROMIUM", "/usr/bin/chromium")
START_DEADLINE_S = 60.0


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's studies (valid ones, a MONOCHROME1 DICOM, four broken on purpose) run by the CLI into a fresh data dir."""
    data_dir = tmp_path_factory.mktemp("console-data")
    for var in ("RADSTREAM_BACKEND", "RADSTREAM_DATA_DIR", "RESULTS_BUCKET", "TELEMETRY_BUCKET", "IMAGES_BUCKET", "ARTIFACTS_BUCKET"):
        os.environ.pop(var, None)
    assert radstream(["demo", "--count", "4", "--data-dir", str(data_dir), "--quiet", "--json"]) == 0
    assert list((data_dir / "metrics").glob("emf-*.jsonl")), "the handlers captured their EMF lines"
    return data_dir


def start_console(data_dir: Path, *extra: str) -> Iterator[str]:
    """`radstream console` as a user starts it, on a free port; its first line names the URL (yielded until the caller
    is done, then the process is stopped). One start for every console test module and fixture."""
    process, url, lines = start_console_process(data_dir, *extra, deadline_s=START_DEADLINE_S, stderr=subprocess.PIPE)
    if url is None:
        pytest.fail(f"radstream console did not print its URL within {START_DEADLINE_S:.0f} s: {lines!r} {process.stderr.read()[-2000:]}")
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def console_url(demo_dir: Path) -> Iterator[str]:
    yield from start_console(demo_dir)


@pytest.fixture(scope="session")
def browser_context() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # a dev dependency: requirements-dev.txt pins it
        pytest.fail(f"playwright is not installed ({e}); run make venv")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium package (apt-get install chromium)")
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="radstream-chromium-") as profile:
        try:
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                timeout=START_DEADLINE_S * 1000,
                viewport={"width": 1300, "height": 900},
            )
        except Exception as e:
            pytest.fail(f"Chromium ({CHROMIUM}) did not start: {type(e).__name__}: {e}")
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context) -> Iterator[object]:
    page = browser_context.new_page()
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docs/img when RADSTREAM_UPDATE_SCREENSHOTS=1 (how the README's pictures are made), else a temporary folder."""
    if os.environ.get("RADSTREAM_UPDATE_SCREENSHOTS") == "1":
        folder = ROOT / "docs" / "img"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")
