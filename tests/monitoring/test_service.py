"""``medmlops.monitoring.service.Monitor`` without a server: a posted record is parsed and stored once (nothing of a
bad one) with its logit tier at once, the saliency tier follows from the worker, labels are checked and need a known
record, and what is missing says what it is; the worker runs in-process with the fake analyser and the fake
logit-tier source. The HTTP mapping of these answers is tested in ``tests/shells/monitoring``."""

from __future__ import annotations

import random
import time

import pytest

from medmlops.inference.record import RecordError
from medmlops.monitoring.service import Monitor, NotFound, Settings, parse_labels

from .fake_analyser import CLASSES, calibration_source, factory
from .records import UNSURE, make_record


@pytest.fixture
def monitor(tmp_path):
    monitor = Monitor(
        Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", sample_p=0.5), factory=factory,
        calibration=calibration_source, rng=random.Random(3),
    )  # fmt: skip
    yield monitor
    monitor.close()


def _drain(monitor: Monitor) -> None:
    while monitor.worker.run_once():
        pass


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
        'medmlops_monitoring_records_ingested_total{family="cxr-findings",version="3"} 1.0'
        in monitor.metrics.render()[0].decode()
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
    _drain(monitor)
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


def test_the_logit_tier_is_there_at_ingest_and_the_saliency_tier_follows(monitor):
    before = time.time()
    monitor.ingest(make_record("sure"))
    monitor.ingest(make_record("unsure", logits=UNSURE))
    sure, unsure = monitor.record_view("sure"), monitor.record_view("unsure")
    assert sure["tier"] == unsure["tier"] == "logit" and sure["saliency_tier"] is None and "flags" not in sure
    tier = unsure["logit_tier"]
    assert tier["at"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before - 1))
    assert tier["score"] == "msr" and tier["calibrated"] and tier["error"] is None and tier["flagged"] is True
    assert tier["flags"] == dict.fromkeys(CLASSES, True)
    assert set(tier["scores"]) == {"msr", "maxlogit", "entropy", "energy"}
    assert tier["scores"]["msr"][CLASSES[0]] == pytest.approx(0.5250, abs=1e-4)
    assert sure["logit_tier"]["flags"] == dict.fromkeys(CLASSES, False) and sure["logit_tier"]["flagged"] is False
    assert unsure["queue"]["stratum"] == "flagged" and unsure["queue"]["sample_p"] is None
    assert sure["queue"]["stratum"] in ("sample", "rest") and sure["queue"]["sample_p"] == 0.5
    _drain(monitor)
    done = monitor.record_view("unsure")
    assert (
        done["tier"] == "saliency" and done["status"] == "done" and done["saliency_tier"]["at"] == done["processed_at"]
    )
    assert done["logit_tier"] == tier and set(done["flags"]) == set(CLASSES)
    summary = monitor.summary()
    assert summary["logit"] == {"scored": 2, "flagged": 1, "flag_rate": dict.fromkeys(CLASSES, 0.5)}
    # Which CSF flags the version, with its validation AUGRC beside MSR's, from the version's contract.
    deployed = summary["versions"][0]["csf"]
    assert deployed["selected"] == "msr" and deployed["validation_augrc"] == deployed["msr_validation_augrc"] == 41.5
    assert summary["estimate"]["complete"] and summary["estimate"]["analysed"] == 2


def test_a_version_the_registry_lacks_is_stored_unscored_then_failed_naming_it(monitor):
    assert monitor.ingest(make_record("lost", family="missing", version="7")) == ("lost", True)
    view = monitor.record_view("lost")
    assert view["tier"] == "unscored" and view["logit_tier"]["at"] is None
    assert view["logit_tier"]["error"].startswith("missing version 7: contract not available")
    monitor.ingest(make_record("plain", family="uncalibrated"))  # scored, never flagged: no calibration
    plain = monitor.record_view("plain")["logit_tier"]
    assert plain["at"] and plain["calibrated"] is False and plain["flags"] is None and plain["scores"]
    monitor.worker.min_backoff_s = 0  # no retry delays: the attempts follow each other
    for _ in range(monitor.settings.max_attempts):
        _drain(monitor)
    lost = monitor.record_view("lost")
    assert lost["status"] == "failed" and lost["attempts"] == monitor.settings.max_attempts
    assert lost["error"].startswith("model missing version 7 cannot be loaded") and "gave up after 5" in lost["error"]


@pytest.mark.parametrize(
    ("change", "field", "error"),
    [({"created_at": 1e18}, "created_at", "bad_time"), ({"created_at": time.time() + 3 * 86400}, "created_at", "bad_time"),
     ({"model": "cxr\x00findings"}, "model", "invalid_field"), ({"version": "3\x00b"}, "version", "invalid_field")],
)  # fmt: skip
def test_records_the_store_cannot_hold_are_refused_at_ingest_naming_the_field(monitor, change, field, error):
    with pytest.raises(RecordError) as caught:
        monitor.ingest({**make_record("hostile"), **change})
    assert (caught.value.field, caught.value.error) == (field, error) and field in caught.value.detail
    with pytest.raises(NotFound):
        monitor.record_view("hostile")


def test_hostile_ids_and_report_numbers_are_4xx_answers(monitor):
    for request_id in ("a\x00b", "x" * 129, "../etc"):
        with pytest.raises(RecordError) as caught:
            monitor.record_view(request_id)
        assert caught.value.error == "bad_request_id"
        with pytest.raises(RecordError):
            monitor.saliency(request_id)
    with pytest.raises(NotFound, match="drift report 99999999999999999999 does not exist"):
        monitor.drift_html(99999999999999999999)
    for query in ({"family": "a\x00"}, {"version": "\x00"}):
        with pytest.raises(Exception, match="must not hold control characters"):
            monitor.summary(**query)
        with pytest.raises(Exception, match="must not hold control characters"):
            monitor.timeseries(**query)


def test_the_ood_verdict_and_the_study_identity_reach_the_views_summary_and_metrics(monitor):
    study = {"study_instance_uid": "1.2.3.4", "accession_number": "ACC-42"}
    out = {"in_distribution": False, "ood": {"score": 9.5, "threshold": 5.0}, "study": study}
    monitor.ingest({**make_record("out", logits=UNSURE), **out})
    monitor.ingest({**make_record("in"), "in_distribution": True, "ood": {"score": 1.0, "threshold": 5.0}})
    monitor.ingest(make_record("before"))  # from a serving version without the verdict: not counted
    view = monitor.record_view("out")
    assert (view["in_distribution"], view["ood"], view["study"]) == (False, {"score": 9.5, "threshold": 5.0}, study)
    assert monitor.record_view("before")["in_distribution"] is None and monitor.record_view("before")["study"] is None
    summary = monitor.summary(family="cxr-findings")
    assert summary["ood"] == {"scored": 2, "out": 1, "rate": 0.5} and summary["versions"][0]["ood"]["rate"] == 0.5
    assert monitor.timeseries(family="cxr-findings", bucket_s=86400)["points"][-1]["ood_rate"] == 0.5
    assert 'medmlops_ood_rate{family="cxr-findings",version="3"} 0.5' in monitor.metrics.render()[0].decode()
    _drain(monitor)
    cases = {c["request_id"]: c for c in monitor.flagged_cases(family="cxr-findings")}
    # The fake analyser flags by the upload's hash: it flags "out", so the flagged case shows where the study is.
    assert cases["out"]["study"] == study and cases["out"]["in_distribution"] is False
