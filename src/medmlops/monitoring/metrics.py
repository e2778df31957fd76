"""Prometheus metrics of the monitoring service, in a registry of its own (never the process-global one).

The names are fixed by ``k8s/base/prometheusrule.yaml``. Counters and the processing histogram are updated as
things happen; the gauges that describe the database (flag rates over the window, the latest drift report of each
family, the queue depth) are read from the store when ``/metrics`` is scraped, so they survive restarts and
include reports written by ``medmlops monitor report`` in another process.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from medmlops.errors import UserError
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


def flag_rates(flags: Iterable[Mapping[str, bool] | None]) -> dict[str, float]:
    """Per class, the fraction of records flagged among those that have that class."""
    seen: dict[str, int] = {}
    flagged: dict[str, int] = {}
    for row in flags:
        for name, value in (row or {}).items():
            seen[name] = seen.get(name, 0) + 1
            flagged[name] = flagged.get(name, 0) + bool(value)
    return {name: flagged[name] / seen[name] for name in seen}


def window_rows(store: Store, family: str, window: FlagWindow, *, now: float | None = None) -> list[dict[str, Any]]:
    if window.hours is not None:
        since = (time.time() if now is None else now) - window.hours * 3600
        return store.processed(family=family, since=since)
    return store.processed(family=family, limit=window.last)


class _StoreCollector(Collector):
    """The gauges read from the database at scrape time."""

    def __init__(self, store: Store, window: FlagWindow) -> None:
        self.store, self.window = store, window

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = GaugeMetricFamily("medmlops_monitoring_queue_depth", "Prediction records waiting for INFORMER.")
        rate = GaugeMetricFamily(
            "medmlops_informer_flag_rate",
            f"Fraction of the window's processed predictions INFORMER flagged, per class ({self.window.describe()}).",
            labels=["family", "class_name"],
        )
        share = GaugeMetricFamily(
            "medmlops_drift_share", "Share of drifted features in the latest drift report.", labels=["family"]
        )
        stamp = GaugeMetricFamily(
            "medmlops_drift_report_timestamp_seconds", "Unix time of the latest drift report.", labels=["family"]
        )
        try:
            queue.add_metric([], self.store.pending_count())
            for family in self.store.families():
                for name, value in sorted(
                    flag_rates(r["flags"] for r in window_rows(self.store, family, self.window)).items()
                ):
                    rate.add_metric([family, name], value)
            for report in self.store.latest_drifts():
                if report["drift_share"] is not None and math.isfinite(report["drift_share"]):
                    share.add_metric([report["family"]], report["drift_share"])
                stamp.add_metric([report["family"]], report["created_at"])
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database blinked
            log.exception("reading metrics from the monitoring store failed")
        yield from (queue, rate, share, stamp)


class MonitoringMetrics:
    """The service's counters, histogram and database gauges in one :class:`CollectorRegistry`."""

    def __init__(self, store: Store, window: FlagWindow | None = None) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "medmlops_monitoring_http_requests", "HTTP requests by route template, method and status code.",
            ["handler", "method", "status"], registry=self.registry,
        )  # fmt: skip
        self.ingested = Counter(
            "medmlops_monitoring_records_ingested", "Prediction records accepted (stored) by family.", ["family"],
            registry=self.registry,
        )  # fmt: skip
        self.processed = Counter(
            "medmlops_monitoring_records_processed", "Records the worker finished, by family and status (done, failed).",
            ["family", "status"], registry=self.registry,
        )  # fmt: skip
        self.processing_seconds = Histogram(
            "medmlops_monitoring_processing_seconds",
            "INFORMER analysis time per record (a batch's time shared by its records).",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store, window or FlagWindow()))

    def observe_batch(self, family: str, version: str, seconds: float, n_done: int, n_failed: int) -> None:
        n = n_done + n_failed
        for _ in range(n):
            self.processing_seconds.observe(seconds / n)
        if n_done:
            self.processed.labels(family, "done").inc(n_done)
        if n_failed:
            self.processed.labels(family, "failed").inc(n_failed)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
