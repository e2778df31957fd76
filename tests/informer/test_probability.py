"""Probability calibration and CBPE (``medmlops.informer.probability``) on data drawn from known distributions: the
temperature fit recovers a planted temperature; the estimate matches the realized metric within its sampling error
when labels are drawn from the calibrated probabilities; under a prevalence shift it does not (CBPE's known failure
mode, shown, not hidden); the gate metric maps to the right estimate and outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmlops.config import GatesConfig
from medmlops.informer import probability as P
from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec

N = 20_000
N_BOOT = 200


def contract(*tasks: TaskSpec, family: str = "cxr-findings") -> ModelContract:
    return ModelContract(
        family=family, tasks=tasks, input=InputSpec("xray", ("png",), (1, 8, 8), None, None, 1), preprocessing={},
        data_version="t", git_commit="t", metrics={}, informer=None,
    )  # fmt: skip


FINDINGS = contract(TaskSpec("findings", "multilabel", ("A", "B"), (0.5, 0.5)))


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def bootstrap_sd(metric, *arrays, n_boot=N_BOOT, seed=0) -> float:
    """SD of ``metric`` over bootstrap resamples of the rows: the realized metric's sampling error."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        values.append(metric(*(a[idx] for a in arrays)))
    return float(np.std(values, ddof=1))


def test_temperature_fit_recovers_a_planted_temperature_per_logit():
    rng = np.random.default_rng(1)
    z_true = rng.normal(0, 2.5, size=(N, 2))
    y = (rng.random((N, 2)) < _sigmoid(z_true)).astype(float)
    planted = np.array([2.5, 0.4])  # over- and under-confident
    logits = z_true * planted
    y[: N // 10, 1] = np.nan  # unknown targets are left out, not read as 0
    section = P.fit_probability_calibration(FINDINGS, logits, y)
    assert section["method"] == "temperature" and section["too_few"] == []
    fitted = np.array(section["temperature"])

    def refit(z, t):
        return np.array(P.fit_probability_calibration(FINDINGS, z, t)["temperature"])

    sd = np.std([refit(logits[i], y[i]) for i in np.random.default_rng(2).integers(0, N, (30, N))], axis=0, ddof=1)
    assert np.all(np.abs(fitted - planted) < 4 * sd), (fitted, planted, sd)
    # Calibrated probabilities are the true ones again (up to the fit's error), and the ranking is untouched.
    p = P.calibrated_probabilities(FINDINGS, logits, section)
    assert np.max(np.abs(p - _sigmoid(z_true))) < 0.05
    assert np.array_equal(np.argsort(p[:, 0]), np.argsort(logits[:, 0]))


def test_a_softmax_head_gets_one_temperature_and_isotonic_is_available():
    head = contract(TaskSpec("prognosis", "multiclass", ("MILD", "SEVERE", "DEAD"), (0.5, 0.5, 0.5)))
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, size=(N, 3))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    cls = (rng.random(N)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    y = np.eye(3)[cls]
    section = P.fit_probability_calibration(head, z * 3.0, y)
    assert len(set(section["temperature"])) == 1 and abs(section["temperature"][0] - 3.0) < 0.15
    iso = P.fit_probability_calibration(head, z * 3.0, y, method="isotonic")
    q = P.calibrated_probabilities(head, z * 3.0, iso)
    assert np.allclose(q.sum(axis=1), 1.0) and np.max(np.abs(q - p).mean(axis=0)) < 0.03
    with pytest.raises(ValueError, match="must be one of temperature, isotonic"):
        P.fit_probability_calibration(head, z, y, method="platt")


def test_a_logit_with_too_few_positives_is_not_fitted_and_says_so():
    z = np.linspace(-3, 3, 40)[:, None].repeat(2, axis=1)
    y = np.zeros((40, 2))
    y[:3, 1] = 1  # 3 positives < min_per_class 5
    y[::2, 0] = 1
    section = P.fit_probability_calibration(FINDINGS, z, y)
    assert section["too_few"] == ["findings/B"] and section["temperature"][1] == 1.0


def draw_gaussian_scores(rng, n, prevalence, mu=1.5, reference=0.3):
    """Scores ``s | y ~ N(mu * y, 1)``; the logit is the exact posterior log-odds at the reference prevalence, so
    the probabilities are calibrated when the prevalence is ``reference`` and only then."""
    y = rng.random(n) < prevalence
    s = rng.normal(np.where(y, mu, 0.0), 1.0)
    z = math.log(reference / (1 - reference)) + mu * s - mu**2 / 2
    return y.astype(float), z


def _single_logit():
    return contract(TaskSpec("prognosis", "binary", ("good", "poor"), (0.5,)), family="ich-prognosis")


def _estimate_and_realize(z, y):
    head = _single_logit()
    section = {"probability": {"method": "temperature", "classes": head.output_names(), "temperature": [1.0]},
               "gate": {"metric": "prognosis_auc_mean", "floor": 0.6, "estimate": "auroc",
                        "classes": head.output_names()}}  # fmt: skip
    return P.estimate(head, z[:, None], section, y[:, None])["classes"]["prognosis/poor"]


def test_cbpe_matches_the_realized_auroc_and_f1_within_the_sampling_error_when_calibrated():
    rng = np.random.default_rng(11)
    y, z = draw_gaussian_scores(rng, N, prevalence=0.3)
    got = _estimate_and_realize(z, y)
    predicted = (z >= 0).astype(float)
    sd_auroc = bootstrap_sd(P.realized_auroc, z, y)
    sd_f1 = bootstrap_sd(P.realized_f1, y, predicted)
    assert got["realized"]["auroc"] == pytest.approx(P.realized_auroc(z, y))
    assert abs(got["estimated"]["auroc"] - got["realized"]["auroc"]) < 3 * sd_auroc
    assert abs(got["estimated"]["f1"] - got["realized"]["f1"]) < 3 * sd_f1
    # The tolerance discriminates: the same scores, over-confident by a factor 3, miss it by far more.
    bad = P.estimated_f1(_sigmoid(3 * z), predicted)
    assert abs(bad - got["realized"]["f1"]) > 3 * sd_f1


def test_under_a_prevalence_shift_cbpe_does_not_track_the_realized_metrics():
    """The known failure mode (the simulator's ``population`` knob): more positives, same P(x | y). P(y | x) rises
    for every case, the calibrated p does not, so CBPE undercounts positives and keeps the old precision while the
    real precision rises; its F1 and AUROC errors leave the sampling error."""
    rng = np.random.default_rng(12)
    y0, z0 = draw_gaussian_scores(rng, N, prevalence=0.3)
    y1, z1 = draw_gaussian_scores(rng, N, prevalence=0.8)
    clean, shifted = _estimate_and_realize(z0, y0), _estimate_and_realize(z1, y1)
    pred0, pred1 = z0 >= 0, z1 >= 0
    sd_auroc = bootstrap_sd(P.realized_auroc, z1, y1)
    sd_f1 = bootstrap_sd(P.realized_f1, y1, pred1)

    def precision(y, pred):
        return y[pred].mean()

    sd_precision = bootstrap_sd(precision, y1, pred1)
    cells = P.estimated_confusion(_sigmoid(z1), pred1)
    estimated_precision = cells["tp"] / (cells["tp"] + cells["fp"])
    # Realized: the prevalence and precision rise, the AUROC (a property of P(x | y)) stays within sampling error.
    assert precision(y1, pred1) - precision(y0, pred0) > 3 * sd_precision
    assert abs(shifted["realized"]["auroc"] - clean["realized"]["auroc"]) < 3 * math.sqrt(2) * sd_auroc
    # Estimated: positives undercounted, precision lagging far behind, F1 and AUROC off beyond the sampling error.
    assert _sigmoid(z1).mean() < y1.mean() - 0.1
    assert estimated_precision < precision(y1, pred1) - 3 * sd_precision
    assert abs(shifted["estimated"]["f1"] - shifted["realized"]["f1"]) > 3 * sd_f1
    assert shifted["estimated"]["auroc"] < shifted["realized"]["auroc"] - 3 * sd_auroc


def test_cbpe_auroc_follows_the_published_definition_on_a_hand_example():
    # Scores 3 > 2 > 1, p = .9, .5, .1: expected TPR steps .6, .933.., 1; FPR .0667, .4, 1 (tp sum 1.5, fp 1.5).
    p = np.array([0.9, 0.5, 0.1])
    tpr = np.array([0, 0.9, 1.4, 1.5]) / 1.5
    fpr = np.array([0, 0.1, 0.6, 1.5]) / 1.5
    assert P.estimated_auroc(np.array([3.0, 2.0, 1.0]), p) == pytest.approx(np.trapezoid(tpr, fpr))
    assert P.estimated_f1(p, np.array([1, 1, 0])) == pytest.approx(2 * 1.4 / (2 * 1.4 + 0.6 + 0.1))
    assert math.isnan(P.estimated_auroc(np.array([1.0]), np.array([0.0])))


@pytest.mark.parametrize(
    ("family", "tasks", "metric", "estimate", "classes"),
    [
        ("cxr-findings", (TaskSpec("findings", "multilabel", ("A", "B"), (0.5, 0.5)),), "findings_mean_auroc_mean",
         "auroc", ["findings/A", "findings/B"]),
        ("ich-prognosis", (TaskSpec("prognosis", "binary", ("good", "poor"), (0.5,)),
                           TaskSpec("gcs_binary", "binary", ("hi", "lo"), (0.5,))), "prognosis_auc_mean",
         "auroc", ["prognosis/poor"]),
        ("covid-prognosis", (TaskSpec("prognosis", "multiclass", ("MILD", "SEVERE"), (0.5, 0.5)),),
         "prognosis_f1_mean", "f1", ["prognosis/MILD", "prognosis/SEVERE"]),
        ("covid-prognosis", (TaskSpec("prognosis", "multiclass", ("MILD", "SEVERE"), (0.5, 0.5)),),
         "prognosis_auc_mean", "auroc", ["prognosis/SEVERE"]),
        ("ich-prognosis", (TaskSpec("prognosis", "binary", ("good", "poor"), (0.5,)),),
         "prognosis_balanced_accuracy_mean", None, []),
    ],
)  # fmt: skip
def test_the_gate_metric_maps_to_its_estimate_and_outputs(family, tasks, metric, estimate, classes):
    target = P.gate_target(contract(*tasks, family=family), metric)
    assert (target["estimate"], target["classes"]) == (estimate, classes)
    assert (target["why"] is None) == (estimate is not None)


def test_performance_section_stores_calibration_gate_and_its_validation_check():
    rng = np.random.default_rng(5)
    z = rng.normal(0, 2, size=(400, 2))
    y = (rng.random((400, 2)) < _sigmoid(z / 2)).astype(float)
    gates = {"cxr-findings": GatesConfig(primary_metric="findings_mean_auroc_mean",
                                         min_metrics={"findings_mean_auroc_mean": 0.6})}  # fmt: skip
    section = P.performance_section(gates, FINDINGS, z, y)
    assert section["gate"] == {"metric": "findings_mean_auroc_mean", "floor": 0.6, "estimate": "auroc",
                               "classes": ["findings/A", "findings/B"], "why": None}  # fmt: skip
    assert all(1.4 < t < 3.0 for t in section["probability"]["temperature"])
    check = section["validation"]
    assert check["n"] == 400 and check["nll"]["calibrated"] < check["nll"]["uncalibrated"]
    assert abs(check["gate"]["estimated"] - check["gate"]["realized"]) < 0.05
    import json

    assert json.loads(json.dumps(section, allow_nan=False)) == section
    # A family without gates: no floor, nothing to alert on; the estimate is still there per class.
    assert P.performance_section({}, FINDINGS, z, y)["gate"]["floor"] is None
