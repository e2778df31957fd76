"""`medmlops pipeline run X --local --profile smoke`: the real pipelines with Kubeflow's local runner, end to end, on a
project folder with DVC-tracked smoke data; MLflow as a real server on 127.0.0.1 (ich) or SQLite (covid, cxr).
Plus the data-version step (DVC pull by md5 from a remote) and a fold trained with DDP by the pipeline step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml

from medmlops.cli import main
from medmlops.data import versioning
from medmlops.errors import DataError
from medmlops.pipeline_steps import (
    JOB_TAG,
    KIND_TAG,
    StepContext,
    fetch_data,
    prepare_step,
    resolve_data_version,
    train_fold_step,
    validate_step,
)
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SMOKE_RAW, SMOKE_DVC = "data/raw-smoke", "data-smoke.dvc"  # the smoke profile's data.raw_dir and data.dvc_file


def _project(root, datasets: tuple[str, ...]):
    """params.yaml, git + DVC, smoke data under data/raw-smoke tracked in data-smoke.dvc (the smoke profile's record)
    and committed."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    versioning.dvc(root, "init", "-q", check=True)
    for dataset in datasets:
        assert main(["data", "generate", dataset, "--out", str(root / "data" / "raw-smoke" / dataset), "--profile", "smoke", "--quiet", "--params", str(root / "params.yaml")]) == 0  # fmt: skip
    assert (
        main(["data", "track", "--profile", "smoke", "--repo", str(root), "--params", str(root / "params.yaml")]) == 0
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], cwd=root, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "data"], cwd=root, check=True)
    return root


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _run(project, name, monkeypatch, *extra):
    monkeypatch.chdir(project)
    return main(["pipeline", "run", name, "--local", "--profile", "smoke", "--repo", str(project), *extra])


@pytest.fixture(scope="module")
def ich_run(tmp_path_factory, mlflow_server):
    """The ich pipeline, run once against the real MLflow server."""
    project = _project(tmp_path_factory.mktemp("ich-pipeline"), ("ich",))
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = _client(mlflow_server)
    before = {int(v.version) for v in client.search_model_versions("name = 'ich-prognosis'")}
    try:
        assert _run(project, "ich", mp) == 0
    finally:
        mp.undo()
    return {"project": project, "uri": mlflow_server, "before": before}


def test_ich_pipeline_registers_a_candidate_with_the_data_version(ich_run):
    client = _client(ich_run["uri"])
    versions = {int(v.version): v for v in client.search_model_versions("name = 'ich-prognosis'")}
    new = sorted(set(versions) - ich_run["before"])
    assert len(new) == 1, "one run registers exactly one version"
    version = versions[new[0]]
    assert "candidate" in client.get_registered_model("ich-prognosis").aliases
    assert client.get_registered_model("ich-prognosis").aliases["candidate"] == str(new[0])
    assert version.run_id  # registered from the experiment run
    from medmlops.registry import tracking

    previous = tracking.mlflow.get_tracking_uri(), tracking.mlflow.get_registry_uri()
    tracking.mlflow.set_tracking_uri(ich_run["uri"])
    tracking.mlflow.set_registry_uri(ich_run["uri"])
    try:
        contract = tracking.load_contract("ich-prognosis", new[0])
    finally:
        tracking.mlflow.set_tracking_uri(previous[0])
        tracking.mlflow.set_registry_uri(previous[1])
    assert contract.data_version == versioning.recorded_hash(ich_run["project"], SMOKE_DVC)
    assert contract.experiment == "ich-mt-ord" and [t.name for t in contract.tasks] == [
        "prognosis",
        "gcs_ordinal",
        "age_binary",
    ]
    # Calibrated inside the pipeline, before the gates: the contract carries INFORMER's thresholds (smoke: ixg).
    assert contract.informer["method"] == "ixg" and set(contract.informer["tau"]) == set(contract.output_names())


def test_ich_pipeline_logs_one_tree_of_runs(ich_run):
    """pipeline run → experiment run → one run per fold, and the evaluation under the pipeline run; every step's
    report on the pipeline run; the Kubeflow job id on all of them."""
    client = _client(ich_run["uri"])
    experiment = client.get_experiment_by_name("medmlops-ich-prognosis")
    pipelines = client.search_runs(
        [experiment.experiment_id], f"tags.`{KIND_TAG}` = 'pipeline'", order_by=["attributes.start_time DESC"]
    )
    pipeline = pipelines[0]
    job = pipeline.data.tags[JOB_TAG]
    assert pipeline.info.status == "FINISHED"
    assert pipeline.data.tags["data_version"] == versioning.recorded_hash(ich_run["project"], SMOKE_DVC)
    assert pipeline.data.tags["image"] == "ghcr.io/medmlops/medmlops-train:0.1.0"
    assert pipeline.data.tags["registered.ich-prognosis"] and pipeline.data.tags["promoted.ich-prognosis"] in (
        "true",
        "false",
    )
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{pipeline.info.run_id}'")
    kinds = sorted(r.data.tags.get(KIND_TAG, r.data.tags.get("kind", "")) for r in children)
    assert kinds == ["evaluation", "experiment"]
    (exp_run,) = [r for r in children if r.data.tags.get(KIND_TAG) == "experiment"]
    assert exp_run.data.tags[JOB_TAG] == job and exp_run.data.tags["experiment"] == "ich-mt-ord"
    assert "prognosis_auc_mean" in exp_run.data.metrics
    folds = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{exp_run.info.run_id}'")
    assert sorted(int(r.data.tags["fold"]) for r in folds) == [0, 1]
    assert all(r.info.status == "FINISHED" and "test_prognosis_auc" in r.data.metrics for r in folds)
    # The two folds trained at once share the cores instead of each taking all of them (pipelines/run.py).
    cores = len(os.sched_getaffinity(0))
    assert {r.data.tags["torch_threads"] for r in folds} == {str(max(1, cores // 2))}
    steps = {a.path for a in client.list_artifacts(pipeline.info.run_id, "steps")}
    assert steps == {"steps/validation", "steps/preprocess", "steps/informer-ich-prognosis"}
    assert pipeline.data.tags["calibrated.ich-prognosis"] == pipeline.data.tags["registered.ich-prognosis"]
    (evaluation,) = [r for r in children if r.data.tags.get("kind") == "evaluation"]
    assert any(a.path == "report/index.html" for a in client.list_artifacts(evaluation.info.run_id, "report"))


def test_ich_pipeline_outputs_typed_artifacts(ich_run):
    outputs = ich_run["project"] / ".medmlops" / "kfp"
    (run_root,) = outputs.glob("medmlops-ich-*")
    model = json.loads(next(run_root.rglob("register/model")).read_text())
    assert model["family"] == "ich-prognosis" and model["model_uri"] == f"models:/ich-prognosis/{model['version']}"
    assert "<h1>Data validation — ich</h1>" in next(run_root.rglob("validate-data/report")).read_text()
    assert "ich-mt-ord" in next(run_root.rglob("evaluate/report")).read_text()
    calibration = next(run_root.rglob("calibrate/report")).read_text()
    assert (
        f"INFORMER calibration — ich-prognosis v{model['version']}" in calibration and "prognosis/poor" in calibration
    )
    header = next(run_root.rglob("make-splits/splits")).read_text().splitlines()[0].split(",")
    assert {"sample_id", "fold", "split"} <= set(header)


def test_a_fold_trains_with_ddp_from_the_pipeline_step(ich_run, tmp_path):
    """nproc=2: the step restarts itself under torchrun (2 CPU ranks, Gloo); rank 0 alone logs one fold run."""
    client = _client(ich_run["uri"])
    experiment = client.get_experiment_by_name("medmlops-ich-prognosis")
    (pipeline, *_) = client.search_runs(
        [experiment.experiment_id], f"tags.`{KIND_TAG}` = 'pipeline'", order_by=["attributes.start_time DESC"]
    )
    job = pipeline.data.tags[JOB_TAG]
    (exp_run,) = client.search_runs(
        [experiment.experiment_id], f"tags.`{JOB_TAG}` = '{job}' and tags.`{KIND_TAG}` = 'experiment'"
    )
    fold_filter = f"tags.mlflow.parentRunId = '{exp_run.info.run_id}' and tags.fold = '0'"
    before = len(client.search_runs([experiment.experiment_id], fold_filter))
    ctx = StepContext(str(ich_run["project"]), "smoke", (f"train.runs_dir={tmp_path / 'runs'}",), ich_run["uri"])
    metrics = train_fold_step(ctx, "ich-mt-ord", 0, job, nproc=2)
    assert "prognosis_auc" in metrics
    assert len(client.search_runs([experiment.experiment_id], fold_filter)) == before + 1
    fold_dir = next((tmp_path / "runs").rglob("fold-0"))
    assert sorted(p.name for p in fold_dir.glob("*.pt")) == ["best.pt", "last.pt"]


@pytest.mark.reliability(
    "Faults",
    "MLflow server SIGKILLed while a pipeline fold trains, then restarted",
    "the step fails with one sentence naming the server; the same command resumes from the fold's checkpoint",
)
def test_mlflow_down_mid_fold_is_one_sentence_and_the_rerun_resumes(ich_run, tmp_path, monkeypatch):
    """Fault: the tracking server dies while a fold trains. The step fails with one sentence naming the server
    (after MLflow's retries, shortened here); its checkpoint stays on the data volume. With the server back on the
    same store and port, the same command resumes from that checkpoint instead of starting over, and finishes."""
    import os
    import signal
    import sys
    import time

    from tests.conftest import start_mlflow_server, stop_process

    (server_root := tmp_path / "mlflow").mkdir()
    server, uri = start_mlflow_server(server_root)
    runs = tmp_path / "runs"
    overrides = (f"train.runs_dir={runs}", "train.epochs=3", "train.patience=10")
    # The prepare step (in-process, as Kubeflow runs it before the folds): splits and the experiment's MLflow run.
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        folds = prepare_step(
            StepContext(str(ich_run["project"]), "smoke", overrides, uri), "ich", "ich-mt-ord", "fault-job",
            "fault-data", "local", {}, str(tmp_path / "splits.csv"),
        )  # fmt: skip
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert 0 in folds
    command = [sys.executable, "-m", "medmlops.cli", "pipeline", "step", "train-fold", "ich-mt-ord", "--fold", "0",
               "--job-id", "fault-job", "--workdir", str(ich_run["project"]), "--profile", "smoke",
               *[arg for override in overrides for arg in ("--set", override)]]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}  # fmt: skip
    try:
        step = subprocess.Popen(
            command, cwd=ich_run["project"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 300
        while not list(runs.rglob("fold-0/last.pt")):  # the first epoch is trained and logged
            assert step.poll() is None and time.monotonic() < deadline, step.communicate()
            time.sleep(0.1)
        stop_process(server, sig=signal.SIGKILL)  # the server and its uvicorn worker, no shutdown
        out, err = step.communicate(timeout=300)
        assert step.returncode == 1, err[-3000:]
        sentence = err.strip().splitlines()[-1]
        assert sentence.startswith(f"medmlops: error: the MLflow tracking server at {uri} cannot be reached ("), err
        assert sentence.endswith("run the same command again to resume once it is back")
        (fold_dir,) = {p.parent for p in runs.rglob("fold-0/last.pt")}
        assert not (fold_dir / "done.json").exists()  # it stopped mid-training

        server, _ = start_mlflow_server(server_root, int(uri.rsplit(":", 1)[1]))
        rerun = subprocess.run(command, cwd=ich_run["project"], env=env, capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "fold fold-0: resuming after epoch" in rerun.stderr
        assert "prognosis_auc" in json.loads(rerun.stdout.strip().splitlines()[-1])
        history = json.loads((fold_dir / "done.json").read_text())["history"]
        assert [h["epoch"] for h in history] == [0, 1, 2]  # one history: the resumed epochs follow the first

        client = _client(uri)
        (experiment,) = client.search_experiments(filter_string="name LIKE '%ich-prognosis%'")
        folds = client.search_runs([experiment.experiment_id], "tags.fold = '0' and attributes.status = 'FINISHED'")
        assert len(folds) == 1  # the killed attempt never finished; the resumed one did
    finally:
        stop_process(server)


@pytest.mark.parametrize(
    ("name", "datasets", "family"),
    # cxr's local run is tested end to end by tests/test_demo.py (the demo runs it): one run keeps CI in budget.
    [("covid", ("aiforcovid", "brixia"), "covid-prognosis")],
)
def test_chest_xray_pipelines_register_their_family(name, datasets, family, tmp_path, monkeypatch, capfd):
    project = _project(tmp_path, datasets)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _run(project, name, monkeypatch) == 0
    out = capfd.readouterr().out
    assert f"registered {family} version 1 as @candidate" in out
    client = _client(f"sqlite:///{project / '.medmlops' / 'mlflow.db'}")
    assert str(client.get_registered_model(family).aliases["candidate"]) == "1"
    if name == "covid":  # MDMT starts from both STL backbones: the fold step trained them first, as nested runs
        experiment = client.get_experiment_by_name(f"medmlops-{family}")
        runs = client.search_runs([experiment.experiment_id], "tags.prerequisite != ''")
        assert sorted({r.data.tags["prerequisite"] for r in runs}) == ["covid-stl-prognosis", "covid-stl-severity"]
        assert len(runs) == 4  # 2 prerequisites x 2 folds


@pytest.mark.reliability(
    "Bad input",
    "a pipeline run on data that fails validation",
    "the run stops at the validation step, naming the dataset and the failure",
)
def test_changed_data_fails_the_pipeline_at_validation(tmp_path, monkeypatch, capfd):
    project = _project(tmp_path, ("ich",))
    table = project / "data" / "raw-smoke" / "ich" / "CLINICAL_DATA_ICH.csv"
    table.write_text(table.read_text() + "\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _run(project, "ich", monkeypatch) == 1
    captured = capfd.readouterr()
    assert "pipeline ich failed at step validate-data" in captured.err
    assert f"not data version {versioning.recorded_hash(project, SMOKE_DVC)}" in captured.out + captured.err
    assert not (project / ".medmlops" / "runs").exists(), "nothing trained on the wrong data"


@pytest.mark.reliability(
    "Bad input",
    "defects planted in the ICH data and tracked as its new version (a truncated NIfTI, NaN voxels, GCS 17), "
    "through a pipeline run",
    "the run stops at the validation step naming each defect and its file; nothing trains",
)
def test_defective_data_stops_the_pipeline_naming_every_defect(tmp_path, monkeypatch, capfd):
    import nibabel as nib
    import numpy as np
    import pandas as pd

    project = _project(tmp_path, ("ich",))
    root = project / "data" / "raw-smoke" / "ich"
    truncated, with_nan = sorted(root.rglob("*.nii.gz"))[:2]
    truncated.write_bytes(truncated.read_bytes()[:200])
    image = nib.load(str(with_nan))
    voxels = np.asarray(image.dataobj, dtype=np.float32)
    voxels[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), str(with_nan))
    table = pd.read_csv(root / "CLINICAL_DATA_ICH.csv")
    table.loc[2, "GCS"] = 17
    table.to_csv(root / "CLINICAL_DATA_ICH.csv", index=False)
    # Tracked as the data's new version: the run gets past the version check to the expectations.
    assert main(["data", "track", "--profile", "smoke", "--repo", str(project), "--params", str(project / "params.yaml")]) == 0  # fmt: skip
    capfd.readouterr()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _run(project, "ich", monkeypatch) == 1
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "pipeline ich failed at step validate-data" in captured.err
    for fragment in ("every image must open", truncated.name, "NaN or Inf", with_nan.name,
                     "'GCS' must be between 3 and 15", f"PatientID {table.loc[2, 'PatientID']}: 17"):  # fmt: skip
        assert fragment in text, f"{fragment!r} not in the run's output"
    assert not (project / ".medmlops" / "runs").exists(), "nothing trained on defective data"


def test_data_version_is_pulled_from_a_remote_by_md5(tmp_path):
    project = _project(tmp_path / "project", ("ich",))
    md5 = versioning.recorded_hash(project, SMOKE_DVC)
    remote = tmp_path / "remote"
    versioning.ensure_remote(project, remote)
    versioning.push(project, SMOKE_DVC)
    shutil.rmtree(project / "data" / "raw-smoke")
    shutil.rmtree(project / ".dvc" / "cache")
    with pytest.raises(DataError, match="no data_remote was given"):
        fetch_data(md5, "", project, SMOKE_RAW)
    assert fetch_data(md5, str(remote), project, SMOKE_RAW) == f"pulled from {remote}"
    assert versioning.workspace_hash(project, SMOKE_RAW) == md5
    assert fetch_data(md5, str(remote), project, SMOKE_RAW) == "already present"
    with pytest.raises(DataError, match="failed"):
        fetch_data("0" * 32 + ".dir", str(remote), project, SMOKE_RAW)


def test_data_version_names(tmp_path):
    project = _project(tmp_path, ("ich",))
    md5 = versioning.recorded_hash(project, SMOKE_DVC)
    assert resolve_data_version("", project, SMOKE_DVC) == md5
    assert resolve_data_version("HEAD", project, SMOKE_DVC) == md5  # a git revision's data-smoke.dvc
    assert resolve_data_version(md5.removesuffix(".dir"), project, SMOKE_DVC) == md5
    with pytest.raises(DataError, match="neither a DVC md5 nor a git revision"):
        resolve_data_version("no-such-rev", project, SMOKE_DVC)
    record = yaml.safe_load((project / SMOKE_DVC).read_text())
    assert record["outs"][0]["md5"] == md5


def test_validation_failure_is_reported_per_dataset(tmp_path):
    project = _project(tmp_path, ("ich",))
    # Same DVC version check passes only for the recorded data: re-track after breaking a column so the version
    # matches and Great Expectations is what fails.
    table = project / "data" / "raw-smoke" / "ich" / "CLINICAL_DATA_ICH.csv"
    table.write_text(table.read_text().replace("GCS", "GCS_renamed", 1))
    assert (
        main(["data", "track", "--profile", "smoke", "--repo", str(project), "--params", str(project / "params.yaml")])
        == 0
    )
    ctx = StepContext(str(project), "smoke", (), f"sqlite:///{project / 'mlflow.db'}")
    with pytest.raises(DataError, match=r"validation failed for ich"):
        validate_step(ctx, "ich", [], "", "", str(tmp_path / "report.html"))
    assert "ich" in (tmp_path / "report.html").read_text()
