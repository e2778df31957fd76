"""Report figures: the ICH paper's ablation box plots (Fig. 2), importance bars (supp. Fig. 4), an HTML metric table
and an experiment's training curves.

matplotlib is imported and switched to the Agg backend inside each function, never at import time, so importing this
module neither needs a display nor changes the backend of an interactive session that merely imports it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DPI",
    "ablation_boxplot",
    "importance_barplot",
    "metric_table_html",
    "pyplot",
    "save_figure",
    "training_curves",
]

DPI = 120
_GROUP_COLUMNS = ("model", "features", "kind")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display here, nor in a pipeline step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {missing}; got {list(frame.columns)}")


def ablation_boxplot(per_fold: pd.DataFrame, metrics: Sequence[str], path: str | Path, *, seed: int = 0) -> Path:
    """One panel per metric (up to 4 per row), one box per model, the per-fold values overlaid as points (ICH
    paper, Fig. 2).

    Args:
        per_fold: tidy values with columns ``model, fold, metric, value`` (e.g. ``TabularResult.metrics``, or the
            image models' per-fold test metrics). Models are drawn in order of first appearance.
        metrics: the metrics to draw, one panel each.
        path: PNG file to write (parent folders are created).
        seed: seed of the horizontal jitter of the points.

    Returns:
        ``path``.
    """
    _require(per_fold, ("model", "fold", "metric", "value"), "ablation_boxplot")
    if not metrics:
        raise ValueError("ablation_boxplot needs at least one metric")
    absent = [m for m in metrics if m not in set(per_fold["metric"])]
    if absent:
        raise ValueError(f"metric(s) {absent} not in per_fold (has {sorted(set(per_fold['metric']))})")
    plt = pyplot()
    models = list(dict.fromkeys(per_fold["model"]))
    rng = np.random.default_rng(seed)
    ncols = min(len(metrics), 4)  # a grid, not one long row: 8 metrics × 11 models stay readable
    nrows = -(-len(metrics) // ncols)
    panel_width = max(3.0, 1.0 + 0.6 * len(models))
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_width * ncols, 4.6 * nrows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    for ax, metric in zip(axes, metrics, strict=False):
        rows = per_fold[per_fold["metric"] == metric]
        data = [rows.loc[rows["model"] == m, "value"].dropna().to_numpy(dtype=float) for m in models]
        positions = np.arange(1, len(models) + 1)
        ax.boxplot(data, positions=positions, widths=0.6, showfliers=False)
        for position, values in zip(positions, data, strict=True):
            ax.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=12, alpha=0.7, zorder=3)
        ax.set_xticks(positions, [str(m) for m in models], rotation=30, ha="right")
        ax.set_title(metric)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def importance_barplot(importance: pd.DataFrame, path: str | Path, top: int = 15) -> Path:
    """Horizontal bars of the ``top`` most important features, one panel per model / feature set / kind.

    Args:
        importance: columns ``feature, importance`` and optionally ``sd`` (error bars) and any of ``model, features,
            kind`` (one panel per combination), e.g. ``TabularResult.importance``.
        path: PNG file to write.
        top: number of features per panel.

    Returns:
        ``path``.
    """
    _require(importance, ("feature", "importance"), "importance_barplot")
    if importance.empty:
        raise ValueError("importance_barplot got an empty table")
    plt = pyplot()
    groups = [c for c in _GROUP_COLUMNS if c in importance.columns]
    panels = list(importance.groupby(groups, sort=False)) if groups else [((), importance)]
    height = 0.3 * min(top, max(len(g) for _, g in panels)) + 1.2
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.0, height * len(panels)), squeeze=False)
    for ax, (key, group) in zip(axes[:, 0], panels, strict=True):
        best = group.sort_values("importance", ascending=False).head(top).iloc[::-1]
        error = best["sd"].fillna(0.0).to_numpy() if "sd" in best.columns else None
        ax.barh(best["feature"].astype(str), best["importance"], xerr=error, color="#4c72b0", alpha=0.85)
        key = key if isinstance(key, tuple) else (key,)
        ax.set_title(" / ".join(str(k) for k in key) or "importance", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def metric_table_html(summary: pd.DataFrame, path: str | Path, title: str, *, decimals: int = 2) -> Path:
    """A small standalone HTML page holding a metric table, e.g. ``TabularResult.summary`` (cells ``"mean ± sd"``).

    Numeric cells are printed with ``decimals`` decimals; text cells as they are. Everything is HTML-escaped.

    Args:
        summary: rows = metrics, columns = models (or model / feature set).
        path: HTML file to write.
        title: page title and heading.
        decimals: decimals of numeric cells.

    Returns:
        ``path``.
    """
    body = summary.to_html(
        escape=True, border=0, na_rep="–", float_format=lambda v: f"{v:.{decimals}f}", classes="metrics"
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
        "th{background:#eee}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def training_curves(histories: Mapping[int, pd.DataFrame], path: str | Path) -> Path | None:
    """Loss (train and validation) and the validation score of the primary task per epoch, one line per fold.

    Args:
        histories: fold → its training history (columns ``epoch, train_loss, val_loss`` and the ``val_<score>``
            that chose the best epoch); empty histories are left out.
        path: PNG file to write.

    Returns:
        ``path``, or None (nothing written) when no history has a row.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    drawn = False
    for fold, history in histories.items():
        if history.empty:
            continue
        axes[0].plot(history["epoch"] + 1, history["train_loss"], label=f"fold {fold} train")
        axes[0].plot(history["epoch"] + 1, history["val_loss"], "--", label=f"fold {fold} val")
        score = [c for c in history.columns if c.startswith("val_") and c != "val_loss"][0]
        axes[1].plot(history["epoch"] + 1, history[score], label=f"fold {fold}")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="score", title="validation score (primary task)")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as PNG (folders created) and close it, also when writing fails."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
