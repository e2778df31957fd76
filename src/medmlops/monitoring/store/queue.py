"""The work queue: prediction records in as ``pending``, claimed by workers under expiring leases, back as ``done`` or
``failed``.

Claims (:meth:`Queue.claim`), one transaction per backend:

* PostgreSQL: ``SELECT ... WHERE status='pending' AND (lease_expires IS NULL OR lease_expires < now) ORDER BY ...
  LIMIT n FOR UPDATE SKIP LOCKED``, then ``UPDATE ... SET lease_owner=?, lease_expires=now+lease_s,
  attempts=attempts+1`` of those rows, and COMMIT. Rows another claimer holds locked are skipped, not waited for,
  and a row it has leased no longer matches once it commits, so N workers take disjoint batches.
* SQLite: the same SELECT and UPDATE inside ``BEGIN IMMEDIATE`` (:func:`.tables.write_transaction`): SQLite has
  one writer at a time and the claim takes the write lock before it reads, so a second claimer reads after the
  first one's commit. (No ``RETURNING``, no ``FOR UPDATE``: SQLite has neither in a form both need.)

A worker that dies leaves its lease to expire; the record is then claimed again (``attempts`` counts claims).
Completing (:meth:`Queue.finish`) is ``UPDATE ... WHERE request_id=? AND status='pending' AND lease_owner=?`` with
the ``INSERT`` of the result in the same transaction (``results.request_id`` is the primary key): only the
worker that holds the lease completes the record, and only once; the result of a worker whose lease expired and
was taken by another is dropped. Failures are bounded: a record claimed ``max_attempts`` times without a result
(its workers died or overran their leases) is marked ``failed`` by the next claim.

Order (:meth:`Queue.claim`): oldest first, one (family, version) per batch. While more than ``backlog_bound``
records are pending, claims take them by stratum instead: logit-tier flagged first, then the ingest-time random
sample, then the rest, each oldest first (:mod:`medmlops.monitoring.estimate` says why the rates stay unbiased).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from medmlops.inference.record import PredictionRecord, finite, jsonable
from medmlops.monitoring.store.tables import class_maps, records, results, write_transaction

FLAGGED, SAMPLE, REST = 0, 1, 2
STRATA = ("flagged", "sample", "rest")  # names of the stratum numbers, in claim priority order


@dataclass(frozen=True)
class Intake:
    """What ingest decided about a record besides its fields: the logit tier and the backlog stratum.

    ``logit`` is the tier's result (``{"score", "scores", "flags", "calibrated"}``, or ``{"error"}`` when it could
    not be computed: then ``logit_at`` is None), ``stratum`` one of :data:`FLAGGED`, :data:`SAMPLE`, :data:`REST`,
    ``sample_p`` the probability with which an unflagged record was drawn into the sample. The default, a record
    stored without triage, is a census: every record in the sample with probability 1.
    """

    logit: dict[str, Any] | None = None
    logit_at: float | None = None
    stratum: int = SAMPLE
    sample_p: float | None = 1.0
    logit_flags: dict[str, bool] | None = None

    def __post_init__(self) -> None:
        if self.stratum not in (FLAGGED, SAMPLE, REST):
            raise ValueError(f"stratum {self.stratum} is not one of {FLAGGED}, {SAMPLE}, {REST}")


@dataclass(frozen=True)
class PendingRecord:
    """A record claimed for its INFORMER result (what the worker needs, nothing more); ``attempts`` counts this
    claim."""

    request_id: str
    family: str
    version: str
    upload: bytes
    attempts: int


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _held(request_id: str, owner: str) -> sa.ColumnElement[bool]:
    return (records.c.request_id == request_id) & (records.c.status == "pending") & (records.c.lease_owner == owner)


def _claimable(now: float) -> sa.ColumnElement[bool]:
    return (records.c.status == "pending") & (records.c.lease_expires.is_(None) | (records.c.lease_expires < now))


class Queue:
    """The queue's statements, over the store's engine."""

    engine: Engine

    def add_record(
        self, record: PredictionRecord, *, received_at: float | None = None, intake: Intake | None = None
    ) -> bool:
        """Store a prediction record as pending; True when stored, False when its request_id is already here."""
        intake = intake or Intake()
        row = {
            "request_id": record.request_id, "family": record.family, "version": record.version,
            "created_at": record.created_at, "received_at": time.time() if received_at is None else received_at,
            "upload": record.upload, "sha256": record.sha256, "logits": list(record.logits),
            "predictions": record.predictions, "correlation_id": record.correlation_id,
            "status": "pending", "attempts": 0, "logit": intake.logit, "logit_flags": intake.logit_flags,
            "logit_at": intake.logit_at, "stratum": intake.stratum, "sample_p": intake.sample_p,
            "in_distribution": (record.ood or {}).get("in_distribution"), "ood_score": (record.ood or {}).get("score"),
            "ood_threshold": (record.ood or {}).get("threshold"), "study": record.study,
        }  # fmt: skip
        try:
            with self.engine.begin() as connection:
                connection.execute(records.insert().values(**row))
        except IntegrityError:
            if self.has_record(record.request_id):
                return False
            raise
        return True

    def has_record(self, request_id: str) -> bool:
        with self.engine.connect() as connection:
            query = sa.select(records.c.request_id).where(records.c.request_id == request_id)
            return connection.execute(query).first() is not None

    # -- claims -------------------------------------------------------------------------------------------------------

    def claim(
        self, owner: str, limit: int, *, lease_s: float, now: float | None = None, backlog_bound: int | None = None,
        max_attempts: int | None = None,
    ) -> list[PendingRecord]:  # fmt: skip
        """Lease up to ``limit`` claimable records of one (family, version) to ``owner`` for ``lease_s`` seconds.

        Claimable: pending, and no lease or retry delay running. Order: oldest first; while more than
        ``backlog_bound`` records are pending, by stratum first (module docstring). A claimable record already
        claimed ``max_attempts`` times is marked failed instead.
        """
        now = time.time() if now is None else now
        with self.engine.connect() as connection:  # an idle worker's poll takes no write lock
            if connection.execute(sa.select(records.c.request_id).where(_claimable(now)).limit(1)).first() is None:
                return []
        with write_transaction(self.engine) as connection:
            if max_attempts is not None:
                self._give_up(connection, now, max_attempts)
            order = [records.c.received_at, records.c.request_id]
            if backlog_bound is not None and self._pending(connection) > backlog_bound:
                order.insert(0, records.c.stratum)
            locking = {"skip_locked": True} if connection.dialect.name == "postgresql" else None
            head = sa.select(records.c.family, records.c.version).where(_claimable(now)).order_by(*order).limit(1)
            first = connection.execute(head.with_for_update(**locking) if locking else head).first()
            if first is None:
                return []
            columns = (records.c.request_id, records.c.family, records.c.version, records.c.upload, records.c.attempts)
            same = (records.c.family == first.family) & (records.c.version == first.version)
            query = sa.select(*columns).where(_claimable(now) & same).order_by(*order).limit(limit)
            rows = connection.execute(query.with_for_update(**locking) if locking else query).all()
            ids = [row.request_id for row in rows]
            connection.execute(
                records.update()
                .where(records.c.request_id.in_(ids))
                .values(lease_owner=owner, lease_expires=now + lease_s, attempts=records.c.attempts + 1)
            )
        return [PendingRecord(r.request_id, r.family, r.version, r.upload, r.attempts + 1) for r in rows]

    @staticmethod
    def _pending(connection: Connection) -> int:
        query = sa.select(sa.func.count()).select_from(records).where(records.c.status == "pending")
        return int(connection.execute(query).scalar_one())

    @staticmethod
    def _give_up(connection: Connection, now: float, max_attempts: int) -> None:
        """Records whose every claim ended without a result (the worker died, or overran its lease each time)."""
        connection.execute(
            records.update()
            .where(_claimable(now) & (records.c.attempts >= max_attempts) & records.c.lease_owner.is_not(None))
            .values(
                status="failed", lease_owner=None, lease_expires=None,
                error=f"no result after {max_attempts} attempts: the workers that claimed it stopped or overran "
                "their lease each time",
            )
        )  # fmt: skip

    def renew(self, owner: str, request_ids: Iterable[str], lease_s: float, *, now: float | None = None) -> int:
        """Extend ``owner``'s leases on ``request_ids`` to ``lease_s`` from now; the number still held."""
        ids = list(request_ids)
        if not ids:
            return 0
        now = time.time() if now is None else now
        with self.engine.begin() as connection:
            return connection.execute(
                records.update()
                .where(
                    records.c.request_id.in_(ids) & (records.c.status == "pending") & (records.c.lease_owner == owner)
                )
                .values(lease_expires=now + lease_s)
            ).rowcount

    def release(self, owner: str, retry: Mapping[str, tuple[float, str | None]]) -> int:
        """Give back ``owner``'s leases: ``retry`` maps each record to (when it is claimable again, Unix seconds: a
        retry delay every worker sees; the error kept for the status API, or None). The number released."""
        released = 0
        with self.engine.begin() as connection:
            for request_id, (at, error) in retry.items():
                values: dict[str, Any] = {"lease_owner": None, "lease_expires": at}
                if error is not None:
                    values["error"] = error[:2000]
                released += connection.execute(
                    records.update().where(_held(request_id, owner)).values(**values)
                ).rowcount
        return released

    def finish(
        self, owner: str, done: Mapping[str, Mapping[str, Any]] | None = None, failed: Mapping[str, str] | None = None
    ) -> int:
        """Write results (``done``: request_id → analyser result) and failures of records ``owner`` holds, in ONE
        transaction.

        A record that is no longer pending or no longer ``owner``'s (its lease expired and another worker claimed
        it) is left as it is. Returns the number of records this call moved out of pending.
        """
        now = time.time()
        changed = 0
        free = {"lease_owner": None, "lease_expires": None}
        with self.engine.begin() as connection:
            for request_id, result in (done or {}).items():
                moved = connection.execute(
                    records.update().where(_held(request_id, owner)).values(status="done", error=None, **free)
                ).rowcount
                if not moved:
                    continue
                body = jsonable({k: v for k, v in result.items() if k not in ("saliency_png", "class_pngs")})
                flags = {str(k): bool(v) for k, v in (body.get("flags") or {}).items()}
                features = finite({str(k): _float(v) for k, v in (body.get("features") or {}).items()})
                connection.execute(
                    results.insert().values(
                        request_id=request_id, processed_at=now, result=body,
                        flagged=bool(body.get("flagged", any(flags.values()))), flags=flags, features=features,
                        saliency_png=result.get("saliency_png") or None,
                    )
                )  # fmt: skip
                pngs = zip(body.get("classes") or [], result.get("class_pngs") or [], strict=False)
                maps = [  # every class's map, for the review page (medmlops.monitoring.review)
                    {"request_id": request_id, "position": j, "class_name": str(name), "png": png}
                    for j, (name, png) in enumerate(pngs)
                    if png
                ]
                if maps:
                    connection.execute(class_maps.insert(), maps)
                changed += 1
            for request_id, error in (failed or {}).items():
                changed += connection.execute(
                    records.update().where(_held(request_id, owner)).values(status="failed", error=error[:2000], **free)
                ).rowcount
        return changed

    # -- depth --------------------------------------------------------------------------------------------------------

    def pending_count(self) -> int:
        with self.engine.connect() as connection:
            return self._pending(connection)

    def pending_by_version(self) -> list[tuple[str, str, int]]:
        """(family, version, pending records) of every pair with records pending."""
        query = (
            sa.select(records.c.family, records.c.version, sa.func.count())
            .where(records.c.status == "pending")
            .group_by(records.c.family, records.c.version)
            .order_by(records.c.family, records.c.version)
        )
        with self.engine.connect() as connection:
            return [(family, version, int(n)) for family, version, n in connection.execute(query)]
