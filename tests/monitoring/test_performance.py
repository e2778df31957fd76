"""Performance per model version over a window of stored rows (``medmlops.monitoring.performance``), rows in and
dicts out: CBPE estimates and realized metrics from posted labels, the gate floor flag, and what is not estimable."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from medmlops.monitoring.performance import label_targets, version_performance, window_performance

from .fake_analyser import CLASSES, GATE_FLOOR, calibration_source, fake_contract


def rows(logits, labels=None, version="3", family="cxr-findings"):
    labels = labels if labels is not None else [None] * len(logits)
    return [
        {"request_id": f"r{i}", "family": family, "version": version, "logits": list(map(float, z)), "labels": y}
        for i, (z, y) in enumerate(zip(logits, labels, strict=True))
    ]  # fmt: skip


def test_estimated_and_realized_per_class_and_gate():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2.0, size=(300, 2))
    y = (rng.random((300, 2)) < 1 / (1 + np.exp(-z))).astype(int)
    labelled = [{"Atelectasis": int(a), "findings/Cardiomegaly": int(b)} if i % 2 == 0 else None
                for i, (a, b) in enumerate(y)]  # fmt: skip
    contract, informer = calibration_source("cxr-findings", "3")
    got = version_performance("cxr-findings", "3", rows(z, labelled), contract, informer)
    assert got["estimable"] and got["n"] == 300 and got["n_labelled"] == 150 and got["calibration"] == "temperature"
    half = np.arange(300) % 2 == 0
    for j, name in enumerate(CLASSES):
        realized = got["classes"][name]["realized"]
        assert realized["auroc"] == pytest.approx(roc_auc_score(y[half, j], z[half, j]))
        assert realized["f1"] == pytest.approx(f1_score(y[half, j], z[half, j] >= 0))
        assert got["classes"][name]["n_labelled"] == 150
    gate = got["gate"]
    assert gate["metric"] == "findings_mean_auroc_mean" and gate["floor"] == GATE_FLOOR
    assert gate["realized"] == pytest.approx(np.mean([got["classes"][c]["realized"]["auroc"] for c in CLASSES]))
    assert gate["estimated"] == pytest.approx(np.mean([got["classes"][c]["estimated"]["auroc"] for c in CLASSES]))
    assert gate["below_floor"] is False and gate["estimated"] > 0.8


def test_an_estimate_under_the_gate_floor_is_flagged_but_not_on_a_tiny_window():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 0.05, size=(100, 2))  # p ~ 0.5 everywhere: CBPE expects a coin toss
    contract, informer = calibration_source("cxr-findings", "3")
    got = version_performance("cxr-findings", "3", rows(z), contract, informer)
    assert got["gate"]["estimated"] < GATE_FLOOR and got["gate"]["below_floor"] is True
    assert got["gate"]["realized"] is None and got["n_labelled"] == 0
    few = version_performance("cxr-findings", "3", rows(z[:10]), contract, informer)
    assert few["gate"]["below_floor"] is False and "fewer than the 30" in few["reason"]


def test_a_version_without_a_performance_section_is_not_estimable_and_says_so():
    contract = fake_contract("cxr-findings", calibrated=False)
    z = np.array([[2.0, -2.0], [-1.0, 1.0], [1.5, 0.5]])
    labels = [{"Atelectasis": 1}, {"Atelectasis": 0}, None]
    got = version_performance("cxr-findings", "7", rows(z, labels, version="7"), contract, contract.informer)
    assert got["estimable"] is False and "has no performance calibration" in got["reason"]
    assert got["gate"]["estimated"] is None and got["gate"]["below_floor"] is False
    # Realized metrics need no calibration: they are given; estimates are not guessed.
    a = got["classes"]["findings/Atelectasis"]
    assert a["estimated"] == {"auroc": None, "f1": None} and a["realized"]["auroc"] == 1.0 and a["n_labelled"] == 2


def test_window_groups_versions_and_reports_a_missing_contract():
    z = np.zeros((3, 2))
    mixed = rows(z, version="10") + rows(z, version="9") + rows(z, family="missing", version="1")
    out = window_performance(mixed, calibration_source)
    assert [(v["family"], v["version"]) for v in out] == [
        ("cxr-findings", "9"),
        ("cxr-findings", "10"),
        ("missing", "1"),
    ]
    assert out[2]["estimable"] is False and "contract not available" in out[2]["reason"]


def test_labels_match_output_names_or_unique_class_names_and_records_that_do_not_fit_are_skipped():
    contract, informer = calibration_source("cxr-findings", "3")
    targets, unknown = label_targets(contract, [{"Atelectasis": 1, "Edema": 0}, {"findings/Cardiomegaly": 0}, None])
    assert np.array_equal(np.nan_to_num(targets, nan=-1), [[1, -1], [-1, 0], [-1, -1]]) and unknown == {"Edema"}
    bad = [{"family": "cxr-findings", "version": "3", "logits": [1.0], "labels": None},
           {"family": "cxr-findings", "version": "3", "logits": None, "labels": None}]  # fmt: skip
    got = version_performance("cxr-findings", "3", rows(np.ones((2, 2))) + bad, contract, informer)
    assert (got["n"], got["n_skipped"]) == (2, 2)


def test_a_softmax_head_labelled_one_class_knows_the_others_are_zero():
    from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec

    head = ModelContract(
        family="covid-prognosis", tasks=(TaskSpec("prognosis", "multiclass", ("MILD", "SEVERE"), (0.5, 0.5)),),
        input=InputSpec("xray", ("png",), (1, 8, 8), None, None, 1), preprocessing={}, data_version="t",
        git_commit="t", metrics={}, informer=None,
    )  # fmt: skip
    targets, _ = label_targets(head, [{"SEVERE": 1}, {"prognosis/MILD": 0}])
    assert np.array_equal(np.nan_to_num(targets, nan=-1), [[0, 1], [0, -1]])
