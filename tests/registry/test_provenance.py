"""Traceability of a registered version: whether its data is the DVC-recorded version, whether the code was
committed, the training run's dataset input, the experiment kind, the version's description, and the promotion
gate on unverified data. Real DVC repositories and git repositories under ``tmp_path``; a real SQLite MLflow store."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import mlflow.data
import pytest
import yaml

from medmlops.config import GatesConfig
from medmlops.registry import promote, tracking
from tests.registry.conftest import aliases

GATES = GatesConfig(primary_metric="prognosis_auc_mean", min_metrics={"prognosis_auc_mean": 0.6})


def _dvc_project(root: Path) -> Path:
    """A DVC repository (no git) with ``data/raw`` recorded in ``data.dvc`` the way ``dvc add`` records it."""
    from medmlops.data import versioning

    root.mkdir(parents=True, exist_ok=True)
    versioning.dvc(root, "init", "--no-scm", "--quiet", check=True)
    raw = root / "data" / "raw" / "ich"
    raw.mkdir(parents=True)
    for i in range(3):
        (raw / f"case-{i}.txt").write_text(f"scan {i}\n")
    md5 = versioning.workspace_hash(root, "data/raw")
    (root / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": "data/raw"}]}))
    return root


def test_data_matching_its_record_is_verified_and_changed_data_is_not(tmp_path, capsys):
    repo = _dvc_project(tmp_path)
    recorded = tracking.data_version(repo, "data.dvc")
    ok = tracking.data_provenance(repo, "data/raw", "data.dvc")
    assert ok.verified and ok.version == ok.recorded == recorded and ok.detail == ""

    (repo / "data" / "raw" / "ich" / "case-0.txt").write_text("another scan\n")
    changed = tracking.data_provenance(repo, "data/raw", "data.dvc")
    assert not changed.verified and changed.recorded == recorded and changed.version != recorded
    # The tag names the data actually read, never the version the record claims.
    assert changed.tags() == {"data_version": changed.version, "data_version_verified": "false",
                              "data_version_recorded": recorded, "data_record": "data.dvc"}  # fmt: skip
    assert "medmlops data track" in changed.detail and "dvc checkout data.dvc" in changed.detail

    # A pipeline validated another version than the record names: checked against that one.
    assert tracking.data_provenance(repo, "data/raw", "data.dvc", expected=changed.version).verified

    tags = tracking.provenance_tags(repo, "data/raw", "data.dvc")
    assert tags["data_version_verified"] == "false" and tags["git_dirty"] == "unknown"  # no git here
    err = capsys.readouterr().err
    assert "warning: training on data that does not match its DVC record" in err and "data.dvc records" in err


def test_no_dvc_repository_or_no_record_is_unverified_never_an_error(tmp_path):
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "a.txt").write_text("a")
    result = tracking.data_provenance(tmp_path, "data/raw", "data.dvc")  # not a DVC repository, no data.dvc
    assert not result.verified and result.version == result.recorded == "unknown"
    assert "could not be hashed" in result.detail

    repo = _dvc_project(tmp_path / "project")
    (repo / "data.dvc").unlink()
    result = tracking.data_provenance(repo, "data/raw", "data.dvc")
    assert not result.verified and result.recorded == "unknown" and result.version.endswith(".dir")
    assert "records no version" in result.detail


def test_git_dirty_counts_changes_and_unignored_files_only(tmp_path):
    assert tracking.git_dirty(tmp_path) == "unknown"  # not a git repository
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitignore").write_text(".medmlops/\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=tmp_path, check=True)
    assert tracking.git_dirty(tmp_path) == "false"
    (tmp_path / ".medmlops").mkdir()
    (tmp_path / ".medmlops" / "mlflow.db").write_text("x")  # ignored: still clean
    assert tracking.git_dirty(tmp_path) == "false"
    (tmp_path / "train.py").write_text("print(2)\n")
    assert tracking.git_dirty(tmp_path) == "true"


def test_family_experiments_open_on_mlflows_training_view(sqlite_registry, tmp_path):
    from medmlops.config import RegistryConfig

    cfg = RegistryConfig(artifact_dir=str(tmp_path / "artifacts"))
    experiment_id = tracking.family_experiment_id(cfg, "cxr-findings", tmp_path)
    client = sqlite_registry.client
    assert client.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    # An experiment made before the tag gets it; a kind someone chose in the UI is kept.
    old = tracking.get_or_create_experiment("medmlops-ich-prognosis", cfg=cfg, cwd=tmp_path)
    assert tracking.EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert tracking.family_experiment_id(cfg, "ich-prognosis", tmp_path) == old
    assert client.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    client.set_experiment_tag(old, tracking.EXPERIMENT_KIND_TAG, "genai_development")
    tracking.family_experiment_id(cfg, "ich-prognosis", tmp_path)
    assert client.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_the_training_run_lists_its_data_as_a_dataset_input(sqlite_registry, tmp_path):
    run_id = sqlite_registry.new_run()
    tracking.log_data_input(run_id, "chexpert", "0123456789abcdef0123456789abcdef.dir", tmp_path / "raw", verified=True)
    (dataset_input,) = sqlite_registry.client.get_run(run_id).inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "chexpert" and dataset.digest == "0123456789abcdef0123456789abcdef.dir"
    assert dataset.source_type == "local" and json.loads(dataset.source) == {"uri": (tmp_path / "raw").as_uri()}
    assert mlflow.data.get_source(dataset_input).uri == (tmp_path / "raw").as_uri()  # MLflow reads it back
    tags = {t.key: t.value for t in dataset_input.tags}
    assert tags == {"mlflow.data.context": "training", "data_version_verified": "true"}


def _tagged_run(registry, **tags: str) -> str:
    run_id = registry.new_run()
    for key, value in tags.items():
        registry.client.set_tag(run_id, key, value)
    return run_id


def test_a_version_carries_its_runs_provenance_and_a_description_from_its_contract(sqlite_registry):
    from tests.registry.conftest import TwoHeadNet, example_batch, make_contract

    run_id = _tagged_run(sqlite_registry, data_version="0123456789abcdef.dir", data_version_verified="true",
                         data_version_recorded="0123456789abcdef.dir", data_record="data.dvc", git_dirty="true")  # fmt: skip
    contract = make_contract("ich-prognosis", {"prognosis_auc_mean": 0.8, "prognosis_auc_sd": 0.05})
    mv = tracking.register_model(TwoHeadNet(), contract, run_id=run_id, input_example=example_batch(),
                                 primary_metric="prognosis_auc_mean")  # fmt: skip
    assert {k: mv.tags[k] for k in tracking.PROVENANCE_TAGS} == {
        "data_version": "0123456789abcdef.dir", "data_version_verified": "true",
        "data_version_recorded": "0123456789abcdef.dir", "data_record": "data.dvc", "git_dirty": "true",
    }  # fmt: skip
    described = sqlite_registry.client.get_model_version("ich-prognosis", str(mv.version)).description
    assert described.splitlines() == [
        "**ich-prognosis** from experiment `medmlops/test`",
        "- tasks: prognosis (binary: good, poor); gcs (ordinal: mild, moderate, severe)",
        "- input: xray [1, 16, 16], formats png, dicom",
        "- data version: `0123456789abcdef.dir` (matches data.dvc)",
        "- git commit: `feedface` + uncommitted changes",
        "- prognosis_auc_mean: 0.800 ± 0.050",
    ]


def test_promotion_refuses_a_version_trained_on_unverified_data(sqlite_registry, capsys):
    from tests.registry.conftest import TwoHeadNet, example_batch, make_contract

    run_id = _tagged_run(sqlite_registry, data_version="aaaa.dir", data_version_verified="false",
                         data_version_recorded="bbbb.dir", data_record="data-smoke.dvc", git_dirty="false")  # fmt: skip
    contract = dataclasses.replace(make_contract("ich-prognosis"), data_version="aaaa.dir")  # from the run's tag
    mv = tracking.register_model(TwoHeadNet(), contract, run_id=run_id, input_example=example_batch(),
                                 primary_metric="prognosis_auc_mean")  # fmt: skip
    described = sqlite_registry.client.get_model_version("ich-prognosis", str(mv.version)).description
    assert "NOT the version data-smoke.dvc records (`bbbb.dir`): not promotable to champion" in described
    result = promote("ich-prognosis", GATES)
    assert not result.promoted and "champion" not in aliases(sqlite_registry.client, "ich-prognosis")
    (line,) = result.failed
    assert "trained on data aaaa.dir that is not the version data-smoke.dvc records (bbbb.dir)" in line
    assert "medmlops data track" in line and "dvc checkout data-smoke.dvc" in line

    # Verified data (and versions registered before the tag existed) pass this gate.
    sqlite_registry.register("ich-prognosis")
    assert promote("ich-prognosis", GATES).promoted


@pytest.mark.parametrize("dvc_file", ["data-smoke.dvc", None])
def test_the_record_file_comes_from_the_params(dvc_file):
    from types import SimpleNamespace

    data = SimpleNamespace(raw_dir="data/raw") if dvc_file is None else SimpleNamespace(dvc_file=dvc_file)
    assert tracking.data_record(SimpleNamespace(data=data)) == (dvc_file or "data.dvc")
