"""Reads for the views, the metrics and drift reports: one record, counts by status, processed records, frames.

A window is ``family``, ``version`` and ``since``/``until`` (created_at in Unix seconds, until excluded), each
optional. The frames handed to pandas turn the stored Unix seconds into UTC timestamps.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from medmlops.monitoring.store.tables import labels, records, results


def _window(
    query: sa.Select, family: str | None, version: str | None, since: float | None, until: float | None
) -> sa.Select:
    if family is not None:
        query = query.where(records.c.family == family)
    if version is not None:
        query = query.where(records.c.version == str(version))
    if since is not None:
        query = query.where(records.c.created_at >= since)
    if until is not None:
        query = query.where(records.c.created_at < until)
    return query


def _utc(seconds: Any) -> pd.Series:
    return pd.to_datetime(pd.Series(seconds, dtype="float64"), unit="s", utc=True)


class Queries:
    """The store's reads, over its engine."""

    engine: Engine

    def record(self, request_id: str) -> dict[str, Any] | None:
        """Everything known about one record (the upload bytes and saliency PNG excepted), or None."""
        columns = [
            records.c.request_id, records.c.family, records.c.version, records.c.created_at, records.c.received_at,
            records.c.correlation_id, records.c.status, records.c.attempts, records.c.error, records.c.predictions,
            records.c.sha256, records.c.lease_owner, records.c.lease_expires, records.c.logit, records.c.logit_flags,
            records.c.logit_at, records.c.stratum, records.c.sample_p, results.c.processed_at, results.c.result,
            (results.c.saliency_png.is_not(None)).label("has_saliency"), labels.c.labels, records.c.in_distribution,
            records.c.ood_score, records.c.ood_threshold, records.c.study,
        ]  # fmt: skip
        query = (
            sa.select(*columns)
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

    def status_counts(
        self, *, family: str | None = None, version: str | None = None, since: float | None = None,
        until: float | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Rows of family, version, status, n, first and last created_at within the window."""
        query = sa.select(
            records.c.family, records.c.version, records.c.status, sa.func.count().label("n"),
            sa.func.min(records.c.created_at).label("first"), sa.func.max(records.c.created_at).label("last"),
        ).group_by(records.c.family, records.c.version, records.c.status)  # fmt: skip
        query = _window(query, family, version, since, until)
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
            columns += [results.c.result, records.c.study, records.c.in_distribution]
        query = sa.select(*columns).select_from(records.join(results))
        query = _window(query, family, version, since, until)
        if flagged_only:
            query = query.where(results.c.flagged.is_(True))
        return self._oldest_first(query, limit)

    def _oldest_first(self, query: sa.Select, limit: int | None) -> list[dict[str, Any]]:
        """The newest ``limit`` rows of ``query`` (all when None), returned oldest first."""
        query = query.order_by(records.c.created_at.desc(), records.c.request_id.desc())
        if limit is not None:
            query = query.limit(int(limit))
        with self.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        rows.reverse()
        return rows

    def population(
        self, *, family: str | None = None, version: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Every record in the window (the newest ``limit`` when given), oldest first, with what the rate
        estimates need (:mod:`medmlops.monitoring.estimate`): family, version, created_at, received_at, status,
        stratum, sample_p, logit_flags, logit_at, in_distribution (serving's out-of-distribution verdict), and the
        saliency tier's flagged and flags (None: not analysed)."""
        query = sa.select(
            records.c.request_id, records.c.family, records.c.version, records.c.created_at, records.c.received_at,
            records.c.status, records.c.stratum, records.c.sample_p, records.c.logit_flags, records.c.logit_at,
            records.c.in_distribution, results.c.flagged, results.c.flags,
        ).select_from(records.outerjoin(results))  # fmt: skip
        query = _window(query, family, version, since, until)
        return self._oldest_first(query, limit)

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
        query = _window(query, family, version, since, until)
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

    def performance_rows(
        self, *, family: str | None = None, version: str | None = None, since: float | None = None,
        until: float | None = None, limit: int | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The window's records (the newest ``limit`` when given), oldest first: request_id, family, version,
        created_at, logits, labels (None until posted): what performance estimation and realized metrics read
        (:mod:`medmlops.monitoring.performance`)."""
        query = sa.select(
            records.c.request_id, records.c.family, records.c.version, records.c.created_at, records.c.logits,
            labels.c.labels,
        ).select_from(records.outerjoin(labels))  # fmt: skip
        return self._oldest_first(_window(query, family, version, since, until), limit)
