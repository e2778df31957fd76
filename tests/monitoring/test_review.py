"""The review queue's core (:mod:`medmlops.monitoring.review`): reasons in words, the priority order, reviewed cases
leaving the queue, error rate and flag precision per version, the original image through the model's loader, and
every class's map stored by the worker."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from medmlops.inference.record import RecordError
from medmlops.monitoring.review import (
    CONFIDENCE,
    DEPLOYED,
    INFORMER,
    OOD,
    SAMPLED,
    Review,
    ReviewCollector,
    parse_note,
    priority,
    reasons,
    study_label,
)
from medmlops.monitoring.service import Monitor, NotFound, Settings
from medmlops.monitoring.store import FLAGGED, REST, SAMPLE
from medmlops.monitoring.worker import Worker

from .fake_analyser import CLASSES, FakeAnalyser
from .records import CONFIDENT, UNSURE, make_record, prediction_record
from .review_fakes import calibration_source, factory, xray_png

ATEL, CARDIO = CLASSES
INFORMER_SECTION = {
    "tau": {ATEL: 0.2, CARDIO: 0.2}, "direction": "low",
    "logit_tier": {"score": "msr", "tau": [0.6, 0.6]},
    "csf": {"selected": "msr", "operating_point": {"review_budget": 0.1, "tau": [0.6, 0.6]}},
}  # fmt: skip


def test_each_reason_is_said_in_words_with_its_numbers_and_thresholds():
    row = {
        "in_distribution": False, "ood_score": 8.1, "ood_threshold": 2.2, "stratum": FLAGGED,
        "logit": {"score": "msr", "scores": {"msr": {ATEL: 0.53, CARDIO: 0.9}}},
        "logit_flags": {ATEL: True, CARDIO: False},
        "result": {"flagged": True, "flags": {ATEL: True, CARDIO: False}, "csf": "msr", "classes": list(CLASSES),
                   "confidence": {ATEL: 0.55, CARDIO: 0.9}, "informer_flags": {ATEL: False, CARDIO: True},
                   "distinctiveness": {ATEL: 0.5, CARDIO: 0.12}, "nearest": {ATEL: CARDIO, CARDIO: ATEL}},
    }  # fmt: skip
    found = reasons(row, INFORMER_SECTION)
    texts = {r["kind"]: r["text"] for r in found}
    assert [r["kind"] for r in found] == [OOD, DEPLOYED, INFORMER, CONFIDENCE]
    assert texts[OOD].startswith("out of distribution: score 8.10 above the threshold 2.20")
    assert "confidence (MSR): Atelectasis 0.55 below its threshold 0.60" in texts[DEPLOYED]
    assert "least confident 10 %" in texts[DEPLOYED]
    assert texts[INFORMER] == (
        "INFORMER: the map of Cardiomegaly is nearly the same as Atelectasis's (distinctiveness 0.12, below this "
        "class's threshold 0.20)"
    )
    assert "confidence (MSR) at intake: Atelectasis 0.53 below its threshold 0.60" in texts[CONFIDENCE]
    assert "Cardiomegaly" not in texts[CONFIDENCE]  # only the flagged class is named


def test_an_uncalibrated_csf_is_informer_and_a_sampled_case_says_why_it_is_here():
    old = {"result": {"flagged": True, "flags": {ATEL: True}, "distinctiveness": {ATEL: 0.05}}, "stratum": REST}
    (only,) = reasons(old, INFORMER_SECTION)
    assert only["kind"] == INFORMER and only["text"] == (
        "INFORMER: the map of Atelectasis is nearly the same as the other classes' maps (distinctiveness 0.05, "
        "below this class's threshold 0.20)"
    )
    (sampled,) = reasons({"stratum": SAMPLE, "sample_p": 0.1, "result": {"flagged": False}}, INFORMER_SECTION)
    assert sampled["kind"] == SAMPLED and "drawn at random" in sampled["text"] and "10 %" in sampled["text"]
    assert reasons({"stratum": REST, "result": {"flagged": False}}, INFORMER_SECTION) == []


def test_priority_out_of_distribution_then_lowest_confidence_then_sampled_oldest_first():
    def case(kind, confidence=None, excess=None, at=0.0):
        return priority([{"kind": kind, "confidence": confidence, "excess": excess}], at)

    keys = {
        "ood-far": case(OOD, excess=4.0, at=5), "ood-near": case(OOD, excess=1.2, at=1),
        "conf-0.51": case(CONFIDENCE, 0.51, at=9), "conf-0.58": case(DEPLOYED, 0.58, at=0),
        "informer-no-confidence": case(INFORMER, at=0), "sampled-old": case(SAMPLED, at=1),
        "sampled-new": case(SAMPLED, at=2),
    }  # fmt: skip
    assert sorted(keys, key=keys.get) == [
        "ood-far", "ood-near", "conf-0.51", "conf-0.58", "informer-no-confidence", "sampled-old", "sampled-new",
    ]  # fmt: skip


def test_the_study_id_comes_first_in_the_hospitals_order_and_notes_are_checked():
    assert study_label({"study_id": "S1", "accession_number": "ACC-7"})["value"] == "ACC-7"
    assert study_label({"study_id": "S1"})["name"] == "study id"
    assert study_label(None) is None
    assert parse_note({"note": "  pleural line seen  "}) == "pleural line seen"
    assert parse_note({"note": ""}) is None and parse_note({}) is None
    assert parse_note({"note": "two\nlines"}) == "two\nlines"
    for bad in (7, "x" * 2001, "nul\x00"):
        with pytest.raises(RecordError) as err:
            parse_note({"note": bad})
        assert err.value.field == "note"


@pytest.fixture
def monitor(tmp_path):
    m = Monitor(
        Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", no_worker=True, sample_p=0.0),
        calibration=calibration_source, rng=random.Random(0),
    )  # fmt: skip
    yield m
    m.close()


def _analyse(monitor: Monitor, make=factory) -> None:
    worker = Worker(monitor.store, factory=make, batch_size=16)
    while worker.run_once():
        pass


def test_the_queue_lists_flagged_and_sampled_cases_in_order_and_a_review_takes_a_case_out(monitor):
    ood = {"in_distribution": False, "ood": {"score": 9.0, "threshold": 3.0}, "study": {"accession_number": "ACC-1"}}
    monitor.ingest({**make_record("ood", data=xray_png(1), created_at=1000.0), **ood})
    monitor.ingest(make_record("unsure", data=xray_png(2), logits=UNSURE, created_at=1001.0))
    monitor.ingest(make_record("calm", data=xray_png(3), logits=CONFIDENT, created_at=1002.0))
    monitor.rng = random.Random(0)
    monitor.settings = Settings(db_url=monitor.settings.db_url, no_worker=True, sample_p=1.0)  # the next is sampled
    monitor.ingest(make_record("drawn", data=xray_png(4), logits=(3.0, -3.0), created_at=1003.0))
    _analyse(monitor)
    review = Review(monitor.store.engine, monitor.scorer.version)

    body = review.queue()
    order = [c["request_id"] for c in body["cases"]]
    # out of distribution first, the logit-flagged next, the sampled last; "calm" (confident, unflagged,
    # not drawn) is not in the queue
    assert order == ["ood", "unsure", "drawn"]
    assert [c["category"] for c in body["cases"]] == [OOD, CONFIDENCE, SAMPLED]
    assert body["cases"][0]["study_label"]["value"] == "ACC-1"
    assert body["cases"][0]["reasons"][0].startswith("out of distribution: score 9.00 above the threshold 3.00")
    assert body["total"] == len(order) and body["versions"] == []

    case = review.case_view("unsure")
    assert [k["label"] for k in case["classes"]] == ["Atelectasis", "Cardiomegaly"]
    assert [k["threshold"] for k in case["classes"]] == [0.5, 0.5]
    assert case["prediction"] == "Atelectasis"  # logits (0.1, -0.1) at thresholds 0.5
    assert all(k["map_url"] for k in case["classes"]) and case["maps_kept"] and case["in_queue"]
    assert any(r["kind"] == CONFIDENCE for r in case["reasons"])

    # the label and note: the case leaves the queue, the realized numbers follow
    stored = monitor.post_labels({"request_id": "unsure", "labels": {ATEL: 0, CARDIO: 0}, "note": "no effusion"})
    assert stored["note"] == "no effusion"
    after = review.queue()
    assert "unsure" not in [c["request_id"] for c in after["cases"]] and after["total"] == body["total"] - 1
    (stats,) = after["versions"]
    assert stats["reviewed"] == 1 and stats["errors"] == 1 and stats["error_rate"] == 1.0  # predicted Atelectasis
    assert stats["flagged_reviewed"] == 1 and stats["flag_precision"] == 1.0
    assert review.case_view("unsure")["review"] == {
        "labels": {ATEL: 0, CARDIO: 0}, "note": "no effusion", "at": review.case_view("unsure")["review"]["at"],
        "error": True,
    }  # fmt: skip
    monitor.post_labels({"request_id": "ood", "labels": {ATEL: 1, CARDIO: 0}})  # ood's logits: the prediction right
    (stats,) = review.queue()["versions"]
    assert stats["reviewed"] == 2 and stats["errors"] == 1 and stats["flag_precision"] == 0.5
    assert stats["by_reason"][OOD] == {"reviewed": 1, "errors": 0, "error_rate": 0.0}

    # Prometheus
    monitor.metrics.registry.register(ReviewCollector(review))
    text = monitor.metrics.render()[0].decode()
    assert 'medmlops_review_flag_precision{family="cxr-findings",version="3"} 0.5' in text
    assert 'medmlops_review_error_rate{family="cxr-findings",kind="all",version="3"} 0.5' in text


def test_the_original_image_is_the_upload_through_the_models_loader_and_each_class_has_its_map(monitor):
    monitor.ingest(make_record("img", data=xray_png(5), logits=UNSURE))
    monitor.ingest(make_record("junk", data=b"not an image", logits=UNSURE))
    _analyse(monitor)
    review = Review(monitor.store.engine, monitor.scorer.version)
    picture = Image.open(io.BytesIO(review.image("img")))
    assert picture.size == (160, 160) and picture.mode == "L" and len(set(picture.getdata())) > 10
    maps = [review.map_png("img", j) for j in range(len(CLASSES))]
    assert len(set(maps)) == len(CLASSES) and all(m.startswith(b"\x89PNG") for m in maps)
    for call, error in ((lambda: review.image("nope"), "unknown_request_id"),
                        (lambda: review.image("junk"), "no_image"),
                        (lambda: review.map_png("img", 2), "no_class_map"),
                        (lambda: review.case_view("nope"), "unknown_request_id")):  # fmt: skip
        with pytest.raises(NotFound) as err:
            call()
        assert err.value.error == error
    with pytest.raises(RecordError):
        review.case_view("bad id!")


def test_a_result_without_class_maps_still_shows_its_case(monitor):
    monitor.ingest(make_record("old", data=xray_png(6), logits=UNSURE))
    _analyse(monitor, make=lambda family, version: FakeAnalyser(family, version))  # no class_pngs: as before
    case = Review(monitor.store.engine, monitor.scorer.version).case_view("old")
    assert case["analysed"] and not case["maps_kept"] and case["saliency_url"]
    assert all(k["map_url"] is None for k in case["classes"])


def test_the_real_analyser_gives_every_class_its_map_and_the_worker_keeps_them(monitor):
    """The INFORMER analyser (an untrained DenseNet on 32-pixel inputs) draws each class's map; the store keeps one
    PNG per class beside the result, and the result itself stays JSON."""
    import torch

    from medmlops.informer.analyser import Analyser
    from medmlops.models.cxr import FindingsDenseNet121

    from .review_fakes import review_contract

    torch.manual_seed(0)
    analyser = Analyser("cxr-findings", "3", review_contract("cxr-findings", calibrated=False),
                        FindingsDenseNet121(num_classes=len(CLASSES)))  # fmt: skip
    monitor.ingest(make_record("real", data=xray_png(7), logits=UNSURE))
    _analyse(monitor, make=lambda family, version: analyser)
    review = Review(monitor.store.engine, monitor.scorer.version)
    case = review.case_view("real")
    assert case["analysed"] and case["maps_kept"]
    maps = [review.map_png("real", j) for j in range(len(CLASSES))]
    assert all(Image.open(io.BytesIO(m)).size == (160, 160) for m in maps) and maps[0] != maps[1]
    assert "class_pngs" not in (monitor.store.record("real")["result"] or {})
    assert monitor.store.record("real")["result"]["nearest"] == {ATEL: CARDIO, CARDIO: ATEL}


def test_the_queue_notes_and_class_maps_work_on_postgresql(postgres_url):
    m = Monitor(Settings(db_url=postgres_url, no_worker=True, sample_p=0.0), calibration=calibration_source)
    try:
        assert m.store.dialect == "postgresql"
        m.ingest(make_record("pg-unsure", data=xray_png(8), logits=UNSURE))
        _analyse(m)
        review = Review(m.store.engine, m.scorer.version)
        assert [c["request_id"] for c in review.queue()["cases"]] == ["pg-unsure"]
        assert review.map_png("pg-unsure", 1).startswith(b"\x89PNG")
        m.post_labels({"request_id": "pg-unsure", "labels": {ATEL: 1}, "note": "seen"})
        assert review.queue()["cases"] == [] and review.case_view("pg-unsure")["review"]["note"] == "seen"
    finally:
        m.close()


def test_a_database_from_before_the_review_queue_gets_the_note_column_and_the_maps_table(tmp_path):
    import sqlalchemy as sa

    from medmlops.monitoring.store import Store

    url = f"sqlite:///{tmp_path / 'old.db'}"
    Store(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as connection:  # as an older version left it
        connection.exec_driver_sql("DROP TABLE class_maps")
        connection.exec_driver_sql("ALTER TABLE labels DROP COLUMN note")
    engine.dispose()
    store = Store(url)
    try:
        assert store.add_record(prediction_record("old-1", data=xray_png(9)))
        assert store.add_labels("old-1", {ATEL: 1}, note="kept")
        inspector = sa.inspect(store.engine)
        assert "note" in {c["name"] for c in inspector.get_columns("labels")}
        assert "class_maps" in inspector.get_table_names()
    finally:
        store.close()
