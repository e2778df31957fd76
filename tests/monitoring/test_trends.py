"""Trends (:mod:`medmlops.monitoring.trends`) and human feature names (:mod:`medmlops.monitoring.features`): the
bucket chosen from the records' time span, performance and drift share per bucket, drift reports without server
paths, the alias history (from a real SQLite MLflow registry, and cached), the names a reader sees."""

from __future__ import annotations

import datetime as dt
import json
import math
import random

import pytest

from medmlops.monitoring.features import class_name, describe, describe_all, human_name
from medmlops.monitoring.service import Monitor, Settings
from medmlops.monitoring.trends import (
    NICE_BUCKETS,
    AliasHistory,
    alias_source,
    choose_bucket,
    describe_bucket,
    drift_history,
    performance_points,
    public_report,
    registry_aliases,
)

from .fake_aliases import calibration_source as aliased_source
from .fake_analyser import calibration_source, factory
from .records import UNSURE, make_record

T0 = 1_760_000_000.0


def _buckets(times: list[float], bucket: float) -> int:
    return len({math.floor(t / bucket) for t in times})


# -- the bucket ------------------------------------------------------------------------------------------------------


def test_no_records_get_the_old_default_hour_and_one_moment_one_second():
    assert choose_bucket([]) == 3600.0
    assert choose_bucket([T0] * 50) == 1.0


@pytest.mark.parametrize("span_s", [600, 3600, 6 * 3600, 86400, 7 * 86400])
def test_dense_traffic_gets_20_to_60_points_whatever_the_window(span_s):
    rng = random.Random(span_s)
    times = [T0 + rng.uniform(0, span_s) for _ in range(20_000)]
    bucket = choose_bucket(times)
    assert bucket in NICE_BUCKETS
    assert 20 <= _buckets(times, bucket) <= 60, (span_s, bucket, _buckets(times, bucket))


def test_the_demo_bursts_a_minute_apart_get_seconds_and_separate_points():
    """The demo sends 40 clean requests, then (a drift report and a minute later) 40 shifted ones."""
    clean = [T0 + i * 0.25 for i in range(40)]  # 10 s
    shifted = [T0 + 70 + i * 0.25 for i in range(40)]
    bucket = choose_bucket(clean + shifted)
    assert bucket <= 5
    clean_points, shifted_points = _buckets(clean, bucket), _buckets(shifted, bucket)
    assert clean_points >= 2 and shifted_points >= 2
    assert not {math.floor(t / bucket) for t in clean} & {math.floor(t / bucket) for t in shifted}
    assert choose_bucket(clean + shifted) < 600  # the smallest bucket the old selector offered: one dot for both


def test_sparse_traffic_gets_fewer_points_of_at_least_five_records():
    times = [T0 + i * 3600 for i in range(24)]  # one record an hour for a day
    bucket = choose_bucket(times)
    assert 24 / _buckets(times, bucket) >= 5 and bucket in NICE_BUCKETS


def test_buckets_read_as_a_reader_says_them():
    assert [describe_bucket(b) for b in (1, 2.5, 60, 300, 3600, 7200, 86400)] == [
        "1 s", "2.5 s", "1 min", "5 min", "1 h", "2 h", "1 d",
    ]  # fmt: skip


# -- performance, drift and the views ---------------------------------------------------------------------------------


@pytest.fixture
def monitor(tmp_path):
    monitor = Monitor(
        Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", sample_p=1.0), factory=factory,
        calibration=aliased_source, rng=random.Random(3),
    )  # fmt: skip
    yield monitor
    monitor.close()


def _traffic(monitor: Monitor, t0: float) -> None:
    """Clean traffic of version 2, then a minute later shifted traffic of version 3 (unsure logits, out of
    distribution), 24 records each over 6 s; every other clean record labelled."""
    for i in range(24):
        monitor.ingest(make_record(f"c{i}", version="2", created_at=t0 + i / 4))
        monitor.ingest({
            **make_record(f"s{i}", version="3", created_at=t0 + 70 + i / 4, logits=UNSURE),
            "in_distribution": False, "ood": {"score": 9.0, "threshold": 4.0},
        })  # fmt: skip
        if i % 2 == 0:  # both values of each class: a realized AUROC exists
            label = i % 4 == 0
            monitor.post_labels(
                {"request_id": f"c{i}", "labels": {"Atelectasis": int(label), "Cardiomegaly": 1 - label}}
            )
    while monitor.worker.run_once():
        pass


def test_auto_timeseries_separates_clean_and_shifted_traffic_with_performance_per_bucket(monitor, monkeypatch):
    t0 = float(int(dt.datetime.now(dt.UTC).timestamp()) // 10 * 10) - 3600
    events = {"events": [{"version": "2", "alias": "champion", "at": t0 - 30},
                         {"version": "3", "alias": "champion", "at": t0 + 50}], "current": {"champion": "3"}}  # fmt: skip
    monkeypatch.setenv("FAKE_ALIASES", json.dumps(events))
    _traffic(monitor, t0)
    series = monitor.timeseries(family="cxr-findings", bucket_s=None)
    assert series["auto"] is True and series["bucket_s"] <= 5
    clean = [p for p in series["points"] if p["t"] < t0 + 60]
    shifted = [p for p in series["points"] if p["t"] >= t0 + 60]
    assert len(clean) >= 2 and len(shifted) >= 2
    assert all(p["ood_rate"] == 0 for p in clean if p["ood_rate"] is not None)
    assert all(p["ood_rate"] == 1.0 for p in shifted)
    assert all(set(p["logit_flag_rate"].values()) == {1.0} for p in shifted)  # unsure logits: flagged at ingest
    assert all(set(p["logit_flag_rate"].values()) == {0.0} for p in clean)
    perf = series["performance"]
    assert {p["version"] for p in perf} == {"2", "3"} and all(p["estimated"] is not None for p in perf)
    assert any(p["realized"] is not None for p in perf if p["version"] == "2")  # labels came for version 2 only
    assert all(p["realized"] is None for p in perf if p["version"] == "3")
    assert [(e["version"], e["alias"]) for e in series["aliases"]["events"]] == [("2", "champion"), ("3", "champion")]
    assert series["aliases"]["events"][1]["time"].endswith("+00:00")
    assert series["aliases"]["note"] is None

    only3 = monitor.timeseries(family="cxr-findings", version="3", bucket_s=None)
    assert only3["points"] and all(p["t"] >= t0 + 60 for p in only3["points"])
    assert {p["version"] for p in only3["performance"]} == {"3"}
    assert monitor.timeseries(family="cxr-findings")["bucket_s"] == 3600.0  # the API's default is unchanged


def test_performance_points_are_per_bucket_and_version():
    from .fake_analyser import calibration_source

    rows = [
        {"request_id": f"r{i}", "family": "f", "version": "1" if i < 6 else "2", "created_at": T0 + i,
         "logits": [2.0, -2.0] if i % 2 else [-1.0, 1.0], "labels": {"Atelectasis": 1} if i == 0 else None}
        for i in range(12)
    ]  # fmt: skip
    points = performance_points(rows, 5.0, calibration_source)
    assert [(p["t"] - T0 + T0 % 5, p["version"]) for p in points][0][1] == "1"
    assert sum(p["n"] for p in points) == 12
    assert all(p["metric"] and p["estimable"] for p in points)
    assert points[0]["n_labelled"] == 1 and points == sorted(points, key=lambda p: p["t"])


def test_drift_history_has_no_server_path_and_names_the_drifted_features(monitor, tmp_path):
    secret = str(tmp_path)
    first = monitor.store.add_drift_report("cxr-findings", {
        "drift_share": 0.1, "detected": False, "created_at": T0, "version": "2", "n_drifted": 1, "n_columns": 10,
        "drifted_columns": ["img.p05"], "html_path": f"{secret}/a.html", "json_path": f"{secret}/a.json",
        "summary_path": f"{secret}/a.summary.json", "nested": {"html_path": f"{secret}/x"},
    })  # fmt: skip
    monitor.store.add_drift_report("cxr-findings", {
        "drift_share": 0.7, "detected": True, "created_at": T0 + 90, "version": "3",
        "drifted_columns": ["emb.pc1", "d.findings/Atelectasis", "weird"],
    })  # fmt: skip
    monitor.store.add_drift_report("other", {"drift_share": 0.3, "created_at": T0 + 10})
    history = monitor.drift_history(family="cxr-findings")
    assert secret not in json.dumps(history) and secret not in json.dumps(monitor.drift("cxr-findings"))
    assert secret not in json.dumps(monitor.drift())
    reports = history["reports"]
    assert [r["drift_share"] for r in reports] == [0.1, 0.7]
    assert reports[0]["html_url"] == f"/v1/drift/{first}/report.html" and reports[1]["html_url"] is None
    assert reports[0]["drifted_features"][0]["name"] == "Image: dark end (5th percentile)"
    assert [f["name"] for f in reports[1]["drifted_features"]] == [
        "Image content, axis 1", "Atelectasis: distinctiveness", "weird",
    ]  # fmt: skip
    assert [r["version"] for r in monitor.drift_history(family="cxr-findings", version="3")["reports"]] == ["3"]
    assert monitor.drift_history(family="cxr-findings", since=T0 + 1)["reports"][0]["drift_share"] == 0.7
    with pytest.raises(Exception, match="'family' is required"):
        monitor.drift_history()


def test_public_report_keeps_the_numbers_and_drops_every_path():
    row = {"id": 4, "family": "f", "created_at": T0, "drift_share": 0.5, "detected": True, "n_current": 3,
           "n_reference": 9, "html_path": "/srv/x.html", "json_path": "/srv/x.json",
           "summary": {"html_path": "/srv/x.html", "flag_rate": {"a": 0.1}, "performance": [{"model_path": "/p"}]}}  # fmt: skip
    view = public_report(row)
    assert "/srv" not in json.dumps(view) and "/p" not in json.dumps(view)
    assert view["html_url"] == "/v1/drift/4/report.html" and view["summary"]["flag_rate"] == {"a": 0.1}
    assert view["created_at_iso"].startswith("2025-10-09T")
    assert drift_history([row], version="9")[0]["id"] == 4  # a report naming no version covers every version


# -- alias history -----------------------------------------------------------------------------------------------------


def test_alias_history_is_cached_and_a_failure_is_retried_later():
    calls: list[str] = []
    now = [0.0]

    def source(family):
        calls.append(family)
        if family == "down":
            raise RuntimeError("registry down")
        return {"events": [{"version": 1, "alias": "champion", "at": T0}, {"version": 2, "alias": "candidate",
                "at": T0 - 5}, {"version": 3, "alias": "champion", "at": float("nan")}], "current": {"champion": 1}}  # fmt: skip

    history = AliasHistory(source, ttl_s=300, retry_s=60, clock=lambda: now[0])
    first = history.get("f")
    assert [(e["version"], e["alias"]) for e in first["events"]] == [("2", "candidate"), ("1", "champion")]
    assert first["current"] == {"champion": "1"} and first["note"] is None
    now[0] = 299
    assert history.get("f") == first and calls == ["f"]
    now[0] = 301
    history.get("f")
    assert calls == ["f", "f"]
    assert history.get("down")["note"] == "no alias history from the registry for this family"
    now[0] = 330
    history.get("down")
    assert calls.count("down") == 1
    now[0] = 400
    history.get("down")
    assert calls.count("down") == 2
    assert AliasHistory(None).get("f")["events"] == [] and AliasHistory(source).get(None)["events"] == []


def test_the_alias_source_follows_the_calibration_source():
    assert alias_source(None) is registry_aliases
    assert alias_source(aliased_source).__name__ == "alias_history"
    assert alias_source(calibration_source) is None  # a custom source without a history: no marks, no registry call


def test_registry_aliases_read_promotion_tags_from_a_real_mlflow_registry(tmp_path, monkeypatch):
    """``promote`` tags the version ``promoted_at``; a rollback moves the alias with no time, which the note says."""
    import mlflow
    from mlflow import MlflowClient

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient()
        client.create_registered_model("fam")
        for _ in range(3):
            client.create_model_version("fam", source=str(tmp_path / "model"))
        client.set_model_version_tag("fam", "1", "promoted_at", "2026-01-01T10:00:00+00:00")
        client.set_model_version_tag("fam", "3", "promoted_at", "2026-01-02T10:00:00+00:00")
        client.set_registered_model_alias("fam", "champion", "3")
        client.set_registered_model_alias("fam", "candidate", "3")
        got = AliasHistory(registry_aliases).get("fam")
        champions = [(e["version"], e["time"]) for e in got["events"] if e["alias"] == "champion"]
        assert champions == [("1", "2026-01-01T10:00:00.000+00:00"), ("3", "2026-01-02T10:00:00.000+00:00")]
        assert sorted(e["version"] for e in got["events"] if e["alias"] == "candidate") == ["1", "2", "3"]
        assert got["current"] == {"champion": "3", "candidate": "3"} and got["note"] is None
        client.set_registered_model_alias("fam", "champion", "1")  # what promotion.rollback does
        assert "version 1 is champion now" in AliasHistory(registry_aliases).get("fam")["note"]
    finally:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)


# -- feature names -------------------------------------------------------------------------------------------------------


def test_every_drift_feature_column_has_a_human_name_and_a_meaning():
    columns = ["img.mean", "img.std", "img.p05", "img.p50", "img.p95", "p.findings/Edema", "d.findings/Edema",
               "flag.findings/Edema", "entropy.findings/Edema", "emb.pc1", "emb.pc2", "emb.pc3", "pc5",
               "label:findings/Edema"]  # fmt: skip
    described = describe_all(columns)
    assert [d["column"] for d in described] == columns
    for d in described:
        assert d["name"] != d["column"] and "." not in d["name"].split(":")[0], d
        assert d["meaning"] and "\n" not in d["meaning"] and len(d["meaning"]) < 140, d
    assert human_name("img.p05") == "Image: dark end (5th percentile)"
    assert human_name("emb.pc2") == "Image content, axis 2" and "2nd main direction" in describe("pc2")["meaning"]
    assert describe("p.findings/Edema") == {
        "column": "p.findings/Edema", "name": "Edema: probability", "meaning": "the model's probability of Edema",
    }  # fmt: skip
    assert human_name("label:Edema") == "Edema: ground truth"
    assert describe("something") == {"column": "something", "name": "something",
                                     "meaning": "a feature column without a description"}  # fmt: skip
    assert class_name("prognosis/mRS 3-6") == "mRS 3-6" and describe_all(None) == []
    assert len({human_name(c) for c in columns}) == len(columns)
