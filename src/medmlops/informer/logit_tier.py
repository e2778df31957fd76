"""Monitoring's first tier: confidence scores and flags from a record's logits alone, with no model call.

INFORMER's saliency flags cost about 5.4 forward passes per image and follow later from the workers; the logit
tier is computed at ingest from the logits every prediction record carries, so each record has a confidence and
a flag the moment it is stored. Pure numpy: no torch, no MLflow at call time.

Scores, each ``(N, C)`` with one column per output logit in contract order (a sigmoid logit, or one class of a
softmax head; see :mod:`medmlops.informer.scores`):

========  ==========================================  =============  ======================  =============
name      what                                        range          higher means            flagged when
========  ==========================================  =============  ======================  =============
msr       ``max(p, 1 - p)`` of the class probability  0.5 .. 1       more confident          ``< tau``
entropy   binary entropy of it, bits                  0 .. 1         less confident          ``> tau``
energy    free energy ``-log sum exp`` (Liu et al.)   ``<= 0``       less confident          ``> tau``
========  ==========================================  =============  ======================  =============

The scores are stored as they are (not negated), so their values read as in the literature; the flag direction
(:data:`medmlops.informer.scores.SCORE_DIRECTIONS`) says which side is uncertain.

Calibration section: ``calibration["logit_tier"]``, written by
:func:`medmlops.informer.calibrate.fit_calibration` and copied unchanged into the contract's ``informer`` field
(so :func:`logit_flags` reads either)::

    {"score": "msr",                         # the selected score, one of LOGIT_SCORES
     "tau": [0.62, null, ...],               # per class in calibration["classes"] order; null = never flagged
     "direction": ["low", "low", ...],       # per class: flag score < tau ("low") or score > tau ("high")
     "selection": {"msr": 41.2, "entropy": 41.2, "energy": 57.9}}   # AURC x 1000 on the validation split
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medmlops.informer import scores
from medmlops.registry.contract import ModelContract

LOGIT_SCORES = ("msr", "entropy", "energy")
SECTION = "logit_tier"
# Chosen when no class has enough validation cases to rank the scores: FD-Shifts found the softmax response hard
# to beat, and with every τ None nothing is flagged anyway.
DEFAULT_SCORE = "msr"
# MSR and entropy rank each class identically (both monotone in |p - 0.5|), so their AURCs tie up to rounding;
# within this margin (AURC x 1000) the earlier name in LOGIT_SCORES wins.
_TIE = 1e-9


def logit_scores(contract: ModelContract, logits: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`LOGIT_SCORES` of a batch of logits ``(N, C)`` (one record's ``(C,)`` is taken as ``N = 1``):
    ``{name: (N, C) float64}``, conventions in the module docstring."""
    logits = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    n_classes = len(contract.output_names())
    if logits.ndim != 2 or logits.shape[1] != n_classes:
        raise ValueError(f"{contract.family} has {n_classes} output logits; got logits of shape {logits.shape}")
    probs = scores.logit_probabilities(contract, logits)
    return {
        "msr": scores.max_response(probs),
        "entropy": scores.binary_entropy(probs),
        "energy": scores.logit_energy(contract, logits),
    }


def select_score(
    candidates: Mapping[str, np.ndarray], targets: np.ndarray, predictions: np.ndarray, min_per_class: int = 0
) -> tuple[str, dict[str, float | None]]:
    """The logit score that best ranks the model's failures on the validation split, and every score's AURC x 1000.

    AURC (FD-Shifts, Jaeger et al. 2023) because it ranks: it integrates the risk of the predictions a score
    accepts over every coverage, so it measures how well the score orders wrong before right predictions,
    independently of where one τ cuts; the per-class F1 search then places τ on the chosen score. FD-Shifts
    found the maximum softmax response hard to beat, so MSR is kept unless another score ranks better here.

    Each score is the confidence of each class's own 0/1 prediction (error = it differs from the known target),
    oriented by its flag direction; the AURC is averaged over the classes that have at least ``min_per_class``
    validation positives and negatives (those a τ can be fitted for). None when no class qualifies, and then
    :data:`DEFAULT_SCORE` is returned. Ties (within ``_TIE``) go to the earlier name in :data:`LOGIT_SCORES`.
    """
    selection: dict[str, float | None] = {}
    for name in LOGIT_SCORES:
        per_class = scores.class_aurc(
            candidates[name], scores.SCORE_DIRECTIONS[name], targets, predictions, min_per_class
        )
        selection[name] = float(np.nanmean(per_class) * 1000) if np.isfinite(per_class).any() else None
    ranked = {name: value for name, value in selection.items() if value is not None}
    if not ranked:
        return DEFAULT_SCORE, selection
    best = min(ranked.values())
    return next(name for name, value in ranked.items() if value <= best + _TIE), selection


def tier_calibration(
    candidates: Mapping[str, np.ndarray],
    fits: Mapping[str, Mapping[str, Any]],
    targets: np.ndarray,
    predictions: np.ndarray,
    classes: list[str],
    min_per_class: int = 0,
) -> dict[str, Any]:
    """The calibration's ``logit_tier`` section: the :func:`select_score` choice with its per-class τ and direction
    taken from ``fits`` (the calibration's baseline fits, :func:`medmlops.informer.calibrate.fit_scores`, so the
    tier flags exactly as that baseline's stored thresholds do, ``min_per_class`` guard included)."""
    selected, selection = select_score(candidates, targets, predictions, min_per_class)
    fit = fits[selected]
    return {
        "score": selected,
        "tau": [fit["tau"][c] for c in classes],
        "direction": [fit["direction"]] * len(classes),
        "selection": selection,
    }


@dataclass(frozen=True)
class LogitTier:
    """The logit tier of a calibrated version, read from its calibration or its contract's ``informer`` field."""

    score: str
    tau: tuple[float | None, ...]
    direction: tuple[str, ...]
    selection: dict[str, float | None]

    @classmethod
    def from_calibration(cls, calibration: Mapping[str, Any] | None) -> LogitTier | None:
        """The tier of ``calibration`` (or a contract's ``informer`` summary); None when it has no ``logit_tier``
        section (calibrated before the tier existed, or never calibrated)."""
        section = (calibration or {}).get(SECTION)
        if not section:
            return None
        tier = cls(
            score=section["score"],
            tau=tuple(None if t is None else float(t) for t in section["tau"]),
            direction=tuple(section["direction"]),
            selection=dict(section.get("selection") or {}),
        )
        if tier.score not in LOGIT_SCORES:
            raise ValueError(f"logit tier: unknown score {tier.score!r} (expected one of: {', '.join(LOGIT_SCORES)})")
        if len(tier.tau) != len(tier.direction):
            raise ValueError(f"logit tier: {len(tier.tau)} thresholds but {len(tier.direction)} directions")
        unknown = sorted(set(tier.direction) - set(scores.DIRECTIONS))
        if unknown:
            raise ValueError(f"logit tier: direction {unknown[0]!r} is not one of {scores.DIRECTIONS}")
        return tier

    def flags(self, tier_scores: Mapping[str, np.ndarray]) -> np.ndarray:
        """``(N, C)`` bool: the selected score of :func:`logit_scores` against each class's τ in its direction;
        a class whose τ is None is never flagged."""
        score = np.atleast_2d(np.asarray(tier_scores[self.score], dtype=np.float64))
        if score.shape[1] != len(self.tau):
            raise ValueError(f"logit tier: calibrated for {len(self.tau)} classes, scores have {score.shape[1]}")
        columns = [
            scores.flag(score[:, j], tau, d) for j, (tau, d) in enumerate(zip(self.tau, self.direction, strict=True))
        ]
        return np.stack(columns, axis=1)


def logit_flags(calibration: Mapping[str, Any] | None, tier_scores: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """``(N, C)`` bool flags of the logit tier (see :meth:`LogitTier.flags`), or None when ``calibration`` (a
    stored calibration or a contract's ``informer`` field) has no ``logit_tier`` section."""
    tier = LogitTier.from_calibration(calibration)
    return None if tier is None else tier.flags(tier_scores)
