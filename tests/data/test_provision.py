"""ensure_raw_data: a fresh clone's smoke data is generated and matches the committed data-smoke.dvc, byte for byte;
a second call pulls it from the DVC remote; the paper profile's real data is never generated; a mismatch is an error
naming the fix. Real git and dvc in temporary projects."""

from __future__ import annotations

import shutil

import pytest
import yaml

from medmlops.config import load_params
from medmlops.data import versioning
from medmlops.data.provision import ensure_raw_data
from medmlops.errors import UserError

from ..conftest import REPO
from .test_versioning import _new_project

pytestmark = pytest.mark.dvc


@pytest.fixture
def remote(tmp_path, monkeypatch):
    """The DVC remote the generated data is pushed to: a temporary folder, not the user's cache."""
    path = tmp_path / "dvc-remote"
    monkeypatch.setattr(versioning, "DEFAULT_REMOTE", path)
    return path


def test_a_fresh_clone_generates_the_smoke_data_of_its_record_then_pulls_it(tmp_path, remote, capsys):
    project = _new_project(tmp_path / "clone", files=("params.yaml", "data.dvc", "data-smoke.dvc"))
    records = {name: (project / name).read_bytes() for name in ("data.dvc", "data-smoke.dvc")}
    params = load_params(project / "params.yaml", profile="smoke")
    assert (params.data.raw_dir, params.data.dvc_file, params.data.simulated) == (
        "data/raw-smoke",
        "data-smoke.dvc",
        True,
    )

    assert ensure_raw_data(params, project, progress=False) == "generated"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "generated data/raw-smoke" in lines[0] and "matches data-smoke.dvc" in lines[0]
    assert "`medmlops data generate all --out data/raw-smoke --profile smoke`" in lines[0]
    assert versioning.workspace_matches(project, "data-smoke.dvc") == (True, "up to date")
    assert not (project / "data" / "raw").exists() and not list((project / "data").glob(".*partial"))
    assert ensure_raw_data(params, project, verify=True) == "present (matches data-smoke.dvc)"

    shutil.rmtree(project / "data" / "raw-smoke")  # pushed on generation: the next fresh copy pulls it
    assert ensure_raw_data(params, project, progress=False) == "pulled"
    assert "`dvc pull data-smoke.dvc`" in capsys.readouterr().out
    assert versioning.workspace_matches(project, "data-smoke.dvc")[0]
    assert {name: (project / name).read_bytes() for name in records} == records  # no record rewritten


def test_the_paper_profile_never_generates_real_data(tmp_path, remote):
    project = _new_project(tmp_path / "clone", files=("params.yaml", "data.dvc", "data-smoke.dvc"))
    params = load_params(project / "params.yaml", profile="paper")
    assert (params.data.raw_dir, params.data.dvc_file, params.data.simulated) == (
        "data/raw-paper",
        "data-paper.dvc",
        False,
    )
    with pytest.raises(UserError, match=r"never generated.*`medmlops data track --profile paper`"):
        ensure_raw_data(params, project, progress=False)
    assert not (project / "data" / "raw-paper").exists()


def test_generated_data_that_does_not_match_the_record_is_an_error(tmp_path, remote):
    project = _new_project(tmp_path / "clone", files=("params.yaml", "data-smoke.dvc"))
    params = load_params(project / "params.yaml", profile="smoke", overrides=["data.ich.n=10"])
    with pytest.raises(UserError, match=r"data-smoke.dvc records .*`medmlops data track --profile smoke`"):
        ensure_raw_data(params, project, progress=False)
    assert not (project / "data" / "raw-smoke").exists() and not list((project / "data").glob(".*partial"))


def test_present_data_that_does_not_match_the_record_is_an_error_with_verify(tmp_path, remote):
    project = _new_project(tmp_path / "clone", files=("params.yaml", "data-smoke.dvc"))
    params = load_params(project / "params.yaml", profile="smoke")
    ensure_raw_data(params, project, progress=False)
    table = project / "data" / "raw-smoke" / "ich" / "CLINICAL_DATA_ICH.csv"
    table.write_text(table.read_text() + "\n")
    assert ensure_raw_data(params, project) == "present"  # without verify: kept as it is, not hashed
    with pytest.raises(UserError, match=r"does not match data-smoke.dvc.*rm -rf data/raw-smoke"):
        ensure_raw_data(params, project, verify=True)


def test_the_committed_records_name_their_profiles_folders():
    for name, folder in (("data.dvc", "data/raw"), ("data-smoke.dvc", "data/raw-smoke")):
        assert yaml.safe_load((REPO / name).read_text())["outs"][0]["path"] == folder
    ignored = (REPO / "data" / ".gitignore").read_text().split()
    assert {"/raw", "/raw-smoke", "/raw-paper"} <= set(ignored)
