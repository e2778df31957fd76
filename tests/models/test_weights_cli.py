"""``medmlops weights check``: the file each backbone needs, where it was found, exit 1 when a needed one is missing."""

from __future__ import annotations

import shutil

import pytest
import torch

from medmlops.cli import main
from medmlops.models.backbones import build_backbone
from medmlops.models.weights import store_file
from tests.conftest import REPO


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    monkeypatch.chdir(root)
    monkeypatch.delenv("MEDMLOPS_PROFILE", raising=False)
    return root


def _check(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["weights", "check", "--experiment", "cxr-findings", "--experiment", "ich-baseline", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_missing_file_with_pretrained_on_is_exit_1_and_one_sentence(project, capsys):
    code, out, err = _check(capsys, "--set", "train.pretrained=true")
    assert code == 1
    assert "MISSING" in out and ".medmlops/weights/densenet121.pth" in out
    assert "timm.create_model('densenet121', pretrained=True)" in out
    assert "3D: no ImageNet weights, trained from scratch): ich-baseline" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medmlops: error: the ImageNet weights of 1 backbone"), err
    assert "(densenet121)" in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml"]  # a check creates nothing


def test_pretrained_off_reports_but_passes(project, capsys):
    code, out, err = _check(capsys)
    assert code == 0 and err == ""
    assert "not needed (pretrained off for cxr-findings)" in out


def test_a_file_in_the_store_is_present_and_loads(project, capsys):
    (project / "w").mkdir()
    torch.save(build_backbone("densenet121").state_dict(), store_file("densenet121", project / "w"))
    code, out, err = _check(capsys, "--set", "train.pretrained=true", "--set", "train.weights_dir=w", "--load")
    assert code == 0, err
    assert "present (weights_dir)" in out and "used by: cxr-findings" in out


def test_a_file_of_another_architecture_does_not_fit(project, capsys):
    (project / "w").mkdir()
    torch.save(build_backbone("resnet18").state_dict(), store_file("densenet121", project / "w"))
    code, out, err = _check(capsys, "--set", "train.pretrained=true", "--set", "train.weights_dir=w", "--load")
    assert code == 1 and "DOES NOT FIT" in out and "does not fit backbone 'densenet121'" in out
    assert len(err.strip().splitlines()) == 1 and "(densenet121)" in err


def test_an_unknown_experiment_is_named(project, capsys):
    code = main(["weights", "check", "--experiment", "cxr-findingz"])
    err = capsys.readouterr().err
    assert code == 1 and "unknown experiment 'cxr-findingz'; did you mean 'cxr-findings'?" in err
