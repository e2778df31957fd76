"""The architecture rules, checked: import-linter's contracts (pyproject.toml), each shown to fail when broken, plus
what import-linter cannot see (modules imported by name through importlib, private names imported across modules)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
SHELLS = ("pipelines", "components", "serving", "monitoring")
CODE = ("src/medmlops", *SHELLS, "benchmarks")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{root / 'src'}:{root}", "NO_COLOR": "1"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_the_import_contracts_hold():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("src/medmlops/config.py", "import pipelines.run", "The core never imports the shells"),
        ("src/medmlops/inference/predict.py", "from serving import service", "The core never imports the shells"),
        ("src/medmlops/data/readers.py", "from medmlops.training import tasks", "Data never imports training"),
        ("serving/service.py", "import monitoring.app", "Serving and monitoring never import each other"),
    ],
)
def test_a_planted_violation_breaks_its_contract(tmp_path, module, planted, contract):
    """The contracts are not vacuous: one forbidden import, planted in a copy of the tree, fails lint-imports."""
    for part in ("src", *SHELLS):
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{planted}  # planted by the test\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout
    assert f"{contract} BROKEN" in result.stdout, result.stdout


def _python_files():
    for part in CODE:
        yield from sorted((REPO / part).rglob("*.py"))


def _shells_imported_by_name(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module",
                "__import__",
            ):
                name = _leading_text(node.args[0]) if node.args else ""
                if name.split(".")[0] in SHELLS:
                    found.append(f"{path.name}:{node.lineno} imports {name!r}... by name")
    return found


def test_the_core_imports_no_shell_by_name(tmp_path):
    """import-linter reads import statements only: ``importlib.import_module("pipelines.run")`` would pass it."""
    assert _shells_imported_by_name(REPO / "src/medmlops") == []
    planted = tmp_path / "planted.py"
    planted.write_text('import importlib\n\nrunner = importlib.import_module(f"pipelines.{NAME}")\n')
    assert _shells_imported_by_name(tmp_path) == ["planted.py:3 imports 'pipelines.'... by name"]


def _leading_text(node: ast.expr) -> str:
    """The literal start of a module name: "pipelines.run" and f"pipelines.{name}" both give "pipelines..."."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0])
    return ""


def test_no_module_imports_another_modules_private_names():
    found = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} imports {private} from {node.module}")
    assert not found, found
