"""Metrics of an experiment's prediction frames (one row per image, ``<task>_p<k>`` probabilities and the label
columns that :func:`medmlops.training.loop.predict` writes), per task: a fold's test metrics, the findings
classifier's Youden thresholds, bootstrap confidence intervals and the mean ± SD table across folds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from medmlops.evaluation import metrics as M
from medmlops.evaluation import stats as S
from medmlops.training.loop import task_labels, task_probs
from medmlops.training.tasks import TaskDef


def _known(frame: pd.DataFrame, task: TaskDef) -> tuple[np.ndarray, np.ndarray] | None:
    """Labels and probabilities of the rows that belong to ``task`` (label ≥ 0), None when none does (a COVID task
    on the other dataset's images); multilabel: all rows, unknown findings are NaN and masked per class by the
    metric."""
    labels, probs = task_labels(frame, task), task_probs(frame, task)
    if task.kind == "multilabel":
        return labels, probs
    keep = labels >= 0
    return (labels[keep], probs[keep]) if keep.any() else None


def _metric_fn(task: TaskDef, thresholds: np.ndarray | None) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """``f(labels, probs) -> {metric: value}`` of one task: binary at 0.5 (the ICH paper's conservative threshold),
    ordinal decoded monotonically, multiclass by argmax (ACC, F1, G-mean: the MDMT paper), multilabel at per-class
    thresholds (0.5 when None)."""
    if task.kind == "multilabel":
        cut = np.full(task.out_features, 0.5) if thresholds is None else thresholds
        names = [c.lower().replace(" ", "_") for c in task.classes]
        return lambda y, p: M.multilabel_metrics(y, p, cut, names)
    if task.kind == "binary":
        return lambda y, p: M.binary_metrics(y, p[:, 0], threshold=0.5)
    if task.kind == "ordinal":
        return lambda y, p: M.ordinal_metrics(y, task.predict(p), n_classes=len(task.classes))
    return lambda y, p: M.multiclass_metrics(y, task.predict(p))


def task_metrics(frame: pd.DataFrame, task: TaskDef, thresholds: np.ndarray | None = None) -> dict[str, float]:
    """Test metrics of one task, named ``<task>_<metric>`` (see :func:`_metric_fn`; multilabel thresholds: Youden on
    validation for the findings classifier); a two-class multiclass task also gets the AUC of its second class."""
    known = _known(frame, task)
    if known is None:
        return {}
    labels, probs = known
    values = _metric_fn(task, thresholds)(labels, probs)
    if task.kind == "multiclass" and probs.shape[1] == 2:
        values["auc"] = M.binary_metrics(labels, probs[:, 1])["auc"]
    return {f"{task.name}_{k}": float(v) for k, v in values.items()}


def youden_thresholds(frame: pd.DataFrame, task: TaskDef) -> np.ndarray:
    """Per-class Youden-index thresholds of a multilabel task on a (validation) prediction frame."""
    labels, probs = task_labels(frame, task), task_probs(frame, task)
    out = []
    for k in range(task.out_features):
        keep = ~np.isnan(labels[:, k])
        out.append(M.youden_threshold(labels[keep, k], probs[keep, k]) if keep.sum() else 0.5)
    return np.asarray(out, dtype=np.float64)


def bootstrap_table(
    frame: pd.DataFrame, tasks: dict[str, TaskDef], n_boot: int, seed: int, thresholds: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Percentile bootstrap CIs of every task's metrics on one prediction frame (ICH paper, Table 2): columns
    ``task, metric, value, ci_low, ci_high``; ``thresholds`` are the multilabel tasks' (0.5 for those left out)."""
    rows = []
    for task in tasks.values():
        known = _known(frame, task)
        if known is None:
            continue
        values = S.bootstrap_ci(*known, _metric_fn(task, thresholds.get(task.name)), n_boot=n_boot, seed=seed)
        for metric, (point, lo, hi) in values.items():
            rows.append({"task": task.name, "metric": metric, "value": point, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def summary_table(summary: dict[str, float], tasks: dict[str, TaskDef]) -> pd.DataFrame:
    """Mean ± SD per task and metric from :func:`medmlops.evaluation.stats.flatten_summary`'s
    ``<task>_<metric>_mean|sd``, shaped like the paper's tables (rows: metrics, columns: tasks)."""
    table: dict[str, dict[str, str]] = {}
    for key, value in summary.items():
        if not key.endswith("_mean"):
            continue
        base = key[: -len("_mean")]
        task = next((t for t in sorted(tasks, key=len, reverse=True) if base.startswith(f"{t}_")), None)
        if task is None:
            continue
        metric = base[len(task) + 1 :]
        sd = summary.get(f"{base}_sd", float("nan"))
        table.setdefault(metric, {})[task] = f"{value:.2f} ± {sd:.2f}"
    return pd.DataFrame(table).T
