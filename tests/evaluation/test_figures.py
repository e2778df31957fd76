"""Figures are real PNGs (Pillow opens them) of non-trivial size; the HTML table holds the cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medmlops.evaluation.figures import ablation_boxplot, importance_barplot, metric_table_html, training_curves


def _check_png(path, min_bytes: int = 5_000) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > min_bytes
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def test_ablation_boxplot(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {"model": model, "fold": fold, "metric": metric, "value": rng.uniform(0.5, 0.9)}
        for model in ("Baseline", "MT (bin GCS, bin age)", "MT (ord GCS, bin age)")
        for fold in range(10)
        for metric in ("auc", "specificity", "recall", "f1")
    ]
    path = ablation_boxplot(pd.DataFrame(rows), ["auc", "specificity", "recall"], tmp_path / "fig" / "ablation.png")
    width, height = _check_png(path)
    assert width > height  # three panels side by side
    with pytest.raises(ValueError, match="npv"):
        ablation_boxplot(pd.DataFrame(rows), ["npv"], tmp_path / "x.png")


def test_importance_barplot_keeps_top_features(tmp_path):
    importance = pd.DataFrame(
        {
            "model": ["rf"] * 20 + ["lr"] * 20,
            "feature": [f"f{i}" for i in range(20)] * 2,
            "importance": np.linspace(1, 0, 40),
            "sd": 0.01,
        }
    )
    path = importance_barplot(importance, tmp_path / "importance.png", top=5)
    _check_png(path)


def test_metric_table_html(tmp_path):
    summary = pd.DataFrame({"LR (gcs_age)": ["0.80 ± 0.07"], "RF (all)": ["0.78 ± 0.07"]}, index=["auc"])
    path = metric_table_html(summary, tmp_path / "table.html", "Table 1 <tabular>")
    text = path.read_text(encoding="utf-8")
    assert "0.80 ± 0.07" in text and "RF (all)" in text
    assert "Table 1 &lt;tabular&gt;" in text and "<tabular>" not in text


def test_training_curves_one_line_per_fold(tmp_path):
    history = pd.DataFrame({"epoch": range(6), "train_loss": np.linspace(1, 0.2, 6), "val_loss": np.linspace(1, 0.5, 6),
                            "val_balanced_accuracy": np.linspace(0.5, 0.8, 6)})  # fmt: skip
    path = training_curves({0: history, 1: history * 0.9, 2: history.iloc[:0]}, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    _check_png(path)
    assert training_curves({0: history.iloc[:0]}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
