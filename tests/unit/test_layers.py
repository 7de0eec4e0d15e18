"""Layers point down: config below connectors below features and models below jobs below the
CLI package (``streamrank``). Every import of a project package is checked, also the ones
inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "connectors": {"config"},
    "features": {"config", "connectors"},
    "models": {"config", "connectors", "features"},
    "jobs": {"config", "connectors", "features", "models"},
    "streamrank": {"config", "connectors", "features", "models", "jobs"},
}
"""What each package may import besides itself."""


def imported_packages(path: Path) -> set[str]:
    """The project packages that ``path`` imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = {str(path.relative_to(ROOT)): sorted(bad)
             for path in sorted((ROOT / package).rglob("*.py"))
             if (bad := imported_packages(path) - ALLOWED[package] - {package})}
    assert wrong == {}


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from streamrank.cli import app\nimport features.rows\n")
    assert imported_packages(module) == {"streamrank", "features"}
