"""Serving → monitoring → drift, all real processes on 127.0.0.1: ``medmlops serve cxr-findings`` forwards every
prediction to ``medmlops monitor serve`` (write token), which computes INFORMER with the exact model version that
predicted; ``medmlops monitor report`` compares the window with the version's reference features (Evidently):
clean simulated traffic raises no alarm, the simulator's ``scanner`` shift is detected within 24 records, and the
monitoring service exports the report's drift share."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from medmlops.cli import main
from tests.conftest import REPO, _free_port, project_registry
from tests.monitoring.records import call, start_monitor, wait_for
from tests.shells.serving.test_service import MAX_UPLOAD, _predict, _stop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
TOKEN = "system-test-token"
N = 24


def _ready(url: str) -> bool:
    try:
        return call(f"{url}/readyz")[0] == 200
    except OSError:  # not listening yet
        return False


def _traffic(shift: str | None, seed: int) -> list[bytes]:
    """``N`` fresh simulated frontal CXRs (never seen in training) at the smoke size, optionally shifted."""
    from medmlops.data.readers import read_chexpert
    from medmlops.data.simulate import generate

    with tempfile.TemporaryDirectory() as tmp:
        generate("chexpert", tmp, n=N + 4, n_valid=1, seed=seed, shape=(64, 64), shift=shift, progress=False)
        paths = list(read_chexpert(tmp)["image_path"])[:N]
        return [Path(p).read_bytes() for p in paths]


@pytest.fixture(scope="module")
def platform(registered_project, tmp_path_factory):
    root = registered_project
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        assert main(["informer", "calibrate", "cxr-findings", "--profile", "smoke", "--method", "ixg", "--tta", "0",
                     "--quiet"]) == 0  # fmt: skip
    finally:
        mp.undo()
    work = tmp_path_factory.mktemp("system")
    mlflow_uri = f"sqlite:///{root / '.medmlops' / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": mlflow_uri, "MEDMLOPS_MONITORING_TOKEN": TOKEN}
    monitor = start_monitor(work, "--batch-size", "8", env=env, factory=None, cwd=root, name="system-monitor")
    port = _free_port()
    log = (work / "serve.log").open("w")
    serving = subprocess.Popen(
        [sys.executable, "-m", "medmlops.cli", "serve", "cxr-findings", "--alias", "candidate", "--port", str(port),
         "--max-upload-bytes", str(MAX_UPLOAD), "--repo", str(REPO), "--monitoring-url", monitor.url,
         "--spool-dir", str(work / "spool")],
        cwd=root, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    served = {"root": root, "serving": url, "monitor": monitor, "work": work, "env": env}
    try:
        assert wait_for(lambda: _ready(url), timeout_s=180, every_s=1.0), (work / "serve.log").read_text()[-3000:]
        yield served
    finally:
        _stop(serving)
        monitor.stop()
        served["monitor"].stop()  # the load test restarts it


def _send(platform, images: list[bytes]) -> list[dict]:
    answers = []
    for data in images:
        status, body = _predict(platform["serving"], data)
        assert status == 200, body
        answers.append(body)
    monitor = platform["monitor"].url

    def all_done() -> bool:
        return all(call(f"{monitor}/v1/records/{a['request_id']}")[1].get("status") == "done" for a in answers)

    assert wait_for(all_done, timeout_s=300, every_s=1.0), platform["monitor"].log_text()[-3000:]
    return answers


def _report(platform, capsys) -> dict:
    from medmlops.monitoring.store import Store

    workspace = platform["work"] / "workspace"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = platform["env"]["MLFLOW_TRACKING_URI"]
    try:
        code = main(["monitor", "report", "--family", "cxr-findings", "--workspace", str(workspace), "--db-url",
                     platform["monitor"].db_url, "--last", str(N), "--params", str(platform["root"] / "params.yaml"),
                     "--profile", "smoke"])  # fmt: skip
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    assert code == 0, capsys.readouterr().err
    store = Store(platform["monitor"].db_url)
    try:
        return store.latest_drift("cxr-findings")
    finally:
        store.close()


def test_every_prediction_gets_informer_results_from_the_version_that_made_it(platform, capsys):
    from medmlops.informer.calibrate import load_calibration
    from medmlops.registry.tracking import load_contract

    answers = _send(platform, _traffic(None, seed=101))
    with project_registry(platform["root"]):
        version = answers[0]["version"]
        contract = load_contract("cxr-findings", version)
        calibration = load_calibration("cxr-findings", version, contract)
    tau = calibration["methods"]["ixg"]["tau"]
    deployed = calibration["csf"]
    deployed_tau = dict(zip(contract.output_names(), deployed["operating_point"]["tau"], strict=True))
    monitor = platform["monitor"].url
    for answer in answers:
        status, record, _ = call(f"{monitor}/v1/records/{answer['request_id']}")
        assert status == 200 and record["version"] == answer["version"] == version
        result = record.get("result", record)
        assert set(result["distinctiveness"]) == set(contract.output_names())
        # The flag monitoring counts is the deployed CSF's at its operating point; INFORMER's d_c flag is beside it.
        assert result["csf"] == deployed["selected"]
        for cls, d in result["distinctiveness"].items():
            assert result["informer_flags"][cls] == (tau[cls] is not None and d < tau[cls])
            t = deployed_tau[cls]
            assert result["flags"][cls] == (t is not None and result["confidence"][cls] < t)
        # The monitoring side's probabilities are the serving answer's (same version, same preprocessing).
        for finding, p in answer["predictions"]["findings"]["probabilities"].items():
            assert abs(result["probabilities"][f"findings/{finding}"] - p) < 1e-4
    status, png, headers = call(f"{monitor}/v1/records/{answers[0]['request_id']}/saliency.png")
    assert status == 200 and png.startswith(b"\x89PNG")
    summary = call(f"{monitor}/v1/summary?family=cxr-findings")[1]
    assert summary["versions"][0]["csf"]["selected"] == deployed["selected"]
    # Ground truth posted later (here: the opposite of the first finding's prediction for every other record, so
    # both labels occur) becomes realized performance next to the label-free estimate.
    first = contract.output_names()[0]
    for k, answer in enumerate(answers):
        record = call(f"{monitor}/v1/records/{answer['request_id']}")[1]
        predicted = record.get("result", record)["labels"][first]
        label = 1 - predicted if k % 2 else predicted
        status, _, _ = call(f"{monitor}/v1/labels", method="POST", body={"request_id": answer["request_id"],
                            "labels": {first: label}}, token=TOKEN)  # fmt: skip
        assert status == 200
    performance = call(f"{monitor}/v1/performance?family=cxr-findings")[1]
    row = next(v for v in performance["versions"] if v["version"] == version)
    assert row["classes"][first]["n_labelled"] == len(answers) and row["classes"][first]["realized"]["f1"] is not None
    from tests.monitoring.test_service_performance import key, samples

    exported = samples(monitor)
    assert exported[key("medmlops_realized_performance", version, "f1", first)] == pytest.approx(
        row["classes"][first]["realized"]["f1"]
    )
    clean = _report(platform, capsys)
    assert clean["detected"] is False, clean
    assert clean["n_current"] == N


def test_shifted_traffic_is_detected_and_exported(platform, capsys):
    _send(platform, _traffic("scanner", seed=202))
    shifted = _report(platform, capsys)
    assert shifted["detected"] is True and shifted["drift_share"] >= 0.5, shifted
    assert Path(shifted["html_path"]).is_file()
    metrics = call(f"{platform['monitor'].url}/metrics")[1].decode()
    line = next(ln for ln in metrics.splitlines() if ln.startswith('medmlops_drift_share{family="cxr-findings"}'))
    assert abs(float(line.split()[-1]) - shifted["drift_share"]) < 1e-9
    assert "medmlops_informer_flag_rate{" in metrics


@pytest.mark.reliability(
    "Load",
    "16 clients for 60 s through serving, which forwards to monitoring; two `monitor worker` processes on the same database (INFORMER on the same 2 cores); monitoring SIGKILLed at 20 s, restarted at 35 s",
    "every request answered 200; every answered record stored exactly once, with its logit-tier flag within 1 s of ingest",
)
def test_load_for_60_s_with_monitoring_killed_and_restarted_loses_nothing(platform):
    """The bounded load test of the serving, front-door and monitoring-scale issues, on loopback: 16 clients for
    60 s against serving, which forwards every prediction to monitoring; two INFORMER worker processes
    (``medmlops monitor worker --workers 2``) share its database with the service's own worker, all on the same 2
    cores at lower CPU priority. 20 s in, monitoring is SIGKILLed; 15 s later it is restarted on the same port and
    database. Every request is answered 200, every answered request id reaches the monitoring store exactly once,
    and every stored record has its logit-tier scores and flags from the moment it was ingested (no model call)."""
    import signal
    import threading
    import time
    from urllib.parse import urlsplit

    import sqlalchemy as sa

    images = _traffic(None, seed=303)
    answered: list[str] = []
    statuses: dict[int, int] = {}
    failures: list[str] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop = start + 60.0

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            status, body = _predict(platform["serving"], images[i % len(images)])
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    answered.append(body["request_id"])
                elif len(failures) < 5:
                    failures.append(f"{status}: {body}")
            i += 16

    monitor = platform["monitor"]
    workers_log = (platform["work"] / "workers.log").open("w")
    workers = subprocess.Popen(
        [sys.executable, "-m", "medmlops.cli", "monitor", "worker", "--workers", "2", "--db-url", monitor.db_url,
         "--batch-size", "8"],
        cwd=platform["root"], env={**os.environ, **platform["env"]}, stdout=workers_log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, start + 20.0 - time.monotonic()))
    monitor.process.send_signal(signal.SIGKILL)  # no shutdown: whatever it had not committed is gone
    monitor.process.wait(timeout=10)
    at_kill = len(answered)
    time.sleep(max(0.0, start + 35.0 - time.monotonic()))
    restarted = start_monitor(
        platform["work"], "--batch-size", "8", db_url=monitor.db_url, env=platform["env"], factory=None,
        cwd=platform["root"], name="system-monitor-restarted", port=urlsplit(monitor.url).port,
    )  # fmt: skip
    platform["monitor"] = restarted
    for t in threads:
        t.join(timeout=400)
    assert statuses == {200: len(answered)}, (statuses, failures)
    assert 0 < at_kill < len(answered)
    print(f"\nload: {len(answered)} requests in 60 s at concurrency 16 ({len(answered) / 60:.1f} req/s), all 200; "
          f"monitoring killed after {at_kill} and restarted")  # fmt: skip
    engine = sa.create_engine(restarted.db_url)
    try:

        def stored() -> list[str]:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT request_id FROM records WHERE request_id IN :ids").bindparams(
                        sa.bindparam("ids", expanding=True)
                    ),
                    {"ids": answered},
                ).all()
            return [r[0] for r in rows]

        assert wait_for(lambda: set(stored()) == set(answered), timeout_s=300, every_s=2.0), (
            f"{len(set(answered) - set(stored()))} records not delivered"
        )
        assert sorted(stored()) == sorted(answered), "a record was stored twice"
        with engine.connect() as conn:
            lags = (
                conn.execute(
                    sa.text("SELECT logit_at - received_at FROM records WHERE request_id IN :ids").bindparams(
                        sa.bindparam("ids", expanding=True)
                    ),
                    {"ids": answered},
                )
                .scalars()
                .all()
            )
        assert None not in lags, "a record has no logit tier"  # the version is calibrated: every record is scored
        assert max(lags) <= 1.0, f"the logit tier came {max(lags):.2f} s after ingest"
    finally:
        engine.dispose()
        workers.send_signal(signal.SIGTERM)  # each finishes its batch, releases its leases and exits 0
        assert workers.wait(timeout=120) == 0, (platform["work"] / "workers.log").read_text()[-3000:]
        workers_log.close()
