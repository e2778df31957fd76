"""Performance per model version over a window of records: estimated without labels (CBPE, from the logits every
record carries and the version's probability calibration) and realized on the records whose labels arrived
(``POST /v1/labels``).

The numbers are :func:`medmlops.informer.probability.estimate`'s; this module turns stored rows into its inputs and
groups them by (family, version). Rows in, dicts out: :func:`version_performance` and :func:`window_performance`
are pure; the window's logits and labels come from the store (``Store.performance_rows``).

* Predictions are the contract's decisions (``scores.logit_predictions``: Youden thresholds for the findings,
  argmax of a softmax head), the ones serving answered with; AUROC ranks by the model's own probability.
* Labels are matched to outputs by the contract's output name (``findings/Edema``) or, when it names one output
  only, the class alone (``Edema``). A softmax head labelled 1 for one class is 0 for its others. Keys that name no
  output are ignored (listed under ``unknown_labels``).
* A version whose contract has no ``informer["performance"]`` section (calibrated before CBPE existed, or never) is
  **not estimable**: it says so and why, and only its realized metrics are given. Nothing is guessed from the
  uncalibrated probabilities.
* ``below_floor``: the estimated gate metric is under the family's gate floor (``params.yaml
  registry.gates.<family>.min_metrics[primary_metric]``, stored with the calibration). Alerted on by
  ``MedmlopsEstimatedPerformanceBelowFloor``. The window should hold enough records for the estimate to mean
  something; ``min_records`` (default 30) holds the flag back below that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from medmlops.informer.probability import SECTION, estimate, realized_auroc, realized_f1
from medmlops.informer.scores import head_slices, logit_predictions, logit_probabilities
from medmlops.registry.contract import ModelContract

ContractLookup = Callable[[str, str], tuple[ModelContract, Mapping[str, Any] | None]]
MIN_RECORDS = 30


def label_columns(contract: ModelContract) -> dict[str, int]:
    """Label key → output column: every output name, and each class name that names one output only."""
    names = contract.output_names()
    columns = {name: j for j, name in enumerate(names)}
    short: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        short.setdefault(name.rsplit("/", 1)[-1], []).append(j)
    for key, js in short.items():
        if len(js) == 1 and key not in columns:
            columns[key] = js[0]
    return columns


def label_targets(contract: ModelContract, given: Iterable[Mapping[str, Any] | None]) -> tuple[np.ndarray, set[str]]:
    """``(N, C)`` 0/1 targets (NaN unknown) from each record's posted labels, and the keys that named no output."""
    columns = label_columns(contract)
    given = list(given)
    targets = np.full((len(given), len(contract.output_names())), np.nan)
    unknown: set[str] = set()
    for i, labels in enumerate(given):
        for key, value in (labels or {}).items():
            j = columns.get(str(key))
            if j is None:
                unknown.add(str(key))
            elif value in (0, 1) and not isinstance(value, bool | str):
                targets[i, j] = float(value)
    for spec, cols in head_slices(contract):
        if spec.kind == "multiclass":
            block = targets[:, cols]
            positive = np.nan_to_num(block, nan=0.0).sum(axis=1) == 1
            block[positive] = np.nan_to_num(block[positive], nan=0.0)
            targets[:, cols] = block
    return targets, unknown


def _logit_matrix(contract: ModelContract, rows: list[Mapping[str, Any]]) -> tuple[np.ndarray, list[int]]:
    """The rows' logits as ``(N, C)`` and the indices of the rows they came from (rows without logits that fit the
    contract are left out)."""
    width = len(contract.output_names())
    kept, values = [], []
    for i, row in enumerate(rows):
        logits = row.get("logits")
        if isinstance(logits, list) and len(logits) == width:
            array = np.asarray(logits, dtype=np.float64)
            if np.all(np.isfinite(array)):
                kept.append(i)
                values.append(array)
    return (np.vstack(values) if values else np.empty((0, width))), kept


def _realized_only(contract: ModelContract, logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    raw = logit_probabilities(contract, logits)
    predicted = logit_predictions(contract, raw)
    out = {}
    for j, name in enumerate(contract.output_names()):
        known = np.isfinite(targets[:, j])
        auroc = realized_auroc(raw[known, j], targets[known, j])
        f1 = realized_f1(targets[known, j], predicted[known, j]) if known.any() else float("nan")
        out[name] = {
            "estimated": {"auroc": None, "f1": None},
            "realized": {"auroc": auroc if np.isfinite(auroc) else None, "f1": f1 if np.isfinite(f1) else None},
            "n_labelled": int(known.sum()),
        }  # fmt: skip
    return out


def version_performance(
    family: str, version: str, rows: list[Mapping[str, Any]], contract: ModelContract,
    informer: Mapping[str, Any] | None, *, min_records: int = MIN_RECORDS,
) -> dict[str, Any]:  # fmt: skip
    """Estimated and realized performance of one version over its rows of the window (``Store.performance_rows``).

    Returns ``{"family", "version", "estimable", "reason", "n", "n_skipped", "n_labelled", "calibration",
    "classes": {name: {"estimated": {"auroc", "f1"}, "realized": {"auroc", "f1"}, "n_labelled"}}, "gate": {"metric",
    "floor", "estimate", "classes", "estimated", "realized", "n_labelled", "below_floor"}, "unknown_labels"}``.
    """
    logits, kept = _logit_matrix(contract, rows)
    targets, unknown = label_targets(contract, [rows[i].get("labels") for i in kept])
    section = (informer or {}).get(SECTION) if isinstance(informer, Mapping) else None
    base = {
        "family": family, "version": version, "n": len(kept), "n_skipped": len(rows) - len(kept),
        "n_labelled": int(np.isfinite(targets).any(axis=1).sum()), "unknown_labels": sorted(unknown),
    }  # fmt: skip
    if not isinstance(section, Mapping):
        return {
            **base, "estimable": False, "calibration": None,
            "reason": f"{family} version {version} has no performance calibration (its contract's informer section "
                      "lacks 'performance'); recalibrate it with `medmlops informer calibrate` to estimate without labels",
            "classes": _realized_only(contract, logits, targets),
            "gate": {"metric": None, "floor": None, "estimated": None, "realized": None, "below_floor": False},
        }  # fmt: skip
    try:
        result = estimate(contract, logits, section, targets)
    except (ValueError, KeyError, TypeError) as exc:  # a section that does not fit the contract
        return {
            **base, "estimable": False, "calibration": None,
            "reason": f"{family} version {version}: its performance calibration cannot be used ({exc})",
            "classes": _realized_only(contract, logits, targets),
            "gate": {"metric": None, "floor": None, "estimated": None, "realized": None, "below_floor": False},
        }  # fmt: skip
    gate = result["gate"]
    reason = None
    if len(kept) < min_records:
        gate["below_floor"] = False
        reason = f"{len(kept)} records in the window, fewer than the {min_records} the floor alert waits for"
    elif gate.get("estimated") is None:
        reason = (section.get("gate") or {}).get("why") or "the gate metric cannot be estimated on this window"
    return {
        **base, "estimable": True, "reason": reason, "calibration": (section.get("probability") or {}).get("method"),
        "classes": result["classes"], "gate": gate,
    }  # fmt: skip


def window_performance(
    rows: Iterable[Mapping[str, Any]], lookup: ContractLookup, *, min_records: int = MIN_RECORDS
) -> list[dict[str, Any]]:
    """:func:`version_performance` of every (family, version) in ``rows``, sorted by family then version. A version
    whose contract cannot be had (``lookup`` raises) is reported not estimable, naming the error."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["family"], str(row["version"])), []).append(row)
    out = []
    for (family, version), members in sorted(groups.items(), key=lambda kv: (kv[0][0], _version_key(kv[0][1]))):
        try:
            contract, informer = lookup(family, version)
        except Exception as exc:  # noqa: BLE001 - a missing version is reported, not raised
            why = (
                str(exc)
                if isinstance(exc, LookupError)
                else f"{family} version {version}: contract not available ({exc})"
            )
            out.append({
                "family": family, "version": version, "estimable": False, "n": len(members), "reason": why,
                "classes": {},
                "gate": {"metric": None, "floor": None, "estimated": None, "realized": None, "below_floor": False},
            })  # fmt: skip
            continue
        out.append(version_performance(family, version, members, contract, informer, min_records=min_records))
    return out


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
