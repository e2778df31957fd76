"""`medmlops train covid-ft` on a fresh clone: the smoke data is made, and the STL model it starts from (init_from) is
trained first, as the covid pipeline's train-fold step does: one progress line, a nested MLflow run tagged
``prerequisite``, nothing registered. One fold (of the smoke profile's two), two epochs."""

from __future__ import annotations

import pytest

from medmlops.cli import main
from medmlops.data import versioning
from tests.data.test_versioning import _new_project

pytestmark = pytest.mark.dvc  # 35 s on 2 shared cores


def test_train_trains_its_missing_prerequisite_first(tmp_path, monkeypatch, capsys):
    project = _new_project(tmp_path / "clone", files=("params.yaml", "data-smoke.dvc"))
    monkeypatch.setattr(versioning, "DEFAULT_REMOTE", tmp_path / "dvc-remote")
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", "covid-ft", "--profile", "smoke", "--quiet", "--set", "train.folds=[0]"]) == 0
    out = capsys.readouterr().out
    assert "data: generated data/raw-smoke (smoke profile; matches data-smoke.dvc" in out
    line = "covid-ft: fold 0 starts from covid-stl-severity, not trained yet: training it first (not registered)"
    assert out.count(line) == 1, out
    assert "as @candidate" not in out

    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.medmlops' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("medmlops-covid-prognosis")
    (stl,) = client.search_runs([experiment.experiment_id], "tags.prerequisite = 'covid-stl-severity'")
    assert stl.info.status == "FINISHED" and stl.data.tags["fold"] == "0"
    (ft,) = client.search_runs([experiment.experiment_id], "tags.experiment = 'covid-ft' and tags.fold = '0'")
    assert "covid-stl-severity" in ft.data.tags["init_from"]
    assert ft.data.tags["mlflow.parentRunId"] == stl.data.tags["mlflow.parentRunId"]  # both under covid-ft's run
    assert client.search_registered_models() == []

    # Trained once: a second run finds the checkpoint and says nothing about it.
    assert main(["train", "covid-ft", "--profile", "smoke", "--quiet", "--set", "train.folds=[0]"]) == 0
    assert "training it first" not in capsys.readouterr().out
