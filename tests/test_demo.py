"""``medmlops demo`` end to end at the smoke profile on free ports: every stage with real processes on 127.0.0.1
(MLflow server, the cxr Kubeflow local run with calibration and gates, monitoring, BentoML, clean then shifted
traffic, Evidently reports), the summary, reuse of the running servers and the calibrated model, and --stop.

This is also the test of the cxr pipeline's local run (registration, calibration, promotion); the ich pipeline
(tests/shells/pipelines) and covid are run there. One pipeline keeps `make test` inside its time budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medmlops.cli import main
from medmlops.data.simulate import DATASETS
from tests.shells.pipelines.test_pipeline_local import _project

from .conftest import _free_port, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


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


def test_demo_runs_the_platform_reuses_it_and_stops(tmp_path, capfd, monkeypatch):
    project = _project(tmp_path / "demo", tuple(DATASETS))
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
        for stage in ("1/8 demo data", "3/8 MLflow server", "4/8 Kubeflow pipelines", "5/8 monitoring and serving",
                      "6/8 clean traffic", "7/8 shifted traffic", "8/8 summary"):  # fmt: skip
            assert f"==> {stage}" in out
        assert "cxr: pipeline finished" in out and "registered cxr-findings version 1 as @candidate" in out
        summary = out.split("==> 8/8 summary")[1]
        # stripped: a progress bar elsewhere may leave spaces at a line's start in the captured output
        rows = [line.strip() for line in summary.splitlines() if line.strip().startswith("cxr-findings")]
        assert len(rows) == 1, summary
        # Promoted by the gates after calibration; clean traffic: no drift; the scanner shift: drift.
        assert "v1 @champion" in rows[0] and rows[0].rstrip().endswith("no / yes"), rows[0]
        assert f"http://127.0.0.1:{monitoring_port}/dashboard" in summary
        assert _up(f"http://127.0.0.1:{monitoring_port}/dashboard") and _up(f"http://127.0.0.1:{mlflow_port}/health")
        workdir = project / ".medmlops" / "demo"
        assert list((workdir / "evidently").rglob("*.json")), "the Evidently workspace holds the snapshots"
        _evidently_ui_lists(workdir / "evidently", "cxr-findings")  # the README's `evidently ui` command
        assert oct((workdir / "monitoring-token").stat().st_mode & 0o777) == "0o600"

        # A second run reuses what is there: the running servers and the calibrated model of this data version.
        from medmlops.data import versioning
        from medmlops.demo import Processes, _ready_family

        assert _ready_family("cxr-findings", versioning.recorded_hash(project)) == "1"
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
def test_ctrl_c_during_the_pipelines_stops_everything_the_demo_started(tmp_path):
    import os
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
