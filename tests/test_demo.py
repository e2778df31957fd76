"""``medmlops demo`` end to end at the smoke profile on free ports: every stage with real processes on 127.0.0.1
(MLflow server, the ich and cxr Kubeflow local runs with calibration and gates, monitoring, two BentoML services,
clean then shifted traffic, Evidently reports), the summary, a second run that reuses everything, and --stop."""

from __future__ import annotations

import urllib.request

import pytest

from medmlops.cli import main
from medmlops.data.simulate import DATASETS

from .conftest import _free_port
from .pipelines.test_pipeline_local import _project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_demo_runs_the_platform_reuses_it_and_stops(tmp_path, capsys, monkeypatch):
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
            "--set", f"demo.serving_ports={{ich-prognosis: {ich_port}, cxr-findings: {cxr_port}}}"]  # fmt: skip
    try:
        assert main(args) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        for stage in ("1/8 demo data", "3/8 MLflow server", "4/8 Kubeflow pipelines", "5/8 monitoring and serving",
                      "6/8 clean traffic", "7/8 shifted traffic", "8/8 summary"):  # fmt: skip
            assert f"==> {stage}" in out
        assert "ich: pipeline finished" in out and "cxr: pipeline finished" in out
        summary = out.split("==> 8/8 summary")[1]
        cxr_row = next(line for line in summary.splitlines() if line.startswith("cxr-findings"))
        assert cxr_row.rstrip().endswith("no / yes"), cxr_row  # clean: no drift; scanner shift: drift
        assert f"http://127.0.0.1:{monitoring_port}/dashboard" in summary
        assert _up(f"http://127.0.0.1:{monitoring_port}/dashboard") and _up(f"http://127.0.0.1:{mlflow_port}/health")
        workdir = project / ".medmlops" / "demo"
        assert list((workdir / "evidently").rglob("*")), "the Evidently workspace holds the snapshots"
        assert oct((workdir / "monitoring-token").stat().st_mode & 0o777) == "0o600"

        # Again: the servers and the calibrated models are reused; only the traffic and reports run.
        assert main(args) == 0
        again = capsys.readouterr().out
        assert "mlflow: reused" in again and "monitoring: reused" in again
        assert "ich: reused" in again and "cxr: reused" in again
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        assert main(["demo", "--stop", "--profile", "smoke", "--repo", str(project)]) == 0
    stopped = capsys.readouterr().out
    assert "stopped:" in stopped and "mlflow" in stopped
    assert not _up(f"http://127.0.0.1:{mlflow_port}/health") and not _up(f"http://127.0.0.1:{cxr_port}/readyz")
    assert not list((project / ".medmlops" / "demo" / "pids").glob("*.pid"))
