"""Prometheus metrics of the monitoring service, in a registry of its own (never the process-global one).

The names are fixed by ``k8s/base/prometheusrule.yaml`` and the workers' ScaledObject. Counters and the processing
histogram are updated as things happen (the processed counter and the histogram by this process's own worker
only); the gauges that describe the database (flag rates over the window, the latest drift report of each family,
the queue depth) are read from the store when ``/metrics`` is scraped, so they survive restarts, count the work of
``medmlops monitor worker`` processes, and include reports written by ``medmlops monitor report``. What is per
family is per model version too (label ``version``), except the drift gauges: a drift report covers a family's
window whatever versions it holds.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from medmlops.errors import UserError
from medmlops.monitoring.estimate import logit_rates, ood_rate, saliency_rates
from medmlops.monitoring.store import Store

log = logging.getLogger(__name__)
_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(h?)\s*$")


@dataclass(frozen=True)
class FlagWindow:
    """The records a flag rate is computed over: the ``last`` N processed per family, or the last ``hours``."""

    last: int | None = 500
    hours: float | None = None

    def describe(self) -> str:
        return f"last {self.hours:g} hours" if self.hours is not None else f"last {self.last} records"


def parse_flag_window(text: str | int) -> FlagWindow:
    """``"500"`` → the last 500 processed records per family; ``"24h"`` → records created in the last 24 hours."""
    match = _WINDOW.match(str(text))
    if not match or float(match.group(1)) <= 0 or (not match.group(2) and not match.group(1).isdigit()):
        raise UserError(f"--flag-window '{text}' must be a count of records (e.g. 500) or hours (e.g. 24h)")
    if match.group(2):
        return FlagWindow(last=None, hours=float(match.group(1)))
    return FlagWindow(last=int(match.group(1)), hours=None)


def window_rows(store: Store, family: str, window: FlagWindow, *, now: float | None = None) -> list[dict[str, Any]]:
    """The records of ``family`` in the window, analysed or not (:meth:`Store.population`): the estimates of
    :mod:`medmlops.monitoring.estimate` need the ones still waiting too."""
    if window.hours is not None:
        since = (time.time() if now is None else now) - window.hours * 3600
        return store.population(family=family, since=since)
    return store.population(family=family, limit=window.last)


def by_version(rows: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["version"], []).append(row)
    return groups


class _StoreCollector(Collector):
    """The gauges read from the database at scrape time."""

    def __init__(self, store: Store, window: FlagWindow) -> None:
        self.store, self.window = store, window

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Unlabelled: KEDA scales the workers on it, and one series answers even while no family has a record.
        depth = GaugeMetricFamily("medmlops_monitoring_queue_depth", "Prediction records waiting for INFORMER.")
        pending = GaugeMetricFamily(
            "medmlops_monitoring_queue_pending", "Prediction records waiting for INFORMER, per model version.",
            labels=["family", "version"],
        )  # fmt: skip
        described = self.window.describe()
        rate = GaugeMetricFamily(
            "medmlops_informer_flag_rate",
            f"Estimated share of the window's predictions INFORMER (saliency tier) flags, per class ({described}; "
            "stratum-weighted while the workers run behind).",
            labels=["family", "version", "class_name"],
        )  # fmt: skip
        logit_rate = GaugeMetricFamily(
            "medmlops_logit_flag_rate",
            f"Share of the window's predictions the logit tier flags at ingest, per class ({described}).",
            labels=["family", "version", "class_name"],
        )  # fmt: skip
        out_rate = GaugeMetricFamily(
            "medmlops_ood_rate",
            f"Share of the window's predictions serving judged out of distribution ({described}; of those with a "
            "verdict: versions without a reference have none).",
            labels=["family", "version"],
        )  # fmt: skip
        # From the database, not a counter: in the cluster the workers are other pods, so a counter in this process
        # would stay at 0 while they analyse (the API runs with --no-worker).
        records_by_status = GaugeMetricFamily(
            "medmlops_monitoring_records",
            "Stored prediction records by status (pending: waiting for the saliency tier; done; failed).",
            labels=["family", "version", "status"],
        )  # fmt: skip
        share = GaugeMetricFamily(
            "medmlops_drift_share", "Share of drifted features in the latest drift report.", labels=["family"]
        )
        stamp = GaugeMetricFamily(
            "medmlops_drift_report_timestamp_seconds", "Unix time of the latest drift report.", labels=["family"]
        )
        try:
            waiting = {(family, version): n for family, version, n in self.store.pending_by_version()}
            depth.add_metric([], sum(waiting.values()))
            for family in self.store.families():
                for version, rows in sorted(by_version(window_rows(self.store, family, self.window)).items()):
                    waiting.setdefault((family, version), 0)  # a version in the window with nothing waiting: 0
                    for name, value in saliency_rates(rows).items():
                        rate.add_metric([family, version, name], value)
                    for name, value in logit_rates(rows).items():
                        logit_rate.add_metric([family, version, name], value)
                    if (ood := ood_rate(rows))["rate"] is not None:
                        out_rate.add_metric([family, version], ood["rate"])
            for (family, version), n in sorted(waiting.items()):
                pending.add_metric([family, version], n)
            for row in self.store.status_counts():
                records_by_status.add_metric([row["family"], row["version"], row["status"]], row["n"])
            for report in self.store.latest_drifts():
                if report["drift_share"] is not None and math.isfinite(report["drift_share"]):
                    share.add_metric([report["family"]], report["drift_share"])
                stamp.add_metric([report["family"]], report["created_at"])
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database blinked
            log.exception("reading metrics from the monitoring store failed")
        yield from (depth, pending, records_by_status, rate, logit_rate, out_rate, share, stamp)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class _PerformanceCollector(Collector):
    """Estimated (CBPE) and realized performance per version over the window (:mod:`.performance`), read at scrape
    time: ``performance()`` returns :func:`~medmlops.monitoring.performance.window_performance`'s list."""

    def __init__(self, performance: Callable[[], list[dict[str, Any]]]) -> None:
        self.performance = performance

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["family", "version", "metric", "class_name"]
        estimated = GaugeMetricFamily(
            "medmlops_estimated_performance",
            "Performance estimated without labels (CBPE from calibrated probabilities) over the window: per class "
            "(metric auroc, f1) and the family's gate metric (metric = its name, class_name empty).",
            labels=labels,
        )  # fmt: skip
        realized = GaugeMetricFamily(
            "medmlops_realized_performance",
            "Performance on the window's records whose labels arrived (POST /v1/labels), as the estimated one.",
            labels=labels,
        )  # fmt: skip
        below = GaugeMetricFamily(
            "medmlops_performance_below_floor",
            "1 when the estimated gate metric is below the family's gate floor (params registry.gates), else 0.",
            labels=["family", "version"],
        )  # fmt: skip
        labelled = GaugeMetricFamily(
            "medmlops_performance_labelled_records",
            "Records in the performance window that have labels.",
            labels=["family", "version"],
        )  # fmt: skip
        try:
            for entry in self.performance():
                family, version = entry["family"], entry["version"]
                for name, values in (entry.get("classes") or {}).items():
                    for metric in ("auroc", "f1"):
                        for gauge, kind in ((estimated, "estimated"), (realized, "realized")):
                            value = _number(values[kind][metric])
                            if value is not None:
                                gauge.add_metric([family, version, metric, name], value)
                gate = entry.get("gate") or {}
                if gate.get("metric"):
                    for gauge, kind in ((estimated, "estimated"), (realized, "realized")):
                        value = _number(gate.get(kind))
                        if value is not None:
                            gauge.add_metric([family, version, gate["metric"], ""], value)
                if entry.get("estimable"):
                    below.add_metric([family, version], 1.0 if gate.get("below_floor") else 0.0)
                if "n_labelled" in entry:
                    labelled.add_metric([family, version], entry["n_labelled"])
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database or the registry blinked
            log.exception("estimating performance for the metrics failed")
        yield from (estimated, realized, below, labelled)


class MonitoringMetrics:
    """The service's counters, histogram and database gauges in one :class:`CollectorRegistry`.

    ``performance``: what the performance gauges read at scrape time (the Monitor's window performance); None: no
    performance gauges.
    """

    def __init__(
        self, store: Store, window: FlagWindow | None = None, *,
        performance: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:  # fmt: skip
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "medmlops_monitoring_http_requests", "HTTP requests by route template, method and status code.",
            ["handler", "method", "status"], registry=self.registry,
        )  # fmt: skip
        self.ingested = Counter(
            "medmlops_monitoring_records_ingested", "Prediction records accepted (stored) by model version.",
            ["family", "version"], registry=self.registry,
        )  # fmt: skip
        self.processed = Counter(
            "medmlops_monitoring_records_processed",
            "Records this process's worker finished, by model version and status (done, failed).",
            ["family", "version", "status"], registry=self.registry,
        )  # fmt: skip
        self.processing_seconds = Histogram(
            "medmlops_monitoring_processing_seconds",
            "INFORMER analysis time per record (a batch's time shared by its records).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store, window or FlagWindow()))
        if performance is not None:
            self.registry.register(_PerformanceCollector(performance))

    def observe_batch(self, family: str, version: str, seconds: float, n_done: int, n_failed: int) -> None:
        n = n_done + n_failed
        for _ in range(n):
            self.processing_seconds.observe(seconds / n)
        if n_done:
            self.processed.labels(family, version, "done").inc(n_done)
        if n_failed:
            self.processed.labels(family, version, "failed").inc(n_failed)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
