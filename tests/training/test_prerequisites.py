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
    # A family layer and an experiment layer of training settings (as profiles.paper has): the STL prerequisite takes
    # the family's, covid-ft its own on top.
    layers = [
        "--set",
        "train.families.covid-prognosis.optimizer=adam",
        "--set",
        "experiments.covid-ft.train.max_steps=1",
    ]
    assert main(["train", "covid-ft", "--profile", "smoke", "--quiet", "--set", "train.folds=[0]", *layers]) == 0
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

    parent = client.get_run(ft.data.tags["mlflow.parentRunId"])
    assert parent.data.params["train.optimizer"] == "adam" and parent.data.params["train.max_steps"] == "1"
    assert parent.data.params["experiment.loss_reduction"] == "indicator_sum"  # an MDMT-model experiment: Eq. 2
    ft_steps = [m.value for m in client.get_metric_history(ft.info.run_id, "optimizer_steps")]
    stl_steps = [m.value for m in client.get_metric_history(stl.info.run_id, "optimizer_steps")]
    assert sum(ft_steps) == 1 and sum(stl_steps) > 1  # max_steps is covid-ft's own, not the family's

    # Trained once: a second run finds the checkpoint and says nothing about it.
    assert main(["train", "covid-ft", "--profile", "smoke", "--quiet", "--set", "train.folds=[0]"]) == 0
    assert "training it first" not in capsys.readouterr().out
