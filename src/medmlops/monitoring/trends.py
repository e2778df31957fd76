"""Trends over time: the bucket a window is cut into, performance and drift share per bucket, and when each model
version became champion (the alias history marked on the dashboard's time axis).

Decisions:

* **Bucket** (``bucket_s=auto``): the smallest of :data:`NICE_BUCKETS` (1 s up to 30 days) that cuts the records'
  own time span into at most :data:`MAX_POINTS` non-empty buckets holding on average at least
  :data:`MIN_RECORDS_PER_POINT` records each. A window of hours gets minutes, a day gets half-hours, and the
  demo's clean and shifted traffic (a burst each, a minute apart) gets seconds, so each burst is its own points
  instead of one dot per class. A rate from fewer records than that is noise, so sparse traffic gets fewer points.
* **Performance per bucket**: :func:`medmlops.monitoring.performance.window_performance` (CBPE estimate and the
  realized value on labelled records) of each bucket's records, per version; the gate metric is charted.
* **Drift history**: the stored drift reports of a family, oldest first, each as :func:`public_report` shows it.
* **No server paths**: a drift report is stored with the paths of its files; what the service answers holds
  ``html_url`` (the route that serves the HTML) instead, and every ``*_path`` key is dropped, at any depth.
* **Alias history**: MLflow keeps only where an alias points now, not where it pointed. The record of a move is
  what promotion writes: the version tag ``promoted_at`` (UTC ISO, set by
  :func:`medmlops.registry.promotion.promote` when ``champion`` moves to the version) and each version's creation
  time (registration makes it ``candidate``). :func:`registry_aliases` reads those with two registry calls per
  family; :class:`AliasHistory` keeps the answer for :data:`ALIAS_TTL_S` (and a failure for
  :data:`ALIAS_RETRY_S`), so the dashboard's refreshes cost nothing. Not recorded by MLflow, so not shown with a
  time: a rollback (``promotion.rollback`` moves the alias without a tag) and an alias set by hand; when the
  current champion is not the newest ``promoted_at``, the answer says so in ``note``. The service reads the
  registry only when its logit tier does (no ``--calibration-source``); a custom calibration source may carry an
  ``alias_history(family)`` attribute that answers instead, and without one there are no marks.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from medmlops.inference.record import iso
from medmlops.monitoring.features import describe_all
from medmlops.monitoring.performance import ContractLookup, window_performance

log = logging.getLogger(__name__)

NICE_BUCKETS = (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800,
    2592000,
)  # fmt: skip
MAX_POINTS = 60
MIN_RECORDS_PER_POINT = 5
ALIAS_TTL_S = 300.0
ALIAS_RETRY_S = 60.0
AliasSource = Callable[[str], Mapping[str, Any]]


def choose_bucket(
    times: Iterable[float], *, max_points: int = MAX_POINTS, min_per_point: int = MIN_RECORDS_PER_POINT
) -> float:
    """The bucket (seconds) for records created at ``times``: the smallest nice bucket with at most ``max_points``
    non-empty buckets and at least ``min_per_point`` records per non-empty bucket on average (the largest nice
    bucket when none qualifies; 3600 s when there are no records)."""
    values = [float(t) for t in times if t is not None and math.isfinite(float(t))]
    if not values:
        return 3600.0
    for bucket in NICE_BUCKETS:
        k = len({math.floor(t / bucket) for t in values})
        if k <= max_points and len(values) / k >= min_per_point:
            return float(bucket)
        if k == 1:  # coarser buckets only merge what is already one bucket
            return float(bucket)
    return float(NICE_BUCKETS[-1])


def describe_bucket(bucket_s: float) -> str:
    """``10 s``, ``5 min``, ``1 h``, ``2 d``: a bucket as a reader says it."""
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if bucket_s >= size and bucket_s % size == 0:
            return f"{int(bucket_s // size)} {unit}"
    return f"{bucket_s:g} s"


def bucket_start(t: float, bucket_s: float) -> float:
    return math.floor(t / bucket_s) * bucket_s


def performance_points(
    rows: Iterable[Mapping[str, Any]], bucket_s: float, lookup: ContractLookup
) -> list[dict[str, Any]]:
    """Estimated (CBPE) and realized gate metric per (bucket, version) of ``rows`` (:meth:`Store.performance_rows`),
    oldest first: ``{"t", "time", "version", "n", "n_labelled", "metric", "estimated", "realized", "floor",
    "estimable"}``."""
    buckets: dict[float, list[Mapping[str, Any]]] = {}
    for row in rows:
        buckets.setdefault(bucket_start(row["created_at"], bucket_s), []).append(row)
    out = []
    for start, members in sorted(buckets.items()):
        for v in window_performance(members, lookup, min_records=1):
            gate = v.get("gate") or {}
            out.append({
                "t": start, "time": iso(start), "family": v["family"], "version": v["version"], "n": v.get("n", 0),
                "n_labelled": v.get("n_labelled", 0), "metric": gate.get("metric"), "estimated": gate.get("estimated"),
                "realized": gate.get("realized"), "floor": gate.get("floor"), "estimable": bool(v.get("estimable")),
            })  # fmt: skip
    return out


def _without_paths(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_paths(v) for k, v in value.items() if not str(k).endswith("_path")}
    if isinstance(value, list | tuple):
        return [_without_paths(v) for v in value]
    return value


def public_report(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored drift report as the service answers it: no server paths (``html_url`` instead of ``html_path``),
    the drifted columns with their human names and meanings (``drifted_features``), the version it covered."""
    summary = row.get("summary") if isinstance(row.get("summary"), Mapping) else {}
    view = _without_paths({k: v for k, v in row.items() if k != "summary"})
    view["summary"] = _without_paths(summary)
    view["created_at_iso"] = iso(row.get("created_at"))
    view["html_url"] = f"/v1/drift/{row['id']}/report.html" if row.get("html_path") and row.get("id") else None
    view["version"] = None if summary.get("version") is None else str(summary.get("version"))
    view["n_drifted"] = summary.get("n_drifted")
    view["n_columns"] = summary.get("n_columns")
    view["drifted_features"] = describe_all(summary.get("drifted_columns"))
    return view


def drift_history(reports: Iterable[Mapping[str, Any]], *, version: str | None = None) -> list[dict[str, Any]]:
    """The reports (oldest first) as :func:`public_report` shows them, those of ``version`` only when given (a
    report that names no version is kept: it covered the family's window, whichever version served)."""
    out = [public_report(r) for r in reports]
    if version is not None:
        out = [r for r in out if r["version"] in (None, str(version))]
    return out


# -- alias history ----------------------------------------------------------------------------------------------------


def _seconds(text: Any) -> float | None:
    """A tag's ISO time (no offset: UTC) or a number of milliseconds as Unix seconds; None when neither."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return float(text) / 1000.0
    try:
        moment = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def registry_aliases(family: str) -> dict[str, Any]:
    """The alias history MLflow can tell (see the module's decisions): ``{"events": [{"version", "alias", "at"}],
    "current": {alias: version}}``; two registry calls."""
    from mlflow import MlflowClient

    if "'" in family:
        return {"events": [], "current": {}}
    client = MlflowClient()
    current = {str(k): str(v) for k, v in (client.get_registered_model(family).aliases or {}).items()}
    events = []
    for mv in client.search_model_versions(f"name='{family}'"):
        registered = _seconds(mv.creation_timestamp)
        if registered is not None:
            events.append({"version": str(mv.version), "alias": "candidate", "at": registered})
        promoted = _seconds((mv.tags or {}).get("promoted_at"))
        if promoted is not None:
            events.append({"version": str(mv.version), "alias": "champion", "at": promoted})
    return {"events": events, "current": current}


def alias_source(calibration: Any) -> AliasSource | None:
    """Where the alias history comes from: the registry when the logit tier reads it (``calibration`` None), else
    the custom source's ``alias_history`` attribute, else nowhere."""
    if calibration is None:
        return registry_aliases
    found = getattr(calibration, "alias_history", None)
    return found if callable(found) else None


class AliasHistory:
    """When each version of a family became champion (and was registered), cached per family.

    Args:
        source: ``family -> {"events": [...], "current": {alias: version}}``; None: no history.
        ttl_s: an answer is kept this long.
        retry_s: a failed fetch is not repeated for this long.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self, source: AliasSource | None, *, ttl_s: float = ALIAS_TTL_S, retry_s: float = ALIAS_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.source, self.ttl_s, self.retry_s, self.clock = source, ttl_s, retry_s, clock
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, family: str | None) -> dict[str, Any]:
        """``{"events": [{"version", "alias", "at", "time"}] oldest first, "current": {alias: version},
        "note": str | None}``."""
        if family is None or self.source is None:
            why = "pick one family" if family is None else "no registry to read the alias history from"
            return {"events": [], "current": {}, "note": why}
        with self._lock:
            until, cached = self._cache.get(family, (0.0, None))
        if cached is not None and self.clock() < until:
            return cached
        try:
            answer = self._shape(self.source(family))
            expires = self.clock() + self.ttl_s
        except Exception as exc:  # noqa: BLE001 - the registry's trouble must not break a chart
            log.warning("alias history of %s not available: %s", family, exc)
            # The error stays in the log: a registry's message can name its URI or files.
            answer = {"events": [], "current": {}, "note": "no alias history from the registry for this family"}
            expires = self.clock() + self.retry_s
        with self._lock:
            self._cache[family] = (expires, answer)
        return answer

    @staticmethod
    def _shape(raw: Mapping[str, Any]) -> dict[str, Any]:
        events = []
        for e in raw.get("events") or []:
            at = e.get("at")
            if isinstance(at, int | float) and math.isfinite(at):
                events.append(
                    {"version": str(e["version"]), "alias": str(e["alias"]), "at": float(at), "time": iso(at)}
                )
        events.sort(key=lambda e: (e["at"], e["alias"]))
        current = {str(k): str(v) for k, v in (raw.get("current") or {}).items()}
        note = None
        promotions = [e for e in events if e["alias"] == "champion"]
        champion = current.get("champion")
        if champion and (not promotions or promotions[-1]["version"] != champion):
            note = (
                f"version {champion} is champion now, moved there by a rollback or by hand: MLflow keeps no time for "
                "that move"
            )
        return {"events": events, "current": current, "note": note}
