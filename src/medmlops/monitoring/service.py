"""The monitoring service without its HTTP shell: settings, access rules, ingest, and the JSON views it answers with.

``monitoring/app.py`` maps routes onto :class:`Monitor`; everything that decides something (who may write, what a
record must hold, what a summary counts) is here, testable without a server.
"""

from __future__ import annotations

import hmac
import importlib
import ipaddress
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmlops.errors import UserError
from medmlops.inference.record import (
    PredictionRecord,
    RecordError,
    check_request_id,
    finite,
    iso,
    required,
    unix_seconds,
)
from medmlops.monitoring.metrics import FlagWindow, MonitoringMetrics, flag_rates, parse_flag_window, window_rows
from medmlops.monitoring.store import Store
from medmlops.monitoring.worker import AnalyserFactory, Worker

log = logging.getLogger(__name__)
TOKEN_ENV = "MEDMLOPS_MONITORING_TOKEN"
READ_TOKEN_ENV = "MEDMLOPS_MONITORING_READ_TOKEN"
# A record carries the upload base64-encoded (4/3 of its size) plus JSON: serving's 64 MiB upload limit needs ~86 MiB.
DEFAULT_MAX_BODY_BYTES = 96 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """What ``medmlops monitor serve`` was asked for (tokens already resolved from flags or the environment)."""

    db_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    read_token: str | None = None
    batch_size: int = 8
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    flag_window: str = "500"
    analyser_factory: str | None = None
    poll_s: float = 1.0
    worker_nice: int = 10


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine while anyone could write records."""
    if not token and not is_loopback(host):
        raise UserError(
            f"refusing to listen on {host} without a write token: set --token or ${TOKEN_ENV} (or bind to 127.0.0.1)"
        )


def load_factory(spec: str) -> AnalyserFactory:
    """``"package.module:attribute.path"`` → that callable ``(family, version) -> analyser``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UserError(f"--analyser-factory '{spec}' must look like package.module:callable")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"--analyser-factory '{spec}' cannot be imported ({exc})") from exc
    if not callable(target):
        raise UserError(f"--analyser-factory '{spec}' is not callable")
    return target


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _same(given: str | None, expected: str | None) -> bool:
    return bool(given and expected) and hmac.compare_digest(given.encode(), expected.encode())  # type: ignore[union-attr]


def parse_time(text: str | None, name: str) -> float | None:
    """A query time: Unix seconds or ISO 8601 (UTC when it has no offset); UserError naming ``name``."""
    if text is None or text == "":
        return None
    try:
        return unix_seconds(text)
    except ValueError as exc:
        raise UserError(
            f"query parameter '{name}' must be Unix seconds or an ISO 8601 time, not {text[:40]!r}"
        ) from exc


def parse_labels(obj: Any) -> tuple[str, dict[str, int]]:
    """``{"request_id": ..., "labels": {class: 0|1}}`` → (request_id, labels); RecordError names the field."""
    if not isinstance(obj, Mapping):
        raise RecordError("body", f"the body must be a JSON object, not {type(obj).__name__}", error="bad_type")
    request_id = check_request_id(required(obj, "request_id", str))
    given = required(obj, "labels", dict)
    if not given:
        raise RecordError("labels", "field 'labels' must name at least one class", error="missing_field")
    for name, value in given.items():
        if isinstance(value, str) or value not in (0, 1):
            raise RecordError(
                f"labels.{name}", f"label 'labels.{name}' must be 0 or 1, not {value!r}", error="bad_label"
            )
    return request_id, {str(name): int(value) for name, value in given.items()}


class NotFound(UserError, LookupError):
    """What a request names is not stored (404); ``error`` is a stable code, ``detail`` one sentence."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error, self.detail = error, detail


def _unknown(request_id: str) -> NotFound:
    return NotFound("unknown_request_id", f"no record {request_id} is stored")


_RESULT_FIELDS = (
    "classes", "probabilities", "labels", "distinctiveness", "flags", "flagged", "entropy", "msr", "calibrated", "method",
)  # fmt: skip


class Monitor:
    """The store, the worker and the metrics of one service process, plus the rules of its HTTP surface."""

    def __init__(self, settings: Settings, *, factory: AnalyserFactory | None = None) -> None:
        if settings.max_body_bytes < 1024:
            raise UserError(f"--max-body-bytes {settings.max_body_bytes} is too small (at least 1024)")
        if settings.batch_size < 1:
            raise UserError(f"--batch-size {settings.batch_size} must be at least 1")
        self.settings = settings
        self.window: FlagWindow = parse_flag_window(settings.flag_window)
        if factory is None and settings.analyser_factory:
            factory = load_factory(settings.analyser_factory)
        self.store = Store(settings.db_url)
        self.metrics = MonitoringMetrics(self.store, self.window)
        self.worker = Worker(
            self.store, factory=factory, batch_size=settings.batch_size, poll_s=settings.poll_s,
            on_batch=self.metrics.observe_batch, nice=settings.worker_nice,
        )  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.settings.token:
            log.warning("no write token (--token / $%s): anyone on this machine can post records and labels", TOKEN_ENV)
        self.worker.start()

    def close(self, timeout_s: float = 30.0) -> None:
        if not self.worker.stop(timeout_s):
            log.warning("the worker did not finish its batch within %.0f s; its records stay pending", timeout_s)
        self.store.close()

    # -- access -------------------------------------------------------------------------------------------------------

    def allowed(self, scope: str, authorization: str | None) -> bool:
        """``scope`` "write" needs the write token (when one is set); "read" needs either token when a read token is
        set; "open" needs nothing."""
        token = bearer(authorization)
        if scope == "write":
            return not self.settings.token or _same(token, self.settings.token)
        if scope == "read" and self.settings.read_token:
            return _same(token, self.settings.read_token) or _same(token, self.settings.token)
        return True

    # -- writes -------------------------------------------------------------------------------------------------------

    def ingest(self, body: Any) -> tuple[str, bool]:
        """Check and store one posted record: (its request_id, False when that id was already stored).

        Raises:
            RecordError: a field is missing or wrong (nothing stored).
        """
        record = PredictionRecord.parse(body)
        stored = self.store.add_record(record)
        if stored:
            self.metrics.ingested.labels(record.family).inc()
            self.worker.wake()
        return record.request_id, stored

    def post_labels(self, body: Any) -> dict[str, Any]:
        """Store delayed ground truth; RecordError if the body is wrong, NotFound if the record is unknown."""
        request_id, given = parse_labels(body)
        if not self.store.add_labels(request_id, given):
            raise _unknown(request_id)
        return {"request_id": request_id, "labels": given, "status": "stored"}

    # -- views --------------------------------------------------------------------------------------------------------

    def healthy(self) -> dict[str, Any] | None:
        if not self.store.ping():
            return None
        return {"status": "ok", "database": self.store.dialect, "worker": self.worker.running}

    def record_view(self, request_id: str) -> dict[str, Any]:
        row = self.store.record(request_id)
        if row is None:
            raise _unknown(request_id)
        view: dict[str, Any] = {
            "request_id": row["request_id"], "model": row["family"], "version": row["version"],
            "status": row["status"], "created_at": iso(row["created_at"]), "received_at": iso(row["received_at"]),
            "attempts": row["attempts"], "error": row["error"], "predictions": row["predictions"],
            "ground_truth": row["labels"],
        }  # fmt: skip
        result = row["result"]
        if result is not None:
            view["processed_at"] = iso(row["processed_at"])
            view.update({key: result.get(key) for key in _RESULT_FIELDS})
            view["features"] = result.get("features", {})
            view["saliency_url"] = f"/v1/records/{row['request_id']}/saliency.png" if row["has_saliency"] else None
        return finite(view)

    def saliency(self, request_id: str) -> bytes:
        """The saliency PNG of a processed record; NotFound says whether the record or only its map is missing."""
        png = self.store.saliency_png(request_id)
        if png is not None:
            return png
        if not self.store.has_record(request_id):
            raise _unknown(request_id)
        raise NotFound("no_saliency", f"record {request_id} has no saliency map (not processed yet, or failed)")

    def summary(
        self, *, family: str | None = None, version: str | None = None, since: float | None = None,
        until: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Counts by status, flag rates per class, the same per (family, version), and the window's bounds."""
        counts = self.store.status_counts(family=family, version=version, since=since, until=until)
        rows = self.store.processed(family=family, version=version, since=since, until=until)
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for c in counts:
            group = groups.setdefault((c["family"], c["version"]), _empty_counts())
            group["counts"][c["status"]] = group["counts"].get(c["status"], 0) + c["n"]
            group["counts"]["total"] += c["n"]
        by_group: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            by_group.setdefault((row["family"], row["version"]), []).append(row)
        versions = []
        for (fam, ver), group in sorted(groups.items(), key=lambda kv: (kv[0][0], _version_key(kv[0][1]))):
            members = by_group.get((fam, ver), [])
            group["counts"]["flagged"] = sum(bool(r["flagged"]) for r in members)
            versions.append(
                {"family": fam, "version": ver, **group, "flag_rate": flag_rates(r["flags"] for r in members)}
            )
        totals = _empty_counts()["counts"]
        for group in groups.values():
            for key, value in group["counts"].items():
                totals[key] = totals.get(key, 0) + value
        first = min((c["first"] for c in counts), default=None)
        last = max((c["last"] for c in counts), default=None)
        return finite({
            "family": family, "version": version,
            "window": {"since": iso(since), "until": iso(until), "first": iso(first), "last": iso(last)},
            "counts": totals,
            "flagged_rate": totals["flagged"] / totals["done"] if totals["done"] else None,
            "flag_rate": flag_rates(r["flags"] for r in rows),
            "versions": versions,
            "flag_window": {"description": self.window.describe(), "flag_rate": self.window_flag_rates(family)},
        })  # fmt: skip

    def window_flag_rates(self, family: str | None) -> dict[str, dict[str, float]] | dict[str, float]:
        """Flag rates over the metrics window (what ``medmlops_informer_flag_rate`` exports)."""
        if family is not None:
            return flag_rates(r["flags"] for r in window_rows(self.store, family, self.window))
        return {
            f: flag_rates(r["flags"] for r in window_rows(self.store, f, self.window)) for f in self.store.families()
        }

    def timeseries(
        self, *, family: str | None = None, version: str | None = None, bucket_s: float = 3600.0,
        since: float | None = None, until: float | None = None, limit: int = 20000,
    ) -> dict[str, Any]:  # fmt: skip
        """Processed records in buckets of ``bucket_s`` seconds of created_at: n, flagged, flag rate per class."""
        if not math.isfinite(bucket_s) or bucket_s <= 0:
            raise UserError(f"query parameter 'bucket_s' must be a positive number of seconds, not {bucket_s}")
        rows = self.store.processed(family=family, version=version, since=since, until=until, limit=limit)
        buckets: dict[float, list[dict[str, Any]]] = {}
        for row in rows:
            buckets.setdefault(math.floor(row["created_at"] / bucket_s) * bucket_s, []).append(row)
        classes = sorted({name for row in rows for name in (row["flags"] or {})})
        points = [
            {"t": start, "time": iso(start), "n": len(members), "flagged": sum(bool(r["flagged"]) for r in members),
             "flag_rate": flag_rates(r["flags"] for r in members)}
            for start, members in sorted(buckets.items())
        ]  # fmt: skip
        return finite(
            {"family": family, "version": version, "bucket_s": bucket_s, "classes": classes, "points": points}
        )

    def flagged_cases(self, *, family: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest flagged records, newest first, with their flagged classes and distinctiveness."""
        rows = self.store.processed(family=family, limit=max(1, min(limit, 500)), flagged_only=True, full=True)
        cases = []
        for row in reversed(rows):
            result = row["result"] or {}
            cases.append({
                "request_id": row["request_id"], "model": row["family"], "version": row["version"],
                "created_at": iso(row["created_at"]),
                "flagged_classes": [name for name, flag in (row["flags"] or {}).items() if flag],
                "distinctiveness": result.get("distinctiveness", {}), "probabilities": result.get("probabilities", {}),
                "labels": result.get("labels", {}), "saliency_url": f"/v1/records/{row['request_id']}/saliency.png",
            })  # fmt: skip
        return finite(cases)

    def drift(self, family: str | None = None) -> list[dict[str, Any]]:
        """The latest drift report of ``family`` (or of every family)."""
        if family is not None:
            report = self.store.latest_drift(family)
            reports = [report] if report else []
        else:
            reports = self.store.latest_drifts()
        return finite([{**r, "created_at_iso": iso(r["created_at"])} for r in reports])

    def drift_html(self, report_id: int) -> Path:
        """The HTML file of a drift report, when it is one and is here; NotFound otherwise."""
        report = self.store.drift_report(report_id)
        path = Path(report["html_path"]) if report and report["html_path"] else None
        if path is None or path.suffix.lower() not in (".html", ".htm") or not path.is_file():
            raise NotFound("no_report", f"drift report {report_id} has no HTML file here")
        return path

    def families(self) -> list[dict[str, Any]]:
        counts: dict[str, dict[str, int]] = {}
        for c in self.store.status_counts():
            target = counts.setdefault(c["family"], {"total": 0})
            target[c["status"]] = target.get(c["status"], 0) + c["n"]
            target["total"] += c["n"]
        return [{"family": f, "counts": counts.get(f, {"total": 0})} for f in self.store.families()]


def _empty_counts() -> dict[str, Any]:
    return {"counts": {"total": 0, "pending": 0, "done": 0, "failed": 0, "flagged": 0}}


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
