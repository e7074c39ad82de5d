"""The package's layering, checked: import-linter's contracts from pyproject.toml, and no module
importing another module's underscore names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "attnkit"


def test_import_contracts_hold() -> None:
    """functional <- backends <- engine <- layers <- models <- (train | explain | bench | hf)
    <- demo <- cli, tasks apart (``[tool.importlinter]`` in pyproject.toml)."""
    cli = pytest.importorskip("importlinter.cli",
                              reason="pip install 'attnkit[lint]' (import-linter)")
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def _private_imports(path: Path) -> list[str]:
    """``from attnkit.x import _name`` and ``module._name`` reads of imported attnkit modules
    (dunder names such as ``__version__`` are public)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    imported_modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("attnkit"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"from {node.module} import {alias.name}")
                else:
                    imported_modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("attnkit"):
                    imported_modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_reads_another_modules_private_names() -> None:
    offenders = {str(p.relative_to(PACKAGE)): bad for p in sorted(PACKAGE.rglob("*.py"))
                 if (bad := _private_imports(p))}
    assert offenders == {}


def test_private_name_detector_finds_both_forms(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from attnkit.functional.masks import _Band\n"
                      "from attnkit.backends import flex\n"
                      "x = flex._ALLOW_IN_AUTO\n")
    assert _private_imports(sample) == ["from attnkit.functional.masks import _Band",
                                        "flex._ALLOW_IN_AUTO"]


def test_torch_private_flash_op_is_named_in_one_module() -> None:
    """The private CPU flash op (and its backward) is wrapped once, in backends/cpu_flash.py;
    layers neither reach for torch.ops nor define autograd Functions."""
    naming = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                    if "_scaled_dot_product_flash_attention_for_cpu" in p.read_text())
    assert naming == ["backends/cpu_flash.py"]
    for path in sorted((PACKAGE / "layers").glob("*.py")):
        text = path.read_text()
        assert "torch.ops" not in text and "autograd.Function" not in text, path.name
