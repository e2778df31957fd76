"""The monitoring service without its HTTP shell: settings, access rules, ingest, and the JSON views it answers with.

``monitoring/app.py`` maps routes onto :class:`Monitor`; everything that decides something (who may write, what a
record must hold, what a summary counts) is here, testable without a server.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmlops.errors import NotFound, UserError
from medmlops.inference.record import (
    CONTROL_CHARACTERS,
    PredictionRecord,
    RecordError,
    check_request_id,
    finite,
    iso,
    required,
    unix_seconds,
)
from medmlops.monitoring.estimate import coverage, logit_rates, ood_rate, saliency_flagged_share, saliency_rates
from medmlops.monitoring.metrics import FlagWindow, MonitoringMetrics, parse_flag_window, window_rows
from medmlops.monitoring.performance import window_performance
from medmlops.monitoring.review import parse_note
from medmlops.monitoring.store import STRATA, Store
from medmlops.monitoring.tiers import CalibrationSource, LogitScorer, load_source, triage
from medmlops.monitoring.trends import (
    AliasHistory,
    alias_source,
    choose_bucket,
    drift_history,
    performance_points,
    public_report,
)
from medmlops.monitoring.worker import (
    DEFAULT_BACKLOG_BOUND,
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    AnalyserFactory,
    Worker,
    load_factory,
)

log = logging.getLogger(__name__)
TOKEN_ENV = "MEDMLOPS_MONITORING_TOKEN"
READ_TOKEN_ENV = "MEDMLOPS_MONITORING_READ_TOKEN"
# A record carries the upload base64-encoded (4/3 of its size) plus JSON: serving's 64 MiB upload limit needs ~86 MiB.
DEFAULT_MAX_BODY_BYTES = 96 * 1024 * 1024
# Serving's decoded answers are a few levels deep; every JSON walker (ours, the database driver's) recurses.
MAX_JSON_DEPTH = 64
DEFAULT_SAMPLE_P = 0.1
# A record may come from a machine whose clock runs ahead, not from the far future (time windows would skew).
_MAX_REPORT_ID = 2**31 - 1  # drift_reports.id is a 32-bit integer on PostgreSQL


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
    calibration_source: str | None = None
    poll_s: float = 1.0
    worker_nice: int = 10
    no_worker: bool = False
    lease_s: float = DEFAULT_LEASE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backlog_bound: int | None = DEFAULT_BACKLOG_BOUND
    sample_p: float = DEFAULT_SAMPLE_P


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
    """A query time: Unix seconds or ISO 8601 (UTC when it has no offset), within the years 1-9999; UserError
    naming ``name``."""
    if text is None or text == "":
        return None
    try:
        seconds = unix_seconds(text)
        iso(seconds)  # a time with no calendar date (e.g. -1e300) cannot be shown or compared meaningfully
    except (ValueError, OverflowError, OSError) as exc:
        raise UserError(
            f"query parameter '{name}' must be Unix seconds or an ISO 8601 time in the years 1-9999, not {text[:40]!r}"
        ) from exc
    return seconds


def parse_count(text: str | None, name: str, default: int, low: int = 1, high: int = 500) -> int:
    """A query count: a whole number, at least ``low``; more than ``high`` is taken as ``high``. UserError naming
    ``name`` for anything else (``inf``, ``nan``, ``1e400``, ``2.5``)."""
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit():
        raise UserError(f"query parameter '{name}' must be a whole number from {low} to {high}, not {text[:40]!r}")
    return max(low, min(int(text[:12]), high))


def check_name(text: str | None, name: str) -> str | None:
    """A query's family or version as given; UserError naming ``name`` when it holds a control character (NUL)."""
    if text is not None and CONTROL_CHARACTERS.search(text):
        raise UserError(f"query parameter '{name}' must not hold control characters (NUL, newline, ...)")
    return text


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects, without recursion (the value itself may be hostile)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                break
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_json(body: bytes) -> Any:
    """A request body as JSON; RecordError (400, field "body") when it is not JSON or nests more than
    :data:`MAX_JSON_DEPTH` levels (Python's parser gives up at about 1000 with a RecursionError; anything deeper
    than our limit would make the record's own walkers and the database driver recurse as deep)."""
    try:
        value = json.loads(body)
    except RecursionError as exc:
        raise RecordError(
            "body", f"the body nests more than {MAX_JSON_DEPTH} levels", error="bad_json", status=400
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(
            "body", f"the body is not valid JSON ({str(exc)[:120]})", error="bad_json", status=400
        ) from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise RecordError("body", f"the body nests more than {MAX_JSON_DEPTH} levels", error="bad_json", status=400)
    return value


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


def _unknown(request_id: str) -> NotFound:
    return NotFound("unknown_request_id", f"no record {request_id} is stored")


_RESULT_FIELDS = (
    "classes", "probabilities", "labels", "distinctiveness", "flags", "flagged", "entropy", "msr", "calibrated", "method",
    "csf", "confidence", "informer_flags",
)  # fmt: skip


class Monitor:
    """The store, the worker and the metrics of one service process, plus the rules of its HTTP surface.

    Args:
        settings: what the command line asked for.
        factory: the analyser factory (default: ``settings.analyser_factory``, else the registry's).
        calibration: the logit tier's contract and calibration source (default: ``settings.calibration_source``,
            else the registry's).
        rng: the draws of the backlog sample (tests pass a seeded one).
    """

    def __init__(
        self, settings: Settings, *, factory: AnalyserFactory | None = None,
        calibration: CalibrationSource | None = None, rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        if settings.max_body_bytes < 1024:
            raise UserError(f"--max-body-bytes {settings.max_body_bytes} is too small (at least 1024)")
        if not 0.0 <= settings.sample_p <= 1.0:
            raise UserError(f"--sample-p {settings.sample_p} must be a probability from 0 to 1")
        self.settings = settings
        self.window: FlagWindow = parse_flag_window(settings.flag_window)
        if factory is None and settings.analyser_factory:
            factory = load_factory(settings.analyser_factory)
        if calibration is None and settings.calibration_source:
            calibration = load_source(settings.calibration_source)
        self.scorer = LogitScorer(calibration)
        self.aliases = AliasHistory(alias_source(calibration))  # when each version became champion (trends)
        self.rng = rng or random.Random()
        self.store = Store(settings.db_url)
        self.metrics = MonitoringMetrics(self.store, self.window, performance=self.window_performance)
        self.worker: Worker | None = None
        if not settings.no_worker:
            self.worker = Worker(
                self.store, factory=factory, batch_size=settings.batch_size, poll_s=settings.poll_s,
                lease_s=settings.lease_s, max_attempts=settings.max_attempts, backlog_bound=settings.backlog_bound,
                on_batch=self.metrics.observe_batch, nice=settings.worker_nice,
            )  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.settings.token:
            log.warning("no write token (--token / $%s): anyone on this machine can post records and labels", TOKEN_ENV)
        if self.worker is not None:
            self.worker.start()
        else:
            log.info("no in-process worker (--no-worker): `medmlops monitor worker` processes analyse the records")

    def close(self, timeout_s: float = 30.0) -> None:
        if self.worker is not None and not self.worker.stop(timeout_s):
            log.warning("the worker did not finish its batch within %.0f s; its leases will expire", timeout_s)
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
        """Check and store one posted record with its logit tier and backlog stratum (:func:`tiers.triage`):
        (its request_id, False when that id was already stored).

        Raises:
            RecordError: a field is missing or wrong (nothing stored).
        """
        record = PredictionRecord.parse(body)
        now = time.time()
        intake = triage(record, self.scorer, sample_p=self.settings.sample_p, rng=self.rng, now=now)
        stored = self.store.add_record(record, received_at=now, intake=intake)
        if stored:
            self.metrics.ingested.labels(record.family, record.version).inc()
            if self.worker is not None:
                self.worker.wake()
        return record.request_id, stored

    def post_labels(self, body: Any) -> dict[str, Any]:
        """Store delayed ground truth (and the reviewer's optional ``note``, :func:`review.parse_note`); RecordError
        if the body is wrong, NotFound if the record is unknown."""
        request_id, given = parse_labels(body)
        note = parse_note(body)
        if not self.store.add_labels(request_id, given, note=note):
            raise _unknown(request_id)
        return {"request_id": request_id, "labels": given, **({"note": note} if note else {}), "status": "stored"}

    # -- views --------------------------------------------------------------------------------------------------------

    def healthy(self) -> dict[str, Any] | None:
        if not self.store.ping():
            return None
        worker = "off" if self.worker is None else self.worker.running
        return {"status": "ok", "database": self.store.dialect, "worker": worker}

    def record_view(self, request_id: str) -> dict[str, Any]:
        """One record: its fields, which tier it has and since when (``tier``: "saliency" once INFORMER analysed
        it, "logit" while only the ingest tier has, "unscored" when neither), both tiers' results, its place in
        the queue (status, attempts, lease, stratum)."""
        check_request_id(request_id)
        row = self.store.record(request_id)
        if row is None:
            raise _unknown(request_id)
        result, logit, logit_flags = row["result"], row["logit"] or {}, row["logit_flags"]
        scored = row["logit_at"] is not None
        view: dict[str, Any] = {
            "request_id": row["request_id"], "model": row["family"], "version": row["version"],
            "correlation_id": row["correlation_id"], "status": row["status"],
            "tier": "saliency" if result is not None else "logit" if scored else "unscored",
            "created_at": iso(row["created_at"]), "received_at": iso(row["received_at"]),
            "attempts": row["attempts"], "error": row["error"], "predictions": row["predictions"],
            "ground_truth": row["labels"], "study": row["study"], "in_distribution": row["in_distribution"],
            "ood": {"score": row["ood_score"], "threshold": row["ood_threshold"]},
            "logit_tier": {
                "at": iso(row["logit_at"]), "score": logit.get("score"), "calibrated": logit.get("calibrated", False),
                "scores": logit.get("scores"), "flags": logit_flags, "error": logit.get("error"),
                "flagged": None if logit_flags is None else any(logit_flags.values()),
            },
            "saliency_tier": None if result is None else {"at": iso(row["processed_at"])},
            "queue": {
                "stratum": STRATA[row["stratum"]], "sample_p": row["sample_p"],
                "lease_owner": row["lease_owner"], "lease_expires": iso(row["lease_expires"]),
            },
        }  # fmt: skip
        if result is not None:
            view["processed_at"] = iso(row["processed_at"])
            view.update({key: result.get(key) for key in _RESULT_FIELDS})
            view["features"] = result.get("features", {})
            view["saliency_url"] = f"/v1/records/{row['request_id']}/saliency.png" if row["has_saliency"] else None
        return finite(view)

    def saliency(self, request_id: str) -> bytes:
        """The saliency PNG of a processed record; NotFound says whether the record or only its map is missing."""
        check_request_id(request_id)
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
        """Counts by status, both tiers' flag rates per class, the same per (family, version), the window's bounds.

        Saliency-tier rates (``flag_rate``, ``flagged_rate``) are the stratified estimates of
        :mod:`medmlops.monitoring.estimate`: what the share would be if every record in the window had been
        analysed, unbiased while the workers run behind. Logit-tier rates are exact counts.
        """
        rows = self.store.population(family=check_name(family, "family"), version=check_name(version, "version"),
                                     since=since, until=until)  # fmt: skip
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault((row["family"], row["version"]), []).append(row)
        versions = [
            {"family": fam, "version": ver, **_rates(members), "csf": self.deployed_csf(fam, ver)}
            for (fam, ver), members in sorted(groups.items(), key=lambda kv: (kv[0][0], _version_key(kv[0][1])))
        ]
        first = min((r["created_at"] for r in rows), default=None)
        last = max((r["created_at"] for r in rows), default=None)
        return finite({
            "family": family, "version": version,
            "window": {"since": iso(since), "until": iso(until), "first": iso(first), "last": iso(last)},
            **_rates(rows), "versions": versions,
            "flag_window": {"description": self.window.describe(), "flag_rate": self.window_flag_rates(family)},
        })  # fmt: skip

    def window_flag_rates(self, family: str | None) -> dict[str, dict[str, float]] | dict[str, float]:
        """Estimated saliency-tier flag rates over the metrics window (``medmlops_informer_flag_rate`` exports them
        per version)."""
        if family is not None:
            return saliency_rates(window_rows(self.store, family, self.window))
        return {f: saliency_rates(window_rows(self.store, f, self.window)) for f in self.store.families()}

    def timeseries(
        self, *, family: str | None = None, version: str | None = None, bucket_s: float | None = 3600.0,
        since: float | None = None, until: float | None = None, limit: int = 20000,
    ) -> dict[str, Any]:  # fmt: skip
        """Records in buckets of ``bucket_s`` seconds of created_at (None: chosen from the records' time span,
        :func:`~medmlops.monitoring.trends.choose_bucket`): records, analysed, both tiers' flag rates per class
        (saliency: the stratified estimate per bucket), the out-of-distribution rate; ``performance``, the gate
        metric estimated (CBPE) and realized per bucket and version; ``aliases``, when each version became
        champion (a family's only)."""
        auto = bucket_s is None
        if auto:
            bucket_s = 1.0
        if not math.isfinite(bucket_s) or bucket_s <= 0:
            raise UserError(f"query parameter 'bucket_s' must be a positive number of seconds, not {bucket_s}")
        rows = self.store.population(family=check_name(family, "family"), version=check_name(version, "version"),
                                     since=since, until=until, limit=limit)  # fmt: skip
        if auto:
            bucket_s = choose_bucket(row["created_at"] for row in rows)
        buckets: dict[float, list[dict[str, Any]]] = {}
        for row in rows:
            buckets.setdefault(math.floor(row["created_at"] / bucket_s) * bucket_s, []).append(row)
        classes = sorted({name for row in rows for name in {**(row["flags"] or {}), **(row["logit_flags"] or {})}})
        points = []
        for start, members in sorted(buckets.items()):
            rates = _rates(members)
            points.append({
                "t": start, "time": iso(start), "records": len(members), "n": rates["counts"]["done"],
                "flagged": rates["counts"]["flagged"], "flagged_rate": rates["flagged_rate"],
                "flag_rate": rates["flag_rate"], "logit_flag_rate": rates["logit"]["flag_rate"],
                "ood_rate": rates["ood"]["rate"],
            })  # fmt: skip
        perf_rows = self.store.performance_rows(family=family, version=version, since=since, until=until, limit=limit)
        return finite({
            "family": family, "version": version, "bucket_s": bucket_s, "classes": classes, "points": points,
            "auto": auto, "performance": performance_points(perf_rows, bucket_s, self._contract),
            "aliases": self.aliases.get(family),
        })  # fmt: skip

    def flagged_cases(self, *, family: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The newest records INFORMER flagged, newest first, with their flagged classes and distinctiveness."""
        if not 1 <= limit <= 500:
            raise UserError(f"query parameter 'limit' must be a whole number from 1 to 500, not {limit}")
        rows = self.store.processed(family=check_name(family, "family"), limit=limit, flagged_only=True, full=True)
        cases = []
        for row in reversed(rows):
            result = row["result"] or {}
            cases.append({
                "request_id": row["request_id"], "model": row["family"], "version": row["version"],
                "created_at": iso(row["created_at"]),
                "flagged_classes": [name for name, flag in (row["flags"] or {}).items() if flag],
                "distinctiveness": result.get("distinctiveness", {}), "probabilities": result.get("probabilities", {}),
                "labels": result.get("labels", {}), "saliency_url": f"/v1/records/{row['request_id']}/saliency.png",
                "study": row["study"], "in_distribution": row["in_distribution"],
            })  # fmt: skip
        return finite(cases)

    def deployed_csf(self, family: str, version: str) -> dict[str, Any] | None:
        """Which confidence scoring function flags this version's records (the calibration's choice), its
        validation AUGRC × 1000 beside MSR's, why it was chosen and its operating point; None when the version's
        contract is not available or its calibration predates the CSFs."""
        try:
            _, informer = self._contract(family, version)
        except LookupError:
            return None
        section = (informer or {}).get("csf")
        if not section:
            return None
        augrc = section.get("augrc") or {}
        return {
            "selected": section["selected"], "reason": section.get("reason"),
            "validation_augrc": augrc.get(section["selected"]), "msr_validation_augrc": augrc.get("msr"),
            "operating_point": section.get("operating_point"),
            "logit_tier": ((informer or {}).get("logit_tier") or {}).get("score"),
        }  # fmt: skip

    def _contract(self, family: str, version: str) -> tuple[Any, Any]:
        """The version's (contract, informer section) from the logit tier's cache: one registry call per version."""
        return self.scorer.version(family, version)

    def performance(
        self, *, family: str | None = None, version: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Estimated (CBPE) and realized performance per (family, version) over a window (:mod:`.performance`):
        the records created in ``since``/``until`` (the newest ``limit`` of them when given), or, with neither
        bound nor limit, the metrics window of each family (``--flag-window``)."""
        family, version = check_name(family, "family"), check_name(version, "version")
        if since is None and until is None and limit is None:
            versions = [v for v in self.window_performance(family) if version is None or v["version"] == str(version)]
            window = {"description": self.window.describe()}
        else:
            rows = self.store.performance_rows(family=family, version=version, since=since, until=until, limit=limit)
            versions = window_performance(rows, self._contract)
            window = {"since": iso(since), "until": iso(until), "limit": limit}
        return finite({"family": family, "version": version, "window": window, "versions": versions})

    def window_performance(self, family: str | None = None) -> list[dict[str, Any]]:
        """:func:`~medmlops.monitoring.performance.window_performance` over the metrics window of ``family`` (or of
        every family): what ``/metrics`` exports."""
        out = []
        for name in [family] if family is not None else self.store.families():
            if self.window.hours is not None:
                rows = self.store.performance_rows(family=name, since=time.time() - self.window.hours * 3600)
            else:
                rows = self.store.performance_rows(family=name, limit=self.window.last)
            out.extend(window_performance(rows, self._contract))
        return out

    def drift(self, family: str | None = None) -> list[dict[str, Any]]:
        """The latest drift report of ``family`` (or of every family)."""
        if family is not None:
            report = self.store.latest_drift(check_name(family, "family"))
            reports = [report] if report else []
        else:
            reports = self.store.latest_drifts()
        return finite([public_report(r) for r in reports])  # no server paths: html_url instead

    def drift_history(
        self, *, family: str | None = None, version: str | None = None, since: float | None = None,
        until: float | None = None, limit: int = 500,
    ) -> dict[str, Any]:  # fmt: skip
        """A family's drift reports over time, oldest first (:func:`~medmlops.monitoring.trends.drift_history`),
        with its alias history."""
        if family is None:
            raise UserError("query parameter 'family' is required: drift reports are per family")
        family, version = check_name(family, "family"), check_name(version, "version")
        rows = self.store.drift_reports_of(family, since=since, until=until, limit=limit)
        return finite({
            "family": family, "version": version, "reports": drift_history(rows, version=version),
            "aliases": self.aliases.get(family),
        })  # fmt: skip

    def drift_html(self, report_id: int) -> Path:
        """The HTML file of a drift report, when it is one and is here; NotFound otherwise."""
        if not 1 <= report_id <= _MAX_REPORT_ID:  # the database would refuse the number itself
            raise NotFound("no_report", f"drift report {report_id} does not exist (ids run from 1 to {_MAX_REPORT_ID})")
        report = self.store.drift_report(report_id)
        path = Path(report["html_path"]) if report and report["html_path"] else None
        if path is None or path.suffix.lower() not in (".html", ".htm") or not path.is_file():
            raise NotFound("no_report", f"drift report {report_id} has no HTML file here")
        return path

    def drift_asset(self, report_id: int, name: str) -> Path:
        """A file a drift report's HTML loads from ``evidently-js/`` beside it (Evidently's JS bundle and icon font,
        :func:`medmlops.monitoring.drift.write_html`); only those names, only from that report's folder."""
        from medmlops.monitoring.drift import LIB_DIR, lib_files  # Evidently's paths: imported on the request only

        if name not in lib_files():
            raise NotFound("no_asset", f"drift reports load no file named {name[:80]!r}")
        path = self.drift_html(report_id).parent / LIB_DIR / name
        if not path.is_file():
            raise NotFound("no_asset", f"drift report {report_id} has no {name} beside it")
        return path

    def families(self) -> list[dict[str, Any]]:
        counts: dict[str, dict[str, int]] = {}
        for c in self.store.status_counts():
            target = counts.setdefault(c["family"], {"total": 0})
            target[c["status"]] = target.get(c["status"], 0) + c["n"]
            target["total"] += c["n"]
        return [{"family": f, "counts": counts.get(f, {"total": 0})} for f in self.store.families()]


def _rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, both tiers' rates and the estimate's coverage of a window's rows (:meth:`Store.population`)."""
    counts = {"total": len(rows), "pending": 0, "done": 0, "failed": 0}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    counts["flagged"] = sum(bool(r["flagged"]) for r in rows)
    logit_scored = [r for r in rows if r["logit_at"] is not None]
    return {
        "counts": counts,
        "flagged_rate": saliency_flagged_share(rows),
        "flag_rate": saliency_rates(rows),
        "logit": {
            "scored": len(logit_scored),
            "flagged": sum(any((r["logit_flags"] or {}).values()) for r in logit_scored),
            "flag_rate": logit_rates(logit_scored),
        },  # fmt: skip
        "estimate": coverage(rows),
        "ood": ood_rate(rows),  # serving's out-of-distribution verdicts: exact counts
    }


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)
