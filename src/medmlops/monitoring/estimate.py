"""Rates of a window of records that stay unbiased while the saliency tier runs behind.

Every record gets its logit tier at ingest, so logit-tier rates are exact counts (:func:`logit_rates`). The
saliency tier (INFORMER) follows from the workers, and under a backlog they take records in priority
(:mod:`medmlops.monitoring.store.queue`): those the logit tier flagged first, then a uniform random sample, then
the rest oldest first. The records analysed so far are then no random subset of the window (flagged ones are
over-represented, recent ones under-represented), and a plain share of them would be biased. The design is fixed at
ingest and stored with each record (``stratum``, ``sample_p``):

* stratum F (``flagged``): the logit tier flagged the record;
* stratum S (``sample``): not flagged, drawn into the sample by an independent Bernoulli(π) draw, π = ``sample_p``;
* stratum R (``rest``): not flagged, not drawn (it had probability 1 - π of landing here).

Estimator of the share Y/N of a window's N records with a saliency flag (records that failed are outside the
population: they can have no saliency result). U = S ∪ R is the unflagged part; t* is the earliest arrival among
the unanalysed R records (none: t* = +∞), which splits U into U_old (arrived before t*: every R record there is
analysed) and U_new::

    Ŷ/N = ( N_F · ȳ_F  +  N_old · ȳ_old  +  N_new · ȳ_S,new ) / N

    ȳ_F      mean over the analysed records of F
    ȳ_old    mean over the analysed records of U_old (all of R there, and S)
    ȳ_S,new  Hájek mean over the analysed S records of U_new: Σ y_i/π_i / Σ 1/π_i

The counts N_F, N_old, N_new are known exactly (every record is stored with its stratum). Because S membership is
an independent draw made before anything was analysed, the S records of U_new are a uniform random sample of U_new
whatever the order of processing, so ȳ_S,new is (ratio-)unbiased for U_new's rate even when that rate drifts over
time; U_old is observed whole. Within F and within U_old the few records not yet analysed (F is claimed first) are
taken as missing at random. When every record is analysed the estimate is the exact share. When U_new has no
analysed S record yet, the S records of the whole of U stand in (then the newest records are assumed to share the
window's rate), and a part with records but no analysed record at all leaves the rate unknown (None) rather than
guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from medmlops.monitoring.store import FLAGGED, REST, SAMPLE

Row = Mapping[str, Any]
Value = Callable[[Row], "float | None"]


def _mean(rows: Iterable[Row], value: Value, weighted: bool = False) -> float | None:
    total = weight = 0.0
    for row in rows:
        y = value(row)
        if y is None:
            continue
        w = 1.0 / row["sample_p"] if weighted and row.get("sample_p") else 1.0
        total, weight = total + w * y, weight + w
    return total / weight if weight else None


def estimate_share(rows: Sequence[Row], value: Value) -> float | None:
    """The stratified estimate (module docstring) of the mean of ``value`` over ``rows``, the population.

    ``rows`` carry ``stratum``, ``received_at`` and ``sample_p``; ``value(row)`` is the 0/1 (or any number) of an
    analysed record, None for one not analysed yet.
    """
    flagged = [r for r in rows if r["stratum"] == FLAGGED]
    unflagged = [r for r in rows if r["stratum"] != FLAGGED]
    waiting = [r["received_at"] for r in unflagged if r["stratum"] == REST and value(r) is None]
    cutoff = min(waiting, default=math.inf)
    old = [r for r in unflagged if r["received_at"] < cutoff]
    new = [r for r in unflagged if r["received_at"] >= cutoff]
    sampled_new = _mean((r for r in new if r["stratum"] == SAMPLE), value, weighted=True)
    if sampled_new is None and new:
        sampled_new = _mean((r for r in unflagged if r["stratum"] == SAMPLE), value, weighted=True)
    total = 0.0
    for part, mean in ((flagged, _mean(flagged, value)), (old, _mean(old, value)), (new, sampled_new)):
        if not part:
            continue
        if mean is None:
            return None
        total += len(part) * mean
    return total / len(rows) if rows else None


def classes_by_version(rows: Iterable[Row]) -> dict[tuple[str, str], set[str]]:
    """The class names each (family, version) of ``rows`` flags, from its saliency and logit-tier flags."""
    classes: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        names = classes.setdefault((row["family"], row["version"]), set())
        names.update(row.get("flags") or {})
        names.update(row.get("logit_flags") or {})
    return classes


def _population(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r["status"] != "failed"]


def saliency_rates(rows: Iterable[Row]) -> dict[str, float]:
    """Per class, the estimated share of records with a saliency flag for it, among the (not failed) records of the
    versions that have that class. Classes whose share cannot be estimated yet are left out."""
    population = _population(rows)
    known = classes_by_version(population)
    rates: dict[str, float] = {}
    for name in sorted(set().union(*known.values()) if known else ()):
        members = [r for r in population if name in known[(r["family"], r["version"])]]
        share = estimate_share(
            members, lambda r, c=name: None if r.get("flags") is None else float(r["flags"].get(c, False))
        )
        if share is not None:
            rates[name] = share
    return rates


def saliency_flagged_share(rows: Iterable[Row]) -> float | None:
    """The estimated share of records INFORMER flags for any class (None while it cannot be estimated)."""
    population = _population(rows)
    return estimate_share(population, lambda r: None if r.get("flagged") is None else float(bool(r["flagged"])))


def logit_rates(rows: Iterable[Row]) -> dict[str, float]:
    """Per class, the share of logit-tier scored records it flags (exact: every scored record counts)."""
    seen: dict[str, int] = {}
    flagged: dict[str, int] = {}
    for row in rows:
        for name, value in (row.get("logit_flags") or {}).items():
            seen[name] = seen.get(name, 0) + 1
            flagged[name] = flagged.get(name, 0) + bool(value)
    return {name: flagged[name] / seen[name] for name in sorted(seen)}


def ood_rate(rows: Iterable[Row]) -> dict[str, Any]:
    """Serving's out-of-distribution verdicts (exact: every record counts): ``scored`` (records with a verdict),
    ``out`` (those out of distribution) and ``rate`` (out / scored; None when none was scored: versions without a
    reference, records from before the verdict existed)."""
    verdicts = [row.get("in_distribution") for row in rows]
    scored = [v for v in verdicts if v is not None]
    out = sum(not v for v in scored)
    return {"scored": len(scored), "out": out, "rate": out / len(scored) if scored else None}


def coverage(rows: Iterable[Row]) -> dict[str, Any]:
    """How much of the window the estimates rest on: records, those analysed, those scored at ingest, per stratum."""
    rows = list(rows)
    strata = {"flagged": FLAGGED, "sample": SAMPLE, "rest": REST}
    return {
        "records": len(rows),
        "analysed": sum(r.get("flagged") is not None for r in rows),
        "logit_scored": sum(r.get("logit_at") is not None for r in rows),
        "by_stratum": {
            name: {
                "records": sum(r["stratum"] == s for r in rows),
                "analysed": sum(r["stratum"] == s and r.get("flagged") is not None for r in rows),
            }
            for name, s in strata.items()
        },  # fmt: skip
        "complete": all(r.get("flagged") is not None or r["status"] == "failed" for r in rows),
    }
