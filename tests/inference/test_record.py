"""``medmlops.inference.record``: the prediction record serving builds and monitoring parses. A build survives the
wire unchanged, every bad field is refused with an error naming it, and one request-id rule holds wherever an id
enters (a wire record, a record built in code, serving's X-Request-ID header, a label post)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

import numpy as np
import pytest

from medmlops.inference.record import (
    PredictionRecord,
    RecordError,
    correlation_id_from_header,
    iso,
    new_request_id,
    unix_seconds,
)
from medmlops.monitoring.service import parse_labels

from ..monitoring.records import make_record

T0 = 1_790_000_000.0
PREDICTIONS = {"findings": {"probabilities": {"Atelectasis": 0.25, "Edema": 0.75}, "labels": ["Edema"]}}


def _built(**changes) -> PredictionRecord:
    given = {"request_id": "req-1", "family": "cxr-findings", "version": "3", "upload": b"\x89PNG upload bytes",
             "predictions": PREDICTIONS, "logits": [-1.25, 1.5], "created_at": T0 + 0.123456, **changes}  # fmt: skip
    return PredictionRecord.build(**given)


def test_a_built_record_survives_the_wire_unchanged():
    record = _built()
    wire = record.to_json()
    assert wire == {
        "request_id": "req-1", "model": "cxr-findings", "version": "3", "created_at": "2026-09-21T14:13:20.123+00:00",
        "predictions": PREDICTIONS, "logits": [-1.25, 1.5],
        "input": {"sha256": hashlib.sha256(b"\x89PNG upload bytes").hexdigest(),
                  "bytes_b64": base64.b64encode(b"\x89PNG upload bytes").decode()},
    }  # fmt: skip
    assert record.created_at == T0 + 0.123  # kept to the millisecond the wire carries
    assert PredictionRecord.parse(json.loads(json.dumps(wire, allow_nan=False))) == record
    assert record.answer() == {k: wire[k] for k in ("request_id", "model", "version", "created_at", "predictions")}


def test_build_makes_numpy_outputs_strict_json_and_keeps_the_upload_out_of_its_repr():
    record = _built(predictions={"t": {"p": np.float32(0.5), "all": np.array([1, 2]), "bad": float("nan")}},
                    logits=np.array([0.5, -2.0], dtype=np.float32))  # fmt: skip
    assert record.predictions == {"t": {"p": 0.5, "all": [1, 2], "bad": None}}
    assert record.logits == (0.5, -2.0) and all(type(v) is float for v in record.logits)
    json.dumps(record.to_json(), allow_nan=False)
    assert "upload bytes" not in repr(record) and "req-1" in repr(record)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.version = "4"  # type: ignore[misc]


def test_wire_forms_serving_may_send_are_normalised():
    wire = make_record("r1", created_at=T0)
    wire.update(version=7, created_at="2026-09-21T14:13:20", model=" cxr-findings ")  # no offset: UTC
    wire["input"]["sha256"] = wire["input"]["sha256"].upper()
    record = PredictionRecord.parse(wire)
    assert (record.version, record.family, record.created_at) == ("7", "cxr-findings", T0)
    assert record.sha256 == hashlib.sha256(b"image-r1").hexdigest()
    assert PredictionRecord.parse({**wire, "created_at": T0}).created_at == T0
    assert PredictionRecord.parse({**wire, "predictions": {"p": float("nan")}}).predictions == {"p": None}


def _broken(path: str, value) -> dict:
    record = make_record("r1")
    target, *rest = path.split(".")
    if rest:
        record[target] = dict(record[target])
        holder, key = record[target], rest[0]
    else:
        holder, key = record, target
    if value is KeyError:
        del holder[key]
    else:
        holder[key] = value
    return record


@pytest.mark.parametrize(
    ("path", "value", "field", "error"),
    [
        ("request_id", KeyError, "request_id", "missing_field"),
        ("request_id", None, "request_id", "missing_field"),
        ("request_id", "a/b", "request_id", "bad_request_id"),
        ("request_id", 12, "request_id", "bad_type"),
        ("model", KeyError, "model", "missing_field"),
        ("model", "  ", "model", "invalid_field"),
        ("model", "m" * 129, "model", "invalid_field"),
        ("version", ["3"], "version", "bad_type"),
        ("version", True, "version", "bad_type"),
        ("version", "v" * 65, "version", "invalid_field"),
        ("created_at", "yesterday", "created_at", "bad_time"),
        ("created_at", 10**400, "created_at", "bad_time"),
        ("created_at", "inf", "created_at", "bad_time"),
        ("created_at", 1e18, "created_at", "bad_time"),  # finite, but no calendar date: it broke every summary
        ("created_at", 4102444800, "created_at", "bad_time"),  # 2100: more than a day ahead of any clock here
        ("model", "cxr\x00findings", "model", "invalid_field"),  # PostgreSQL text cannot hold NUL
        ("version", "3\nb", "version", "invalid_field"),
        ("predictions", "none", "predictions", "bad_type"),
        ("logits", [0.1, "x"], "logits", "bad_type"),
        ("logits", [0.1, True], "logits", "bad_type"),
        ("logits", [0.1, 10**400], "logits", "bad_type"),
        ("input", KeyError, "input", "missing_field"),
        ("input.sha256", KeyError, "input.sha256", "missing_field"),
        ("input.sha256", "abc", "input.sha256", "bad_sha256"),
        ("input.sha256", "0" * 64, "input.sha256", "sha256_mismatch"),
        ("input.bytes_b64", "not base64 !", "input.bytes_b64", "bad_base64"),
        ("input.bytes_b64", 5, "input.bytes_b64", "bad_type"),
        ("input.bytes_b64", "", "input.bytes_b64", "empty_upload"),
    ],
)
def test_a_bad_field_is_refused_with_an_error_naming_it(path, value, field, error):
    with pytest.raises(RecordError) as caught:
        PredictionRecord.parse(_broken(path, value))
    assert (caught.value.field, caught.value.error, caught.value.status) == (field, error, 422)
    assert f"'{field}'" in str(caught.value)  # one sentence naming the field
    assert str(caught.value).count(".") <= 2 + field.count(".")


def test_a_record_that_is_no_json_object_is_refused():
    with pytest.raises(RecordError, match="must be a JSON object, not list") as caught:
        PredictionRecord.parse([make_record("r2")])
    assert caught.value.field == "record" and caught.value.error == "bad_type"


@pytest.mark.parametrize("request_id", ["a", "A-z_0.9", "x" * 128, "3f2b9c0e5d7a4e1b8c6d2f0a9b8c7d6e"])
def test_request_ids_inside_the_rule_pass_everywhere(request_id):
    wire = {**make_record("r1"), "request_id": request_id}
    assert PredictionRecord.parse(wire).request_id == request_id
    assert _built(request_id=request_id).request_id == request_id
    assert correlation_id_from_header(request_id) == request_id
    assert _built(correlation_id=request_id).correlation_id == request_id
    assert PredictionRecord.parse({**make_record("r1"), "correlation_id": request_id}).correlation_id == request_id
    assert parse_labels({"request_id": request_id, "labels": {"Edema": 1}}) == (request_id, {"Edema": 1})


@pytest.mark.parametrize("request_id", ["", "x" * 129, "a/b", "../../etc/passwd", "r1\n", "a b", "café", "a;b"])
def test_request_ids_outside_the_rule_are_refused_everywhere(request_id):
    expected = "must be 1-128 letters, digits, '.', '_' or '-'"
    for make in (
        lambda: PredictionRecord.parse({**make_record("r1"), "request_id": request_id}),
        lambda: _built(request_id=request_id),
        lambda: parse_labels({"request_id": request_id, "labels": {"Edema": 1}}),
    ):
        with pytest.raises(RecordError, match=expected) as caught:
            make()
        assert (caught.value.field, caught.value.error, caught.value.status) == ("request_id", "bad_request_id", 422)
    for make in (
        lambda: PredictionRecord.parse({**make_record("r1"), "correlation_id": request_id}),
        lambda: _built(correlation_id=request_id),
    ):
        with pytest.raises(RecordError, match=expected.replace("must", "'correlation_id' must")) as caught:
            make()
        assert (caught.value.field, caught.value.error, caught.value.status) == (
            "correlation_id", "bad_correlation_id", 422
        )  # fmt: skip
    if request_id:  # an empty header means "none sent"
        with pytest.raises(RecordError, match=expected) as caught:
            correlation_id_from_header(request_id)
        assert (caught.value.field, caught.value.error, caught.value.status) == ("X-Request-ID", "bad_request_id", 400)


def test_record_ids_are_new_for_each_prediction_and_inside_the_rule():
    made = {new_request_id() for _ in range(20)}
    assert len(made) == 20 and all(PredictionRecord.parse({**make_record("r"), "request_id": m}) for m in made)
    assert correlation_id_from_header(None) is None and correlation_id_from_header("") is None


def test_the_correlation_id_travels_with_the_record_and_is_optional_on_the_wire():
    record = _built(correlation_id="client-7")
    wire = record.to_json()
    assert wire["correlation_id"] == "client-7" and record.answer()["correlation_id"] == "client-7"
    assert PredictionRecord.parse(json.loads(json.dumps(wire))) == record
    # A record spooled before the field existed (or one without a client id) parses, and keeps the old wire form.
    old = {key: value for key, value in make_record("r1").items() if key != "correlation_id"}
    assert PredictionRecord.parse(old).correlation_id is None
    assert PredictionRecord.parse({**old, "correlation_id": None}).correlation_id is None
    assert "correlation_id" not in _built().to_json() and "correlation_id" not in _built().answer()
    with pytest.raises(RecordError, match="'correlation_id' must be a string, not a number"):
        PredictionRecord.parse({**old, "correlation_id": 7})


def test_times_and_their_iso_form():
    assert unix_seconds(T0) == unix_seconds(str(T0)) == unix_seconds("2026-09-21T14:13:20+00:00") == T0
    assert unix_seconds("2026-09-21T16:13:20+02:00") == T0
    for bad in ("noon", "nan", float("inf")):
        with pytest.raises(ValueError):
            unix_seconds(bad)
    assert iso(T0) == "2026-09-21T14:13:20.000+00:00" and iso(None) is None and iso(float("nan")) is None


OOD = {"in_distribution": False, "score": 14.25, "threshold": 6.5}
STUDY = {"study_instance_uid": "1.2.826.0.1.3680043.8.498.1", "accession_number": "ACC 0042", "study_id": "s-7"}


def test_the_ood_verdict_and_the_study_identity_travel_with_the_record():
    record = _built(ood=OOD, study=STUDY)
    wire = record.to_json()
    assert wire["in_distribution"] is False and wire["ood"] == {"score": 14.25, "threshold": 6.5}
    assert wire["study"] == STUDY
    answer = record.answer()
    assert (answer["in_distribution"], answer["ood"], answer["study"]) == (False, wire["ood"], STUDY)
    assert PredictionRecord.parse(json.loads(json.dumps(wire, allow_nan=False))) == record
    # A version without a reference: null verdict, still on the wire (the client is told it is unknown).
    unknown = _built(ood={"in_distribution": None, "score": None, "threshold": None}, study={"study_id": "x"})
    assert unknown.to_json()["in_distribution"] is None
    assert unknown.answer()["ood"] == {"score": None, "threshold": None}
    assert PredictionRecord.parse(unknown.to_json()) == unknown and unknown.study == {"study_id": "x"}


def test_records_spooled_before_the_ood_and_study_fields_still_parse():
    old = make_record("r-old")
    assert not {"ood", "in_distribution", "study"} & set(old)
    record = PredictionRecord.parse(old)
    assert record.ood is None and record.study is None
    assert not {"ood", "in_distribution", "study"} & set(record.to_json()) and "study" not in record.answer()
    assert PredictionRecord.parse({**old, "study": None, "ood": None}).ood is None
    assert _built(study={}).study is None  # no identifier known: no study


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"study": {"study_id": "x" * 129}}, "study.study_id"),
        ({"study": {"accession_number": "ACC\n1"}}, "study.accession_number"),
        ({"study": {"study_id": ""}}, "study.study_id"),
        ({"study": {"patient_name": "DOE^JANE"}}, "study.patient_name"),  # no other identifier is stored
        ({"study": ["s-1"]}, "study"),
        ({"in_distribution": "yes", "ood": {"score": 1.0, "threshold": 2.0}}, "in_distribution"),
        ({"in_distribution": True, "ood": {"score": "1", "threshold": 2.0}}, "ood.score"),
        ({"in_distribution": True, "ood": [1.0]}, "ood"),
    ],
)
def test_a_bad_ood_or_study_field_is_refused_naming_it(changes, field):
    with pytest.raises(RecordError) as caught:
        PredictionRecord.parse({**make_record("r-bad"), **changes})
    assert caught.value.field == field and caught.value.status == 422


def test_a_study_identifier_is_at_most_128_printable_characters_when_built():
    assert _built(study={"study_id": "x" * 128}).study == {"study_id": "x" * 128}
    with pytest.raises(RecordError, match=r"study\.study_id"):
        _built(study={"study_id": "x" * 129})
