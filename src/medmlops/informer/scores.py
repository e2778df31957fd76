"""INFORMER's numbers: class distinctiveness, the baselines' uncertainty scores, the threshold search that turns a
score into flags, and the failure-detection metrics (AURC, E-AURC, AUGRC) used to compare any confidence score.

"Classes" are the model's output logits in contract order (a CheXpert finding, a binary head, one ordinal
threshold, one class of a softmax head); each has a binary prediction that a flag swaps (Shu et al., Sec. 2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medmlops.registry.contract import ModelContract, TaskSpec

if TYPE_CHECKING:
    import torch

DIRECTIONS = ("low", "high")

# Which side of the threshold is "uncertain" for each score (INFORMER's is a param; the paper: low distinctiveness
# = similar class maps = an uncertain model). Energy is the free energy (Liu et al. 2020): low = confident.
SCORE_DIRECTIONS = {"msr": "low", "maxlogit": "low", "entropy": "high", "energy": "high", "tta": "high"}


def _cosine(maps: torch.Tensor | np.ndarray, eps: float) -> torch.Tensor:
    """``(B, C, C)`` cosine similarity between every pair of class maps of each image (float64)."""
    import torch  # here: the logit-only scores below run at monitoring ingest, where nothing else needs torch

    s = torch.as_tensor(maps, dtype=torch.float64).flatten(2)
    unit = s / s.norm(dim=2, keepdim=True).clamp_min(eps)
    return unit @ unit.transpose(1, 2)


def distinctiveness(maps: torch.Tensor | np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Class distinctiveness ``d_c = sum_{j != c} (1 - cos(S_c, S_j))`` for every image (Shu et al., Eq. 1-2).

    Args:
        maps: ``(B, C, ...)`` class-specific saliency maps.

    Returns:
        ``(B, C)``; each entry in ``[0, 2 (C - 1)]``. A map that is all zeros has cosine 0 with every other map.
    """
    import torch

    cos = _cosine(maps, eps)
    off_diagonal = ~torch.eye(cos.shape[1], dtype=torch.bool)
    return ((1.0 - cos) * off_diagonal).sum(dim=2).numpy()


def pairwise_distances(maps: torch.Tensor | np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``(B, C (C - 1) / 2)`` cosine distances ``1 - cos(S_i, S_j)`` for every class pair ``i < j`` (row-major
    upper triangle): the information ``d_c`` sums over, kept apart for the learned combiner (the paper's
    Discussion, :mod:`medmlops.informer.csf`). ``d_c`` is the sum of the pairs that contain ``c``."""
    import torch

    cos = _cosine(maps, eps)
    i, j = torch.triu_indices(cos.shape[1], cos.shape[1], offset=1)
    return (1.0 - cos[:, i, j]).numpy()


def pair_names(classes: list[str]) -> list[str]:
    """The names of :func:`pairwise_distances`' columns, ``"a|b"``, in the same order."""
    return [f"{a}|{b}" for k, a in enumerate(classes) for b in classes[k + 1 :]]


# ---------------------------------------------------------------------------------------------------------------
# Per-logit probabilities, predictions and targets from the contract
# ---------------------------------------------------------------------------------------------------------------


def head_slices(contract: ModelContract) -> Iterator[tuple[TaskSpec, slice]]:
    """Each task with the columns of its logits in the ``(N, C)`` output, in contract order."""
    start = 0
    for spec in contract.tasks:
        yield spec, slice(start, start + spec.n_logits)
        start += spec.n_logits


def _logsumexp(block: np.ndarray) -> np.ndarray:
    """``log sum exp`` over axis 1, shifted by the row maximum so large logits do not overflow."""
    top = block.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(block - top).sum(axis=1, keepdims=True)))[:, 0]


def logit_probabilities(contract: ModelContract, logits: np.ndarray) -> np.ndarray:
    """``(N, C)`` probability of each logit's positive side: sigmoid, or the softmax within a multiclass head."""
    logits = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(logits)
    for spec, cols in head_slices(contract):
        block = logits[:, cols]
        if spec.kind == "multiclass":
            e = np.exp(block - block.max(axis=1, keepdims=True))
            out[:, cols] = e / e.sum(axis=1, keepdims=True)
        else:
            out[:, cols] = 1.0 / (1.0 + np.exp(-block))
    return out


def logit_predictions(contract: ModelContract, probs: np.ndarray) -> np.ndarray:
    """``(N, C)`` 0/1 predictions at the contract's thresholds (Youden for the findings classifier): binary and
    multilabel per logit; ordinal bits from the monotone decoding; multiclass one-hot of the argmax."""
    probs = np.asarray(probs)
    out = np.zeros(probs.shape, dtype=np.int64)
    for spec, cols in head_slices(contract):
        block = probs[:, cols]
        if spec.kind == "multiclass":
            out[np.arange(len(block)), cols.start + block.argmax(axis=1)] = 1
        elif spec.kind == "ordinal":
            level = np.cumprod(block >= np.asarray(spec.thresholds), axis=1).sum(axis=1)
            out[:, cols] = level[:, None] >= np.arange(1, spec.n_logits + 1)[None, :]
        else:
            out[:, cols] = block >= np.asarray(spec.thresholds)
    return out


def logit_targets(contract: ModelContract, labels: dict[str, np.ndarray]) -> np.ndarray:
    """``(N, C)`` 0/1 ground truth per logit (NaN where unknown) from each task's labels as training stores them:
    an integer class per row (-1 = missing) or, for multilabel, ``(N, K)`` with NaN for U-Ignore."""
    blocks = []
    for spec in contract.tasks:
        y = np.asarray(labels[spec.name], dtype=np.float64)
        if spec.kind == "multilabel":
            block = y.reshape(len(y), -1)
        else:
            y = y.reshape(-1)
            missing = ~np.isfinite(y) | (y < 0)
            if spec.kind == "binary":
                block = y[:, None].copy()
            elif spec.kind == "ordinal":
                block = (y[:, None] >= np.arange(1, spec.n_logits + 1)[None, :]).astype(np.float64)
            else:
                block = (y[:, None] == np.arange(spec.n_logits)[None, :]).astype(np.float64)
            block[missing] = np.nan
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Predictive entropy of each binary prediction, log base 2 (Shu et al., Eq. 3): 0 (certain) to 1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def max_response(p: np.ndarray) -> np.ndarray:
    """Maximum softmax / sigmoid response of each binary prediction, ``max(p, 1 - p)`` (0.5 to 1)."""
    p = np.asarray(p, dtype=np.float64)
    return np.maximum(p, 1 - p)


def logit_energy(contract: ModelContract, logits: np.ndarray) -> np.ndarray:
    """``(N, C)`` free energy ``E = -log sum_k exp(z_k)`` (Liu et al. 2020); lower = more confident.

    A sigmoid logit ``z`` (binary, ordinal, multilabel) is the 2-class logit pair ``(0, z)``: ``E = -log(1 + e^z)``
    (the per-label term of Wang et al.'s JointEnergy). A softmax head's energy is one value per image, given to each
    of its classes. The binary form is monotone in ``z``, not in ``|z|``: a confident negative (``z << 0``) has
    ``E ~ 0``, as high as it gets, so as a failure score it favours positive predictions; the calibration's
    AURC selection decides whether that ranking beats the maximum response on a model's validation split.
    """
    logits = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(logits)
    for spec, cols in head_slices(contract):
        block = logits[:, cols]
        if spec.kind == "multiclass":
            out[:, cols] = -_logsumexp(block)[:, None]
        else:
            out[:, cols] = -np.logaddexp(0.0, block)  # stable for |z| in the hundreds, where exp(z) overflows
    return out


# ---------------------------------------------------------------------------------------------------------------
# Flags and the threshold search
# ---------------------------------------------------------------------------------------------------------------


def flag(score: np.ndarray, tau: float | None, direction: str) -> np.ndarray:
    """Boolean flags: ``score < tau`` (direction ``low``) or ``score > tau`` (``high``); none when ``tau`` is None."""
    score = np.asarray(score, dtype=np.float64)
    if tau is None:
        return np.zeros(score.shape, dtype=bool)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    return score < tau if direction == "low" else score > tau


def swap(predictions: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Flag-and-swap: a flagged binary prediction is replaced by its opposite."""
    return np.where(flags, 1 - np.asarray(predictions), predictions)


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Binary F1 per row of ``y_pred`` ``(G, N)`` against ``y_true`` ``(N,)`` (vectorised; 0 when undefined)."""
    y = np.asarray(y_true, dtype=bool)[None, :]
    pred = np.asarray(y_pred, dtype=bool)
    tp = (pred & y).sum(axis=1)
    fp = (pred & ~y).sum(axis=1)
    fn = (~pred & y).sum(axis=1)
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def too_few_cases(y_true: np.ndarray, min_per_class: int) -> bool:
    """Fewer than ``min_per_class`` positives or negatives among the known 0/1 targets ``y_true`` (NaN = unknown):
    too few to fit a τ or rank scores on (see :func:`fit_flag_threshold`)."""
    y = np.asarray(y_true, dtype=np.float64)
    y = y[np.isfinite(y)]
    return min(int((y == 1).sum()), int((y == 0).sum())) < min_per_class


@dataclass(frozen=True)
class ThresholdFit:
    tau: float | None  # None: flagging nothing is best (or too few cases to tell, see ``too_few``)
    f1_before: float
    f1_after: float
    n_flagged: int
    too_few: bool = False  # fewer than ``min_per_class`` positives or negatives: not fitted, never flagged


def fit_flag_threshold(
    score: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    direction: str,
    step: float = 0.001,
    min_per_class: int = 0,
) -> ThresholdFit:
    """The paper's grid search for one class: candidate thresholds every ``step`` over the observed score range;
    flag, swap the flagged predictions, keep the threshold with the highest F1 — "no flag" included and preferred
    on ties, as are thresholds that flag fewer cases. Rows with an unknown target (NaN) are left out.

    ``min_per_class`` (not in the paper, whose validation sets had hundreds of cases per class): with fewer known
    positives or negatives than this, no τ is fitted and the class is never flagged. On a handful of cases the
    search finds a τ that swaps one lucky prediction and then flags most of production (measured: the demo's
    6-case ICH validation split gave τ that flagged 85-95% of clean traffic on the auxiliary heads).
    """
    keep = np.isfinite(np.asarray(y_true, dtype=np.float64)) & np.isfinite(np.asarray(score, dtype=np.float64))
    score = np.asarray(score, dtype=np.float64)[keep]
    y_true = np.asarray(y_true)[keep].astype(int)
    y_pred = np.asarray(y_pred)[keep].astype(int)
    before = float(f1_scores(y_true, y_pred[None, :])[0])
    if len(score) == 0:
        return ThresholdFit(None, before, before, 0)
    if too_few_cases(y_true, min_per_class):
        return ThresholdFit(None, before, before, 0, too_few=True)
    lo = np.floor(score.min() / step) * step
    hi = np.ceil(score.max() / step) * step + step
    # Rounded before use: the stored τ must flag exactly what it flagged in the search (0.1 + 0.2 != 0.3).
    grid = np.round(np.arange(lo, hi + step / 2, step), 6)
    if direction == "high":
        grid = grid[::-1]  # from flagging nothing towards flagging everything
    flags = score[None, :] < grid[:, None] if direction == "low" else score[None, :] > grid[:, None]
    f1 = f1_scores(y_true, np.where(flags, 1 - y_pred[None, :], y_pred[None, :]))
    best = int(np.argmax(f1))  # first maximum: the fewest flags among the best
    if f1[best] <= before + 1e-12:
        return ThresholdFit(None, before, before, 0)
    return ThresholdFit(float(grid[best]), before, float(f1[best]), int(flags[best].sum()))


# ---------------------------------------------------------------------------------------------------------------
# Failure detection (FD-Shifts, Jaeger et al. 2023; AUGRC, Traub et al. 2024)
# ---------------------------------------------------------------------------------------------------------------


def risk_steps(confidence: np.ndarray, errors: np.ndarray) -> tuple[np.ndarray, ...]:
    """At every distinct confidence t, from the highest down (accept ``conf >= t``; cases with equal confidence
    are accepted or rejected together): t itself, the coverage, the selective risk and the generalised risk."""
    confidence = np.asarray(confidence, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    order = np.argsort(-confidence, kind="stable")
    conf, err = confidence[order], errors[order]
    n = len(conf)
    cum_errors = np.cumsum(err)
    ends = np.r_[np.nonzero(np.diff(conf))[0], n - 1]  # the last case of each tie group
    accepted = ends + 1
    return conf[ends], accepted / n, cum_errors[ends] / accepted, cum_errors[ends] / n


def aurc(confidence: np.ndarray, errors: np.ndarray) -> float:
    """Area under the risk-coverage curve (selective risk integrated over coverage; step rule over tie groups)."""
    _, coverage, risk, _ = risk_steps(confidence, errors)
    widths = np.diff(np.r_[0.0, coverage])
    return float((risk * widths).sum())


def eaurc(confidence: np.ndarray, errors: np.ndarray) -> float:
    """Excess AURC: AURC minus the AURC of a perfect ranking at the same error rate (Geifman et al. 2019)."""
    errors = np.asarray(errors, dtype=np.float64)
    n, k = len(errors), int(errors.sum())
    optimal = np.r_[np.zeros(n - k), np.ones(k)]
    return aurc(confidence, errors) - aurc(-np.arange(n, dtype=np.float64), optimal)


def augrc(confidence: np.ndarray, errors: np.ndarray) -> float:
    """Area under the generalised risk-coverage curve (Traub et al. 2024): the risk of an error that is accepted
    (errors accepted / N) over coverage, interpolated linearly from (0, 0) through the end of every tie group, as
    FD-Shifts' ``rc_stats.py`` does. Within a tie group the accepted errors grow linearly, so a constant score
    gets half the error rate, a random ranking's expected value (a right-endpoint step would give the whole rate)."""
    _, coverage, _, generalised = risk_steps(confidence, errors)
    widths = np.diff(np.r_[0.0, coverage])
    return float((widths * (generalised + np.r_[0.0, generalised[:-1]]) / 2).sum())
