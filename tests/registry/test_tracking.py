"""Tracking URI resolution, provenance, and register/load against a real SQLite-backed MLflow."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

from medmlops.config import RegistryConfig
from medmlops.registry import (
    CONTRACT_FILE,
    ContractError,
    ModelNotFoundError,
    RegistrationError,
    TrackingConfigError,
    data_version,
    get_or_create_experiment,
    git_commit,
    load_model,
    register_model,
    resolve_tracking_uri,
)
from tests.registry.conftest import TwoHeadNet, aliases, example_batch, make_contract

# ----------------------------------------------------------------------------------------------------------------------
# Tracking URI
# ----------------------------------------------------------------------------------------------------------------------


def test_default_uri_is_sqlite_under_medmlops(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(RegistryConfig(), cwd=tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/.medmlops/mlflow.db"
    assert (tmp_path / ".medmlops").is_dir()


def test_config_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert resolve_tracking_uri(RegistryConfig(tracking_uri="http://127.0.0.1:2"), cwd=tmp_path) == "http://127.0.0.1:2"
    assert resolve_tracking_uri(RegistryConfig(), cwd=tmp_path) == "http://127.0.0.1:1"


def test_relative_sqlite_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri(RegistryConfig(tracking_uri="sqlite:///runs/db.sqlite"), cwd=tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/runs/db.sqlite"


@pytest.mark.parametrize("uri", ["./mlruns", "file:///tmp/mlruns", "/abs/mlruns"])
def test_file_store_is_refused_naming_its_source(tmp_path, monkeypatch, uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingConfigError, match=r"\$MLFLOW_TRACKING_URI .* file store"):
        resolve_tracking_uri(RegistryConfig(), cwd=tmp_path)
    with pytest.raises(TrackingConfigError, match="registry.tracking_uri"):
        resolve_tracking_uri(RegistryConfig(tracking_uri=uri), cwd=tmp_path)


def test_experiment_artifacts_live_under_artifact_dir(sqlite_registry, tmp_path):
    experiment = mlflow.get_experiment(sqlite_registry.experiment_id)
    assert experiment.artifact_location == (tmp_path / "artifacts" / "medmlops__test").resolve().as_uri()
    assert get_or_create_experiment("medmlops/test") == sqlite_registry.experiment_id
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Provenance (a fake .git folder: reading it needs no git binary)
# ----------------------------------------------------------------------------------------------------------------------


def test_git_commit_reads_branch_ref_from_a_subfolder(tmp_path):
    sha = "a" * 40
    (tmp_path / ".git" / "refs" / "heads").mkdir(parents=True)
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".git" / "refs" / "heads" / "main").write_text(sha + "\n")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    assert git_commit(tmp_path / "src" / "pkg") == sha


def test_git_commit_reads_packed_refs_and_detached_head(tmp_path):
    sha = "b" * 40
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/dev\n")
    (tmp_path / ".git" / "packed-refs").write_text(
        f"# pack-refs with: peeled\n{'c' * 40} refs/heads/x\n{sha} refs/heads/dev\n"
    )
    assert git_commit(tmp_path) == sha
    (tmp_path / ".git" / "HEAD").write_text("d" * 40 + "\n")
    assert git_commit(tmp_path) == "d" * 40


def test_git_commit_outside_git_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"


def test_data_version_is_the_first_out_md5(tmp_path):
    assert data_version(tmp_path) == "unknown"
    (tmp_path / "data.dvc").write_text(
        "outs:\n- md5: 3f2a9c.dir\n  size: 1024\n  nfiles: 3\n  hash: md5\n  path: data/raw\n- md5: other\n  path: x\n"
    )
    assert data_version(tmp_path) == "3f2a9c.dir"
    (tmp_path / "data.dvc").write_text("outs: [")
    assert data_version(tmp_path) == "unknown"


# ----------------------------------------------------------------------------------------------------------------------
# Register and load
# ----------------------------------------------------------------------------------------------------------------------


def test_register_sets_candidate_tags_and_contract(sqlite_registry, tmp_path):
    client = sqlite_registry.client
    torch.manual_seed(3)
    model = TwoHeadNet()
    extra = tmp_path / "calibration.json"
    extra.write_text('{"tau": 0.3}')
    version = sqlite_registry.register("ich-prognosis", model=model, extra_artifacts={"informer": extra})

    assert str(version.version) == "1"
    assert aliases(client, "ich-prognosis") == {"candidate": "1"}
    assert version.tags == {
        "experiment": "medmlops/test",
        "data_version": "0123456789abcdef.dir",
        "git_commit": "feedface",
    }

    path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/ich-prognosis@candidate/{CONTRACT_FILE}")
    stored = json.loads(Path(path).read_text())
    assert stored["family"] == "ich-prognosis" and stored["experiment"] == "medmlops/test" and stored["created_at"]
    informer = mlflow.artifacts.download_artifacts(artifact_uri="models:/ich-prognosis/1/informer/calibration.json")
    assert json.loads(Path(informer).read_text()) == {"tau": 0.3}

    loaded, contract, number = load_model("ich-prognosis", "candidate")
    assert number == "1" and not loaded.training
    assert contract.tasks == make_contract().tasks
    x = torch.from_numpy(example_batch())
    with torch.no_grad():
        expected, got = model.eval()(x), loaded(x)
    for task in ("prognosis", "gcs"):
        np.testing.assert_array_equal(got[task].numpy(), expected[task].numpy())
    assert type(loaded) is TwoHeadNet  # the pickled module itself, not a torch.export graph


def test_register_inside_the_active_run(sqlite_registry):
    with mlflow.start_run(experiment_id=sqlite_registry.experiment_id) as run:
        version = register_model(TwoHeadNet(), make_contract(), run_id=run.info.run_id, input_example=example_batch())
        assert mlflow.active_run().info.run_id == run.info.run_id  # still ours, not ended by registration
    assert version.run_id == run.info.run_id
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("contract", "model", "error", "message"),
    [
        (dataclasses.replace(make_contract(), tasks=()), None, ContractError, "tasks is empty"),
        (
            dataclasses.replace(make_contract(), input=dataclasses.replace(make_contract().input, shape=(1, 32, 32))),
            None,
            RegistrationError,
            "input.shape [1, 32, 32]",
        ),
        (make_contract(family="covid-prognosis"), None, RegistrationError, "differs from the contract's family"),
        (make_contract(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 1)), RegistrationError, "tasks"),
    ],
    ids=["invalid-contract", "shape-mismatch", "family-mismatch", "outputs-mismatch"],
)
def test_nothing_is_registered_when_the_contract_does_not_hold(sqlite_registry, contract, model, error, message):
    sqlite_registry.register("ich-prognosis")
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        sqlite_registry.register("ich-prognosis", contract=contract, model=model)
    assert sqlite_registry.versions("ich-prognosis") == ["1"]
    assert aliases(sqlite_registry.client, "ich-prognosis") == {"candidate": "1"}


def test_failure_after_version_creation_deletes_the_version(sqlite_registry):
    sqlite_registry.register("ich-prognosis")
    # MLflow rejects aliases shaped like a version reference ("v3") only when setting the alias, i.e. after the
    # version exists: a real mid-registration failure, no mocks.
    with pytest.raises(MlflowException, match="alias"):
        sqlite_registry.register("ich-prognosis", alias="v3")
    assert sqlite_registry.versions("ich-prognosis") == ["1"]
    assert aliases(sqlite_registry.client, "ich-prognosis") == {"candidate": "1"}


def test_load_model_errors_are_one_sentence(sqlite_registry):
    with pytest.raises(ModelNotFoundError, match="registered model 'nope' not found"):
        load_model("nope")
    sqlite_registry.register("ich-prognosis")
    with pytest.raises(ModelNotFoundError, match="no version with alias 'champion'"):
        load_model("ich-prognosis", "champion")


def test_load_model_refuses_a_contract_inconsistent_with_the_model(sqlite_registry, tmp_path):
    version = sqlite_registry.register("ich-prognosis")
    wrong = dataclasses.replace(make_contract(), input=dataclasses.replace(make_contract().input, shape=(1, 8, 8)))
    (tmp_path / CONTRACT_FILE).write_text(wrong.to_json())
    model_id = version.model_id or version.source.removeprefix("models:/")
    sqlite_registry.client.log_model_artifact(model_id, str(tmp_path / CONTRACT_FILE))  # overwrite it in place
    with pytest.raises(ModelNotFoundError, match=r"input example has shape \[2, 1, 16, 16\] .* \[1, 8, 8\]"):
        load_model("ich-prognosis", "candidate")
    (tmp_path / CONTRACT_FILE).write_text('{"family": "ich-prognosis"}')
    sqlite_registry.client.log_model_artifact(model_id, str(tmp_path / CONTRACT_FILE))
    with pytest.raises(ModelNotFoundError, match="missing key 'tasks'"):
        load_model("ich-prognosis", "candidate")


@pytest.mark.reliability(
    "Faults",
    "the registered model's weights file truncated in the artifact store",
    "`medmlops serve` refuses to start with one sentence naming the version and the problem",
)
def test_a_corrupt_weights_file_is_refused_in_one_sentence_and_serve_does_not_start(sqlite_registry, tmp_path):
    """Fault: the registered model's weights file is truncated in the artifact store (a half-finished upload, a
    bad disk). Loading names the version and the problem, and ``medmlops serve`` exits 1 with that one sentence."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    version = sqlite_registry.register("ich-prognosis")
    weights = [p for p in (tmp_path / "artifacts").rglob("*.pth") if p.is_file()]
    assert weights, sorted(str(p) for p in (tmp_path / "artifacts").rglob("*"))
    for path in weights:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated
    with pytest.raises(ModelNotFoundError, match=rf"'ich-prognosis@candidate' \(version {version.version}\): its "
                       r"model weights cannot be loaded \("):  # fmt: skip
        load_model("ich-prognosis", "candidate")
    result = subprocess.run(
        [sys.executable, "-m", "medmlops.cli", "serve", "ich-prognosis", "--alias", "candidate", "--repo", str(REPO),
         "--params", str(REPO / "params.yaml")],
        cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medmlops: error: 'ich-prognosis@"), result.stderr
    assert "model weights cannot be loaded (PytorchStreamReader failed reading zip archive" in lines[0]


def test_an_unreachable_tracking_server_is_named_in_one_sentence(monkeypatch):
    """The real MLflow client against a closed port: the error names the server and the cause; other errors that
    merely mention a connection are not taken for it."""
    from medmlops.errors import TrackingUnavailableError, tracking_unreachable
    from tests.conftest import _free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(MlflowException) as info:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments()
    error = tracking_unreachable(info.value)
    assert isinstance(error, TrackingUnavailableError)
    assert str(error).startswith(f"the MLflow tracking server at {uri} cannot be reached (")
    assert "\n" not in str(error)
    try:  # found through the chain, as when a step's own code wraps it
        try:
            raise info.value
        except MlflowException as exc:
            raise RuntimeError("logging the fold failed") from exc
    except RuntimeError as wrapped:
        assert isinstance(tracking_unreachable(wrapped), TrackingUnavailableError)
    assert tracking_unreachable(ValueError("Connection refused by the user")) is None
    assert tracking_unreachable(MlflowException("RESOURCE_DOES_NOT_EXIST: no run")) is None
