"""The same store and service on PostgreSQL (the cluster's database), against a throwaway local server
(``tests/monitoring/conftest.py``): the store and worker, concurrent claims taking disjoint rows (``FOR UPDATE SKIP
LOCKED``), the service with its hostile inputs answered 4xx (a NUL character PostgreSQL text cannot hold)."""

from __future__ import annotations

import threading
import time

import pytest

from medmlops.monitoring.store import Store
from medmlops.monitoring.worker import Worker

from .fake_analyser import factory as fake_factory
from .records import call, make_record, prediction_record, start_monitor, wait_for

pytestmark = pytest.mark.timeout(300)


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
        assert store.finish(worker.owner, {"pg-1": {"flags": {}}}) == 0
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


def test_concurrent_claims_take_disjoint_rows(postgres_url):
    """Eight threads claiming at once from one queue: SKIP LOCKED hands each row to exactly one of them."""
    store = Store(postgres_url)
    try:
        for i in range(120):
            store.add_record(prediction_record(f"c{i:03d}"), received_at=1_000.0 + i)
        claimed: dict[str, list[str]] = {}
        start = threading.Barrier(8)

        def claim(owner: str) -> None:
            start.wait()
            ids = claimed.setdefault(owner, [])
            while batch := store.claim(owner, 4, lease_s=600, backlog_bound=10):
                ids += [r.request_id for r in batch]

        threads = [threading.Thread(target=claim, args=(f"w{k}",)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        every = [request_id for ids in claimed.values() for request_id in ids]
        assert sorted(every) == [f"c{i:03d}" for i in range(120)]  # each row once, none left out
        assert sum(bool(ids) for ids in claimed.values()) >= 2
        owners = {store.record(f"c{i:03d}")["lease_owner"] for i in range(120)}
        assert owners == {owner for owner, ids in claimed.items() if ids}
    finally:
        store.close()


def test_the_service_runs_on_postgresql(postgres_url, tmp_path):
    server = start_monitor(tmp_path, db_url=postgres_url)
    try:
        assert call(f"{server.url}/healthz")[1]["database"] == "postgresql"
        assert call(f"{server.url}/records", method="POST", body=make_record("pg-http-1"))[0] == 202
        assert call(f"{server.url}/records", method="POST", body=make_record("pg-http-1"))[0] == 409
        assert wait_for(lambda: call(f"{server.url}/v1/records/pg-http-1")[1]["status"] == "done", 60)
        assert call(f"{server.url}/v1/records/pg-http-1")[1]["tier"] == "saliency"
        assert call(f"{server.url}/v1/summary?family=cxr-findings")[1]["counts"]["done"] >= 1
        assert b"medmlops_informer_flag_rate" in call(f"{server.url}/metrics")[1]
        hostile = [
            (call(f"{server.url}/v1/records/pg%00http"), 422, "bad_request_id"),
            (call(f"{server.url}/v1/records/pg%00http/saliency.png"), 422, "bad_request_id"),
            (call(f"{server.url}/v1/summary?family=cxr%00findings"), 422, "bad_query"),
            (call(f"{server.url}/v1/timeseries?version=3%00"), 422, "bad_query"),
            (call(f"{server.url}/v1/flagged?family=%00"), 422, "bad_query"),
            (call(f"{server.url}/v1/drift?family=%00"), 422, "bad_query"),
            (call(f"{server.url}/records", method="POST", body={**make_record("pg-nul"), "model": "cxr\x00"}), 422,
             "invalid_field"),
            (call(f"{server.url}/v1/labels", method="POST", body={"request_id": "pg\x00", "labels": {"a": 1}}), 422,
             "bad_request_id"),
            (call(f"{server.url}/v1/drift/99999999999999999999/report.html"), 404, "no_report"),
            (call(f"{server.url}/v1/drift/2147483648/report.html"), 404, "no_report"),
        ]  # fmt: skip
        for (status, body, _headers), expected, error in hostile:
            assert (status, body["error"]) == (expected, error), body
        assert call(f"{server.url}/healthz")[0] == 200 and server.process.poll() is None
    finally:
        assert server.stop() == 0
