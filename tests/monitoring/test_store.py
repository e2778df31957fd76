"""``medmlops.monitoring.store``: idempotent ingest, leased claims and conditional finishing, results frames, labels,
drift reports, WAL, owner-only files, columns added to an older database.

Records reach the store parsed (:class:`~medmlops.inference.record.PredictionRecord`); their validation is tested in
``tests/inference/test_record.py``."""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
import stat

import numpy as np
import pandas as pd
import pytest

from medmlops.monitoring.store import Store, resolve_db_url

from .fake_analyser import CLASSES, fake_result
from .records import prediction_record

T0 = 1_790_000_000.0


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'nested' / 'monitoring.db'}")
    yield store
    store.close()


def test_the_database_folder_is_created_and_the_url_comes_from_flag_env_or_default(tmp_path, monkeypatch):
    assert (tmp_path / "nested").is_dir() is False
    Store(f"sqlite:///{tmp_path / 'nested' / 'deeper' / 'm.db'}").close()
    assert (tmp_path / "nested" / "deeper" / "m.db").is_file()
    monkeypatch.delenv("MEDMLOPS_MONITORING_DB_URL", raising=False)
    assert resolve_db_url(None) == "sqlite:///.medmlops/monitoring.db"
    monkeypatch.setenv("MEDMLOPS_MONITORING_DB_URL", "postgresql://m@db/monitoring")
    assert resolve_db_url(None) == "postgresql://m@db/monitoring"
    assert resolve_db_url("sqlite:///x.db") == "sqlite:///x.db"


def test_sqlite_runs_in_wal_mode_with_full_sync(store, tmp_path):
    store.add_record(prediction_record("r1"))
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    with sqlite3.connect(tmp_path / "nested" / "monitoring.db") as raw:  # WAL is a property of the file
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_duplicate_request_id_is_refused_and_the_first_record_kept(store):
    assert store.add_record(prediction_record("abc123", version="3")) is True
    assert store.add_record(prediction_record("abc123", version="4", data=b"other")) is False
    row = store.record("abc123")
    assert row["version"] == "3" and row["status"] == "pending" and row["attempts"] == 0
    assert row["sha256"] == hashlib.sha256(b"image-abc123").hexdigest() and row["created_at"] > T0
    assert row["predictions"] == {"findings": {"probabilities": {"Atelectasis": 0.3}, "labels": []}}
    assert store.pending_count() == 1


def lease_all(store: Store, owner: str = "test-worker") -> list[str]:
    """Claim every claimable record for ``owner`` (one claim per family and version); their ids."""
    ids = []
    while batch := store.claim(owner, 1000, lease_s=600):
        ids += [record.request_id for record in batch]
    return ids


def _process(store: Store, request_id: str, *, version: str = "3", data: bytes | None = None) -> dict:
    data = f"image-{request_id}".encode() if data is None else data
    result = fake_result("cxr-findings", version, data)
    lease_all(store)
    assert store.finish("test-worker", {request_id: result}) == 1
    return result


def test_finishing_is_conditional_one_result_per_record_by_the_lease_owner(store):
    store.add_record(prediction_record("r1"))
    (claimed,) = store.claim("a", 10, lease_s=60)
    assert (claimed.request_id, claimed.attempts, claimed.upload) == ("r1", 1, b"image-r1")
    assert store.finish("b", {"r1": fake_result("cxr-findings", "3", b"image-r1")}) == 0  # not b's lease
    assert store.finish("a", {"r1": fake_result("cxr-findings", "3", b"image-r1")}) == 1
    assert store.finish("a", {"r1": fake_result("cxr-findings", "3", b"again")}) == 0  # already done: left alone
    assert store.finish("a", failed={"r1": "late failure"}) == 0
    row = store.record("r1")
    assert row["status"] == "done" and row["error"] is None and row["attempts"] == 1
    assert row["lease_owner"] is None and row["lease_expires"] is None
    assert row["result"]["probabilities"] == fake_result("cxr-findings", "3", b"image-r1")["probabilities"]
    assert "saliency_png" not in row["result"]
    assert store.saliency_png("r1").startswith(b"\x89PNG")
    assert store.claim("a", 10, lease_s=60) == []


def test_claims_are_disjoint_and_a_lease_that_expires_goes_to_another_worker(store):
    t = 1_000.0
    for i in range(5):
        store.add_record(prediction_record(f"r{i}"), received_at=t + i)
    first = store.claim("a", 3, lease_s=10, now=t + 10)
    second = store.claim("b", 3, lease_s=10, now=t + 11)
    assert [r.request_id for r in first] == ["r0", "r1", "r2"] and [r.request_id for r in second] == ["r3", "r4"]
    assert store.claim("c", 3, lease_s=10, now=t + 12) == []  # everything is leased
    assert store.renew("a", ["r0", "r1"], 10, now=t + 15) == 2  # a is alive: r0, r1 held until t + 25
    assert store.finish("a", {"r2": {"flags": {}}}) == 1
    taken = store.claim("c", 10, lease_s=10, now=t + 22)  # b died: its leases (t + 21) have expired, a's have not
    assert [(r.request_id, r.attempts) for r in taken] == [("r3", 2), ("r4", 2)]
    assert store.finish("b", {"r3": {"flags": {}}}) == 0  # b's late result is dropped: c holds r3 now
    assert store.finish("c", {"r3": {"flags": {}}}, failed={"r4": "unreadable"}) == 2
    assert store.renew("b", ["r3"], 10) == 0
    assert {r: store.record(r)["status"] for r in ("r0", "r2", "r3", "r4")} == {
        "r0": "pending", "r2": "done", "r3": "done", "r4": "failed"
    }  # fmt: skip


def test_released_records_wait_out_their_retry_delay_and_fail_after_max_attempts(store):
    t = 1_000.0
    store.add_record(prediction_record("r1"), received_at=t)
    (record,) = store.claim("a", 1, lease_s=10, now=t)
    assert store.release("a", {"r1": (t + 5, "model cannot be loaded")}) == 1
    assert store.claim("a", 1, lease_s=10, now=t + 4) == []
    row = store.record("r1")
    assert (row["status"], row["error"], row["lease_owner"], row["attempts"]) == (
        "pending", "model cannot be loaded", None, 1
    )  # fmt: skip
    assert [r.attempts for r in store.claim("a", 1, lease_s=10, now=t + 6, max_attempts=3)] == [2]
    # The worker dies twice: the claim after the last expired lease gives up on the record, visibly.
    assert [r.attempts for r in store.claim("b", 1, lease_s=10, now=t + 17, max_attempts=3)] == [3]
    assert store.claim("c", 1, lease_s=10, now=t + 28, max_attempts=3) == []
    row = store.record("r1")
    assert row["status"] == "failed" and "no result after 3 attempts" in row["error"] and row["lease_owner"] is None


def test_a_backlog_is_claimed_flagged_first_then_the_sample_then_the_rest_each_oldest_first(store):
    from medmlops.monitoring.store import FLAGGED, REST, SAMPLE, Intake

    strata = [REST, SAMPLE, FLAGGED, REST, FLAGGED, SAMPLE, REST, REST]
    for i, stratum in enumerate(strata):
        intake = Intake(stratum=stratum, sample_p=None if stratum == FLAGGED else 0.25)
        store.add_record(prediction_record(f"r{i}"), received_at=1_000.0 + i, intake=intake)

    def order(bound: int | None) -> list[str]:
        ids = []
        while batch := store.claim(f"w{bound}", 3, lease_s=60, now=2_000.0 + len(ids), backlog_bound=bound):
            ids += [r.request_id for r in batch]
        return ids

    assert order(8) == [f"r{i}" for i in range(8)]  # 8 pending, not above the bound: oldest first
    with store.engine.begin() as connection:  # give them all back
        connection.exec_driver_sql("UPDATE records SET lease_owner = NULL, lease_expires = NULL")
    assert order(7) == ["r2", "r4", "r1", "r5", "r0", "r3", "r6", "r7"]
    assert store.record("r2")["stratum"] == FLAGGED and store.record("r1")["sample_p"] == 0.25


def test_the_database_and_its_folder_are_owner_only(tmp_path):
    db = tmp_path / "new" / "deeper" / "m.db"
    Store(f"sqlite:///{db}").close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o755)
    open_folder.chmod(0o755)
    (open_folder / "m.db").touch(mode=0o644)
    os.chmod(open_folder / "m.db", 0o644)
    store = Store(f"sqlite:///{open_folder / 'm.db'}")
    try:
        store.add_record(prediction_record("r1"))  # the -wal and -shm files exist now
        for path in open_folder.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        store.close()
    assert stat.S_IMODE(open_folder.stat().st_mode) == 0o700


def test_an_older_database_gets_the_new_columns(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as raw:  # the records table as the version before leases and tiers created it
        raw.execute(
            "CREATE TABLE records (request_id VARCHAR(128) PRIMARY KEY, family VARCHAR(128) NOT NULL, version "
            "VARCHAR(64) NOT NULL, created_at FLOAT NOT NULL, received_at FLOAT NOT NULL, upload BLOB NOT NULL, "
            "sha256 VARCHAR(64) NOT NULL, logits JSON, predictions JSON NOT NULL, status VARCHAR(16) NOT NULL, "
            "attempts INTEGER NOT NULL, error TEXT)"
        )
        raw.execute("INSERT INTO records VALUES ('old', 'cxr-findings', '3', 1, 1, x'00', ?, '[]', '{}', 'pending', 0, "
                    "NULL)", ("0" * 64,))  # fmt: skip
    store = Store(f"sqlite:///{db}")
    try:
        (claimed,) = store.claim("a", 5, lease_s=60)
        assert claimed.request_id == "old" and store.record("old")["stratum"] == 1  # the default: the census sample
        assert store.add_record(prediction_record("new"))
        old = store.record("old")
        assert (old["in_distribution"], old["ood_score"], old["study"]) == (None, None, None)  # added, empty
    finally:
        store.close()


def test_the_ood_verdict_and_the_study_identity_are_stored_per_record(store):
    from dataclasses import replace

    study = {"accession_number": "ACC-7", "study_id": "s-1"}
    out = replace(prediction_record("out"), ood={"in_distribution": False, "score": 9.5, "threshold": 5.0}, study=study)
    inside = replace(prediction_record("in"), ood={"in_distribution": True, "score": 1.25, "threshold": 5.0})
    for record in (out, inside, prediction_record("before")):  # "before": a record from before the verdict
        assert store.add_record(record)
    row = store.record("out")
    assert (row["in_distribution"], row["ood_score"], row["ood_threshold"], row["study"]) == (False, 9.5, 5.0, study)
    assert store.record("in")["in_distribution"] is True and store.record("in")["study"] is None
    verdicts = {r["request_id"]: r["in_distribution"] for r in store.population(family="cxr-findings")}
    assert verdicts == {"out": False, "in": True, "before": None}


def test_results_frame_has_times_flags_features_and_posted_labels(store):
    for i in range(4):
        store.add_record(prediction_record(f"r{i}", version="3" if i < 3 else "4", created_at=T0 + 60 * i))
    results = {f"r{i}": _process(store, f"r{i}", version="3" if i < 3 else "4") for i in (2, 0, 3)}  # r1 pending
    assert store.add_labels("r2", {"Atelectasis": 1, "Cardiomegaly": 0}) is True
    assert store.add_labels("nope", {"Atelectasis": 1}) is False

    frame = store.results_frame("cxr-findings")
    assert list(frame["request_id"]) == ["r0", "r2", "r3"]  # processed only, newest last
    features = ["image_mean", *(f"{kind}:{name}" for kind in ("p", "d") for name in CLASSES)]
    assert list(frame.columns) == [
        "request_id", "family", "version", "created_at", "processed_at", "flagged", *features,
        "label:Atelectasis", "label:Cardiomegaly",
    ]  # fmt: skip
    assert str(frame["created_at"].dtype) == "datetime64[ns, UTC]"
    assert frame["created_at"].iloc[1] == pd.Timestamp(T0 + 120, unit="s", tz="UTC")
    assert frame["flagged"].dtype == bool
    assert list(frame["flagged"]) == [results[r]["flagged"] for r in ("r0", "r2", "r3")]
    assert frame[f"p:{CLASSES[0]}"].dtype == np.float64
    assert frame.loc[1, f"p:{CLASSES[0]}"] == pytest.approx(results["r2"]["probabilities"][CLASSES[0]])
    assert frame.loc[1, "label:Atelectasis"] == 1.0 and frame.loc[1, "label:Cardiomegaly"] == 0.0
    assert math.isnan(frame.loc[0, "label:Atelectasis"])

    assert list(store.results_frame("cxr-findings", version="3")["request_id"]) == ["r0", "r2"]
    assert list(store.results_frame("cxr-findings", since=T0 + 60, until=T0 + 180)["request_id"]) == ["r2"]
    assert list(store.results_frame("cxr-findings", limit=2)["request_id"]) == ["r2", "r3"]  # the newest two
    empty = store.results_frame("ich-prognosis")
    assert empty.empty and list(empty.columns)[:6] == list(frame.columns)[:6]


def test_labels_are_replaced(store):
    store.add_record(prediction_record("r1"))
    assert store.add_labels("r1", {"Atelectasis": 1})
    assert store.add_labels("r1", {"Atelectasis": 0, "Cardiomegaly": 1})
    assert store.record("r1")["labels"] == {"Atelectasis": 0, "Cardiomegaly": 1}


def test_non_finite_features_are_stored_as_missing(store):
    store.add_record(prediction_record("r1"))
    result = fake_result("cxr-findings", "3", b"image-r1")
    result["features"]["image_mean"] = float("nan")
    result["entropy"][CLASSES[0]] = np.float32("inf")
    lease_all(store)
    store.finish("test-worker", {"r1": result})
    assert math.isnan(store.results_frame("cxr-findings").loc[0, "image_mean"])
    assert store.record("r1")["result"]["entropy"][CLASSES[0]] is None


def test_drift_reports_round_trip_and_the_latest_wins(store):
    assert store.latest_drift("cxr-findings") is None
    first = store.add_drift_report(
        "cxr-findings",
        {
            "drift_share": 0.1,
            "detected": False,
            "n_current": 40,
            "n_reference": 100,
            "html_path": "/ws/a.html",
            "json_path": "/ws/a.json",
            "created_at": T0,
        },  # fmt: skip
    )
    second = store.add_drift_report(
        "cxr-findings",
        {
            "drift_share": np.float64(0.6),
            "detected": np.bool_(True),
            "n_current": np.int64(50),
            "n_reference": 100,
            "html_path": "/ws/b.html",
            "json_path": "/ws/b.json",
            "drifted_columns": ["p:Atelectasis", "image_mean"],
        },  # fmt: skip
    )
    store.add_drift_report("ich-prognosis", {"drift_share": 0.0, "detected": False, "n_current": 5, "n_reference": 9})
    assert second > first
    latest = store.latest_drift("cxr-findings")
    assert latest["id"] == second and latest["drift_share"] == 0.6 and latest["detected"] is True
    assert latest["n_current"] == 50 and latest["html_path"] == "/ws/b.html" and latest["created_at"] > T0
    assert latest["summary"]["drifted_columns"] == ["p:Atelectasis", "image_mean"]
    assert {r["family"]: r["id"] for r in store.latest_drifts()} == {
        "cxr-findings": second,
        "ich-prognosis": second + 1,
    }
