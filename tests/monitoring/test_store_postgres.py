"""The same store and service on PostgreSQL (the cluster's database), against a throwaway local server.

Needs the PostgreSQL server binaries (``initdb``, ``pg_ctl``) on PATH (this machine kind has them) and psycopg2 (a
project dependency); without them the tests fail, they are never silently skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from medmlops.monitoring.store import Store
from medmlops.monitoring.worker import Worker

from ..conftest import _free_port
from .fake_analyser import factory as fake_factory
from .records import call, make_record, prediction_record, start_monitor, wait_for

pytestmark = pytest.mark.timeout(300)


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    assert runuser is not None, "PostgreSQL refuses to run as root and runuser (util-linux) is missing"
    return [runuser, "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres_url():
    import psycopg2  # noqa: F401 - a project dependency: the cluster's monitoring store is PostgreSQL

    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    # Not skipped: a store that only ever met SQLite is untested for the cluster. Debian: apt-get install postgresql.
    assert initdb and pg_ctl, "the PostgreSQL server binaries (initdb, pg_ctl) are not on PATH"
    root = Path(tempfile.mkdtemp(prefix="medmlops-pg-"))  # outside pytest's 0700 folders: the postgres user reads it
    root.chmod(0o755)
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = _free_port()
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "monitoring", "--no-sync"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield f"postgresql+psycopg2://monitoring@127.0.0.1:{port}/postgres"
    finally:
        if data.exists():
            subprocess.run(
                _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True, timeout=60
            )
        shutil.rmtree(root, ignore_errors=True)


def test_the_store_and_worker_run_on_postgresql(postgres_url):
    store = Store(postgres_url)
    try:
        assert store.dialect == "postgresql" and store.ping()
        t0 = time.time() - 600
        for i in range(5):
            assert store.add_record(prediction_record(f"pg-{i}", created_at=t0 + 60 * i, version="3" if i < 4 else "4"))
        assert store.add_record(prediction_record("pg-0")) is False
        store.add_record(prediction_record("pg-bad", data=b"BAD upload"))
        worker = Worker(store, factory=fake_factory, batch_size=2)
        while worker.run_once():
            pass
        assert store.pending_count() == 0 and store.record("pg-bad")["status"] == "failed"
        assert store.finish({"pg-1": {"flags": {}}}) == 0
        assert store.add_labels("pg-2", {"Atelectasis": 1}) and store.add_labels("pg-2", {"Atelectasis": 0})
        frame = store.results_frame("cxr-findings", version="3", since=t0 + 30, limit=2)
        assert list(frame["request_id"]) == ["pg-2", "pg-3"] and frame.loc[0, "label:Atelectasis"] == 0.0
        assert str(frame["created_at"].dtype) == "datetime64[ns, UTC]" and frame["flagged"].dtype == bool
        assert store.saliency_png("pg-1").startswith(b"\x89PNG")
        counts = {(c["version"], c["status"]): c["n"] for c in store.status_counts(family="cxr-findings")}
        assert counts == {("3", "done"): 4, ("3", "failed"): 1, ("4", "done"): 1}
        flagged = store.processed(family="cxr-findings", flagged_only=True, full=True)
        assert all(row["flagged"] and row["result"]["flagged"] for row in flagged)
        first = store.add_drift_report("cxr-findings", {"drift_share": 0.5, "detected": True, "n_current": 6})
        store.add_drift_report("ich-prognosis", {"drift_share": float("nan"), "detected": False})
        assert store.latest_drift("cxr-findings")["id"] == first
        assert {r["family"] for r in store.latest_drifts()} == {"cxr-findings", "ich-prognosis"}
        assert store.latest_drift("ich-prognosis")["summary"]["drift_share"] is None
    finally:
        store.close()


def test_the_service_runs_on_postgresql(postgres_url, tmp_path):
    server = start_monitor(tmp_path, db_url=postgres_url)
    try:
        assert call(f"{server.url}/healthz")[1]["database"] == "postgresql"
        assert call(f"{server.url}/records", method="POST", body=make_record("pg-http-1"))[0] == 202
        assert call(f"{server.url}/records", method="POST", body=make_record("pg-http-1"))[0] == 409
        assert wait_for(lambda: call(f"{server.url}/v1/records/pg-http-1")[1]["status"] == "done", 60)
        assert call(f"{server.url}/v1/summary?family=cxr-findings")[1]["counts"]["done"] >= 1
        assert b"medmlops_informer_flag_rate" in call(f"{server.url}/metrics")[1]
    finally:
        assert server.stop() == 0
