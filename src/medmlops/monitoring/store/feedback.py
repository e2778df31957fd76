"""What comes back after a prediction: its delayed ground truth, and drift reports over a family's window."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from medmlops.inference.record import jsonable
from medmlops.monitoring.store.tables import drift_reports, labels, records


class Feedback:
    """Labels and drift reports, over the store's engine."""

    engine: Engine

    def add_labels(self, request_id: str, given: Mapping[str, int], note: str | None = None) -> bool:
        """Store (or replace) the ground truth of a record, with the reviewer's ``note``; False when the record is
        unknown."""
        now = time.time()
        clean = {str(k): int(v) for k, v in given.items()}
        for _attempt in range(2):
            try:
                with self.engine.begin() as connection:
                    update = labels.update().where(labels.c.request_id == request_id)
                    if connection.execute(update.values(labels=clean, received_at=now, note=note)).rowcount:
                        return True
                    exists = sa.select(records.c.request_id).where(records.c.request_id == request_id)
                    if connection.execute(exists).first() is None:
                        return False
                    row = {"request_id": request_id, "labels": clean, "received_at": now, "note": note}
                    connection.execute(labels.insert().values(**row))
                    return True
            except IntegrityError:  # a concurrent post inserted first: the update path takes it
                continue
        raise RuntimeError(f"labels of {request_id} could not be stored")

    def add_drift_report(self, family: str, summary: Mapping[str, Any]) -> int:
        """Keep one Evidently drift report's summary (the report files stay where they are); returns its id.

        ``summary`` holds drift_share, detected, n_current, n_reference, html_path, json_path, and anything else
        (kept whole in the summary column); ``created_at`` (Unix seconds) defaults to now.
        """
        body = jsonable(dict(summary))
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

    def drift_reports_of(
        self, family: str, *, since: float | None = None, until: float | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """The drift reports of ``family`` written in ``since``/``until`` (until excluded), the newest ``limit``,
        oldest first (the dashboard's drift share over time)."""
        query = sa.select(drift_reports).where(drift_reports.c.family == family)
        if since is not None:
            query = query.where(drift_reports.c.created_at >= since)
        if until is not None:
            query = query.where(drift_reports.c.created_at < until)
        query = query.order_by(drift_reports.c.created_at.desc(), drift_reports.c.id.desc()).limit(int(limit))
        with self.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        rows.reverse()
        return rows
