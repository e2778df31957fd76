"""Commands that act on a registered version use the params it was trained with: ``informer calibrate`` after a
``train --set train.n_folds=3`` needs no override; ``train`` without the override names it instead of suggesting to
delete the trained runs. The training run and the version carry their provenance (real DVC repository, SQLite MLflow).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from medmlops.cli import main

from ..conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path, smoke_data, monkeypatch):
    """A DVC project with the smoke chexpert data recorded in the smoke profile's record, MLflow on SQLite."""
    from medmlops.config import load_params
    from medmlops.data import versioning
    from medmlops.registry import tracking

    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    params = load_params(tmp_path / "params.yaml", profile="smoke")
    shutil.copytree(smoke_data("chexpert"), tmp_path / params.data.raw_dir / "chexpert")
    versioning.dvc(tmp_path, "init", "--no-scm", "--quiet", check=True)
    md5 = versioning.workspace_hash(tmp_path, params.data.raw_dir)
    record = {"outs": [{"md5": md5, "hash": "md5", "path": params.data.raw_dir}]}
    (tmp_path / tracking.data_record(params)).write_text(yaml.safe_dump(record))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path, md5, tracking.data_record(params)


def test_calibrate_uses_the_versions_training_params_and_train_names_the_differing_override(project, capsys):
    from mlflow import MlflowClient

    root, md5, record = project
    smoke = ["--profile", "smoke", "--quiet"]
    assert main(["train", "cxr-findings", *smoke, "--register", "--set", "train.n_folds=3",
                 "--set", "train.epochs=1"]) == 0  # fmt: skip
    assert "registered cxr-findings version 1" in capsys.readouterr().out

    # No --set: the version's splits (3 folds), not the profile's (2), and no "remove the runs" error.
    assert main(["informer", "calibrate", "cxr-findings", *smoke, "--method", "ixg", "--tta", "0"]) == 0
    out = capsys.readouterr().out
    assert "cxr-findings v1: using the version's training params from its run" in out
    assert "train.n_folds=3 (params now: 2)" in out and "train.epochs=1 (params now: 2)" in out
    assert "calibrated on" in out

    # Training again with the profile's params names the overrides that made the splits there, and keeps them.
    assert main(["train", "cxr-findings", *smoke]) == 1
    err = capsys.readouterr().err
    assert "add --set train.n_folds=3 to use the trained runs there" in err
    assert "move" in err and "aside" in err and "remove" not in err
    run_dir = root / ".medmlops" / "runs" / "smoke" / "cxr-findings"
    assert yaml.safe_load((run_dir / "params.yaml").read_text())["train"]["n_folds"] == 3  # not overwritten

    # Provenance: the data matched its record, the tree was dirty (nothing committed), the data is a run input.
    uri = f"sqlite:///{root / '.medmlops' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("cxr-findings", "1")
    assert mv.tags["data_version"] == md5 and mv.tags["data_version_verified"] == "true"
    assert mv.tags["data_record"] == record and mv.tags["git_dirty"] == "true"
    assert f"- data version: `{md5}` (matches {record})" in mv.description
    assert "- findings_mean_auroc_mean: " in mv.description
    run = client.get_run(mv.run_id)
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "chexpert" and dataset.dataset.digest == md5
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    print(f"\nversion tags: {mv.tags}\ndescription:\n{mv.description}")

    # Data that is not the recorded version: trained and registered (loudly), refused as champion.
    raw_dir = yaml.safe_load((root / record).read_text())["outs"][0]["path"]
    (root / raw_dir / "chexpert" / "notes.txt").write_text("a file the record does not have\n")
    overrides = ["--set", "train.n_folds=3", "--set", "train.epochs=1"]
    assert main(["train", "cxr-findings", *smoke, "--register", *overrides]) == 0
    captured = capsys.readouterr()
    assert "warning: training on data that does not match its DVC record" in captured.err
    assert "warning: cxr-findings version 2 was trained on data" in captured.err and md5 in captured.err
    assert client.get_model_version("cxr-findings", "2").tags["data_version_verified"] == "false"
    assert main(["registry", "promote", "cxr-findings", *smoke[:2]]) == 1
    assert "medmlops data track" in capsys.readouterr().out
