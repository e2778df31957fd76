"""``medmlops.monitoring.store``: idempotent ingest, conditional finishing, results frames, labels, drift reports, WAL.

Records reach the store parsed (:class:`~medmlops.inference.record.PredictionRecord`); their validation is tested in
``tests/inference/test_record.py``."""

from __future__ import annotations

import hashlib
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest

from medmlops.monitoring.store import Store, resolve_db_url

from .fake_analyser import fake_result
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


def _process(store: Store, request_id: str, *, version: str = "3", data: bytes | None = None) -> dict:
    data = f"image-{request_id}".encode() if data is None else data
    result = fake_result("cxr-findings", version, data)
    assert store.finish({request_id: result}) == 1
    return result


def test_finishing_is_conditional_one_result_per_record(store):
    store.add_record(prediction_record("r1"))
    _process(store, "r1")
    assert store.finish({"r1": fake_result("cxr-findings", "3", b"again")}) == 0  # already done: left alone
    assert store.finish(failed={"r1": "late failure"}) == 0
    row = store.record("r1")
    assert row["status"] == "done" and row["error"] is None and row["attempts"] == 1
    assert row["result"]["probabilities"] == fake_result("cxr-findings", "3", b"image-r1")["probabilities"]
    assert "saliency_png" not in row["result"]
    assert store.saliency_png("r1").startswith(b"\x89PNG")
    assert store.next_batch(10) == []


def test_results_frame_has_times_flags_features_and_posted_labels(store):
    for i in range(4):
        store.add_record(prediction_record(f"r{i}", version="3" if i < 3 else "4", created_at=T0 + 60 * i))
    results = {f"r{i}": _process(store, f"r{i}", version="3" if i < 3 else "4") for i in (2, 0, 3)}  # r1 pending
    assert store.add_labels("r2", {"Atelectasis": 1, "Cardiomegaly": 0}) is True
    assert store.add_labels("nope", {"Atelectasis": 1}) is False

    frame = store.results_frame("cxr-findings")
    assert list(frame["request_id"]) == ["r0", "r2", "r3"]  # processed only, newest last
    features = ["image_mean", "p:Atelectasis", "p:Cardiomegaly", "d:Atelectasis", "d:Cardiomegaly"]
    assert list(frame.columns) == [
        "request_id", "family", "version", "created_at", "processed_at", "flagged", *features,
        "label:Atelectasis", "label:Cardiomegaly",
    ]  # fmt: skip
    assert str(frame["created_at"].dtype) == "datetime64[ns, UTC]"
    assert frame["created_at"].iloc[1] == pd.Timestamp(T0 + 120, unit="s", tz="UTC")
    assert frame["flagged"].dtype == bool
    assert list(frame["flagged"]) == [results[r]["flagged"] for r in ("r0", "r2", "r3")]
    assert frame["p:Atelectasis"].dtype == np.float64
    assert frame.loc[1, "p:Atelectasis"] == pytest.approx(results["r2"]["probabilities"]["Atelectasis"])
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
    result["entropy"]["Atelectasis"] = np.float32("inf")
    store.finish({"r1": result})
    assert math.isnan(store.results_frame("cxr-findings").loc[0, "image_mean"])
    assert store.record("r1")["result"]["entropy"]["Atelectasis"] is None


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
