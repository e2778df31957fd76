"""``medmlops.monitoring.service.Monitor`` without a server: a posted record is parsed and stored once (nothing of a
bad one), labels are checked and need a known record, and what is missing says what it is; the worker runs in-process
with the fake analyser. The HTTP mapping of these answers is tested in ``tests/shells/monitoring``."""

from __future__ import annotations

import pytest

from medmlops.inference.record import RecordError
from medmlops.monitoring.service import Monitor, NotFound, Settings, parse_labels

from .fake_analyser import factory
from .records import make_record


@pytest.fixture
def monitor(tmp_path):
    monitor = Monitor(Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}"), factory=factory)
    yield monitor
    monitor.close()


def test_a_posted_record_is_stored_once_and_a_bad_one_not_at_all(monitor):
    assert monitor.ingest(make_record("r1", version="3")) == ("r1", True)
    assert monitor.ingest(make_record("r1", version="4")) == ("r1", False)
    with pytest.raises(RecordError) as caught:
        monitor.ingest({**make_record("r2"), "logits": "none"})
    assert (caught.value.field, caught.value.error) == ("logits", "bad_type")
    view = monitor.record_view("r1")
    assert (view["version"], view["status"], view["model"]) == ("3", "pending", "cxr-findings")
    with pytest.raises(NotFound) as missing:
        monitor.record_view("r2")
    assert (missing.value.error, missing.value.detail) == ("unknown_request_id", "no record r2 is stored")
    assert monitor.summary()["counts"]["total"] == 1
    assert (
        'medmlops_monitoring_records_ingested_total{family="cxr-findings"} 1.0' in monitor.metrics.render()[0].decode()
    )


def test_labels_are_checked_and_need_a_known_record(monitor):
    monitor.ingest(make_record("r1"))
    assert monitor.post_labels({"request_id": "r1", "labels": {"Edema": 1, "Atelectasis": 0}}) == {
        "request_id": "r1", "labels": {"Edema": 1, "Atelectasis": 0}, "status": "stored"
    }  # fmt: skip
    assert monitor.record_view("r1")["ground_truth"] == {"Edema": 1, "Atelectasis": 0}
    with pytest.raises(NotFound, match="no record nope is stored"):
        monitor.post_labels({"request_id": "nope", "labels": {"Edema": 1}})
    for body, field, error in (
        ({"request_id": "r1", "labels": {"Edema": 2}}, "labels.Edema", "bad_label"),
        ({"request_id": "r1", "labels": {"Edema": "1"}}, "labels.Edema", "bad_label"),
        ({"request_id": "r1", "labels": {}}, "labels", "missing_field"),
        ({"request_id": "r1"}, "labels", "missing_field"),
        (["r1"], "body", "bad_type"),
    ):
        with pytest.raises(RecordError) as caught:
            parse_labels(body)
        assert (caught.value.field, caught.value.error) == (field, error) and field in str(caught.value)


def test_a_saliency_map_or_drift_report_that_is_not_there_says_what_is_missing(monitor, tmp_path):
    monitor.ingest(make_record("r1"))
    with pytest.raises(NotFound) as not_processed:
        monitor.saliency("r1")
    assert not_processed.value.error == "no_saliency"
    with pytest.raises(NotFound) as unknown:
        monitor.saliency("nope")
    assert unknown.value.error == "unknown_request_id"
    while monitor.worker.run_once():
        pass
    assert monitor.saliency("r1").startswith(b"\x89PNG")

    html = tmp_path / "report.html"
    html.write_text("<html></html>")
    kept = monitor.store.add_drift_report("cxr-findings", {"drift_share": 0.1, "html_path": str(html)})
    elsewhere = monitor.store.add_drift_report("cxr-findings", {"html_path": str(tmp_path / "gone.html")})
    not_html = monitor.store.add_drift_report("cxr-findings", {"html_path": str(tmp_path / "m.db")})
    assert monitor.drift_html(kept) == html
    for report_id in (elsewhere, not_html, 12345):
        with pytest.raises(NotFound, match=f"drift report {report_id} has no HTML file here"):
            monitor.drift_html(report_id)
