"""The Kubeflow components: each a typed signature, a docstring and one call into the core's pipeline steps."""

from __future__ import annotations

import ast
import importlib
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO))
COMPONENTS = sorted(p.stem for p in (REPO / "components").glob("[!_]*.py"))
CONTEXT_INPUTS = {"workdir", "profile", "overrides", "mlflow_uri"}


@pytest.mark.parametrize("name", COMPONENTS)
def test_components_are_thin_and_documented(name):
    path = REPO / "components" / f"{name}.py"
    component = getattr(importlib.import_module(f"components.{name}"), name)
    assert component.python_func.__doc__, path.name
    assert len(path.read_text().splitlines()) <= 45, f"{path.name}: components stay thin"
    inputs = set(component.component_spec.inputs or {})
    assert inputs >= CONTEXT_INPUTS, path.name


@pytest.mark.parametrize("name", COMPONENTS)
def test_a_component_calls_only_the_core_pipeline_steps(name):
    """Stage logic lives in the core: a component's body imports from ``medmlops.pipeline_steps`` and nothing else
    of the project, so the CLI, DVC and Kubeflow run the same step function."""
    tree = ast.parse((REPO / "components" / f"{name}.py").read_text())
    (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    project = [
        node.module
        for node in ast.walk(func)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("medmlops", "components")
    ]
    assert project == ["medmlops.pipeline_steps"], f"{name}: imports {project}"
