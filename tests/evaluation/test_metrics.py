"""Metrics against hand-computed values and the defining properties of AUOC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmlops.evaluation.metrics import (
    BINARY_METRICS,
    auoc,
    binary_metrics,
    multiclass_metrics,
    multilabel_metrics,
    ordinal_decode,
    ordinal_encode,
    ordinal_metrics,
    uoc,
    youden_threshold,
)

# 4 positives, 6 negatives. At 0.5: TP=3 (0.9, 0.8, 0.6), FN=1 (0.3), FP=1 (0.7), TN=5.
Y_TRUE = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
Y_PROB = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.45, 0.4, 0.2, 0.1, 0.05])


def test_binary_metrics_match_hand_computed_confusion_matrix():
    got = binary_metrics(Y_TRUE, Y_PROB)
    assert tuple(got) == BINARY_METRICS
    # AUC: positive-over-negative pairs: 0.9 → 6, 0.8 → 6, 0.6 → 5, 0.3 → 3; 20 of 24.
    expected = {
        "auc": 20 / 24,
        "accuracy": 8 / 10,
        "balanced_accuracy": (3 / 4 + 5 / 6) / 2,
        "specificity": 5 / 6,
        "npv": 5 / 6,
        "precision": 3 / 4,
        "recall": 3 / 4,
        "f1": 3 / 4,
    }
    assert got == pytest.approx(expected)


def test_binary_metrics_threshold_changes_results():
    # At 0.35: TP=3, FN=1, FP=3 (0.7, 0.45, 0.4), TN=3.
    got = binary_metrics(Y_TRUE, Y_PROB, threshold=0.35)
    assert got["accuracy"] == pytest.approx(6 / 10)
    assert got["specificity"] == pytest.approx(3 / 6)
    assert got["precision"] == pytest.approx(3 / 6)
    assert got["npv"] == pytest.approx(3 / 4)
    assert got["auc"] == pytest.approx(20 / 24)  # threshold-free


def test_binary_metrics_degenerate_cases():
    one_class = binary_metrics([1, 1, 1], [0.2, 0.6, 0.9])
    assert math.isnan(one_class["auc"])
    assert one_class["recall"] == pytest.approx(2 / 3)
    assert one_class["specificity"] == 0.0  # no negatives: zero division → 0.0
    nothing_positive = binary_metrics([0, 1, 0], [0.1, 0.2, 0.3])
    assert nothing_positive["precision"] == 0.0
    assert nothing_positive["f1"] == 0.0
    assert math.isnan(binary_metrics([0, 1, 0], [0.1, 0.2, 0.3], zero_division=np.nan)["precision"])


def test_binary_metrics_rejects_non_binary_labels():
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_metrics([0, 2], [0.1, 0.9])


def test_youden_threshold_separates_separable_classes():
    y = np.array([0, 0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.2, 0.3, 0.35, 0.6, 0.7, 0.95])
    t = youden_threshold(y, p)
    assert 0.35 < t <= 0.6
    assert binary_metrics(y, p, t)["accuracy"] == 1.0
    assert youden_threshold([1, 1], [0.3, 0.9]) == 0.5


def test_ordinal_encode_and_decode():
    codes = ordinal_encode([0, 1, 2], 3)
    np.testing.assert_array_equal(codes, [[0, 0], [1, 0], [1, 1]])
    decoded = ordinal_decode(np.array([[0.9, 0.2], [0.2, 0.9], [0.8, 0.7], [0.1, 0.1], [0.5, 0.5]]))
    np.testing.assert_array_equal(decoded, [1, 0, 2, 0, 2])
    labels = np.random.default_rng(0).integers(0, 5, 50)
    np.testing.assert_array_equal(ordinal_decode(ordinal_encode(labels, 5)), labels)
    with pytest.raises(ValueError, match="0..2"):
        ordinal_encode([3], 3)


def test_ordinal_metrics_perfect_and_hand_computed():
    y = np.array([0, 1, 2, 2, 1, 0])
    perfect = ordinal_metrics(y, y)
    assert perfect["mae"] == 0.0 and perfect["rmse"] == 0.0
    assert perfect["qwk"] == pytest.approx(1.0)
    assert perfect["auoc"] == pytest.approx(0.0, abs=1e-12)
    # Errors 0, 1, 0, 2 → MAE 3/4, MSE 5/4.
    got = ordinal_metrics([0, 1, 2, 2], [0, 2, 2, 0])
    assert got["mae"] == pytest.approx(0.75)
    assert got["rmse"] == pytest.approx(math.sqrt(1.25))
    assert got["accuracy"] == pytest.approx(0.5)


def test_auoc_hand_computed():
    # Row-normalised confusion: class 0 → [.5, .5, 0], classes 1, 2 perfect. K = 3, dispersion D = 0.5.
    # Diagonal path: 1 − 2.5/3.5 = 2/7. Path through (0, 1): 1 − 3/3.5 + (β/3)·0.5 = 1/7 + β/6.
    # UOC_β = min(2/7, 1/7 + β/6), crossing at β = 6/7; the integral over [0, 1] is 6/49 + 3/49 + 2/49 = 11/49.
    y_true, y_pred = [0, 0, 1, 1, 2, 2], [1, 0, 1, 1, 2, 2]
    assert uoc(y_true, y_pred, 0.0) == pytest.approx(1 / 7)
    assert uoc(y_true, y_pred, 1.0) == pytest.approx(2 / 7)
    assert auoc(y_true, y_pred) == pytest.approx(11 / 49, abs=1e-6)


def test_auoc_properties():
    y = np.repeat([0, 1, 2], 4)
    assert auoc(y, y) == pytest.approx(0.0, abs=1e-12)
    one_off, two_off = y.copy(), y.copy()
    one_off[0] = 1
    two_off[0] = 2
    assert auoc(y, two_off) > auoc(y, one_off) > 0.0
    more_errors = one_off.copy()
    more_errors[4] = 2
    assert auoc(y, more_errors) > auoc(y, one_off)
    # Order-preserving relabelling 0, 1, 2 → 3, 7, 10 changes nothing.
    relabel = np.array([3, 7, 10])
    assert auoc(relabel[y], relabel[two_off]) == pytest.approx(auoc(y, two_off))
    rng = np.random.default_rng(1)
    for _ in range(20):
        value = auoc(rng.integers(0, 4, 30), rng.integers(0, 4, 30), n_classes=4)
        assert 0.0 <= value <= 1.0
    assert auoc(y, 2 - y) <= 1.0


def test_auoc_is_uniform_over_class_sizes():
    # The same per-class error rate gives the same index whatever the class prevalence.
    balanced = auoc([0, 0, 1, 1, 2, 2], [1, 0, 1, 1, 2, 2])
    skewed = auoc([0] * 10 + [1] * 2 + [2] * 50, [1] * 5 + [0] * 5 + [1] * 2 + [2] * 50)
    assert skewed == pytest.approx(balanced)


def test_multiclass_metrics():
    got = multiclass_metrics([0, 0, 1, 1, 2, 2], [0, 0, 1, 2, 2, 2])
    # Recalls 1, 1/2, 1 → G-mean (1/2)^(1/3); F1s 1, 2/3, 4/5.
    assert got["accuracy"] == pytest.approx(5 / 6)
    assert got["gmean"] == pytest.approx(0.5 ** (1 / 3))
    assert got["f1"] == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)
    assert got["balanced_accuracy"] == pytest.approx(2.5 / 3)


def test_multilabel_metrics_masks_nan_targets():
    y_true = np.array([[1, 0], [0, np.nan], [1, 1], [0, np.nan]])
    y_prob = np.array([[0.9, 0.2], [0.1, 0.99], [0.8, 0.6], [0.7, 0.99]])
    got = multilabel_metrics(y_true, y_prob, [0.5, 0.5], ["a", "b"])
    assert got["a_auroc"] == pytest.approx(1.0)
    assert got["a_specificity"] == pytest.approx(0.5)  # 0.7 is a false positive
    assert got["a_sensitivity"] == pytest.approx(1.0)
    # For "b" the two NaN rows (which would be false positives) are ignored.
    assert got["b_specificity"] == pytest.approx(1.0)
    assert got["b_auroc"] == pytest.approx(1.0)
    assert got["mean_auroc"] == pytest.approx(1.0)
    empty = multilabel_metrics(np.full((2, 1), np.nan), np.ones((2, 1)), 0.5, ["c"])
    assert math.isnan(empty["c_auroc"]) and math.isnan(empty["mean_auroc"])
