"""The logit tier at ingest, and the backlog stratum it decides: what a record gets the moment it is stored.

The logit tier scores the logits every record carries (:mod:`medmlops.informer.logit_tier`: MSR, entropy, energy,
and the flags of the score its calibration selected), with no model call: it needs only the version's contract
and calibration, fetched once per (family, version) from the registry and kept. The saliency tier (INFORMER)
follows later from the workers (:mod:`medmlops.monitoring.worker`).

A version the registry does not have (or a registry that does not answer) does not stop a record: it is stored
with the logit tier ``unscored`` and the reason, and the saliency tier's bounded retries mark it ``failed`` naming
the family and version if the version stays missing. Refusing it at ingest (4xx) was the alternative; it was not
taken because ingest is where nothing may be lost: serving has already answered the client with that version, a
4xx would move the record to serving's rejected spool where nobody looks, and a registry outage would be
indistinguishable from a missing version at that moment. Stored, it is visible (``/v1/records``, the failed
count, its error) and is analysed as soon as the version is back.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from medmlops.inference.record import PredictionRecord
from medmlops.informer.logit_tier import LogitTier, logit_scores
from medmlops.monitoring.store import FLAGGED, REST, SAMPLE, Intake
from medmlops.monitoring.worker import load_callable
from medmlops.registry.contract import ModelContract

log = logging.getLogger(__name__)

CalibrationSource = Callable[[str, str], tuple[ModelContract, Mapping[str, Any] | None]]


def registry_calibration(family: str, version: str) -> tuple[ModelContract, Mapping[str, Any] | None]:
    """The default source: the version's contract from MLflow; its ``informer`` field carries the calibration's
    ``logit_tier`` section (None: the version was never calibrated, and the tier scores without flagging)."""
    from medmlops.registry.tracking import load_contract

    contract = load_contract(family, version)
    return contract, contract.informer


def load_source(spec: str) -> CalibrationSource:
    """``--calibration-source MODULE:CALLABLE``: ``(family, version) -> (contract, calibration or None)``."""
    return load_callable(spec, "--calibration-source")


class LogitScorer:
    """Logit-tier results per record, with each version's contract and calibration cached.

    Args:
        source: ``(family, version) -> (contract, calibration)``; default :func:`registry_calibration`.
        cache_size: versions kept.
        retry_s: a version that could not be fetched is not asked for again for this long (a flood of records of
            a missing version must not become a flood of registry calls).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self, source: CalibrationSource | None = None, *, cache_size: int = 32, retry_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.source = source or registry_calibration
        self.cache_size, self.retry_s, self.clock = max(1, cache_size), retry_s, clock
        self._known: OrderedDict[tuple[str, str], tuple[ModelContract, Mapping[str, Any] | None]] = OrderedDict()
        self._missing: dict[tuple[str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()  # ingest runs on several threads; a fetch happens outside the lock

    def version(self, family: str, version: str) -> tuple[ModelContract, Mapping[str, Any] | None]:
        """The contract and calibration of ``family`` ``version`` (cached; LookupError while it cannot be had)."""
        key = (family, version)
        with self._lock:
            if key in self._known:
                self._known.move_to_end(key)
                return self._known[key]
            until, error = self._missing.get(key, (0.0, ""))
        if self.clock() < until:
            raise LookupError(error)
        try:
            found = self.source(family, version)
        except Exception as exc:  # noqa: BLE001 - whatever the registry says, the record is stored unscored
            error = f"{family} version {version}: contract not available ({exc})"
            log.warning("logit tier: %s; records of that version are stored unscored", error)
            with self._lock:
                self._missing[key] = (self.clock() + self.retry_s, error)
            raise LookupError(error) from exc
        with self._lock:
            self._missing.pop(key, None)
            self._known[key] = found
            while len(self._known) > self.cache_size:
                self._known.popitem(last=False)
        return found

    def score(self, record: PredictionRecord) -> tuple[dict[str, Any], dict[str, bool] | None, bool]:
        """(the tier's result, its flags by class or None, whether it was scored). Never raises: a record that
        cannot be scored gets ``{"error": why}`` and is stored all the same."""
        try:
            contract, calibration = self.version(record.family, record.version)
        except LookupError as exc:
            return {"error": str(exc)}, None, False
        try:
            scores = logit_scores(contract, np.asarray(record.logits, dtype=np.float64))
            tier = LogitTier.from_calibration(calibration)
            flags = None if tier is None else tier.flags(scores)[0]
        except ValueError as exc:  # logits that do not fit the contract, or a malformed calibration section
            return {"error": f"{record.family} version {record.version}: {exc}"}, None, False
        names = contract.output_names()
        body = {
            "score": None if tier is None else tier.score, "calibrated": tier is not None,
            "scores": {name: dict(zip(names, map(float, values[0]), strict=True)) for name, values in scores.items()},
        }  # fmt: skip
        return body, None if flags is None else dict(zip(names, map(bool, flags), strict=True)), True


def triage(
    record: PredictionRecord, scorer: LogitScorer, *, sample_p: float, rng: random.Random, now: float | None = None
) -> Intake:
    """The logit tier of ``record`` and its backlog stratum: flagged by the logit tier → :data:`FLAGGED`; else an
    independent draw with probability ``sample_p`` → :data:`SAMPLE`, or :data:`REST` (the draw's probability is
    stored either way: the rate estimates weight by it, :mod:`medmlops.monitoring.estimate`)."""
    logit, flags, scored = scorer.score(record)
    at = (time.time() if now is None else now) if scored else None
    if flags and any(flags.values()):
        return Intake(logit=logit, logit_flags=flags, logit_at=at, stratum=FLAGGED, sample_p=None)
    stratum = SAMPLE if rng.random() < sample_p else REST
    return Intake(logit=logit, logit_flags=flags, logit_at=at, stratum=stratum, sample_p=sample_p)
