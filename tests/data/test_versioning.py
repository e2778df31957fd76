"""DVC: the demo data reproduces data.dvc; push → pull into a fresh clone restores it; repro is a no-op when
nothing changed. Real git and dvc processes in temporary repositories."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medmlops.config import load_params
from medmlops.data import versioning
from medmlops.data.simulate import DATASETS, generate_from_params

from ..conftest import REPO

pytestmark = pytest.mark.dvc


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def _new_project(path: Path, files=("params.yaml",)) -> Path:
    path.mkdir(parents=True)
    _git(path, "init", "-q")
    _git(path, "config", "user.email", "test@medmlops.invalid")
    _git(path, "config", "user.name", "test")
    versioning.dvc(path, "init", "-q", check=True)
    for name in files:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, path / name)
        else:
            shutil.copy2(source, path / name)
    return path


def _same_tree(a: Path, b: Path) -> list[str]:
    """Relative paths that differ in content or exist on one side only."""
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    diff = sorted(str(p) for p in files_a ^ files_b)
    diff += sorted(str(p) for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False))
    return diff


@pytest.mark.slow
def test_regenerated_demo_data_reproduces_data_dvc(tmp_path):
    """The committed data.dvc is what `make demo` generates: the simulators are deterministic byte for byte."""
    project = _new_project(tmp_path / "proj", files=("params.yaml", "data.dvc"))
    params = load_params(project / "params.yaml", profile="demo")
    for dataset in DATASETS:
        generate_from_params(dataset, project / params.data.raw_dir / dataset, params, progress=False)
    ok, detail = versioning.workspace_matches(project)
    assert ok, f"demo data differs from data.dvc: {detail}"


def test_push_then_pull_into_a_fresh_clone_restores_identical_data(smoke_data, tmp_path):
    origin = _new_project(tmp_path / "origin")
    for dataset in ("ich", "brixia"):
        shutil.copytree(smoke_data(dataset), origin / "data" / "raw" / dataset)
    record = versioning.track(origin)
    assert record.name == "data.dvc" and not (origin / "data" / "raw.dvc").exists()
    remote = tmp_path / "remote"
    versioning.ensure_remote(origin, remote)
    versioning.push(origin)
    _git(origin, "add", "-A")
    _git(origin, "commit", "-qm", "track data")
    # The remote is configured outside git (.dvc/config.local): a clone has the record but not the data.
    assert "config.local" not in subprocess.run(["git", "ls-files"], cwd=origin, capture_output=True, text=True).stdout

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    assert not (clone / "data" / "raw").exists()
    assert versioning.pull(clone) is False  # no remote configured in the clone yet
    versioning.ensure_remote(clone, remote)
    assert versioning.pull(clone) is True
    assert _same_tree(origin / "data" / "raw", clone / "data" / "raw") == []
    assert versioning.workspace_matches(clone) == (True, "up to date")

    # A changed file is noticed.
    victim = next((clone / "data" / "raw" / "ich" / "POOR_PROGNOSIS").glob("*.nii.gz"))
    victim.write_bytes(victim.read_bytes()[:-10])
    ok, detail = versioning.workspace_matches(clone)
    assert not ok and "modified" in detail


def test_dvc_repro_reruns_nothing_when_nothing_changed(smoke_data, tmp_path):
    project = _new_project(tmp_path / "proj", files=("params.yaml", "dvc.yaml", "src"))
    for dataset in DATASETS:
        shutil.copytree(smoke_data(dataset), project / "data" / "raw" / dataset)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def repro(*targets: str) -> str:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("dvc")), "repro", *targets],
            cwd=project,
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    first = repro("validate")
    assert first.count("Running stage") == 4, first
    assert (project / "reports" / "validation" / "ich.html").is_file()
    second = repro("validate")
    assert "Running stage" not in second and "up to date" in second, second

    victim = next((project / "data" / "raw" / "brixia" / "dicom_clean").iterdir())
    victim.write_bytes(victim.read_bytes() + b"\0")
    third = repro("validate")
    assert third.count("Running stage") == 1 and "validate@brixia" in third, third
