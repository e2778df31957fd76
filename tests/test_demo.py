"""``medmlops demo`` end to end at the smoke profile on free ports, from a fresh clone without data: every stage with
real processes on 127.0.0.1 (the smoke data generated and matching data-smoke.dvc, MLflow server, the cxr Kubeflow
local run with calibration and gates, one console line per step and one log file each, monitoring, BentoML, clean
then shifted traffic, Evidently reports), the summary, reuse of the running servers and the calibrated model, and
--stop. The port check before anything starts (fast).

This is also the test of the cxr pipeline's local run (registration, calibration, promotion); the ich pipeline
(tests/shells/pipelines) and covid are run there. One pipeline keeps `make test` inside its time budget."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medmlops.cli import main
from medmlops.config import load_params
from medmlops.data import versioning
from medmlops.data.simulate import DATASETS
from medmlops.errors import UserError
from tests.shells.pipelines.test_pipeline_local import _project

from .conftest import REPO, _free_port, stop_process


def _fresh_clone(root: Path) -> Path:
    """What `git clone` gives a new user: the project's files (tracked, or new and not ignored) in a git repository
    with one commit, and no data, no DVC cache, no .medmlops."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file another change deleted is skipped
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "clone"], cwd=root, check=True)
    return root


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _evidently_ui_lists(workspace, project: str) -> None:
    """``evidently ui --workspace W --host 127.0.0.1 --port P``, as the README and the summary print it, serves the
    demo's drift project and its reports."""
    port = _free_port()
    ui = subprocess.Popen(
        [str(Path(sys.executable).parent / "evidently"), "ui", "--workspace", str(workspace), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not _up(f"http://127.0.0.1:{port}/api/projects"):
            assert ui.poll() is None, ui.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "evidently ui did not answer in 120 s"
            time.sleep(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/projects", timeout=10) as response:
            projects = {p["name"]: p["id"] for p in json.load(response)}
        assert project in projects, projects
        url = f"http://127.0.0.1:{port}/api/projects/{projects[project]}/snapshots"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert len(json.load(response)) >= 2  # the clean and the shifted window
    finally:
        stop_process(ui)


@pytest.mark.parametrize("held", ["mlflow_port", "monitoring_port"])
def test_a_busy_port_stops_the_demo_before_anything_starts(tmp_path, held):
    from medmlops.demo import check_ports

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        params = load_params(REPO / "params.yaml", profile="smoke", overrides=[f"demo.{held}={port}"])
        with pytest.raises(UserError) as caught:
            check_ports(params, tmp_path / "workdir", ["cxr-findings"])
    message = str(caught.value)
    assert f"port {port} on 127.0.0.1" in message and f"`--set demo.{held}=PORT`" in message, message
    assert f"by process {os.getpid()} (" in message, message  # this test's own process holds it
    assert not (tmp_path / "workdir" / "logs").exists() or not list((tmp_path / "workdir" / "logs").iterdir())


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_demo_runs_the_platform_from_a_fresh_clone_reuses_it_and_stops(tmp_path, capfd, monkeypatch):
    project = _fresh_clone(tmp_path / "demo")
    assert not (project / "data" / "raw-smoke").exists() and (project / "data-smoke.dvc").is_file()
    records = {name: (project / name).read_bytes() for name in ("data.dvc", "data-smoke.dvc")}
    monkeypatch.setattr(versioning, "DEFAULT_REMOTE", tmp_path / "dvc-remote")  # not the user's cache
    monkeypatch.chdir(project)
    # The demo points its own process at its MLflow server; undo that for the tests that follow.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset-by-the-demo-test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow_port, monitoring_port, ich_port, cxr_port = (_free_port() for _ in range(4))
    args = ["demo", "--profile", "smoke", "--repo", str(project), "--quiet",
            "--set", f"demo.mlflow_port={mlflow_port}", "--set", f"demo.monitoring_port={monitoring_port}",
            "--set", f"demo.serving_ports={{ich-prognosis: {ich_port}, cxr-findings: {cxr_port}}}",
            "--set", "demo.pipelines=[cxr]"]  # fmt: skip
    try:
        assert main(args) == 0, capfd.readouterr().err
        out = capfd.readouterr().out
        assert {name: (project / name).read_bytes() for name in records} == records  # no record rewritten
        assert "data: generated data/raw-smoke (smoke profile; matches data-smoke.dvc" in out
        for stage in ("1/8 demo data", "3/8 MLflow server", "4/8 Kubeflow pipelines", "5/8 monitoring and serving",
                      "6/8 clean traffic", "7/8 shifted traffic", "8/8 summary"):  # fmt: skip
            assert f"==> {stage}" in out
        assert "cxr: pipeline finished" in out and "registered cxr-findings version 1 as @candidate" in out
        # One console line per pipeline step; the steps' own output is in one log file each.
        workdir = project / ".medmlops" / "demo"
        logs = sorted((workdir / "logs" / "cxr").glob("[0-9][0-9]-*.log"))
        steps = [line for line in out.splitlines() if line.startswith("  cxr: [")]
        assert len(steps) == len(logs) >= 8 and all(" done in " in line for line in steps), steps
        assert "validate-data" in steps[0] and logs[0].name == "01-validate-data.log"
        assert "executor_input" not in out and "Streamed logs" not in out
        assert "executor_input" in (workdir / "logs" / "cxr" / "runner.log").read_text() or logs[0].read_text()
        summary = out.split("==> 8/8 summary")[1]
        # stripped: a progress bar elsewhere may leave spaces at a line's start in the captured output
        rows = [line.strip() for line in summary.splitlines() if line.strip().startswith("cxr-findings")]
        assert len(rows) == 1, summary
        # Promoted by the gates after calibration; clean traffic: no drift; the scanner shift: drift.
        assert "v1 @champion" in rows[0] and rows[0].rstrip().endswith("no / yes"), rows[0]
        assert f"http://127.0.0.1:{monitoring_port}/dashboard" in summary
        assert "promotion gates were OFF for cxr-findings" in summary and "flag rate: the share of answers" in summary
        assert f"{workdir / 'logs' / 'cxr'}/NN-STEP.log" in summary
        assert _up(f"http://127.0.0.1:{monitoring_port}/dashboard") and _up(f"http://127.0.0.1:{mlflow_port}/health")
        assert list((workdir / "evidently").rglob("*.json")), "the Evidently workspace holds the snapshots"
        _evidently_ui_lists(workdir / "evidently", "cxr-findings")  # the README's `evidently ui` command
        assert oct((workdir / "monitoring-token").stat().st_mode & 0o777) == "0o600"

        # A second run reuses what is there: the running servers and the calibrated model of this data version.
        from medmlops.demo import Processes, _ready_family

        assert _ready_family("cxr-findings", versioning.recorded_hash(project, "data-smoke.dvc")) == "1"
        Processes(workdir).ensure("mlflow", ["false"], f"http://127.0.0.1:{mlflow_port}/health", env={}, cwd=project)
        assert "mlflow: reused" in capfd.readouterr().out
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        assert main(["demo", "--stop", "--profile", "smoke", "--repo", str(project)]) == 0
    stopped = capfd.readouterr().out
    assert "stopped:" in stopped and "mlflow" in stopped
    assert not _up(f"http://127.0.0.1:{mlflow_port}/health") and not _up(f"http://127.0.0.1:{cxr_port}/readyz")
    assert not list((project / ".medmlops" / "demo" / "pids").glob("*.pid"))


@pytest.mark.reliability(
    "Faults",
    "Ctrl-C (SIGINT to the demo's process group) while `medmlops demo` runs its Kubeflow pipeline",
    "exit 130; every server it started is stopped and no process of the group is left",
)
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_ctrl_c_during_the_pipelines_stops_everything_the_demo_started(tmp_path):
    import signal

    project = _project(tmp_path / "demo", tuple(DATASETS))
    mlflow_port, monitoring_port, ich_port, cxr_port = (_free_port() for _ in range(4))
    log = tmp_path / "demo.log"
    command = [sys.executable, "-m", "medmlops.cli", "demo", "--profile", "smoke", "--repo", str(project),
               "--set", f"demo.mlflow_port={mlflow_port}", "--set", f"demo.monitoring_port={monitoring_port}",
               "--set", f"demo.serving_ports={{ich-prognosis: {ich_port}, cxr-findings: {cxr_port}}}",
               "--set", "demo.pipelines=[cxr]"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec (Python
    # then installs no KeyboardInterrupt handler): give the demo a terminal's default, as a user's shell does.
    with log.open("w") as out:
        demo = subprocess.Popen(command, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    kfp_root = project / ".medmlops" / "kfp"
    try:
        deadline = time.monotonic() + 600
        # Interrupt once a pipeline step runs as a subprocess of the local runner (after validation and MLflow).
        while not (kfp_root.is_dir() and list(kfp_root.rglob("preprocess"))):
            assert demo.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo did not reach its pipelines in 600 s"
            time.sleep(0.5)
        assert _up(f"http://127.0.0.1:{mlflow_port}/health")
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        assert demo.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if demo.poll() is None:
            stop_process(demo, sig=signal.SIGKILL)
    text = log.read_text()
    assert "interrupted: stopping the demo's processes" in text, text[-3000:]
    assert not _up(f"http://127.0.0.1:{mlflow_port}/health")
    assert not list((project / ".medmlops" / "demo" / "pids").glob("*.pid"))
    deadline = time.monotonic() + 30
    while True:  # the pipeline's step processes share the group: none may outlive the demo
        try:
            os.killpg(demo.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "processes of the demo's group are still running 30 s after it exited"
        time.sleep(0.5)
