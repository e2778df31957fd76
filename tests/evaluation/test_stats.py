"""Bootstrap intervals, fold aggregation and paired tests, with real values."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest

from medmlops.evaluation.metrics import binary_metrics, multilabel_metrics
from medmlops.evaluation.stats import aggregate_folds, bootstrap_ci, flatten_summary, paired_tests, stars


def _scored(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = 1 / (1 + np.exp(-(2.0 * (y - 0.5) + rng.normal(0, 1.2, n))))
    return y, prob


def test_bootstrap_contains_point_and_is_reproducible():
    y, p = _scored(80)
    ci = bootstrap_ci(y, p, binary_metrics, n_boot=200, seed=3)
    assert set(ci) == set(binary_metrics(y, p))
    for point, lo, hi in ci.values():
        assert lo <= point <= hi
        assert lo < hi
    assert bootstrap_ci(y, p, binary_metrics, n_boot=200, seed=3) == ci
    other = bootstrap_ci(y, p, binary_metrics, n_boot=200, seed=4)
    assert other["auc"][0] == ci["auc"][0]
    assert other["auc"][1:] != ci["auc"][1:]


def test_bootstrap_is_narrower_with_more_data():
    def width(n: int) -> float:
        y, p = _scored(n, seed=1)
        _, lo, hi = bootstrap_ci(y, p, binary_metrics, n_boot=200, seed=0)["accuracy"]
        return hi - lo

    assert width(1000) < 0.6 * width(60)


def test_bootstrap_resamples_n_rows_and_skips_nan():
    sizes: list[int] = []

    def metric(y_true, y_prob):
        sizes.append(len(y_true))
        return {"mean": float(np.mean(y_prob)), "never": float("nan")}

    ci = bootstrap_ci(np.zeros(37), np.linspace(0, 1, 37), metric, n_boot=25)
    assert sizes == [37] * 26  # the point estimate plus 25 resamples
    assert math.isnan(ci["never"][1]) and math.isnan(ci["never"][2])
    # With 6 samples of which one positive, many resamples hold one class: AUC is skipped there, not crashed on.
    y = np.array([0, 0, 0, 0, 0, 1])
    auc = bootstrap_ci(y, np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9]), binary_metrics, n_boot=100)["auc"]
    assert auc == (1.0, 1.0, 1.0)


def test_bootstrap_multilabel_resamples_rows():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, 2)).astype(float)
    y[:5, 1] = np.nan
    p = np.clip(y + rng.normal(0, 0.4, y.shape), 0, 1)
    p[np.isnan(p)] = 0.5
    fn = partial(multilabel_metrics, thresholds=0.5, class_names=["a", "b"])
    ci = bootstrap_ci(y, p, fn, n_boot=50)
    assert {"a_auroc", "b_auroc", "mean_auroc"} <= set(ci)
    point, lo, hi = ci["mean_auroc"]
    assert lo <= point <= hi and 0.5 < point <= 1.0


def test_aggregate_folds_against_numpy():
    folds = [{"auc": 0.7, "f1": 0.5}, {"auc": 0.8, "f1": float("nan")}, {"auc": 0.9, "f1": 0.7}]
    agg = aggregate_folds(folds)
    assert agg["auc"]["mean"] == pytest.approx(np.mean([0.7, 0.8, 0.9]))
    assert agg["auc"]["sd"] == pytest.approx(np.std([0.7, 0.8, 0.9], ddof=1))  # = 0.1
    assert agg["auc"]["sd"] == pytest.approx(0.1)
    assert agg["f1"]["mean"] == pytest.approx(0.6)
    assert agg["f1"]["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert math.isnan(aggregate_folds([{"auc": 0.7}])["auc"]["sd"])
    flat = flatten_summary({f"prognosis_{k}": v for k, v in agg.items()})
    assert flat["prognosis_auc_mean"] == pytest.approx(0.8)
    assert set(flat) == {"prognosis_auc_mean", "prognosis_auc_sd", "prognosis_f1_mean", "prognosis_f1_sd"}


def test_paired_tests_one_sided():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.8, 8)
    better = base + rng.uniform(0.03, 0.08, 8)
    got = paired_tests(better, base)
    assert got["t_pvalue"] < 0.05 and got["wilcoxon_pvalue"] < 0.05
    assert got["n"] == 8
    swapped = paired_tests(base, better)
    assert swapped["t_pvalue"] > 0.5 and swapped["wilcoxon_pvalue"] > 0.5
    assert paired_tests(base, base)["t_pvalue"] == 1.0


def test_stars():
    assert [stars(p) for p in (0.0005, 0.005, 0.03, 0.05, 0.2, float("nan"))] == ["***", "**", "*", "", "", ""]
