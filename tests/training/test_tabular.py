"""Tabular baselines (the ICH paper's Table 1: DNN, LR, RF, DTC, XGB) on a synthetic table whose label depends on
GCS and Age only, with SHAP importances."""

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
    assert set(mean_auc.index) == {"dnn", "lr", "rf", "dtc", "xgb"}
    assert (mean_auc > 0.75).all(), mean_auc
    # GCS alone carries less signal than GCS and age together.
    lr_gcs = result.metrics.query("model == 'lr' and features == 'gcs' and metric == 'auc'")["value"].mean()
    assert lr_gcs < mean_auc["lr"]


def test_gcs_and_age_are_the_top_rf_features(result):
    for kind in ("impurity", "permutation", "shap"):
        rf = result.importance.query("model == 'rf' and features == 'all' and kind == @kind")
        top2 = set(rf.sort_values("importance", ascending=False)["feature"].head(2))
        assert top2 == {"GCS", "Age"}, (kind, rf)
    lr = result.importance.query("model == 'lr' and features == 'all'")
    assert set(lr["kind"]) == {"coef_abs", "shap"} and (lr["importance"] >= 0).all()


@pytest.mark.parametrize("model", ["dnn", "lr", "rf", "dtc", "xgb"])
def test_shap_ranks_gcs_and_age_first_for_every_model(result, model):
    """The paper's finding from SHAP (Sec. 3.1): GCS and age are the main predictors; the synthetic label depends
    on them only, so every model's mean |SHAP| must rank them first, and the noise features near zero."""
    shap = result.importance.query("model == @model and features == 'all' and kind == 'shap'")
    ranked = shap.sort_values("importance", ascending=False)
    assert set(ranked["feature"].head(2)) == {"GCS", "Age"}, ranked
    assert ranked["importance"].iloc[1] > 2 * ranked["importance"].iloc[2], ranked


def test_dnn_and_xgb_are_in_table_1(result):
    assert {"DNN (all)", "XGB (all)", "DNN (gcs_age)", "XGB (gcs)"} <= set(result.summary.columns)
    auc = result.metrics.query("features == 'all' and metric == 'auc'").groupby("model")["value"].mean()
    assert auc["dnn"] > 0.75 and auc["xgb"] > 0.75, auc
    kinds = result.importance.groupby("model")["kind"].agg(set)
    assert kinds["dnn"] == {"shap"} and kinds["xgb"] == {"gain", "shap"} and kinds["dtc"] == {"impurity", "shap"}


def test_result_shapes(result):
    # 5 models × 3 feature sets × 5 folds × 8 metrics.
    assert result.metrics.shape == (5 * 3 * 5 * 8, 5)
    assert list(result.metrics.columns) == ["model", "features", "fold", "metric", "value"]
    assert list(result.summary.index) == list(BINARY_METRICS)
    assert result.summary.shape == (8, 15)
    assert "LR (gcs_age)" in result.summary.columns
    assert all(" ± " in cell for cell in result.summary.to_numpy().ravel())
    # Importance kinds: SHAP for all 5 models + LR coef + RF impurity and permutation + DTC impurity + XGB gain,
    # each over 5 + 1 + 2 features.
    assert len(result.importance) == (5 + 5) * (5 + 1 + 2)
    assert list(result.importance.columns) == ["model", "features", "feature", "kind", "importance", "sd"]
    flat = result.flat_metrics()
    assert len(flat) == 15 * 8 * 2
    assert 0.75 < flat["lr_gcs_age_auc_mean"] <= 1.0


def test_bad_inputs_name_the_column(table):
    with pytest.raises(DataError, match="'missing'"):
        fit_tabular_models(table, "missing")
    with pytest.raises(DataError, match="Weight"):
        fit_tabular_models(table, TARGET, feature_sets={"x": ["Weight"]})
