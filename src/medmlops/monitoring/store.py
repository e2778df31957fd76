"""The monitoring service's durable store: prediction records, their INFORMER results, delayed labels, drift reports.

One SQLAlchemy URL decides where it lives: SQLite (WAL journal, ``synchronous=FULL``: a record acknowledged is on
disk) on one machine, PostgreSQL in the cluster. Queries use SQLAlchemy Core only, no dialect-specific SQL.

Times are stored as Unix seconds (double precision), which every backend compares and orders the same way; the
frames handed to pandas turn them into UTC timestamps.

Exactly-once processing rests on two statements in one transaction: ``UPDATE records SET status='done' WHERE
request_id=? AND status='pending'`` (a record already done is never taken again) and the ``INSERT`` of its result
(``results.request_id`` is the primary key, so a second result cannot exist). A process killed before the commit
leaves the record pending, and the next worker processes it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
import re
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError

from medmlops.errors import UserError

DEFAULT_DB_URL = "sqlite:///.medmlops/monitoring.db"
DB_URL_ENV = "MEDMLOPS_MONITORING_DB_URL"
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
STATUSES = ("pending", "done", "failed")
_JSON_NAMES = {str: "a string", int: "a number", float: "a number", dict: "an object", list: "an array",
               bool: "a boolean", type(None): "null"}  # fmt: skip

metadata = sa.MetaData()

records = sa.Table(
    "records",
    metadata,
    sa.Column("request_id", sa.String(128), primary_key=True),
    sa.Column("family", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("received_at", sa.Double, nullable=False),
    sa.Column("upload", sa.LargeBinary, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("logits", sa.JSON, nullable=True),
    sa.Column("predictions", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("ix_records_status_received", "status", "received_at"),
    sa.Index("ix_records_family_created", "family", "created_at"),
)

results = sa.Table(
    "results",
    metadata,
    sa.Column("request_id", sa.String(128), sa.ForeignKey("records.request_id"), primary_key=True),
    sa.Column("processed_at", sa.Double, nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("flagged", sa.Boolean, nullable=False),
    sa.Column("flags", sa.JSON, nullable=False),  # {class: bool}, apart from `result` so flag rates read little
    sa.Column("features", sa.JSON, nullable=False),
    sa.Column("saliency_png", sa.LargeBinary, nullable=True),
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("request_id", sa.String(128), sa.ForeignKey("records.request_id"), primary_key=True),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("received_at", sa.Double, nullable=False),
)

drift_reports = sa.Table(
    "drift_reports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("family", sa.String(128), nullable=False, index=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("drift_share", sa.Double, nullable=True),
    sa.Column("detected", sa.Boolean, nullable=False),
    sa.Column("n_current", sa.Integer, nullable=True),
    sa.Column("n_reference", sa.Integer, nullable=True),
    sa.Column("html_path", sa.Text, nullable=True),
    sa.Column("json_path", sa.Text, nullable=True),
    sa.Column("summary", sa.JSON, nullable=False),
)


class RecordError(UserError, ValueError):
    """A record or label post the store refuses; ``field`` names the culprit, ``error`` is a stable code."""

    def __init__(self, field: str, detail: str, *, error: str = "invalid_field", status: int = 422) -> None:
        super().__init__(detail)
        self.field, self.detail, self.error, self.status = field, detail, error, status


@dataclass(frozen=True)
class ParsedRecord:
    request_id: str
    family: str
    version: str
    created_at: float
    upload: bytes
    sha256: str
    predictions: dict[str, Any]
    logits: list[float] | None


@dataclass(frozen=True)
class PendingRecord:
    """A record waiting for its INFORMER result (what the worker needs, nothing more)."""

    request_id: str
    family: str
    version: str
    upload: bytes
    attempts: int


def resolve_db_url(url: str | None = None) -> str:
    """``url``, else ``$MEDMLOPS_MONITORING_DB_URL``, else SQLite under ``.medmlops/`` in the working directory."""
    import os

    return url or os.environ.get(DB_URL_ENV) or DEFAULT_DB_URL


# ----------------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------------


def _need(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    name = f"{where}{key}"
    if key not in obj or obj[key] is None:
        raise RecordError(name, f"the record has no '{name}' field", error="missing_field")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:  # JSON true is no number
        wanted = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        got = _JSON_NAMES.get(type(value), type(value).__name__)
        raise RecordError(name, f"field '{name}' must be {wanted}, not {got}", error="bad_type")
    return value


def _timestamp(value: Any, field: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise RecordError(
                field, f"field '{field}' is not an ISO 8601 time ({value[:40]!r})", error="bad_time"
            ) from exc
        if moment.tzinfo is None:  # a time without offset is taken as UTC, as serving writes it
            moment = moment.replace(tzinfo=dt.UTC)
        seconds = moment.timestamp()
    if not math.isfinite(seconds):
        raise RecordError(field, f"field '{field}' is not a finite time", error="bad_time")
    return seconds


def parse_record(obj: Any) -> ParsedRecord:
    """Check a prediction record as serving sends it; RecordError names the first field at fault."""
    if not isinstance(obj, Mapping):
        raise RecordError("record", f"the record must be a JSON object, not {type(obj).__name__}", error="bad_type")
    request_id = _need(obj, "request_id", str)
    if not REQUEST_ID.match(request_id):
        raise RecordError(
            "request_id", "field 'request_id' must be 1-128 letters, digits, '.', '_' or '-'", error="bad_request_id"
        )
    family = _need(obj, "model", str).strip()
    if not family or len(family) > 128:
        raise RecordError("model", "field 'model' must name the registered model in 1-128 characters")
    version = _need(obj, "version", (str, int))
    version = str(version).strip()
    if not version or len(version) > 64:
        raise RecordError("version", "field 'version' must be the model version in 1-64 characters")
    created_at = _timestamp(_need(obj, "created_at", (str, int, float)), "created_at")
    predictions = _need(obj, "predictions", dict)
    logits = _need(obj, "logits", list)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in logits):
        raise RecordError("logits", "field 'logits' must be a list of finite numbers", error="bad_type")
    payload = _need(obj, "input", dict)
    sha256 = _need(payload, "sha256", str, "input.")
    if not _SHA256.match(sha256):
        raise RecordError("input.sha256", "field 'input.sha256' must be 64 hexadecimal digits", error="bad_sha256")
    encoded = _need(payload, "bytes_b64", str, "input.")
    try:
        upload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError("input.bytes_b64", "field 'input.bytes_b64' is not valid base64", error="bad_base64") from exc
    if not upload:
        raise RecordError("input.bytes_b64", "field 'input.bytes_b64' holds an empty upload", error="empty_upload")
    if hashlib.sha256(upload).hexdigest() != sha256.lower():
        raise RecordError(
            "input.sha256", "field 'input.sha256' does not match the decoded upload", error="sha256_mismatch"
        )
    return ParsedRecord(
        request_id, family, version, created_at, upload, sha256.lower(), dict(predictions), [float(v) for v in logits]
    )


def parse_labels(obj: Any) -> tuple[str, dict[str, int]]:
    """``{"request_id": ..., "labels": {class: 0|1}}`` → (request_id, labels); RecordError names the field."""
    if not isinstance(obj, Mapping):
        raise RecordError("body", f"the body must be a JSON object, not {type(obj).__name__}", error="bad_type")
    request_id = _need(obj, "request_id", str)
    if not REQUEST_ID.match(request_id):
        raise RecordError(
            "request_id", "field 'request_id' must be 1-128 letters, digits, '.', '_' or '-'", error="bad_request_id"
        )
    given = _need(obj, "labels", dict)
    if not given:
        raise RecordError("labels", "field 'labels' must name at least one class", error="missing_field")
    clean: dict[str, int] = {}
    for name, value in given.items():
        if isinstance(value, str) or value not in (0, 1):
            raise RecordError(
                f"labels.{name}", f"label 'labels.{name}' must be 0 or 1, not {value!r}", error="bad_label"
            )
        clean[str(name)] = int(value)
    return request_id, clean


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (numpy scalars and arrays from the analyser or a report included)."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "tolist"):
            return obj.tolist()
        if hasattr(obj, "item"):
            return obj.item()
        if isinstance(obj, Path):
            return str(obj)
        if isinstance(obj, set | tuple):
            return list(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return finite(json.loads(json.dumps(value, default=default)))


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (PostgreSQL's JSON and strict JSON refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------------------------------
# Store
# ----------------------------------------------------------------------------------------------------------------------


def _engine(url: str) -> Engine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            kwargs["poolclass"] = sa.pool.StaticPool
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # The HTTP threads and the worker share connections; the busy timeout makes a writer wait for another.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    engine = sa.create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API connection
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
            cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged record survives a power cut
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    return engine


def _utc(seconds: Any) -> pd.Series:
    return pd.to_datetime(pd.Series(seconds, dtype="float64"), unit="s", utc=True)


class Store:
    """Records, results, labels and drift reports behind one SQLAlchemy URL (tables created when missing)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        metadata.create_all(self.engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        """True when the database answers a query."""
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.select(1)).scalar_one()
            return True
        except sa.exc.SQLAlchemyError:
            return False

    # -- ingest -------------------------------------------------------------------------------------------------------

    def add_record(self, record: Mapping[str, Any] | ParsedRecord, *, received_at: float | None = None) -> bool:
        """Store a prediction record as pending; True when stored, False when its request_id is already here.

        Raises:
            RecordError: a field is missing or wrong (nothing stored).
        """
        parsed = record if isinstance(record, ParsedRecord) else parse_record(record)
        row = {
            "request_id": parsed.request_id, "family": parsed.family, "version": parsed.version,
            "created_at": parsed.created_at, "received_at": time.time() if received_at is None else received_at,
            "upload": parsed.upload, "sha256": parsed.sha256, "logits": parsed.logits,
            "predictions": _jsonable(parsed.predictions), "status": "pending", "attempts": 0,
        }  # fmt: skip
        try:
            with self.engine.begin() as connection:
                connection.execute(records.insert().values(**row))
        except IntegrityError:
            if self.has_record(parsed.request_id):
                return False
            raise
        return True

    def has_record(self, request_id: str) -> bool:
        with self.engine.connect() as connection:
            query = sa.select(records.c.request_id).where(records.c.request_id == request_id)
            return connection.execute(query).first() is not None

    def add_labels(self, request_id: str, given: Mapping[str, int]) -> bool:
        """Store (or replace) the ground truth of a record; False when the record is unknown."""
        now = time.time()
        clean = {str(k): int(v) for k, v in given.items()}
        for _attempt in range(2):
            try:
                with self.engine.begin() as connection:
                    update = labels.update().where(labels.c.request_id == request_id)
                    if connection.execute(update.values(labels=clean, received_at=now)).rowcount:
                        return True
                    exists = sa.select(records.c.request_id).where(records.c.request_id == request_id)
                    if connection.execute(exists).first() is None:
                        return False
                    connection.execute(labels.insert().values(request_id=request_id, labels=clean, received_at=now))
                    return True
            except IntegrityError:  # a concurrent post inserted first: the update path takes it
                continue
        raise RuntimeError(f"labels of {request_id} could not be stored")

    # -- processing ---------------------------------------------------------------------------------------------------

    def next_batch(self, limit: int, *, skip: Collection[tuple[str, str]] = ()) -> list[PendingRecord]:
        """Up to ``limit`` pending records of one (family, version), oldest first, leaving out the pairs in ``skip``."""
        condition = records.c.status == "pending"
        for family, version in skip:
            condition = condition & sa.not_((records.c.family == family) & (records.c.version == version))
        order = (records.c.received_at, records.c.request_id)
        with self.engine.connect() as connection:
            first = connection.execute(
                sa.select(records.c.family, records.c.version).where(condition).order_by(*order).limit(1)
            ).first()
            if first is None:
                return []
            query = (
                sa.select(
                    records.c.request_id, records.c.family, records.c.version, records.c.upload, records.c.attempts
                )  # fmt: skip
                .where(condition & (records.c.family == first.family) & (records.c.version == first.version))
                .order_by(*order)
                .limit(limit)
            )
            return [PendingRecord(*row) for row in connection.execute(query)]

    def finish(
        self, done: Mapping[str, Mapping[str, Any]] | None = None, failed: Mapping[str, str] | None = None
    ) -> int:
        """Write results (``done``: request_id → analyser result) and failures in ONE transaction.

        A record that is no longer pending (another worker finished it) is left as it is. Returns the number of
        records this call moved out of pending.
        """
        now = time.time()
        changed = 0
        with self.engine.begin() as connection:
            for request_id, result in (done or {}).items():
                moved = connection.execute(
                    records.update()
                    .where((records.c.request_id == request_id) & (records.c.status == "pending"))
                    .values(status="done", error=None, attempts=records.c.attempts + 1)
                ).rowcount
                if not moved:
                    continue
                body = {k: v for k, v in result.items() if k != "saliency_png"}
                body = _jsonable(body)
                flags = {str(k): bool(v) for k, v in (body.get("flags") or {}).items()}
                features = finite({str(k): _float(v) for k, v in (body.get("features") or {}).items()})
                connection.execute(
                    results.insert().values(
                        request_id=request_id, processed_at=now, result=body,
                        flagged=bool(body.get("flagged", any(flags.values()))), flags=flags, features=features,
                        saliency_png=result.get("saliency_png") or None,
                    )
                )  # fmt: skip
                changed += 1
            for request_id, error in (failed or {}).items():
                changed += connection.execute(
                    records.update()
                    .where((records.c.request_id == request_id) & (records.c.status == "pending"))
                    .values(status="failed", error=error[:2000], attempts=records.c.attempts + 1)
                ).rowcount
        return changed

    def note_retry(self, request_ids: Iterable[str], error: str) -> None:
        """Count a failed attempt on pending records (they stay pending) and keep the error for the status API."""
        ids = list(request_ids)
        if not ids:
            return
        with self.engine.begin() as connection:
            connection.execute(
                records.update()
                .where(records.c.request_id.in_(ids) & (records.c.status == "pending"))
                .values(attempts=records.c.attempts + 1, error=error[:2000])
            )

    def pending_count(self) -> int:
        with self.engine.connect() as connection:
            query = sa.select(sa.func.count()).select_from(records).where(records.c.status == "pending")
            return int(connection.execute(query).scalar_one())

    # -- reads --------------------------------------------------------------------------------------------------------

    def record(self, request_id: str) -> dict[str, Any] | None:
        """Everything known about one record (the upload bytes and saliency PNG excepted), or None."""
        query = (
            sa.select(
                records.c.request_id,
                records.c.family,
                records.c.version,
                records.c.created_at,
                records.c.received_at,
                records.c.status,
                records.c.attempts,
                records.c.error,
                records.c.predictions,
                records.c.sha256,
                results.c.processed_at,
                results.c.result,
                (results.c.saliency_png.is_not(None)).label("has_saliency"),
                labels.c.labels,
            )  # fmt: skip
            .select_from(records.outerjoin(results).outerjoin(labels))
            .where(records.c.request_id == request_id)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return dict(row) if row is not None else None

    def saliency_png(self, request_id: str) -> bytes | None:
        with self.engine.connect() as connection:
            query = sa.select(results.c.saliency_png).where(results.c.request_id == request_id)
            return connection.execute(query).scalar_one_or_none()

    def families(self) -> list[str]:
        with self.engine.connect() as connection:
            query = sa.select(records.c.family).distinct().order_by(records.c.family)
            return [row[0] for row in connection.execute(query)]

    def _window(self, query, family, version, since, until):  # noqa: ANN001, ANN202 - a Core select
        if family is not None:
            query = query.where(records.c.family == family)
        if version is not None:
            query = query.where(records.c.version == str(version))
        if since is not None:
            query = query.where(records.c.created_at >= since)
        if until is not None:
            query = query.where(records.c.created_at < until)
        return query

    def status_counts(
        self, *, family: str | None = None, version: str | None = None, since: float | None = None,
        until: float | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Rows of family, version, status, n, first and last created_at within the window."""
        query = sa.select(
            records.c.family, records.c.version, records.c.status, sa.func.count().label("n"),
            sa.func.min(records.c.created_at).label("first"), sa.func.max(records.c.created_at).label("last"),
        ).group_by(records.c.family, records.c.version, records.c.status)  # fmt: skip
        query = self._window(query, family, version, since, until)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def processed(
        self, *, family: str | None = None, version: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None, flagged_only: bool = False, full: bool = False,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Processed records in the window, oldest first (the newest ``limit`` when given): ids, times, flags.

        ``full`` adds the whole INFORMER result.
        """
        columns = [
            records.c.request_id, records.c.family, records.c.version, records.c.created_at,
            results.c.processed_at, results.c.flagged, results.c.flags,
        ]  # fmt: skip
        if full:
            columns.append(results.c.result)
        query = sa.select(*columns).select_from(records.join(results))
        query = self._window(query, family, version, since, until)
        if flagged_only:
            query = query.where(results.c.flagged.is_(True))
        query = query.order_by(records.c.created_at.desc(), records.c.request_id.desc())
        if limit is not None:
            query = query.limit(int(limit))
        with self.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        rows.reverse()
        return rows

    def results_frame(
        self, family: str, *, version: str | None = None, since: float | None = None, until: float | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:  # fmt: skip
        """One row per processed record of ``family`` (newest last; the newest ``limit`` when given).

        Columns: request_id, family, version, created_at and processed_at (UTC timestamps), flagged (bool), one float
        column per INFORMER feature, and ``label:<class>`` per ground-truth class posted (NaN where none was).
        ``since``/``until`` bound created_at in Unix seconds (until excluded).
        """
        query = sa.select(
            records.c.request_id, records.c.family, records.c.version, records.c.created_at,
            results.c.processed_at, results.c.flagged, results.c.features, labels.c.labels,
        ).select_from(records.join(results).outerjoin(labels))  # fmt: skip
        query = self._window(query, family, version, since, until)
        query = query.order_by(records.c.created_at.desc(), records.c.request_id.desc())
        if limit is not None:
            query = query.limit(int(limit))
        with self.engine.connect() as connection:
            rows = list(connection.execute(query).mappings())
        rows.reverse()
        base = pd.DataFrame(
            {
                "request_id": pd.Series([r["request_id"] for r in rows], dtype="object"),
                "family": pd.Series([r["family"] for r in rows], dtype="object"),
                "version": pd.Series([r["version"] for r in rows], dtype="object"),
                "created_at": _utc([r["created_at"] for r in rows]),
                "processed_at": _utc([r["processed_at"] for r in rows]),
                "flagged": pd.Series([bool(r["flagged"]) for r in rows], dtype="bool"),
            }
        )
        features = pd.DataFrame([r["features"] or {} for r in rows], index=base.index, dtype="float64")
        truth = pd.DataFrame(
            [{f"label:{k}": v for k, v in (r["labels"] or {}).items()} for r in rows], index=base.index, dtype="float64"
        )
        features = features.drop(columns=[c for c in features.columns if c in base.columns])
        return pd.concat([base, features, truth], axis=1)

    # -- drift reports ------------------------------------------------------------------------------------------------

    def add_drift_report(self, family: str, summary: Mapping[str, Any]) -> int:
        """Keep one Evidently drift report's summary (the report files stay where they are); returns its id.

        ``summary`` holds drift_share, detected, n_current, n_reference, html_path, json_path, and anything else
        (kept whole in the summary column); ``created_at`` (Unix seconds) defaults to now.
        """
        body = _jsonable(dict(summary))
        drift_share = body.get("drift_share")
        row = {
            "family": family,
            "created_at": float(body.get("created_at") or time.time()),
            "drift_share": None if drift_share is None else float(drift_share),
            "detected": bool(body.get("detected", False)),
            "n_current": None if body.get("n_current") is None else int(body["n_current"]),
            "n_reference": None if body.get("n_reference") is None else int(body["n_reference"]),
            "html_path": None if body.get("html_path") is None else str(body["html_path"]),
            "json_path": None if body.get("json_path") is None else str(body["json_path"]),
            "summary": body,
        }
        with self.engine.begin() as connection:
            return int(connection.execute(drift_reports.insert().values(**row)).inserted_primary_key[0])

    def latest_drift(self, family: str) -> dict[str, Any] | None:
        """The newest drift report of ``family`` as a dict of its columns, or None."""
        query = (
            sa.select(drift_reports)
            .where(drift_reports.c.family == family)
            .order_by(drift_reports.c.id.desc())  # the last one written, as latest_drifts
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return dict(row) if row is not None else None

    def drift_report(self, report_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(drift_reports).where(drift_reports.c.id == report_id)).mappings().first()
        return dict(row) if row is not None else None

    def latest_drifts(self) -> list[dict[str, Any]]:
        """The newest drift report of every family that has one."""
        newest = sa.select(drift_reports.c.family, sa.func.max(drift_reports.c.id).label("id")).group_by(
            drift_reports.c.family
        )
        newest = newest.subquery()
        query = (
            sa.select(drift_reports).join(newest, drift_reports.c.id == newest.c.id).order_by(drift_reports.c.family)
        )
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
