"""`medmlops train ich-mt-ord --profile smoke` end to end: data → preprocess → CV training → MLflow → registry,
then promotion, rollback and the evaluation report. Real MLflow (SQLite and a real server on 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medmlops.cli import main

from ..conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ich_project(tmp_path_factory, smoke_data):
    """A project folder: params.yaml, a git repo, smoke-size ICH data under data/raw/ich."""
    project = tmp_path_factory.mktemp("ich-project")
    shutil.copy2(REPO / "params.yaml", project / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    from medmlops.data.simulate import generate

    generate("ich", project / "data" / "raw-smoke" / "ich", n=16, seed=0, shape=(16, 64, 64), progress=False)
    _record_data(project)
    return project


def _record_data(project):
    """Record the smoke data in its DVC record, as `medmlops data track` would: promotion refuses a model whose
    training data is not the recorded version."""
    import yaml

    from medmlops.config import load_params
    from medmlops.data import versioning
    from medmlops.registry import tracking

    params = load_params(project / "params.yaml", profile="smoke")
    versioning.dvc(project, "init", "--quiet", check=True)
    md5 = versioning.workspace_hash(project, params.data.raw_dir)
    record = {"outs": [{"md5": md5, "hash": "md5", "path": params.data.raw_dir}]}
    (project / tracking.data_record(params)).write_text(yaml.safe_dump(record))


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_train_register_promote_and_evaluate(ich_project, monkeypatch, capsys):
    monkeypatch.chdir(ich_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", "ich-mt-ord", "--profile", "smoke", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "registered ich-prognosis version 1 as @candidate" in out

    run_dir = ich_project / ".medmlops" / "runs" / "smoke" / "ich-mt-ord"
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in (
        "prognosis_auc_mean",
        "prognosis_npv_sd",
        "gcs_ordinal_auoc_mean",
        "gcs_ordinal_qwk_mean",
        "age_binary_f1_mean",
    ):
        assert key in summary
    splits = pd.read_csv(run_dir / "splits.csv")
    assert sorted(splits["fold"].unique()) == [0, 1] and set(splits["split"]) == {"train", "val", "test"}
    assert (run_dir / "fold-0" / "best.pt").is_file() and (run_dir / "bootstrap_ci.csv").is_file()
    assert (run_dir / "training_curves.png").stat().st_size > 1000

    uri = f"sqlite:///{ich_project / '.medmlops' / 'mlflow.db'}"
    client = _client(uri)
    experiment = client.get_experiment_by_name("medmlops-ich-prognosis")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name == "ich-mt-ord")
    folds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(folds) == 2
    history = client.get_metric_history(folds[0].info.run_id, "val_prognosis_balanced_accuracy")
    assert [m.step for m in history] == [0, 1]  # per-epoch metrics
    assert parent.data.metrics["prognosis_auc_mean"] == pytest.approx(summary["prognosis_auc_mean"])
    assert {a.path for a in client.list_artifacts(folds[0].info.run_id, "checkpoint")} == {"checkpoint/best.pt"}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"splits.csv", "summary.json", "params.yaml", "bootstrap_ci.csv", "training_curves.png"} <= artifacts

    from medmlops import registry
    from medmlops.config import load_params

    registry.configure(load_params("params.yaml", profile="smoke").registry)
    model, contract, version = registry.load_model("ich-prognosis", alias="candidate")
    assert version == "1" and contract.family == "ich-prognosis"
    assert [t.name for t in contract.tasks] == ["prognosis", "gcs_ordinal", "age_binary"]
    assert contract.input.shape == (1, 40, 40, 40) and contract.input.intensity_window == (15.0, 100.0)
    assert contract.metrics["prognosis_auc_mean"] == pytest.approx(summary["prognosis_auc_mean"])
    outputs = model(torch.zeros(1, *contract.input.shape))
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "prognosis": (1, 1),
        "gcs_ordinal": (1, 2),
        "age_binary": (1, 1),
    }

    # Promotion: the demo profile's floors (AUC ≥ 0.60 ...) are checked against what this tiny run achieved.
    demo_gates = load_params("params.yaml", profile="demo").registry.gates["ich-prognosis"]
    expected_pass = all(summary.get(k, -1) >= v for k, v in demo_gates.min_metrics.items())
    rc = main(["registry", "promote", "ich-prognosis", "--profile", "demo"])
    text = capsys.readouterr().out
    assert rc == (0 if expected_pass else 1), text
    if not expected_pass:
        assert "< floor" in text
    assert main(["registry", "promote", "ich-prognosis", "--profile", "smoke"]) in (0, 1)  # smoke has no floors
    assert {k: str(v) for k, v in client.get_registered_model("ich-prognosis").aliases.items()}["champion"] == "1"

    # A second candidate, promoted, then rolled back to version 1.
    assert (
        main(
            [
                "train",
                "ich-mt-ord",
                "--profile",
                "smoke",
                "--quiet",
                "--set",
                "seed=7",
                "--set",
                "train.runs_dir=.medmlops/runs2",
            ]
        )
        == 0
    )
    capsys.readouterr()
    main(
        [
            "registry",
            "promote",
            "ich-prognosis",
            "--profile",
            "smoke",
            "--set",
            "registry.gates.ich-prognosis.max_regression=1.0",
        ]
    )
    assert str(client.get_registered_model("ich-prognosis").aliases["champion"]) == "2"
    assert main(["registry", "rollback", "ich-prognosis", "--profile", "smoke"]) == 0
    assert str(client.get_registered_model("ich-prognosis").aliases["champion"]) == "1"
    capsys.readouterr()
    assert main(["registry", "list", "ich-prognosis", "--profile", "smoke"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["version"], "champion" in r["aliases"]) for r in rows] == [("1", True), ("2", False)]
    assert rows[0]["metrics"]["prognosis_auc_mean"] == pytest.approx(summary["prognosis_auc_mean"])

    # The report: tables and figures shaped like the paper's.
    assert main(["train", "ich-baseline", "--profile", "smoke", "--quiet"]) == 0
    assert main(["evaluate", "ich-baseline", "ich-mt-ord", "--profile", "smoke", "--quiet"]) == 0
    report = ich_project / "reports" / "ich-prognosis" / "smoke"
    for name in (
        "index.html",
        "ablation_boxplot.png",
        "bootstrap_table.csv",
        "tabular_table1.csv",
        "tabular_importance.png",
        "verdict.txt",
    ):
        assert (report / name).is_file(), name
    assert "ich-mt-ord vs ich-baseline on these folds" in (report / "verdict.txt").read_text()
    table1 = pd.read_csv(report / "tabular_table1.csv", index_col=0)
    assert {"LR (gcs_age)", "RF (all)", "DTC (gcs)"} <= set(table1.columns)
    saliency = list((report / "saliency" / "ich-mt-ord").glob("*_guided_gradcam.nii.gz"))
    assert saliency and nib.load(str(saliency[0])).shape == (40, 40, 40)
    assert np.abs(np.asarray(nib.load(str(saliency[0])).dataobj)).sum() > 0


def _truncate(path):
    path.write_bytes(path.read_bytes()[:300])
    return "cannot be read as NIfTI"


def _flatten(path):
    arr = np.asarray(nib.load(str(path)).dataobj)[..., 0]
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    return "expected a 3D volume, got 2D"


def _nan(path):
    arr = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    arr[5, 5, 5] = np.nan
    nib.save(nib.Nifti1Image(arr, nib.load(str(path)).affine), str(path))
    return "NaN/Inf"


@pytest.mark.parametrize("damage", [_truncate, _flatten, _nan], ids=["truncated", "2d", "nan"])
def test_bad_volume_stops_training_and_registers_nothing(ich_project, tmp_path, monkeypatch, capsys, damage):
    project = tmp_path / "bad"
    shutil.copytree(ich_project / "data", project / "data")
    shutil.copy2(ich_project / "params.yaml", project / "params.yaml")
    victim = sorted((project / "data" / "raw-smoke" / "ich" / "POOR_PROGNOSIS").glob("*.nii.gz"))[0]
    expected = damage(victim)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["train", "ich-mt-ord", "--profile", "smoke", "--quiet"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("medmlops: error:")]
    assert len(errors) == 1 and victim.name in errors[0] and expected in errors[0] and "Traceback" not in err
    assert not (project / ".medmlops" / "mlflow.db").exists() or "ich-prognosis" not in [
        m.name for m in _client(f"sqlite:///{project / '.medmlops' / 'mlflow.db'}").search_registered_models()
    ]


def test_missing_label_is_named(ich_project, tmp_path, monkeypatch, capsys):
    project = tmp_path / "nolabel"
    shutil.copytree(ich_project / "data", project / "data")
    shutil.copy2(ich_project / "params.yaml", project / "params.yaml")
    table_path = project / "data" / "raw-smoke" / "ich" / "CLINICAL_DATA_ICH.csv"
    table = pd.read_csv(table_path)
    table.loc[3, "Label (poor_prognosis)"] = np.nan
    table.to_csv(table_path, index=False)
    monkeypatch.chdir(project)
    assert main(["preprocess", "ich", "--profile", "smoke", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{table.loc[3, 'PatientID']}.nii.gz" in err and "label 'prognosis' missing" in err


def test_training_against_a_real_mlflow_server(ich_project, mlflow_server, monkeypatch, capsys):
    monkeypatch.chdir(ich_project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert (
        main(["train", "ich-baseline", "--profile", "smoke", "--quiet", "--register", "--set", "train.folds=[0]"]) == 0
    )
    client = _client(mlflow_server)
    version = client.get_model_version_by_alias("ich-prognosis", "candidate")
    assert version.tags["experiment"] == "ich-baseline"
    run = client.get_run(version.run_id)
    assert run.data.tags["family"] == "ich-prognosis" and "prognosis_auc_mean" in run.data.metrics
