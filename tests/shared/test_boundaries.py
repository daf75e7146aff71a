"""The layering ARCHITECTURE.md describes, read from the imports: the product code's, and the tests' (per service)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").is_file())


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def product_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*.py")) if "tests" not in p.relative_to(folder).parts]


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another(service: str):
    for path in product_files(ROOT / "services" / service):
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] == "services" and len(parts) > 1:
                assert parts[1] == service, f"{path.relative_to(ROOT)} imports {module}: shared code belongs in shared/"
            assert parts[0] != "radstream", f"{path.relative_to(ROOT)} imports {module}: the runtime is not in any image"


def test_the_common_package_imports_no_service_and_not_the_runtime():
    for path in product_files(ROOT / "shared"):
        for module in imported_modules(path):
            assert module.split(".")[0] not in ("services", "radstream"), f"{path.relative_to(ROOT)} imports {module}"


def test_the_console_imports_only_shared_modules():
    for path in product_files(ROOT / "radstream" / "console"):
        for module in imported_modules(path):
            assert module.split(".")[0] != "services", f"{path.relative_to(ROOT)} imports {module}"


FIRST_PARTY = ("radstream", "services", "shared", "synthetic", "tests", "conftest", "benchmarks", "training")


def python_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


@pytest.mark.parametrize("service", SERVICES)
def test_a_services_tests_import_only_that_service_shared_and_synthetic(service: str):
    """So that each service's CI job runs its tests in that service's own environment (its lock, and its test lock)."""
    for path in python_files(ROOT / "services" / service / "tests"):
        for module in imported_modules(path):
            parts = module.split(".")
            if parts[0] not in FIRST_PARTY:
                continue
            where = f"{path.relative_to(ROOT)} imports {module}"
            assert parts[0] in ("services", "shared", "synthetic"), f"{where}: a service's tests import only it, shared and synthetic"
            if parts[0] == "services" and len(parts) > 1:
                assert parts[1] == service, f"{where}: a test of two services is an end-to-end test (tests/e2e/)"
        source = path.read_text()
        assert '"-m", "radstream' not in source, f"{path.relative_to(ROOT)} runs the radstream CLI: that is an end-to-end test"
        assert '"benchmarks"' not in source, f"{path.relative_to(ROOT)} runs a benchmark (the pipeline): that is an end-to-end test"


def test_no_test_imports_another_folders_test_modules_or_the_root_conftest():
    """Builders two test folders need live in synthetic/, not in one folder's test modules or in the root conftest."""
    for path in [
        *python_files(ROOT / "services"),
        *python_files(ROOT / "tests"),
        *python_files(ROOT / "synthetic"),
        *python_files(ROOT / "benchmarks"),
    ]:
        for module in imported_modules(path):
            parts = module.split(".")
            where = f"{path.relative_to(ROOT)} imports {module}"
            assert parts[0] != "conftest", f"{where}: the root conftest holds fixtures, not builders (synthetic/ does)"
            if parts[0] == "services" and "tests" in parts:
                assert path.is_relative_to(ROOT / "services" / parts[1] / "tests"), f"{where}: shared test builders belong in synthetic/"


def test_the_root_conftest_needs_only_pytest_and_shared():
    """Every service's tests load it: an import of OpenCV (or any image library) here would make every service need it."""
    for module in imported_modules(ROOT / "conftest.py"):
        assert module.split(".")[0] in ("__future__", "json", "signal", "pathlib", "pytest", "shared"), f"conftest.py imports {module}"


def test_synthetic_stays_out_of_the_product_and_the_images():
    for folder in ("shared", "services"):
        for path in product_files(ROOT / folder):
            assert not any(m.split(".")[0] == "synthetic" for m in imported_modules(path)), f"{path.relative_to(ROOT)} imports synthetic"
    for dockerfile in sorted((ROOT / "services").glob("*/Dockerfile")):
        assert "synthetic" not in dockerfile.read_text(), f"{dockerfile.relative_to(ROOT)} copies synthetic/"


@pytest.mark.parametrize("service", [s for s in SERVICES if (ROOT / "services" / s / "handler.py").is_file()])
def test_every_stage_builds_its_dependencies_one_way(service: str):
    """A frozen dataclass built by its `from_settings` and released by its `close`: the service's own (in its handler.py),
    or shared.wiring's StoreDependencies for the stages that need only the settings and the object store."""
    import dataclasses
    import importlib

    from shared.observability import StageHandler

    module = importlib.import_module(f"services.{service}.handler")
    handlers = {name: value for name, value in vars(module).items() if isinstance(value, StageHandler)}
    assert handlers, f"services/{service}/handler.py has no StageHandler"
    for name, handler in handlers.items():
        build = handler.build
        owner = getattr(build, "__self__", None)
        assert isinstance(owner, type) and build.__name__ == "from_settings", f"services/{service}/handler.py {name}: built by {build}"
        assert owner.__module__ in (module.__name__, "shared.wiring"), f"{name}: {owner.__qualname__} is neither the service's nor shared"
        assert owner.__bases__ == (object,), f"{owner.__qualname__} subclasses {owner.__bases__}: one shape, no hierarchy"
        assert dataclasses.is_dataclass(owner) and owner.__dataclass_params__.frozen, f"{owner.__qualname__} is not a frozen dataclass"
        assert callable(getattr(owner, "close", None)), f"{owner.__qualname__} has no close()"
