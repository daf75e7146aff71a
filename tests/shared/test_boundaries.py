"""The layering ARCHITECTURE.md describes, read from the code's imports (the product code, not its tests)."""

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
