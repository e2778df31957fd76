"""The FD-Shifts protocol's numbers, tables and figures for ``medmlops informer evaluate`` (no model, no registry).

Everything here takes per-class confidences (``(N, C)``, higher = more confident, :mod:`medmlops.informer.csf`),
0/1 targets (NaN = unknown) and the model's 0/1 predictions of one test set, so it is tested on synthetic input:

* :func:`metric_table`: AURC, E-AURC and AUGRC (× 1000, class-averaged by :func:`medmlops.informer.csf.class_metric`)
  of every CSF with a percentile bootstrap 95 % CI over resampled images;
* :func:`paired_difference`: one CSF's AUGRC minus another's on the *same* resampled images (paired), with its CI;
* :func:`risk_coverage`: the class-averaged selective-risk-vs-coverage curve the figure draws;
* :func:`operating_rows`: coverage and selective risk of the deployed CSF at its stored τ;
* :func:`aggregate` / :func:`beats_msr`: mean and sd over training seeds (model versions), and how many versions'
  selected CSF beat MSR.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmlops.informer import csf

METRICS = {"aurc": "AURC", "eaurc": "E-AURC", "augrc": "AUGRC"}
SCALE = 1000.0
COVERAGE_GRID = np.linspace(0.05, 1.0, 20)
SELECTED_VS_MSR = "selected - MSR"
LEARNED_VS_LOGIT = "INFORMER-learned - logit-learned"
LEARNED_VS_MSR = "INFORMER-learned - MSR"


def class_averaged(
    metric: str, confidence: np.ndarray, targets: np.ndarray, predictions: np.ndarray, min_per_class: int = 0
) -> float:
    """``metric`` (aurc | eaurc | augrc) × 1000, averaged over the classes where it is defined (NaN if none)."""
    values = csf.class_metric(metric, confidence, targets, predictions, min_per_class)
    return float(np.nanmean(values) * SCALE) if np.isfinite(values).any() else float("nan")


def bootstrap_indices(n: int, n_bootstrap: int, seed: int = 0) -> np.ndarray:
    """``(n_bootstrap, n)`` image indices drawn with replacement: one set of resamples that every CSF of a test
    set shares, so differences between CSFs are paired."""
    return np.random.default_rng(seed).integers(0, n, size=(int(n_bootstrap), int(n)))


def percentile_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the finite bootstrap values (NaN, NaN when there are fewer than two)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) < 2:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def metric_table(
    confidences: Mapping[str, np.ndarray], targets: np.ndarray, predictions: np.ndarray, indices: np.ndarray, *,
    test_set: str, min_per_class: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """One row per CSF: ``AURC``, ``E-AURC``, ``AUGRC`` (× 1000) and each one's ``_low`` / ``_high`` bootstrap
    bound over the resamples ``indices`` (:func:`bootstrap_indices`)."""
    targets, predictions = np.asarray(targets, dtype=np.float64), np.asarray(predictions)
    rows = []
    for name, confidence in confidences.items():
        confidence = np.asarray(confidence, dtype=np.float64)
        row: dict[str, Any] = {"test_set": test_set, "csf": name, "label": csf_label(name), "n": int(len(targets))}
        for metric, column in METRICS.items():
            row[column] = class_averaged(metric, confidence, targets, predictions, min_per_class)
            boot = [class_averaged(metric, confidence[i], targets[i], predictions[i], min_per_class) for i in indices]
            row[f"{column}_low"], row[f"{column}_high"] = percentile_ci(boot)
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(
    a: np.ndarray, b: np.ndarray, targets: np.ndarray, predictions: np.ndarray, indices: np.ndarray, *,
    metric: str = "augrc", min_per_class: int = 0,
) -> dict[str, float]:  # fmt: skip
    """``metric(a) - metric(b)`` × 1000 over the classes where both are defined, and its paired bootstrap 95 %
    CI: each resample scores both CSFs on the same images, so what the two share (the model's errors, the
    images' difficulty) cancels. ``relative``: the difference over ``metric(b)``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    targets, predictions = np.asarray(targets, dtype=np.float64), np.asarray(predictions)
    point = csf.metric_difference(metric, a, b, targets, predictions, min_per_class)
    boot = [csf.metric_difference(metric, a[i], b[i], targets[i], predictions[i], min_per_class) for i in indices]
    low, high = percentile_ci(boot)
    base = class_averaged(metric, b, targets, predictions, min_per_class)
    relative = point / base if np.isfinite(point) and np.isfinite(base) and base > 0 else float("nan")
    return {"difference": point, "low": low, "high": high, "relative": relative}


def verdict(low: float, high: float) -> str:
    """How a difference's CI reads: ``lower`` (the first CSF is better: the whole CI below 0), ``higher``, or
    ``no clear difference``."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not computable"
    return "lower" if high < 0 else "higher" if low > 0 else "no clear difference"


def comparisons(
    confidences: Mapping[str, np.ndarray], targets: np.ndarray, predictions: np.ndarray, indices: np.ndarray, *,
    selected: str, test_set: str, min_per_class: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """The protocol's paired AUGRC differences on one test set: the deployed CSF minus MSR, INFORMER-learned minus
    logit-learned (the ablation: what the saliency features add) and INFORMER-learned minus MSR. A comparison whose
    CSFs are not both available is left out; the deployed CSF being MSR gives a difference of exactly 0."""
    pairs = [(SELECTED_VS_MSR, selected, csf.DEFAULT_CSF), (LEARNED_VS_LOGIT, "informer_learned", "logit_learned"),
             (LEARNED_VS_MSR, "informer_learned", csf.DEFAULT_CSF)]  # fmt: skip
    rows = []
    for comparison, a, b in pairs:
        if a not in confidences or b not in confidences:
            continue
        d = paired_difference(
            confidences[a], confidences[b], targets, predictions, indices, min_per_class=min_per_class
        )
        rows.append({"test_set": test_set, "comparison": comparison, "csf": a, "baseline": b, "metric": "AUGRC", **d,
                     "verdict": verdict(d["low"], d["high"])})  # fmt: skip
    return pd.DataFrame(rows, columns=["test_set", "comparison", "csf", "baseline", "metric", "difference", "low",
                                       "high", "relative", "verdict"])  # fmt: skip


def risk_coverage(
    confidence: np.ndarray, targets: np.ndarray, predictions: np.ndarray, grid: np.ndarray = COVERAGE_GRID
) -> np.ndarray:
    """Selective risk at each coverage of ``grid``, averaged over classes: per class the images are accepted from
    the most confident down (stable order; ties are not grouped here, the figure only), and at coverage ``c`` the
    risk is the error rate among the first ``ceil(c * n)``."""
    confidence, targets = np.asarray(confidence, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    curves = []
    for j in range(targets.shape[1]):
        keep = np.isfinite(targets[:, j])
        if keep.sum() < 1:
            continue
        errors = (np.asarray(predictions)[keep, j] != targets[keep, j]).astype(np.float64)
        order = np.argsort(-confidence[keep, j], kind="stable")
        n = len(order)
        risk = np.cumsum(errors[order]) / np.arange(1, n + 1)
        k = np.clip(np.ceil(np.asarray(grid) * n).astype(int), 1, n)
        curves.append(risk[k - 1])
    return np.mean(curves, axis=0) if curves else np.full(len(grid), np.nan)


def operating_rows(
    confidence: np.ndarray, targets: np.ndarray, predictions: np.ndarray, tau: Sequence[float | None],
    classes: Sequence[str], *, test_set: str,
) -> pd.DataFrame:  # fmt: skip
    """Coverage and selective risk of the deployed CSF at its stored τ (``csf.selective_point``), per class and
    their mean (over classes where defined)."""
    point = csf.selective_point(confidence, targets, predictions, tau)
    return point_rows(point, tau, classes, test_set=test_set)


def point_rows(
    point: Mapping[str, Sequence[float | None]], tau: Sequence[float | None], classes: Sequence[str], *, test_set: str
) -> pd.DataFrame:
    """Rows (one per class, then ``mean``) of an operating point's per-class coverage and selective risk."""
    rows = [{"test_set": test_set, "class": c, "tau": t, "coverage": _num(cov), "risk": _num(r)}
            for c, t, cov, r in zip(classes, tau, point["coverage"], point["risk"], strict=True)]  # fmt: skip
    rows.append({"test_set": test_set, "class": "mean", "tau": None,
                 "coverage": float(np.nanmean([r["coverage"] for r in rows])),
                 "risk": float(np.nanmean([r["risk"] for r in rows]))})  # fmt: skip
    return pd.DataFrame(rows)


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def csf_label(name: str) -> str:
    try:
        return csf.label(name)
    except csf.CSFUnavailable:
        return name


# ---------------------------------------------------------------------------------------------------------------
# Over training seeds (model versions)
# ---------------------------------------------------------------------------------------------------------------


def aggregate(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean and sample sd (ddof 1; NaN for one version) of every metric per (test set, CSF) over the versions'
    :func:`metric_table` rows (``tables``: version → its rows of every test set), with how many versions had it."""
    frame = pd.concat([t.assign(version=str(v)) for v, t in tables.items()], ignore_index=True)
    out = []
    for (test_set, name), group in frame.groupby(["test_set", "csf"], sort=False):
        row: dict[str, Any] = {"test_set": test_set, "csf": name, "label": csf_label(name),
                               "n_versions": int(group["version"].nunique())}  # fmt: skip
        for column in METRICS.values():
            values = group[column].to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            row[f"{column}_mean"] = float(values.mean()) if len(values) else float("nan")
            row[f"{column}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def beats_msr(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per (test set, comparison) over the versions' :func:`comparisons`: how many versions there are, in how many
    the first CSF had the lower AUGRC (``n_lower``) and in how many its whole CI was below 0
    (``n_lower_ci``), the mean and sd of the difference, and which CSFs were compared (the selected one can
    differ between versions)."""
    frame = pd.concat([t.assign(version=str(v)) for v, t in tables.items()], ignore_index=True)
    out = []
    for (test_set, comparison), group in frame.groupby(["test_set", "comparison"], sort=False):
        diff = group["difference"].to_numpy(dtype=np.float64)
        out.append({
            "test_set": test_set, "comparison": comparison, "csfs": ", ".join(sorted(set(group["csf"]))),
            "n_versions": int(group["version"].nunique()), "n_lower": int((diff < 0).sum()),
            "n_lower_ci": int((group["high"].to_numpy(dtype=np.float64) < 0).sum()),
            "difference_mean": float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan"),
            "difference_sd": float(np.nanstd(diff, ddof=1)) if np.isfinite(diff).sum() > 1 else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------------------
# Tables, figure, HTML
# ---------------------------------------------------------------------------------------------------------------


def wide_table(fd: pd.DataFrame, column: str = "AUGRC", calibration: Mapping[str, float | None] | None = None):
    """CSF rows × test-set columns, each cell ``value [low, high]``; with ``calibration`` (the stored ranking's
    AUGRC per CSF) a first column of the calibration split's values."""
    cells = fd.assign(cell=[_cell(r[column], r[f"{column}_low"], r[f"{column}_high"]) for _, r in fd.iterrows()])
    table = cells.pivot(index="label", columns="test_set", values="cell")
    table = table[[t for t in dict.fromkeys(fd["test_set"])]].reindex(list(dict.fromkeys(fd["label"])))
    if calibration is not None:
        by_label = {csf_label(n): v for n, v in calibration.items()}
        table.insert(
            0, "calibration", [("-" if by_label.get(i) is None else f"{by_label[i]:.1f}") for i in table.index]
        )
    table.index.name = f"{column} x1000"
    return table


def _cell(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{value:.1f} [{low:.1f}, {high:.1f}]" if np.isfinite(low) else f"{value:.1f}"


def risk_coverage_figure(
    curves: Mapping[str, Mapping[str, np.ndarray]], path: Path, title: str, *, selected: str | None = None,
    grid: np.ndarray = COVERAGE_GRID,
) -> Path:  # fmt: skip
    """One panel per test set: each CSF's class-averaged selective risk vs coverage (:func:`risk_coverage`); MSR
    black dashed, the deployed CSF thick."""
    from medmlops.evaluation.figures import pyplot, save_figure

    plt = pyplot()
    sets = list(curves)
    fig, axes = plt.subplots(1, len(sets), figsize=(3.4 * len(sets) + 0.5, 3.4), squeeze=False, sharey=True)
    for ax, test_set in zip(axes[0], sets, strict=True):
        for name, risk in curves[test_set].items():
            style = {"color": "black", "linestyle": "--", "linewidth": 1.6} if name == csf.DEFAULT_CSF else {}
            if name == selected and name != csf.DEFAULT_CSF:
                style = {"linewidth": 2.6}
            ax.plot(grid, risk, label=csf_label(name), **style)
        ax.set_title(test_set, fontsize=9)
        ax.set_xlabel("coverage")
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("selective risk (class mean)")
    axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A self-contained HTML page: ``sections`` are (heading, HTML body) pairs."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1>"]  # fmt: skip
    for heading, body in sections:
        parts += [f"<h2>{html.escape(heading)}</h2>", body]
    return "\n".join([*parts, "</body></html>"])


def write_table(frame: pd.DataFrame, folder: Path, stem: str, *, index: bool = False, digits: int = 2) -> None:
    """``stem.csv`` and ``stem.md`` (rounded) in ``folder``."""
    frame.to_csv(folder / f"{stem}.csv", index=index)
    (folder / f"{stem}.md").write_text(frame.round(digits).to_markdown(index=index) + "\n", encoding="utf-8")
