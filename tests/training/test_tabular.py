"""Tabular baselines on a synthetic table whose label depends on GCS and Age only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medmlops.errors import DataError
from medmlops.evaluation.metrics import BINARY_METRICS
from medmlops.training.tabular import default_feature_sets, fit_tabular_models

TARGET = "Label (poor_prognosis)"
FAST_RF = {"rf": {"n_estimators": 60}}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 240
    gcs = rng.integers(3, 16, n)
    age = rng.uniform(30, 95, n).round()
    logit = -0.6 * (gcs - 10) + 0.09 * (age - 68)
    frame = pd.DataFrame(
        {
            "PatientID": np.arange(n),
            TARGET: (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
            "Gender": rng.integers(0, 2, n),
            "Age": age,
            "GCS": gcs,
            "Glucose": rng.normal(120, 30, n),
            "HR": rng.normal(80, 12, n),
        }
    )
    frame.loc[rng.choice(n, 10, replace=False), "Glucose"] = np.nan  # imputed with the training-fold median
    return frame


@pytest.fixture(scope="module")
def result(table):
    return fit_tabular_models(table, TARGET, n_splits=5, seed=0, estimator_params=FAST_RF, permutation_repeats=3)


def test_default_feature_sets_exclude_ids_and_label(table):
    sets = default_feature_sets(table, TARGET)
    assert sets["all"] == ["Gender", "Age", "GCS", "Glucose", "HR"]
    assert sets["gcs"] == ["GCS"] and sets["gcs_age"] == ["GCS", "Age"]


def test_gcs_age_models_learn_the_signal(result):
    auc = result.metrics[(result.metrics["features"] == "gcs_age") & (result.metrics["metric"] == "auc")]
    mean_auc = auc.groupby("model")["value"].mean()
    assert set(mean_auc.index) == {"lr", "rf", "dtc"}
    assert (mean_auc > 0.75).all(), mean_auc
    # GCS alone carries less signal than GCS and age together.
    lr_gcs = result.metrics.query("model == 'lr' and features == 'gcs' and metric == 'auc'")["value"].mean()
    assert lr_gcs < mean_auc["lr"]


def test_gcs_and_age_are_the_top_rf_features(result):
    for kind in ("impurity", "permutation"):
        rf = result.importance.query("model == 'rf' and features == 'all' and kind == @kind")
        top2 = set(rf.sort_values("importance", ascending=False)["feature"].head(2))
        assert top2 == {"GCS", "Age"}, (kind, rf)
    lr = result.importance.query("model == 'lr' and features == 'all'")
    assert set(lr["kind"]) == {"coef_abs"} and (lr["importance"] >= 0).all()


def test_result_shapes(result):
    # 3 models × 3 feature sets × 5 folds × 8 metrics.
    assert result.metrics.shape == (3 * 3 * 5 * 8, 5)
    assert list(result.metrics.columns) == ["model", "features", "fold", "metric", "value"]
    assert list(result.summary.index) == list(BINARY_METRICS)
    assert result.summary.shape == (8, 9)
    assert "LR (gcs_age)" in result.summary.columns
    assert all(" ± " in cell for cell in result.summary.to_numpy().ravel())
    # Importance rows: LR (coef) + DTC (impurity) + RF (impurity, permutation), each over 5 + 1 + 2 features.
    assert len(result.importance) == 4 * (5 + 1 + 2)
    assert list(result.importance.columns) == ["model", "features", "feature", "kind", "importance", "sd"]
    flat = result.flat_metrics()
    assert len(flat) == 9 * 8 * 2
    assert 0.75 < flat["lr_gcs_age_auc_mean"] <= 1.0


def test_bad_inputs_name_the_column(table):
    with pytest.raises(DataError, match="'missing'"):
        fit_tabular_models(table, "missing")
    with pytest.raises(DataError, match="Weight"):
        fit_tabular_models(table, TARGET, feature_sets={"x": ["Weight"]})
