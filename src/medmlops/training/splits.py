"""Cross-validation splits, saved as files so every run, stage and pipeline step uses the same partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from medmlops.errors import DataError


def stratified_kfold_splits(
    sample_ids, labels, n_folds: int, val_fraction: float, seed: int
) -> pd.DataFrame:
    """StratifiedKFold test folds; from each fold's training part a stratified validation split is carved
    (Cobo et al.: 10 folds, 10 % of train as validation). Returns ``sample_id, fold, split`` rows, one per
    sample per fold, split ∈ {train, val, test}."""
    sample_ids = np.asarray(sample_ids).astype(str)
    labels = np.asarray(labels)
    counts = np.bincount(labels.astype(int))
    if n_folds < 2:
        raise DataError(f"n_folds must be ≥ 2, got {n_folds}")
    if counts[counts > 0].min() < n_folds:
        raise DataError(
            f"too few samples for {n_folds}-fold stratified CV: the smallest class has {counts[counts > 0].min()} samples"
        )
    rows = []
    outer = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (train_idx, test_idx) in enumerate(outer.split(sample_ids, labels)):
        n_val = max(2, int(round(val_fraction * len(train_idx))))
        train_labels = labels[train_idx]
        stratify = train_labels if np.bincount(train_labels.astype(int)).min() >= 2 and n_val >= len(np.unique(train_labels)) else None
        fit_idx, val_idx = train_test_split(train_idx, test_size=n_val, stratify=stratify, random_state=seed + fold)
        rows += [(sample_ids[i], fold, "train") for i in fit_idx]
        rows += [(sample_ids[i], fold, "val") for i in val_idx]
        rows += [(sample_ids[i], fold, "test") for i in test_idx]
    return pd.DataFrame(rows, columns=["sample_id", "fold", "split"])


def save_splits(splits: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    splits.sort_values(["fold", "split", "sample_id"]).to_csv(path, index=False)
    return path


def load_splits(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: splits file not found")
    return pd.read_csv(path, dtype={"sample_id": str})
