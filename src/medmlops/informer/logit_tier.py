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
maxlogit  max logit of the head (``|z|/2`` sigmoid)   ``>= 0``       more confident          ``< tau``
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
     "selection": {"msr": 41.2, ...},        # AUGRC x 1000 on the validation split of every logit score
     "operating_point": {"review_budget": 0.1, "tau": [...], "coverage": [...], "risk": [...]}}

The score is the deployed CSF when it is logit-only, else the best logit-only CSF by the same selection
rule (:func:`medmlops.informer.csf.choose`); its τ come from the same operating point as the deployed CSF's (a
review budget or a target risk, params ``informer.review_budget`` / ``target_risk``), not from the paper's
flag-and-swap F1 search: a monitor flags for review and does not swap labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from medmlops.informer import csf, scores
from medmlops.registry.contract import ModelContract

LOGIT_SCORES = csf.LOGIT_CSFS
SECTION = "logit_tier"


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
        "maxlogit": csf.max_logit(contract, logits),
        "entropy": scores.binary_entropy(probs),
        "energy": scores.logit_energy(contract, logits),
    }


def tier_section(name: str, point: Mapping[str, Any], selection: Mapping[str, float | None]) -> dict[str, Any]:
    """The calibration's ``logit_tier`` section for the logit-only CSF ``name`` and its operating point
    (:func:`medmlops.informer.csf.operating_point`, thresholds on the CSF's confidence): the thresholds are
    turned into the tier's raw-score convention (a score flagged when *high* is a negated confidence, so its τ is
    negated too); ``selection`` is every logit score's calibration AUGRC × 1000."""
    direction = scores.SCORE_DIRECTIONS[name]
    sign = 1.0 if direction == "low" else -1.0
    tau = [None if t is None else sign * float(t) for t in point["tau"]]
    return {
        "score": name, "tau": tau, "direction": [direction] * len(tau), "selection": dict(selection),
        "operating_point": dict(point),
    }  # fmt: skip


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
