"""The work queue: prediction records in as ``pending``, out to the worker in batches, back as ``done`` or ``failed``.

Exactly-once processing rests on two statements in one transaction: ``UPDATE records SET status='done' WHERE
request_id=? AND status='pending'`` (a record already done is never taken again) and the ``INSERT`` of its result
(``results.request_id`` is the primary key, so a second result cannot exist). A process killed before the commit
leaves the record pending, and the next worker processes it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from medmlops.inference.record import PredictionRecord, finite, jsonable
from medmlops.monitoring.store.tables import records, results


@dataclass(frozen=True)
class PendingRecord:
    """A record waiting for its INFORMER result (what the worker needs, nothing more)."""

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


def _pending(request_id: str) -> sa.ColumnElement[bool]:
    return (records.c.request_id == request_id) & (records.c.status == "pending")


class Queue:
    """The queue's statements, over the store's engine."""

    engine: Engine

    def add_record(self, record: PredictionRecord, *, received_at: float | None = None) -> bool:
        """Store a prediction record as pending; True when stored, False when its request_id is already here."""
        row = {
            "request_id": record.request_id, "family": record.family, "version": record.version,
            "created_at": record.created_at, "received_at": time.time() if received_at is None else received_at,
            "upload": record.upload, "sha256": record.sha256, "logits": list(record.logits),
            "predictions": record.predictions, "status": "pending", "attempts": 0,
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
                    .where(_pending(request_id))
                    .values(status="done", error=None, attempts=records.c.attempts + 1)
                ).rowcount
                if not moved:
                    continue
                body = jsonable({k: v for k, v in result.items() if k != "saliency_png"})
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
                    .where(_pending(request_id))
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
