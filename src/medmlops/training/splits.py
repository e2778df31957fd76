"""Cross-validation splits, saved as files so every run, stage and pipeline step uses the same partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from medmlops.atomic import write_atomically
from medmlops.errors import DataError


def stratified_kfold_splits(sample_ids, labels, n_folds: int, val_fraction: float, seed: int) -> pd.DataFrame:
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
        stratify = (
            train_labels
            if np.bincount(train_labels.astype(int)).min() >= 2 and n_val >= len(np.unique(train_labels))
            else None
        )
        fit_idx, val_idx = train_test_split(train_idx, test_size=n_val, stratify=stratify, random_state=seed + fold)
        rows += [(sample_ids[i], fold, "train") for i in fit_idx]
        rows += [(sample_ids[i], fold, "val") for i in val_idx]
        rows += [(sample_ids[i], fold, "test") for i in test_idx]
    return pd.DataFrame(rows, columns=["sample_id", "fold", "split"])


def save_splits(splits: pd.DataFrame, path: Path) -> Path:
    ordered = splits.sort_values(["fold", "split", "sample_id"])
    return write_atomically(path, lambda tmp: ordered.to_csv(tmp, index=False))  # folds plan it in parallel


def load_splits(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: splits file not found")
    return pd.read_csv(path, dtype={"sample_id": str})


def _carve_validation(train_idx: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int, groups=None) -> tuple:
    n_val = max(2, int(round(val_fraction * len(train_idx))))
    if groups is not None:
        from sklearn.model_selection import GroupShuffleSplit

        splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        fit, val = next(splitter.split(train_idx, groups=groups[train_idx]))
        return train_idx[fit], train_idx[val]
    sub = labels[train_idx]
    ok = np.unique(sub, return_counts=True)[1].min() >= 2 and n_val >= len(np.unique(sub))
    return train_test_split(train_idx, test_size=n_val, stratify=sub if ok else None, random_state=seed)


def covid_splits(frame: pd.DataFrame, n_folds: int, validation: str, val_fraction: float, seed: int) -> pd.DataFrame:
    """AIforCOVID: 5-fold CV stratified by class × centre, or leave-one-center-out (one fold per hospital);
    BRIXIA (τ2 only): one fixed stratified train/val/test split used by every fold (Ruffini et al. evaluate on τ1)."""
    rows = []
    aif = frame[frame["dataset"] == "aiforcovid"].reset_index(drop=True)
    brx = frame[frame["dataset"] == "brixia"].reset_index(drop=True)
    if len(aif):
        ids, labels = aif["sample_id"].to_numpy(), aif["prognosis"].to_numpy().astype(int)
        hospitals = aif["hospital"].astype(str).to_numpy()
        if validation == "loco":
            centres = sorted(set(hospitals))
            if len(centres) < 2:
                raise DataError("leave-one-center-out needs at least two AIforCOVID hospitals")
            outer = [(np.flatnonzero(hospitals != c), np.flatnonzero(hospitals == c)) for c in centres]
        else:
            strata = np.array([f"{y}-{h}" for y, h in zip(labels, hospitals, strict=True)])
            counts = pd.Series(strata).value_counts()
            # Strata smaller than the fold count fall back to the class alone (tiny centres, smoke data).
            strata = np.where(pd.Series(strata).map(counts).to_numpy() >= n_folds, strata, labels.astype(str))
            if pd.Series(labels).value_counts().min() < n_folds:
                raise DataError(f"too few AIforCOVID samples for {n_folds}-fold CV in the smallest prognosis class")
            outer = list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(ids, strata))
        for fold, (train_idx, test_idx) in enumerate(outer):
            fit_idx, val_idx = _carve_validation(train_idx, labels, val_fraction, seed + fold)
            rows += [(ids[i], fold, "train") for i in fit_idx]
            rows += [(ids[i], fold, "val") for i in val_idx]
            rows += [(ids[i], fold, "test") for i in test_idx]
        n_outer = len(outer)
    else:
        n_outer = n_folds
    if len(brx):
        ids, labels = brx["sample_id"].to_numpy(), brx["severity"].to_numpy().astype(int)
        rest, test = _carve_validation(np.arange(len(ids)), labels, 0.1, seed)
        fit, val = _carve_validation(np.asarray(rest), labels, val_fraction, seed + 1)
        for fold in range(n_outer):
            rows += [(ids[i], fold, "train") for i in fit]
            rows += [(ids[i], fold, "val") for i in val]
            rows += [(ids[i], fold, "test") for i in test]
    return pd.DataFrame(rows, columns=["sample_id", "fold", "split"])


def grouped_splits(frame: pd.DataFrame, n_folds: int, val_fraction: float, seed: int) -> pd.DataFrame:
    """CheXpert: folds by patient (no patient in two splits), stratified on "any finding positive"."""
    from sklearn.model_selection import StratifiedGroupKFold

    from medmlops.data.readers import CHEXPERT_FINDINGS

    ids = frame["sample_id"].to_numpy()
    groups = frame["patient_id"].astype(str).to_numpy()
    any_positive = (frame[list(CHEXPERT_FINDINGS)].fillna(0).to_numpy() == 1).any(axis=1).astype(int)
    if len(set(groups)) < n_folds:
        raise DataError(f"too few patients ({len(set(groups))}) for {n_folds} folds")
    rows = []
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fold, (train_idx, test_idx) in enumerate(splitter.split(ids, any_positive, groups)):
        fit_idx, val_idx = _carve_validation(train_idx, any_positive, val_fraction, seed + fold, groups=groups)
        rows += [(ids[i], fold, "train") for i in fit_idx]
        rows += [(ids[i], fold, "val") for i in val_idx]
        rows += [(ids[i], fold, "test") for i in test_idx]
    return pd.DataFrame(rows, columns=["sample_id", "fold", "split"])


def official_splits(frame: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """CheXpert's own csvs as one fold (the paper cohort, Shu et al.): train.csv → train, valid.csv → val (early
    stopping and the Youden thresholds, as the paper chooses them on the validation set), test.csv → test. Without a
    test.csv, a patient-grouped ``val_fraction`` of train.csv is held out as the test split instead, so the model still
    has a test set it never saw."""
    role = frame["split"].astype(str).to_numpy()
    ids = frame["sample_id"].to_numpy()
    train_idx = np.flatnonzero(role == "train")
    val_idx, test_idx = np.flatnonzero(role == "valid"), np.flatnonzero(role == "test")
    if not len(val_idx):
        raise DataError("the CheXpert paper cohort needs valid.csv beside train.csv (its validation split); put it "
                        "there or set data.chexpert.cohort to all")  # fmt: skip
    if not len(test_idx):
        groups = frame["patient_id"].astype(str).to_numpy()
        if len(set(groups[train_idx])) < 2:
            raise DataError("too few train.csv patients to hold out a test split (and no test.csv was found)")
        train_idx, test_idx = _carve_validation(train_idx, np.zeros(len(ids), int), val_fraction, seed, groups=groups)
    rows = [(ids[i], 0, "train") for i in train_idx] + [(ids[i], 0, "val") for i in val_idx]
    rows += [(ids[i], 0, "test") for i in test_idx]
    return pd.DataFrame(rows, columns=["sample_id", "fold", "split"])


def experiment_splits(frame: pd.DataFrame, dataset: str, train_cfg, seed: int, official: bool = False) -> pd.DataFrame:
    """The splits of an experiment's joint manifest: shared by every experiment of the dataset (same seed).
    ``official``: CheXpert's csvs as the splits (:func:`official_splits`; the paper cohort) instead of K folds."""
    if dataset == "chexpert" and official:
        return official_splits(frame, train_cfg.val_fraction, seed)
    if dataset == "covid":
        return covid_splits(frame, train_cfg.n_folds, train_cfg.validation, train_cfg.val_fraction, seed)
    if train_cfg.validation != "cv":
        raise DataError(f"validation '{train_cfg.validation}' is only defined for the COVID datasets (use cv)")
    if dataset == "chexpert":
        return grouped_splits(frame, train_cfg.n_folds, train_cfg.val_fraction, seed)
    return stratified_kfold_splits(
        frame["sample_id"], frame["prognosis"].to_numpy(), train_cfg.n_folds, train_cfg.val_fraction, seed
    )
