"""The chest X-ray families end to end at smoke size: cxr-findings (train → Youden thresholds → registry) and the
MDMT protocol (STL τ1, STL τ2, FT, MDMT × CV and LOCO → Tables 1, 2, S1), real MLflow on SQLite."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from medmlops.cli import main

from ..conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cxr_project(tmp_path_factory):
    from medmlops.data.simulate import generate

    project = tmp_path_factory.mktemp("cxr-project")
    shutil.copy2(REPO / "params.yaml", project / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    for dataset, n in (("chexpert", 32), ("aiforcovid", 24), ("brixia", 24)):
        extra = {"n_valid": 8} if dataset == "chexpert" else {}
        generate(
            dataset, project / "data" / "raw-smoke" / dataset, n=n, seed=0, shape=(64, 64), progress=False, **extra
        )
    return project


def _registry(project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.medmlops' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_cxr_findings_trains_and_registers_with_youden_thresholds(cxr_project, monkeypatch, capsys):
    monkeypatch.chdir(cxr_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", "cxr-findings", "--profile", "smoke", "--quiet"]) == 0
    assert "registered cxr-findings version 1 as @candidate" in capsys.readouterr().out
    run_dir = cxr_project / ".medmlops" / "runs" / "smoke" / "cxr-findings"
    summary = json.loads((run_dir / "summary.json").read_text())
    for finding in ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion"):
        assert f"findings_{finding}_sensitivity_mean" in summary
    assert "findings_mean_auroc_mean" in summary
    boot = pd.read_csv(run_dir / "bootstrap_ci.csv")
    assert {"findings", "cardiomegaly_auroc"} <= set(boot["task"]) | set(boot["metric"])

    from medmlops import registry
    from medmlops.config import load_params

    registry.configure(load_params("params.yaml", profile="smoke").registry)
    model, contract, _ = registry.load_model("cxr-findings", alias="candidate")
    task = contract.tasks[0]
    assert task.kind == "multilabel" and task.classes == (
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
    )
    best = json.loads(
        _registry(cxr_project)
        .get_run(_registry(cxr_project).get_model_version_by_alias("cxr-findings", "candidate").run_id)
        .data.tags["best_fold"]
    )
    youden = json.loads((run_dir / f"fold-{best}" / "thresholds.json").read_text())["findings"]
    assert list(task.thresholds) == pytest.approx(youden) and all(0 <= t <= 1 for t in task.thresholds)
    assert contract.input.modality == "xray" and contract.input.shape == (3, 64, 64)
    assert contract.preprocessing["chain"] == "cxr"


def test_mdmt_protocol_tables_and_registration(cxr_project, monkeypatch, capsys):
    monkeypatch.chdir(cxr_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["evaluate", "--protocol", "covid", "--profile", "smoke", "--quiet"]) == 0
    report = cxr_project / "reports" / "covid-prognosis" / "smoke"
    for name in ("table_1.csv", "table_2.csv", "table_s1.csv", "figure_tau1.png", "index.html", "verdict.txt"):
        assert (report / name).is_file(), name
    long = pd.read_csv(report / "results_long.csv")
    assert set(long["experiment"]) == {"covid-stl-prognosis", "covid-stl-severity", "covid-ft", "covid-mdmt"}
    assert set(long["validation"]) == {"cv", "loco"} and set(long["metric"]) == {"accuracy", "f1", "gmean"}
    table2 = pd.read_csv(report / "table_2.csv")
    assert set(table2["comparison"]) == {"MDMT vs STL τ1", "MDMT vs FT"}
    assert (table2["n_backbones"] == 1).all() and (table2["t"] == "not tested").all()  # one backbone: no paired test
    # LOCO has one fold per AIforCOVID hospital, for every experiment (STL τ2's folds pair with MDMT's).
    hospitals = pd.read_csv(cxr_project / "data" / "raw-smoke" / "aiforcovid" / "AIforCOVID.csv")["Hospital"].nunique()
    runs = cxr_project / ".medmlops" / "runs" / "smoke"
    for name in ("covid-stl-severity", "covid-mdmt"):
        assert pd.read_csv(runs / f"{name}@resnet18-loco" / "splits.csv")["fold"].nunique() == hospitals
    client = _registry(cxr_project)
    mdmt_runs = client.search_runs(
        [client.get_experiment_by_name("medmlops-covid-prognosis").experiment_id], "tags.experiment = 'covid-mdmt'"
    )
    init = [r.data.tags["init_from"] for r in mdmt_runs if "init_from" in r.data.tags]
    assert init and all("covid-stl-prognosis" in t and "covid-stl-severity" in t for t in init)

    # Registration re-uses the finished folds and lists both tasks' classes in the contract.
    assert main(["train", "covid-mdmt", "--profile", "smoke", "--quiet"]) == 0
    from medmlops import registry
    from medmlops.config import load_params

    registry.configure(load_params("params.yaml", profile="smoke").registry)
    _, contract, _ = registry.load_model("covid-prognosis", alias="candidate")
    assert {t.name: t.classes for t in contract.tasks} == {
        "prognosis": ("MILD", "SEVERE"),
        "severity": ("BS 0-4", "BS 5-8", "BS 9-13", "BS 14-18"),
    }
    assert contract.preprocessing["sources"] == ["aiforcovid", "brixia"]
    assert np.isfinite(contract.metrics["prognosis_gmean_mean"])
