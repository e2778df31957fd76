"""Tabular prognosis baselines of the ICH paper (Table 1, supplementary Figs. 1 and 4): DNN, LR, RF, DTC and XGBoost
under 10-fold CV, with SHAP importances.

Each model is a sklearn pipeline ``median imputation → min-max scaling → estimator`` fitted on the training folds
only, so neither the imputed medians nor the scaling range ever see the held-out fold. The DNN is a small sklearn
``MLPClassifier`` (Perez et al.'s architecture is not given in the paper); XGBoost is ``xgboost.XGBClassifier``
from the CPU-only ``xgboost-cpu`` wheel (the paper trains it and leaves it out of Table 1 as slightly below RF).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.inspection import permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.tree import DecisionTreeClassifier

from medmlops.errors import DataError
from medmlops.evaluation.metrics import BINARY_METRICS, binary_metrics
from medmlops.evaluation.stats import aggregate_folds, flatten_summary

__all__ = [
    "DEFAULT_ID_COLUMNS",
    "DEFAULT_MODELS",
    "MODEL_NAMES",
    "TabularResult",
    "default_feature_sets",
    "fit_tabular_models",
]

MODEL_NAMES: dict[str, str] = {"dnn": "DNN", "lr": "LR", "rf": "RF", "dtc": "DTC", "xgb": "XGB"}
DEFAULT_MODELS: tuple[str, ...] = ("dnn", "lr", "rf", "dtc", "xgb")
DEFAULT_ID_COLUMNS: tuple[str, ...] = ("PatientID", "patient_id", "sample_id")
# SHAP of the model-agnostic explainer (DNN): Kernel SHAP with background rows drawn from the training fold, on at
# most SHAP_MAX_ROWS held-out rows per fold (it loops over rows in Python; the paper's folds have 26). Kernel SHAP
# rather than shap's permutation/exact explainers: theirs JIT-compiles numba code, ~10 s in every new process.
SHAP_BACKGROUND = 30
SHAP_MAX_ROWS = 20

# Hyper-parameters the paper does not state. The tree is kept shallow so its splits read as decision boundaries
# (the paper takes its GCS ≤ 8 and age ≥ 80 cut-offs from the DTC); max_iter only ensures convergence. The DNN is
# one hidden layer of 32 with L2 weight decay, fitted by L-BFGS (deterministic, fast on a few hundred rows).
_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "dnn": {"hidden_layer_sizes": (32,), "alpha": 1e-2, "solver": "lbfgs", "max_iter": 200},
    "lr": {"max_iter": 1000},
    "rf": {"n_estimators": 200, "min_samples_leaf": 2},
    "dtc": {"max_depth": 3},
    "xgb": {"n_estimators": 200, "max_depth": 3, "learning_rate": 0.05, "subsample": 0.8},
}


@dataclass
class TabularResult:
    """Cross-validated tabular baselines.

    Attributes:
        metrics: tidy per-fold metrics with columns ``model, features, fold, metric, value``.
        summary: the paper's Table 1: one row per metric (Table 1 order), one column per ``"{MODEL} ({features})"``,
            cells ``"mean ± sd"`` (sample SD across folds) with two decimals.
        importance: tidy importances averaged over folds, with columns ``model, features, feature, kind,
            importance, sd``; ``kind`` is ``shap`` (every model: mean |SHAP value| on the held-out fold),
            ``coef_abs`` (LR), ``impurity`` (RF, DTC), ``gain`` (XGB) or ``permutation`` (RF, on the held-out folds).
    """

    metrics: pd.DataFrame
    summary: pd.DataFrame
    importance: pd.DataFrame

    def flat_metrics(self) -> dict[str, float]:
        """``{"{model}_{features}_{metric}_mean" / "_sd": value}`` for MLflow."""
        out: dict[str, float] = {}
        for (model, features), group in self.metrics.groupby(["model", "features"], sort=False):
            per_fold = [dict(zip(g["metric"], g["value"], strict=True)) for _, g in group.groupby("fold")]
            prefixed = {f"{model}_{features}_{k}": v for k, v in aggregate_folds(per_fold).items()}
            out.update(flatten_summary(prefixed))
        return out


def default_feature_sets(
    table: pd.DataFrame, target: str, id_columns: Sequence[str] = DEFAULT_ID_COLUMNS
) -> dict[str, list[str]]:
    """The feature sets of Table 1: ``all`` clinical columns, ``gcs`` and ``gcs_age``.

    Args:
        table: the clinical table.
        target: label column, excluded from ``all``.
        id_columns: identifier columns, excluded from ``all``.

    Returns:
        ``{"all": every numeric column except ids and the label, "gcs": ["GCS"], "gcs_age": ["GCS", "Age"]}``.
    """
    excluded = {target, *id_columns}
    numeric = [c for c in table.columns if c not in excluded and pd.api.types.is_numeric_dtype(table[c])]
    return {"all": numeric, "gcs": ["GCS"], "gcs_age": ["GCS", "Age"]}


def _build_estimator(model: str, seed: int, params: Mapping[str, Any]) -> ClassifierMixin:
    kwargs = {**_DEFAULT_PARAMS[model], **params}
    if model == "dnn":
        return MLPClassifier(random_state=seed, **kwargs)
    if model == "lr":
        return LogisticRegression(**kwargs)
    if model == "rf":
        return RandomForestClassifier(random_state=seed, n_jobs=1, **kwargs)
    if model == "xgb":
        from xgboost import XGBClassifier

        return XGBClassifier(random_state=seed, n_jobs=1, eval_metric="logloss", **kwargs)
    return DecisionTreeClassifier(random_state=seed, **kwargs)


def _check_inputs(table: pd.DataFrame, target: str, feature_sets: Mapping[str, Sequence[str]], models, n_splits):
    if target not in table.columns:
        raise DataError(f"target column '{target}' is not in the table")
    labels = table[target]
    if labels.isna().any():
        raise DataError(f"target column '{target}' has {int(labels.isna().sum())} missing values")
    if not labels.isin((0, 1)).all():
        raise DataError(f"target column '{target}' must hold only 0 and 1")
    smallest = int(labels.value_counts().min()) if labels.nunique() == 2 else 0
    if smallest < n_splits:
        raise DataError(f"target column '{target}' has {smallest} samples in its smallest class; need ≥ {n_splits}")
    unknown = [m for m in models if m not in MODEL_NAMES]
    if unknown:
        raise DataError(f"unknown tabular model(s) {unknown} (expected: {', '.join(MODEL_NAMES)})")
    for name, columns in feature_sets.items():
        if not columns:
            raise DataError(f"feature set '{name}' is empty")
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise DataError(f"feature set '{name}': column(s) {missing} not in the table")
        text = [c for c in columns if not pd.api.types.is_numeric_dtype(table[c])]
        if text:
            raise DataError(f"feature set '{name}': column(s) {text} are not numeric")


def _shap_importance(model: str, pipeline: Pipeline, x_train, x_test, seed: int) -> np.ndarray:
    """Mean |SHAP value| per feature over the held-out fold (Lundberg & Lee, 2017; the paper's Supplementary
    Fig. 1), on the imputed and scaled inputs. Trees: TreeExplainer (exact; RF and DTC explain the probability of
    poor prognosis, XGB its log-odds). LR: LinearExplainer (log-odds). DNN: Kernel SHAP (shap's default sample
    count, 2 × features + 2048 coalitions; every coalition, i.e. exact, up to 11 features) on the probability of
    poor prognosis, with up to ``SHAP_BACKGROUND`` training rows as background, on up to ``SHAP_MAX_ROWS``
    held-out rows (drawn with ``seed``)."""
    import shap

    prepare, estimator = pipeline[:-1], pipeline[-1]
    x_eval = np.asarray(prepare.transform(x_test), dtype=np.float64)
    background = np.asarray(prepare.transform(x_train), dtype=np.float64)
    background = shap.sample(background, min(len(background), SHAP_BACKGROUND), random_state=seed)
    if model in ("rf", "dtc", "xgb"):
        values = shap.TreeExplainer(estimator).shap_values(x_eval)
    elif model == "lr":
        values = shap.LinearExplainer(estimator, shap.maskers.Independent(background)).shap_values(x_eval)
    else:
        if len(x_eval) > SHAP_MAX_ROWS:
            rows = np.random.default_rng(seed).choice(len(x_eval), SHAP_MAX_ROWS, replace=False)
            x_eval = x_eval[np.sort(rows)]
        explainer = shap.KernelExplainer(lambda rows: estimator.predict_proba(rows)[:, 1], background)
        state = np.random.get_state()  # Kernel SHAP samples coalitions from numpy's global generator
        np.random.seed(seed)
        try:
            values = explainer.shap_values(x_eval, silent=True)
        finally:
            np.random.set_state(state)
    values = np.asarray(values[1] if isinstance(values, list) else values)
    if values.ndim == 3:  # (rows, features, classes): the poor-prognosis class
        values = values[..., 1]
    return np.abs(values).mean(axis=0)


def _fold_importance(
    model: str, pipeline: Pipeline, x_train, x_test, y_test, seed: int, n_repeats: int
) -> dict[str, np.ndarray]:
    estimator = pipeline[-1]
    found = {"shap": _shap_importance(model, pipeline, x_train, x_test, seed)}
    if model == "dnn":
        return found
    if model == "lr":
        # Coefficients are comparable across features only because every input was min-max scaled to [0, 1].
        return {**found, "coef_abs": np.abs(estimator.coef_[0])}
    found["gain" if model == "xgb" else "impurity"] = np.asarray(estimator.feature_importances_, dtype=np.float64)
    if model == "rf":
        # Impurity importance favours high-cardinality features; the permutation score on held-out data does not.
        perm = permutation_importance(
            pipeline, x_test, y_test, scoring="roc_auc", n_repeats=n_repeats, random_state=seed, n_jobs=1
        )
        found["permutation"] = perm.importances_mean
    return found


def fit_tabular_models(
    table: pd.DataFrame,
    target: str,
    feature_sets: Mapping[str, Sequence[str]] | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    n_splits: int = 10,
    seed: int = 0,
    *,
    threshold: float = 0.5,
    id_columns: Sequence[str] = DEFAULT_ID_COLUMNS,
    estimator_params: Mapping[str, Mapping[str, Any]] | None = None,
    permutation_repeats: int = 5,
) -> TabularResult:
    """Stratified K-fold CV of every model × feature set, with per-fold metrics and feature importances.

    Defaults follow the ICH paper: 10 folds; min-max normalisation of the inputs; ``threshold`` 0.5; feature sets
    ``{"all": every numeric clinical column except ids and the label, "gcs": ["GCS"], "gcs_age": ["GCS", "Age"]}``
    (see :func:`default_feature_sets`). Missing values are imputed with the training-fold median. All models and
    feature sets share the same folds (``StratifiedKFold(shuffle=True, random_state=seed)``), so their per-fold
    metrics are paired.

    Estimators (hyper-parameters the paper leaves open, overridable with ``estimator_params``):
    ``dnn`` MLPClassifier(hidden_layer_sizes=(32,), alpha=0.01, solver="lbfgs", max_iter=200);
    ``lr`` LogisticRegression(max_iter=1000); ``rf`` RandomForestClassifier(n_estimators=200, min_samples_leaf=2);
    ``dtc`` DecisionTreeClassifier(max_depth=3), shallow so its splits read as decision boundaries;
    ``xgb`` XGBClassifier(n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8).

    Importances, averaged over folds: SHAP (mean |SHAP value| on the held-out fold) for every model; LR
    |coefficients| on the scaled inputs; RF impurity importance and sklearn's ``permutation_importance`` (ROC AUC
    drop on the held-out fold); DTC impurity importance; XGB gain.

    Args:
        table: one row per patient with the label and the clinical columns.
        target: 0/1 label column, e.g. ``"Label (poor_prognosis)"``.
        feature_sets: ``{name: columns}``; ``None`` for the defaults above.
        models: any of ``"dnn"``, ``"lr"``, ``"rf"``, ``"dtc"``, ``"xgb"``.
        n_splits: number of CV folds.
        seed: seed of the fold split and of the random estimators.
        threshold: decision threshold of the binary metrics.
        id_columns: identifier columns left out of the default ``all`` set.
        estimator_params: per-model keyword overrides, e.g. ``{"rf": {"n_estimators": 50}}``.
        permutation_repeats: shuffles per feature in the permutation importance.

    Returns:
        A :class:`TabularResult`.
    """
    feature_sets = dict(feature_sets or default_feature_sets(table, target, id_columns))
    models = tuple(models)
    _check_inputs(table, target, feature_sets, models, n_splits)
    estimator_params = estimator_params or {}
    y = table[target].to_numpy(dtype=int)
    folds = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))

    metric_rows: list[dict[str, Any]] = []
    importance_rows: list[dict[str, Any]] = []
    for model in models:
        for set_name, columns in feature_sets.items():
            x = table[list(columns)].astype(float)
            per_fold_importance: dict[str, list[np.ndarray]] = {}
            for fold, (train, test) in enumerate(folds):
                pipeline = Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                        ("scale", MinMaxScaler()),
                        ("model", _build_estimator(model, seed, estimator_params.get(model, {}))),
                    ]
                )
                with warnings.catch_warnings():  # an L-BFGS MLP that stops at max_iter on a tiny fold is still a model
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    pipeline.fit(x.iloc[train], y[train])
                prob = pipeline.predict_proba(x.iloc[test])[:, 1]
                for metric, value in binary_metrics(y[test], prob, threshold).items():
                    metric_rows.append(
                        {"model": model, "features": set_name, "fold": fold, "metric": metric, "value": value}
                    )
                found = _fold_importance(
                    model, pipeline, x.iloc[train], x.iloc[test], y[test], seed, permutation_repeats
                )
                for kind, values in found.items():
                    per_fold_importance.setdefault(kind, []).append(values)
            for kind, stacked in per_fold_importance.items():
                values = np.vstack(stacked)
                for j, feature in enumerate(columns):
                    importance_rows.append(
                        {
                            "model": model,
                            "features": set_name,
                            "feature": feature,
                            "kind": kind,
                            "importance": float(values[:, j].mean()),
                            "sd": float(values[:, j].std(ddof=1)) if len(values) > 1 else float("nan"),
                        }
                    )

    metrics = pd.DataFrame(metric_rows, columns=["model", "features", "fold", "metric", "value"])
    importance = pd.DataFrame(importance_rows, columns=["model", "features", "feature", "kind", "importance", "sd"])
    importance = importance.sort_values(
        ["model", "features", "kind", "importance"], ascending=[True, True, True, False], kind="stable"
    ).reset_index(drop=True)
    return TabularResult(metrics=metrics, summary=_summary_table(metrics), importance=importance)


def _summary_table(metrics: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """Tidy per-fold metrics → Table 1 layout (rows = metrics, columns = ``"{MODEL} ({features})"``)."""
    columns: dict[str, pd.Series] = {}
    for (model, features), group in metrics.groupby(["model", "features"], sort=False):
        stats_by_metric = group.groupby("metric", sort=False)["value"].agg(["mean", "std"])
        cells = {
            metric: f"{row['mean']:.{decimals}f} ± {row['std']:.{decimals}f}"
            for metric, row in stats_by_metric.iterrows()
        }
        columns[f"{MODEL_NAMES.get(model, model)} ({features})"] = pd.Series(cells)
    summary = pd.DataFrame(columns)
    order = [m for m in BINARY_METRICS if m in summary.index] + [m for m in summary.index if m not in BINARY_METRICS]
    summary = summary.reindex(order)
    summary.index.name = "metric"
    return summary
