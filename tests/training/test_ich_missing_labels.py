"""A patient without GCS or Age masks that task only: the loss and the metrics leave the -1 rows out, and both the
prognosis baseline and the multi-task model train on a dataset with one missing GCS and one missing Age."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from medmlops.cli import main
from medmlops.evaluation.experiment_metrics import task_metrics
from medmlops.training.tasks import ICH_TASKS

from ..conftest import REPO


@pytest.mark.parametrize("name", ["gcs_ordinal", "gcs_binary", "age_binary"])
def test_loss_of_a_masked_row_is_the_loss_without_it(name):
    task = ICH_TASKS[name]
    torch.manual_seed(0)
    logits = torch.randn(5, task.out_features)
    labels = torch.tensor([0, 1, -1, 1, 0])
    keep = labels >= 0
    assert torch.allclose(task.loss(logits, labels), task.loss(logits[keep], labels[keep]))
    # The masked row's logits get no gradient.
    logits.requires_grad_(True)
    task.loss(logits, labels).backward()
    assert float(logits.grad[2].abs().sum()) == 0.0


def test_metrics_of_a_task_use_its_labelled_rows_only():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "sample_id": [str(i) for i in range(8)],
            "age_binary": [0, 1, -1, 1, 0, 1, 0, 1],
            "age_binary_p0": rng.random(8),
            "gcs_ordinal": [0, 1, 2, -1, 2, 1, 0, 2],
            "gcs_ordinal_p0": rng.random(8),
            "gcs_ordinal_p1": rng.random(8),
        }
    )
    for name, masked in (("age_binary", 2), ("gcs_ordinal", 3)):
        task = ICH_TASKS[name]
        assert task_metrics(frame, task) == task_metrics(frame.drop(index=masked), task)


@pytest.fixture(scope="module")
def project(tmp_path_factory, smoke_data):
    """Smoke ICH data in a project folder, with one patient's GCS and another's Age blanked in the clinical table."""
    project = tmp_path_factory.mktemp("ich-missing")
    shutil.copy2(REPO / "params.yaml", project / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    raw = project / "data" / "raw-smoke" / "ich"
    shutil.copytree(smoke_data("ich"), raw)
    table = pd.read_csv(raw / "CLINICAL_DATA_ICH.csv")
    table["GCS"], table["Age"] = table["GCS"].astype(object), table["Age"].astype(object)
    table.loc[0, "GCS"], table.loc[1, "Age"] = None, None
    table.to_csv(raw / "CLINICAL_DATA_ICH.csv", index=False)
    return project


# The small Perez CNN for one epoch: this checks that training runs on masked labels, not what it learns.
FAST = ["--profile", "smoke", "--quiet", "--no-register", "--set", "train.epochs=1"]


def _train(name: str) -> int:
    return main(["train", name, *FAST, "--set", f"experiments.{name}.model=perez_cnn3d"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ich-baseline", "ich-mt-ord"])
def test_prognosis_baseline_and_multitask_train_with_missing_gcs_and_age(project, monkeypatch, name):
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _train(name) == 0
    run_dir = project / ".medmlops" / "runs" / "smoke" / name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert np.isfinite(summary["prognosis_auc_mean"])
    manifest = pd.read_csv(next((project / "data" / "preprocessed" / "ich").glob("*/manifest.csv")))
    assert (manifest["gcs_ordinal"] == -1).sum() == 1 and (manifest["age_binary"] == -1).sum() == 1
    if name == "ich-mt-ord":
        assert "gcs_ordinal_qwk_mean" in summary and "age_binary_f1_mean" in summary


@pytest.mark.slow
def test_the_report_of_models_trained_on_masked_labels(project, monkeypatch):
    """`medmlops evaluate` on those runs: the tables, Table 1 (DNN, XGB, SHAP) and the saliency maps are made."""
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("ich-baseline", "ich-mt-ord"):
        if not (project / ".medmlops" / "runs" / "smoke" / name / "summary.json").is_file():
            assert _train(name) == 0
    perez = [f"--set=experiments.{name}.model=perez_cnn3d" for name in ("ich-baseline", "ich-mt-ord")]
    assert main(["evaluate", "ich-baseline", "ich-mt-ord", "--profile", "smoke", "--quiet", *perez]) == 0
    report = project / "reports" / "ich-prognosis" / "smoke"
    table1 = pd.read_csv(report / "tabular_table1.csv", index_col=0)
    assert {"DNN (all)", "XGB (all)", "LR (gcs_age)"} <= set(table1.columns)
    assert "SHAP" in (report / "index.html").read_text()
