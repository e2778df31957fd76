"""Evaluation metrics of the three papers, as thin wrappers over sklearn / imblearn.

* Binary prognosis (ICH paper, Table 1 and 2): AUC, accuracy, balanced accuracy, specificity, NPV, precision, recall,
  F1 at a fixed threshold (0.5 in the paper, "conservative").
* Three-class ordinal GCS (ICH paper, supplementary Table 4): accuracy, balanced accuracy, MAE, RMSE, AUOC and
  quadratic-weighted Cohen's kappa, plus the cumulative-bit encoding the multi-task head is trained on.
* Multi-class prognosis (COVID MDMT paper, Tables 1-2): accuracy, macro F1, G-mean.
* Multi-label findings (CheXpert-style heads): per-class AUROC / F1 / sensitivity / specificity with masked labels.

Every function returns a flat ``dict[str, float]`` so it can be fed to :func:`medmlops.evaluation.stats.bootstrap_ci`
and logged to MLflow as is.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from imblearn.metrics import geometric_mean_score
from scipy.integrate import trapezoid
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "BINARY_METRICS",
    "ORDINAL_METRICS",
    "auoc",
    "binary_metrics",
    "multiclass_metrics",
    "multilabel_metrics",
    "ordinal_decode",
    "ordinal_encode",
    "ordinal_metrics",
    "uoc",
    "youden_threshold",
]

# Row order of the ICH paper's Table 1 (AUC, Acc., B. Acc., Spec., NPV, Prec., Recall, F1-sc.).
BINARY_METRICS: tuple[str, ...] = (
    "auc",
    "accuracy",
    "balanced_accuracy",
    "specificity",
    "npv",
    "precision",
    "recall",
    "f1",
)
ORDINAL_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "mae", "rmse", "auoc", "qwk")


def _as_1d(values, name: str, dtype=float) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {np.shape(values)}")
    return array


def _binary_labels(y_true) -> np.ndarray:
    labels = _as_1d(y_true, "y_true")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"y_true must hold only 0 and 1, got values {np.unique(labels)[:5].tolist()}")
    return labels.astype(int)


def binary_metrics(y_true, y_prob, threshold: float = 0.5, *, zero_division: float = 0.0) -> dict[str, float]:
    """The eight binary metrics of the ICH paper at one decision threshold.

    A probability counts as positive when ``y_prob >= threshold``. Specificity is the recall of the negative class
    and NPV its precision (both from sklearn's ``precision_recall_fscore_support`` over labels 0 and 1).

    Degenerate inputs do not raise: with a single class in ``y_true`` the AUC is undefined and returned as ``nan``
    (bootstrap resamples with one class are then skipped for AUC only); a ratio whose denominator is zero (e.g.
    precision with no positive prediction) is ``zero_division`` (sklearn's argument of the same name).

    Args:
        y_true: 0/1 labels (1 = positive, e.g. poor prognosis).
        y_prob: predicted probability of the positive class.
        threshold: decision threshold on ``y_prob``.
        zero_division: value of a metric whose denominator is zero; ``np.nan`` to mark it undefined instead.

    Returns:
        ``{auc, accuracy, balanced_accuracy, specificity, npv, precision, recall, f1}``.
    """
    y_true = _binary_labels(y_true)
    y_prob = _as_1d(y_prob, "y_prob")
    if len(y_true) != len(y_prob):
        raise ValueError(f"y_true has {len(y_true)} values but y_prob has {len(y_prob)}")
    if len(y_true) == 0:
        raise ValueError("binary_metrics needs at least one sample")
    y_pred = (y_prob >= threshold).astype(int)
    both = len(np.unique(y_true)) == 2
    # One call gives precision/recall/F1 of both classes: class 0's are NPV and specificity (5× faster than five
    # separate calls, which matters inside a 1000-resample bootstrap).
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1], average=None, zero_division=zero_division
    )
    with warnings.catch_warnings():
        # balanced_accuracy_score warns when y_pred holds a class y_true lacks; that case is documented above.
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "auc": float(roc_auc_score(y_true, y_prob)) if both else float("nan"),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "specificity": float(recall[0]),
        "npv": float(precision[0]),
        "precision": float(precision[1]),
        "recall": float(recall[1]),
        "f1": float(f1[1]),
    }


def youden_threshold(y_true, y_prob) -> float:
    """Threshold maximising Youden's J = TPR − FPR over sklearn's ``roc_curve`` thresholds.

    sklearn's first threshold is ``inf`` (nothing predicted positive), hence the clip to [0, 1]. With a single class
    in ``y_true`` the ROC curve is undefined and the conventional 0.5 is returned.

    Args:
        y_true: 0/1 labels.
        y_prob: predicted probability of the positive class.

    Returns:
        A threshold in [0, 1] to be used as ``y_prob >= threshold``.
    """
    y_true = _binary_labels(y_true)
    y_prob = _as_1d(y_prob, "y_prob")
    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(y_true, y_prob)
    return float(np.clip(thresholds[int(np.argmax(tpr - fpr))], 0.0, 1.0))


# ---------------------------------------------------------------------------------------------------------------------
# Ordinal


def ordinal_encode(labels, n_classes: int) -> np.ndarray:
    """Cumulative-bit encoding of ordinal labels: class k → k leading ones among ``n_classes - 1`` bits.

    For the ICH paper's three GCS classes: 0 → [0, 0], 1 → [1, 0], 2 → [1, 1].

    Args:
        labels: integer classes in ``0 .. n_classes - 1``.
        n_classes: number of ordered classes (at least 2).

    Returns:
        A float array of shape ``(n, n_classes - 1)``, ready for a BCE loss.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    labels = _as_1d(labels, "labels", dtype=float)
    if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise ValueError("ordinal labels must be whole numbers")
    labels = labels.astype(int)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"ordinal labels must lie in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")
    return (labels[:, None] > np.arange(n_classes - 1)[None, :]).astype(np.float32)


def ordinal_decode(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Decode cumulative-bit sigmoid outputs as the number of LEADING bits with ``p >= threshold``.

    Counting leading bits (rather than all bits) keeps the decoding monotone and well defined when the network emits
    an inconsistent code: [0.9, 0.2] → 1, [0.2, 0.9] → 0 (the second bit cannot be on without the first), [0.8, 0.7]
    → 2.

    Args:
        probs: sigmoid outputs of shape ``(n, n_classes - 1)`` (a 1-D array is read as one bit per sample).
        threshold: probability at which a bit counts as on.

    Returns:
        Integer classes of shape ``(n,)``.
    """
    probs = np.asarray(probs, dtype=float)
    if probs.ndim == 1:
        probs = probs[:, None]
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (n, n_classes - 1), got {probs.shape}")
    on = probs >= threshold
    return np.cumprod(on, axis=1).sum(axis=1).astype(int)


def _ordinal_confusion(y_true, y_pred, n_classes: int | None) -> np.ndarray:
    y_true = _as_1d(y_true, "y_true")
    y_pred = _as_1d(y_pred, "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} values but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("ordinal metrics need at least one sample")
    if n_classes is None:
        # Only the order of the classes matters (distances are rank distances), so any order-preserving relabelling
        # gives the same confusion matrix.
        classes = np.unique(np.concatenate([y_true, y_pred]))
    else:
        classes = np.arange(n_classes)
        outside = ~np.isin(np.concatenate([y_true, y_pred]), classes)
        if outside.any():
            raise ValueError(f"ordinal labels must lie in 0..{n_classes - 1} when n_classes={n_classes}")
    return confusion_matrix(y_true, y_pred, labels=classes).astype(float)


def _uoc_curve(cm: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """UOC_β of a count confusion matrix (rows = true class) for every β in ``betas`` (one DP, vectorised over β)."""
    k = cm.shape[0]
    support = cm.sum(axis=1)
    present = support > 0
    k_eff = int(present.sum())
    # Per-class (row) normalisation is what makes the index "uniform": every true class weighs 1 whatever its size.
    # A class absent from y_true contributes a zero row and is not counted in K (the authors' "zeros" option).
    rates = np.divide(cm, support[:, None], out=np.zeros_like(cm), where=present[:, None])
    distance = np.abs(np.arange(k)[:, None] - np.arange(k)[None, :]).astype(float)
    penalty = rates * distance
    benefit = rates / (k_eff + penalty.sum())
    cell = -benefit[:, :, None] + (betas[None, None, :] / k_eff) * penalty[:, :, None]
    # Cheapest monotone path from (0, 0) to (K-1, K-1), moving down, right or diagonally (Cardoso & Sousa 2011).
    cost = np.empty_like(cell)
    for r in range(k):
        for c in range(k):
            previous = [cost[r - 1, c]] if r else []
            previous += [cost[r, c - 1]] if c else []
            previous += [cost[r - 1, c - 1]] if r and c else []
            start = np.min(previous, axis=0) if previous else 1.0
            cost[r, c] = start + cell[r, c]
    return cost[-1, -1]


def uoc(y_true, y_pred, beta: float, n_classes: int | None = None) -> float:
    """Uniform Ordinal Classification index UOC_β (Silva, Pinto & Cardoso, IJCNN 2018) at one β.

    See :func:`auoc` for the definition; ``auoc`` is the integral of this function over β ∈ [0, 1].

    Args:
        y_true: true ordinal classes.
        y_pred: predicted ordinal classes.
        beta: weight of the ordinal-distance penalty, in [0, 1].
        n_classes: number of classes ``0 .. n_classes - 1``; by default the classes seen in either argument.

    Returns:
        UOC_β in [0, 1]; 0 is a perfect prediction.
    """
    cm = _ordinal_confusion(y_true, y_pred, n_classes)
    # The index is bounded in [0, 1] analytically; the clip only removes rounding (1 − 1 ≈ 1e-16).
    return float(np.clip(_uoc_curve(cm, np.array([float(beta)]))[0], 0.0, 1.0))


def auoc(y_true, y_pred, n_classes: int | None = None, *, n_beta: int = 1001) -> float:
    """Area under the Uniform Ordinal Classification curve, AUOC (lower is better, 0 = perfect).

    Reference: W. Silva, J. R. Pinto, J. S. Cardoso, "A uniform performance index for ordinal classification with
    imbalanced classes", IJCNN 2018, doi:10.1109/IJCNN.2018.8489327. It adapts the Ordinal Classification Index (OCI)
    of J. S. Cardoso, R. Sousa, "Measuring the performance of ordinal classification", IJPRAI 25(8), 2011.

    Definition implemented. Let ``n_rc`` be the confusion matrix (row r = true class, column c = predicted class, the
    K classes in their ordinal order) and ``ñ_rc = n_rc / Σ_c n_rc`` its per-class (row) normalisation, so that every
    class weighs the same whatever its prevalence (OCI uses raw counts and N instead). With γ = 1, K the number of
    classes present in ``y_true`` and the total dispersion ``D = Σ_{r,c} ñ_rc |r − c|``::

        UOC_β = min over paths P of [ 1 − Σ_{(r,c)∈P} ñ_rc / (K + D) + (β / K) Σ_{(r,c)∈P} ñ_rc |r − c| ]

        AUOC  = ∫_0^1 UOC_β dβ

    where P runs over the consecutive paths from cell (1, 1) to (K, K) that move down, right or diagonally (the
    path-based benefit/cost of OCI). The integral is computed with the trapezoidal rule on ``n_beta`` evenly spaced β;
    UOC_β is a minimum of lines in β, so the rule is accurate to far below reporting precision.

    How it was reconstructed: the paper itself was not available offline. The formula above matches two public
    implementations that cite it and agree with each other: the authors' group's Python reference
    (``imbalanced_ordinal_classification_index``, a.k.a. ``wilson_index``, used in Albuquerque et al., "Ordinal
    losses for classification of cervical cancer risk", PeerJ CS 2021) and the R port in BADGER's ``cm_to_uoc``.
    Both use β/K (not OCI's β/(N(K−1)^γ)) and drop classes absent from ``y_true`` from K, as done here.

    Properties (tested): 0 for a perfect prediction; bounded in [0, 1] (the all-diagonal path bounds it by 1, and
    ``Σ_P ñ ≤ K ≤ K + D`` bounds it below by 0); it grows with the number of errors and with their ordinal
    distance; only ranks enter, so any order-preserving relabelling leaves it unchanged.

    Args:
        y_true: true ordinal classes.
        y_pred: predicted ordinal classes.
        n_classes: number of classes ``0 .. n_classes - 1``. By default the classes seen in either argument, ranked;
            pass it when a class may be missing from both, or a 0 → 2 error would count as one step.
        n_beta: number of β points of the integral.

    Returns:
        AUOC in [0, 1].
    """
    cm = _ordinal_confusion(y_true, y_pred, n_classes)
    betas = np.linspace(0.0, 1.0, n_beta)
    return float(np.clip(trapezoid(_uoc_curve(cm, betas), betas), 0.0, 1.0))


def ordinal_metrics(y_true, y_pred, n_classes: int | None = None) -> dict[str, float]:
    """Ordinal GCS metrics of the ICH paper (supplementary Table 4).

    Args:
        y_true: true ordinal classes (integers).
        y_pred: predicted ordinal classes, e.g. from :func:`ordinal_decode`.
        n_classes: passed to :func:`auoc`.

    Returns:
        ``{accuracy, balanced_accuracy, mae, rmse, auoc, qwk}``; ``rmse`` is the square root of the MSE and ``qwk``
        sklearn's quadratic-weighted Cohen's kappa (``nan`` when it is undefined, e.g. a single class everywhere).
    """
    y_true = _as_1d(y_true, "y_true")
    y_pred = _as_1d(y_pred, "y_pred")
    with warnings.catch_warnings():
        # Single-class folds: sklearn warns and kappa divides 0 by 0; both are reported as nan / plain values.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
        qwk = cohen_kappa_score(y_true, y_pred, weights="quadratic")
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(mean_squared_error(y_true, y_pred))),
        "auoc": auoc(y_true, y_pred, n_classes),
        "qwk": float(qwk),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Multi-class and multi-label


def multiclass_metrics(y_true, y_pred) -> dict[str, float]:
    """Metrics of the COVID MDMT paper: ACC, macro F1, G-mean, plus balanced accuracy.

    G-mean is the geometric mean of the per-class recalls (imblearn's ``geometric_mean_score``, multiclass average),
    so a single class with zero recall makes it 0.

    Args:
        y_true: true classes.
        y_pred: predicted classes.

    Returns:
        ``{accuracy, f1, gmean, balanced_accuracy}``.
    """
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0.0)),
        "gmean": float(geometric_mean_score(y_true, y_pred, average="multiclass")),
        "balanced_accuracy": float(balanced),
    }


def multilabel_metrics(
    y_true,
    y_prob,
    thresholds: float | Sequence[float],
    class_names: Sequence[str],
    *,
    zero_division: float = 0.0,
) -> dict[str, float]:
    """Per-class AUROC, F1, sensitivity and specificity for multi-label heads with masked labels.

    A NaN target means "no label" (e.g. an uncertain CheXpert finding under the ignore policy): that row is left out
    for that class only. A class whose remaining rows hold a single class has AUROC ``nan``; an empty class has all
    four metrics ``nan``.

    Args:
        y_true: targets of shape ``(n, n_classes)``: 0, 1 or NaN.
        y_prob: predicted probabilities of the same shape.
        thresholds: one decision threshold for all classes, or one per class (e.g. Youden thresholds from validation).
        class_names: names used in the keys, in column order.
        zero_division: as in :func:`binary_metrics`.

    Returns:
        ``{"{name}_auroc", "{name}_f1", "{name}_sensitivity", "{name}_specificity"}`` for every class, plus
        ``mean_auroc`` (NaN-aware mean over classes).
    """
    y_true = np.asarray(y_true, dtype=float)
    y_prob = np.asarray(y_prob, dtype=float)
    if y_true.ndim == 1:
        y_true, y_prob = y_true[:, None], y_prob.reshape(-1, 1)
    if y_true.shape != y_prob.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_prob has shape {y_prob.shape}")
    n_classes = y_true.shape[1]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for {n_classes} columns")
    per_class = np.broadcast_to(np.asarray(thresholds, dtype=float), (n_classes,))
    out: dict[str, float] = {}
    aurocs = []
    for j, name in enumerate(class_names):
        known = ~np.isnan(y_true[:, j])
        if not known.any():
            values = dict.fromkeys(("auroc", "f1", "sensitivity", "specificity"), float("nan"))
        else:
            scores = binary_metrics(y_true[known, j], y_prob[known, j], per_class[j], zero_division=zero_division)
            values = {
                "auroc": scores["auc"],
                "f1": scores["f1"],
                "sensitivity": scores["recall"],
                "specificity": scores["specificity"],
            }
        aurocs.append(values["auroc"])
        out.update({f"{name}_{key}": value for key, value in values.items()})
    finite = [a for a in aurocs if np.isfinite(a)]
    out["mean_auroc"] = float(np.mean(finite)) if finite else float("nan")
    return out
