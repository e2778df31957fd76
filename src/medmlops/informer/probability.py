"""Calibrated probabilities and confidence-based performance estimation (CBPE): a model version's per-class AUROC and
F1, and its promotion gate's metric, estimated from its outputs alone, before any label arrives.

CBPE (NannyML; "how it works: performance estimation"): when a probability ``p`` is calibrated, each prediction
contributes its expected confusion-matrix cells: a positive prediction is a true positive with probability ``p`` and
a false positive with ``1 - p``; a negative one a false negative with ``p`` and a true negative with ``1 - p``. Sums
give the expected TP, FP, FN, TN, and from them F1. The ROC AUC is the area under the expected ROC curve: at every
distinct score the expected TPR ``sum(p | score >= t) / sum(p)`` and FPR ``sum(1 - p | score >= t) / sum(1 - p)``.
The ranking score is the model's own (the metric being estimated is the model's AUROC); with temperature scaling it
orders cases exactly as ``p`` does, so this is NannyML's definition. Multiclass heads are one-vs-rest per class,
macro-averaged, as NannyML does.

What CBPE assumes, and where it fails: the calibration learnt on the calibration split must still hold in production,
i.e. ``P(y | x)`` is unchanged. Covariate shift (new scanners, other intensities, noise) keeps that when the model
was calibrated over those inputs; **prior (prevalence) shift does not**: with more positives, ``P(y=1 | x)`` rises
for every ``x`` while the calibrated ``p`` stays put, so the estimate keeps reporting the old precision and F1 (and
an AUROC that moves while the real one, a property of ``P(x | y)``, does not). ``tests/informer/test_probability.py``
shows it on data drawn from known distributions.

NannyML itself is not used: ``nannyml`` 0.13.1 requires a dozen packages the lock does not hold (FLAML[automl],
LightGBM < 4.6, kaleido 0.2 with its bundled Chromium, category-encoders, gcsfs, s3fs, seaborn, APScheduler,
pyfiglet, and ``segment-analytics-python``, its usage-telemetry client), pulled into the monitoring image for two
sums and a trapezoid. Its CBPE also expects one tabular binary or multiclass problem per estimator over pandas
chunks; the monitor needs per-logit estimates across multilabel, ordinal and softmax heads of one model. The
definition above is implemented here in numpy and checked against labels drawn from the calibrated probabilities.

Calibration (fitted on the calibration split, the validation split of the registered fold):

* ``temperature`` (the default): ``p = sigmoid(z / T)`` with one ``T`` per sigmoid logit (binary, ordinal
  thresholds, multilabel findings) and one ``T`` per softmax head, each fitted by negative log-likelihood over the
  known targets, ``T`` bounded to [0.05, 20]. One parameter per logit is what a small calibration split supports
  (the demo's has 55 images, a handful of positives for some findings); it never changes the ranking, so
  AUROC-relevant order and the contract's threshold decisions are untouched.
* ``isotonic``: scikit-learn's ``IsotonicRegression`` per logit on the uncalibrated probability (per class of a
  softmax head, rows renormalised), stored as its thresholds and applied by linear interpolation, as scikit-learn
  predicts. Non-parametric: on a few dozen cases it is a step function with few steps (NannyML's choice, made for
  reference sets of thousands).

A logit with fewer than ``min_per_class`` known positives or negatives is not fitted (``T = 1``, or identity) and
listed under ``too_few``: the estimate for that class then uses the model's own probability.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from medmlops.informer.scores import head_slices, logit_predictions, logit_probabilities
from medmlops.registry.contract import ModelContract

METHODS = ("temperature", "isotonic")
T_BOUNDS = (0.05, 20.0)
MIN_PER_CLASS = 5
SECTION = "performance"
_EPS = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # stable for |z| in the hundreds


def _softmax(block: np.ndarray) -> np.ndarray:
    e = np.exp(block - block.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _enough(y: np.ndarray, min_per_class: int) -> bool:
    return min(int((y == 1).sum()), int((y == 0).sum())) >= max(1, min_per_class)


def _fit_sigmoid_temperature(z: np.ndarray, y: np.ndarray) -> float:
    """``T`` minimising the Bernoulli NLL of ``sigmoid(z / T)`` (searched over log T within :data:`T_BOUNDS`)."""

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # -log sigmoid(s) = logaddexp(0, -s); -log(1 - sigmoid(s)) = logaddexp(0, s)
        return float(np.mean(np.where(y == 1, np.logaddexp(0.0, -s), np.logaddexp(0.0, s))))

    fit = minimize_scalar(nll, bounds=tuple(math.log(b) for b in T_BOUNDS), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(fit.x))


def _fit_softmax_temperature(block: np.ndarray, y: np.ndarray) -> float:
    """One ``T`` for a softmax head: NLL of the true class under ``softmax(z / T)``."""
    true = y.argmax(axis=1)

    def nll(log_t: float) -> float:
        s = block / math.exp(log_t)
        top = s.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(s - top).sum(axis=1))
        return float(np.mean(log_z - s[np.arange(len(s)), true]))

    fit = minimize_scalar(nll, bounds=tuple(math.log(b) for b in T_BOUNDS), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(fit.x))


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}


def _check_shapes(contract: ModelContract, logits: np.ndarray, targets: np.ndarray | None = None) -> None:
    n_out = len(contract.output_names())
    if logits.ndim != 2 or logits.shape[1] != n_out:
        raise ValueError(f"logits have shape {logits.shape}; the contract of {contract.family} has {n_out} outputs")
    if targets is not None and targets.shape != logits.shape:
        raise ValueError(f"targets have shape {targets.shape}, the logits {logits.shape}")


def fit_probability_calibration(
    contract: ModelContract, logits: np.ndarray, targets: np.ndarray, method: str = "temperature",
    min_per_class: int = MIN_PER_CLASS,
) -> dict[str, Any]:  # fmt: skip
    """Fit the calibration of every output on the calibration split; a JSON-able section.

    Args:
        contract: the version's contract (output order, head kinds).
        logits: ``(N, C)`` raw outputs in contract order.
        targets: ``(N, C)`` 0/1 per logit, NaN where unknown (:func:`medmlops.informer.scores.logit_targets`).
        method: ``"temperature"`` (default) or ``"isotonic"``.
        min_per_class: a logit (a softmax head: every class) needs this many known positives and negatives.

    Returns:
        ``{"method", "classes", "temperature": [T per output] | None, "isotonic": [{x, y} | None per output] | None,
        "too_few": [output names left unfitted], "n": rows}``.
    """
    if method not in METHODS:
        raise ValueError(f"probability calibration method must be one of {', '.join(METHODS)}, not {method!r}")
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    _check_shapes(contract, logits, targets)
    names = contract.output_names()
    temperature = [1.0] * len(names)
    isotonic: list[dict[str, list[float]] | None] = [None] * len(names)
    too_few: list[str] = []
    probs = logit_probabilities(contract, logits)
    for spec, cols in head_slices(contract):
        if spec.kind == "multiclass":
            y = targets[:, cols]
            known = np.isfinite(y).all(axis=1) & (np.nansum(y, axis=1) == 1)
            if not all(_enough(y[known, k], min_per_class) for k in range(y.shape[1])):
                too_few.extend(names[cols])
                continue
            if method == "temperature":
                temperature[cols] = [_fit_softmax_temperature(logits[known, cols], y[known])] * spec.n_logits
            else:
                for k, j in enumerate(range(cols.start, cols.stop)):
                    isotonic[j] = _fit_isotonic(probs[known, j], y[known, k])
            continue
        for j in range(cols.start, cols.stop):
            known = np.isfinite(targets[:, j])
            y = targets[known, j]
            if not _enough(y, min_per_class):
                too_few.append(names[j])
                continue
            if method == "temperature":
                temperature[j] = _fit_sigmoid_temperature(logits[known, j], y)
            else:
                isotonic[j] = _fit_isotonic(probs[known, j], y)
    return {
        "method": method, "classes": names, "temperature": temperature if method == "temperature" else None,
        "isotonic": isotonic if method == "isotonic" else None, "too_few": too_few, "n": int(len(logits)),
        "min_per_class": int(min_per_class),
    }  # fmt: skip


def calibrated_probabilities(contract: ModelContract, logits: np.ndarray, section: Mapping[str, Any]) -> np.ndarray:
    """``(N, C)`` calibrated probability of each output's positive side, by ``section``
    (:func:`fit_probability_calibration`); ValueError when the section does not fit the contract."""
    logits = np.asarray(logits, dtype=np.float64)
    _check_shapes(contract, logits)
    names = contract.output_names()
    if list(section.get("classes") or []) != names:
        raise ValueError(f"the probability calibration's classes do not match the contract of {contract.family}")
    method = section.get("method")
    if method == "temperature":
        t = np.asarray(section.get("temperature"), dtype=np.float64)
        if t.shape != (len(names),) or not np.all(np.isfinite(t)) or np.any(t <= 0):
            raise ValueError("the probability calibration's temperatures are not one positive number per output")
        out = np.empty_like(logits)
        for spec, cols in head_slices(contract):
            scaled = logits[:, cols] / t[cols]
            out[:, cols] = _softmax(scaled) if spec.kind == "multiclass" else _sigmoid(scaled)
        return out
    if method == "isotonic":
        maps = section.get("isotonic")
        if not isinstance(maps, list) or len(maps) != len(names):
            raise ValueError("the probability calibration's isotonic maps are not one per output")
        raw = logit_probabilities(contract, logits)
        out = raw.copy()
        for j, fit in enumerate(maps):
            if fit is not None:
                out[:, j] = np.interp(raw[:, j], np.asarray(fit["x"], float), np.asarray(fit["y"], float))
        for spec, cols in head_slices(contract):
            if spec.kind == "multiclass":
                total = out[:, cols].sum(axis=1, keepdims=True)
                out[:, cols] = np.where(total > 0, out[:, cols] / np.maximum(total, _EPS), 1.0 / spec.n_logits)
        return out
    raise ValueError(f"unknown probability calibration method {method!r}")


# ---------------------------------------------------------------------------------------------------------------
# CBPE and realized metrics, one binary column at a time
# ---------------------------------------------------------------------------------------------------------------


def estimated_auroc(score: np.ndarray, p: np.ndarray) -> float:
    """CBPE's ROC AUC: the area under the expected ROC curve of ``score``, each case a positive with probability
    ``p`` (cases with equal scores cross a threshold together). NaN for no case, or when ``p`` leaves no expected
    positive or negative."""
    score, p = np.asarray(score, dtype=np.float64), np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if len(score) == 0 or p.sum() <= _EPS or (1 - p).sum() <= _EPS:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    s, q = score[order], p[order]
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tpr = np.r_[0.0, np.cumsum(q)[ends] / q.sum()]
    fpr = np.r_[0.0, np.cumsum(1 - q)[ends] / (1 - q).sum()]
    return float(np.trapezoid(tpr, fpr))


def estimated_confusion(p: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """CBPE's expected confusion matrix of the 0/1 ``predicted`` decisions: TP ``sum(p | 1)``, FP ``sum(1 - p | 1)``,
    FN ``sum(p | 0)``, TN ``sum(1 - p | 0)``."""
    p, pred = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0), np.asarray(predicted).astype(bool)
    return {"tp": float(p[pred].sum()), "fp": float((1 - p[pred]).sum()), "fn": float(p[~pred].sum()),
            "tn": float((1 - p[~pred]).sum())}  # fmt: skip


def estimated_f1(p: np.ndarray, predicted: np.ndarray) -> float:
    """CBPE's F1 of the 0/1 ``predicted`` decisions from :func:`estimated_confusion`; NaN when the expected
    denominator is 0."""
    cells = estimated_confusion(p, predicted)
    tp, fp, fn = cells["tp"], cells["fp"], cells["fn"]
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator > _EPS else float("nan")


def realized_auroc(score: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC on labelled cases (ties count half, scikit-learn's); NaN unless both labels are present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(score, dtype=np.float64)))


def realized_f1(y: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the positive class on labelled cases (scikit-learn's); NaN when there is no positive and no positive
    prediction."""
    from sklearn.metrics import f1_score

    y, pred = np.asarray(y).astype(bool), np.asarray(predicted).astype(bool)
    return float(f1_score(y, pred, zero_division=np.nan)) if len(y) else float("nan")


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def _clean(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def estimate(
    contract: ModelContract, logits: np.ndarray, performance: Mapping[str, Any],
    targets: np.ndarray | None = None,
) -> dict[str, Any]:  # fmt: skip
    """CBPE (and, where ``targets`` are known, the realized values) of every output over one window of ``logits``.

    Args:
        contract: the version's contract.
        logits: ``(N, C)`` in contract order.
        performance: the contract's ``informer["performance"]`` section (:func:`performance_section`).
        targets: ``(N, C)`` 0/1 per output, NaN where unknown; None: no labels at all.

    Returns:
        ``{"n", "classes": {name: {"estimated": {"auroc", "f1"}, "realized": {"auroc", "f1"}, "n_labelled"}},
        "gate": {"metric", "floor", "estimated", "realized", "n_labelled", "below_floor"}}``; a value that cannot be
        computed (no expected positive, no labelled positive) is None.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, len(contract.output_names()))
    names = contract.output_names()
    raw = logit_probabilities(contract, logits)
    calibrated = calibrated_probabilities(contract, logits, performance["probability"])
    predicted = logit_predictions(contract, raw)
    if targets is None:
        targets = np.full(logits.shape, np.nan)
    targets = np.asarray(targets, dtype=np.float64)
    classes: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        known = np.isfinite(targets[:, j])
        y = targets[known, j]
        classes[name] = {
            "estimated": {"auroc": _clean(estimated_auroc(raw[:, j], calibrated[:, j])),
                          "f1": _clean(estimated_f1(calibrated[:, j], predicted[:, j]))},
            "realized": {"auroc": _clean(realized_auroc(raw[known, j], y)),
                         "f1": _clean(realized_f1(y, predicted[known, j])) if known.any() else None},
            "n_labelled": int(known.sum()),
        }  # fmt: skip
    gate = dict(performance.get("gate") or {})
    out_gate: dict[str, Any] = {
        "metric": gate.get("metric"),
        "floor": gate.get("floor"),
        "estimate": gate.get("estimate"),
    }
    which, members = gate.get("estimate"), [c for c in gate.get("classes") or [] if c in classes]
    if which in ("auroc", "f1") and members:
        est = _nanmean([classes[c]["estimated"][which] for c in members])
        real = _nanmean([classes[c]["realized"][which] for c in members])
        floor = gate.get("floor")
        out_gate.update({
            "classes": members, "estimated": est, "realized": real,
            "n_labelled": min(classes[c]["n_labelled"] for c in members),
            "below_floor": bool(floor is not None and est is not None and est < float(floor)),
        })  # fmt: skip
    else:
        out_gate.update(
            {"classes": members, "estimated": None, "realized": None, "n_labelled": 0, "below_floor": False}
        )
    return {"n": int(len(logits)), "classes": classes, "gate": out_gate}


# ---------------------------------------------------------------------------------------------------------------
# The gate metric and the section the calibration stores
# ---------------------------------------------------------------------------------------------------------------

_AUROC = re.compile(r"^(mean_)?(auc|auroc|roc_auc)$")
_F1 = re.compile(r"^(mean_|macro_)?f1$")


def gate_target(contract: ModelContract, metric: str | None) -> dict[str, Any]:
    """Which per-class estimate and which outputs make the gate's ``metric`` (as logged in training: ``<task>_<metric>``
    with ``_mean`` for the mean over folds): ``{"estimate": "auroc" | "f1" | None, "classes": [...], "why"}``.

    ``<task>_auc`` of a two-class softmax head is its second class's AUC (as training logs it); F1 of a softmax
    head is macro over its classes; AUROC of a multilabel head the mean over its findings. A metric CBPE does not
    estimate (balanced accuracy, say) gives ``estimate`` None and says why.
    """
    if not metric:
        return {"estimate": None, "classes": [], "why": "no gate metric is configured for this family"}
    base = metric[: -len("_mean")] if metric.endswith("_mean") else metric
    tasks = sorted(contract.tasks, key=lambda t: len(t.name), reverse=True)
    spec = next((t for t in tasks if base.startswith(f"{t.name}_")), None)
    if spec is None:
        return {"estimate": None, "classes": [], "why": f"gate metric {metric} names no task of the contract"}
    rest = base[len(spec.name) + 1 :]
    names = spec.logit_names()
    if _AUROC.match(rest):
        if spec.kind == "multiclass" and len(names) == 2 and not rest.startswith("mean_"):
            names = names[1:]
        return {"estimate": "auroc", "classes": names, "why": None}
    if _F1.match(rest):
        return {"estimate": "f1", "classes": names, "why": None}
    return {"estimate": None, "classes": [], "why": f"CBPE estimates AUROC and F1, not {rest} (gate metric {metric})"}


def _gates_of(gates: Any, family: str) -> tuple[str | None, float | None]:
    """(primary metric, its floor) of ``family`` in ``params.registry.gates`` (GatesConfig objects or mappings)."""
    entry = (gates or {}).get(family) if isinstance(gates, Mapping) else None
    if entry is None:
        return None, None
    get = entry.get if isinstance(entry, Mapping) else lambda key, default=None: getattr(entry, key, default)
    metric = get("primary_metric")
    floor = (get("min_metrics") or {}).get(metric) if metric else None
    return metric, None if floor is None else float(floor)


def performance_section(
    gates: Any, contract: ModelContract, logits: np.ndarray, targets: np.ndarray, method: str = "temperature",
    min_per_class: int = MIN_PER_CLASS,
) -> dict[str, Any]:  # fmt: skip
    """What the calibration stores under ``informer["performance"]``: the probability calibration, the family's
    gate (metric, floor, which estimate of which outputs) and, as a check, CBPE against the realized metrics on the
    calibration split itself (in-sample for the calibration: it shows the fit, not the production error).

    Args:
        gates: ``params.registry.gates`` (family → GatesConfig or mapping); the family is ``contract.family``.
        contract, logits, targets, method, min_per_class: as :func:`fit_probability_calibration`.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    probability = fit_probability_calibration(contract, logits, targets, method, min_per_class)
    metric, floor = _gates_of(gates, contract.family)
    target = gate_target(contract, metric)
    section = {
        "probability": probability,
        "gate": {"metric": metric, "floor": floor, "estimate": target["estimate"], "classes": target["classes"],
                 "why": target["why"]},
    }  # fmt: skip
    check = estimate(contract, logits, section, targets)
    section["validation"] = {
        "n": check["n"], "gate": {k: check["gate"][k] for k in ("estimated", "realized", "n_labelled")},
        "classes": check["classes"],
        "nll": {"uncalibrated": _nll(logit_probabilities(contract, logits), targets),
                "calibrated": _nll(calibrated_probabilities(contract, logits, probability), targets)},
    }  # fmt: skip
    return section


def _nll(p: np.ndarray, targets: np.ndarray) -> float | None:
    """Mean Bernoulli NLL per known (row, output) cell."""
    known = np.isfinite(targets)
    if not known.any():
        return None
    q = np.clip(p[known], _EPS, 1 - _EPS)
    y = targets[known]
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
