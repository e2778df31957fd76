"""Uncertainty and significance: bootstrap CIs (ICH Table 2), fold summaries (ICH Table 1) and paired tests (MDMT
Table 2)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["aggregate_folds", "bootstrap_ci", "flatten_summary", "paired_tests", "stars"]


def bootstrap_ci(
    y_true,
    y_prob,
    metric_fn: Callable[[np.ndarray, np.ndarray], Mapping[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float, float]]:
    """Percentile bootstrap confidence intervals for every metric ``metric_fn`` returns.

    As in the ICH paper's Table 2 (1000 bootstrap samples of the test set): each resample draws ``n`` rows with
    replacement from the ``n`` rows of the data, using a ``numpy.random.Generator`` seeded with ``seed``, and the
    interval is the ``alpha/2`` and ``1 − alpha/2`` percentiles of the resampled values. A resample on which a metric
    is not finite (e.g. AUC of a resample holding one class) is skipped for that metric only; a metric that is never
    finite gets ``(point, nan, nan)``.

    Args:
        y_true: targets; a 2-D array (multi-label) is resampled by rows.
        y_prob: predictions aligned with ``y_true`` (rows resampled with the same indices).
        metric_fn: ``metric_fn(y_true, y_prob) -> {name: value}``, e.g. ``binary_metrics`` or a ``functools.partial``
            of it with another threshold.
        n_boot: number of resamples.
        seed: seed of the generator; the same seed gives the same intervals.
        alpha: 1 − confidence level (0.05 → 95 % intervals).

    Returns:
        ``{metric: (point estimate on all data, lower, upper)}``.
    """
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob)
    n = len(y_true)
    if n == 0 or len(y_prob) != n:
        raise ValueError(f"bootstrap_ci needs aligned, non-empty inputs; got {len(y_true)} and {len(y_prob)} rows")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    point = {key: float(value) for key, value in metric_fn(y_true, y_prob).items()}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {key: [] for key in point}
    for _ in range(n_boot):
        rows = rng.integers(0, n, size=n)
        for key, value in metric_fn(y_true[rows], y_prob[rows]).items():
            if np.isfinite(value):
                samples.setdefault(key, []).append(float(value))
    out: dict[str, tuple[float, float, float]] = {}
    for key, estimate in point.items():
        values = samples.get(key, [])
        if values:
            lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            out[key] = (estimate, float(lo), float(hi))
        else:
            out[key] = (estimate, float("nan"), float("nan"))
    return out


def aggregate_folds(per_fold: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each metric across cross-validation folds (ICH Table 1: "mean ± SD").

    The SD is the sample SD (``ddof=1``), the usual choice for a spread across folds; it is ``nan`` with fewer than
    two finite values. Missing and NaN values (e.g. AUC of a fold with one class) are left out of both.

    Args:
        per_fold: one ``{metric: value}`` dict per fold; folds may lack some metrics.

    Returns:
        ``{metric: {"mean": ..., "sd": ...}}`` in the order metrics first appear.
    """
    if not per_fold:
        return {}
    table = pd.DataFrame.from_records([dict(fold) for fold in per_fold]).apply(pd.to_numeric, errors="coerce")
    table = table.replace([np.inf, -np.inf], np.nan)
    return {
        str(metric): {"mean": float(table[metric].mean()), "sd": float(table[metric].std(ddof=1))}
        for metric in table.columns
    }


def flatten_summary(agg: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"auc": {"mean": m, "sd": s}}`` → ``{"auc_mean": m, "auc_sd": s}``, e.g. for MLflow metric names.

    Args:
        agg: output of :func:`aggregate_folds` (task-prefixed metrics give ``prognosis_auc_mean``).

    Returns:
        A flat ``{name: value}`` dict.
    """
    return {f"{metric}_{stat}": float(value) for metric, summary in agg.items() for stat, value in summary.items()}


def paired_tests(a, b, alternative: str = "greater") -> dict[str, float]:
    """One-sided paired t-test and Wilcoxon signed-rank test of ``a`` against ``b`` (MDMT paper, Table 2).

    ``a[i]`` and ``b[i]`` are the same metric for the same backbone (or fold) under two methods, e.g. MDMT vs STL.
    With ``alternative="greater"`` the tests ask whether ``a`` is larger (better mean); use ``"less"`` to ask
    whether a spread (SD across folds) is smaller, as the paper also does.

    The Wilcoxon test uses ``zero_method="wilcox"``: pairs with a zero difference carry no sign information and are
    dropped before ranking (scipy's default). When every difference is zero both tests are undefined and return
    statistic ``nan`` and p-value 1.0 (no evidence either way).

    Args:
        a: metric values of the method under test, one per backbone.
        b: metric values of the comparator, aligned with ``a``.
        alternative: ``"greater"``, ``"less"`` or ``"two-sided"``.

    Returns:
        ``{t_statistic, t_pvalue, wilcoxon_statistic, wilcoxon_pvalue, n}``.
    """
    a = np.asarray(a, dtype=float).reshape(-1)
    b = np.asarray(b, dtype=float).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"paired tests need aligned values; got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError(f"paired tests need at least two pairs, got {len(a)}")
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    if np.allclose(a - b, 0.0):
        nan = float("nan")
        return {"t_statistic": nan, "t_pvalue": 1.0, "wilcoxon_statistic": nan, "wilcoxon_pvalue": 1.0, "n": len(a)}
    t = stats.ttest_rel(a, b, alternative=alternative)
    w = stats.wilcoxon(a, b, zero_method="wilcox", alternative=alternative)
    return {
        "t_statistic": float(t.statistic),
        "t_pvalue": float(t.pvalue),
        "wilcoxon_statistic": float(w.statistic),
        "wilcoxon_pvalue": float(w.pvalue),
        "n": len(a),
    }


def stars(p: float) -> str:
    """Significance marks of the MDMT paper: ``*`` p < 0.05, ``**`` p < 0.01, ``***`` p < 0.001, else ``""``."""
    if not np.isfinite(p):
        return ""
    for cut, mark in ((0.001, "***"), (0.01, "**"), (0.05, "*")):
        if p < cut:
            return mark
    return ""
