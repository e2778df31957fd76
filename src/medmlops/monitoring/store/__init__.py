"""The monitoring service's durable store: prediction records, their INFORMER results, delayed labels, drift reports.

One SQLAlchemy URL decides where it lives: SQLite (WAL journal, ``synchronous=FULL``: a record acknowledged is on
disk) on one machine, PostgreSQL in the cluster. Queries use SQLAlchemy Core; the one place the backends differ is
how a worker claims records (:mod:`.queue`).

:class:`Store` is the one object callers hold; each concern is a module of its own: :mod:`.tables` (URL, engine,
schema), :mod:`.queue` (records in, leased batches to the workers, results back), :mod:`.queries` (the reads),
:mod:`.feedback` (labels and drift reports). Records arrive already checked
(:class:`~medmlops.inference.record.PredictionRecord`).
"""

from __future__ import annotations

import sqlalchemy as sa

from medmlops.monitoring.store.feedback import Feedback
from medmlops.monitoring.store.queries import Queries
from medmlops.monitoring.store.queue import FLAGGED, REST, SAMPLE, STRATA, Intake, PendingRecord, Queue
from medmlops.monitoring.store.tables import DB_URL_ENV, DEFAULT_DB_URL, connect, resolve_db_url

__all__ = [
    "DB_URL_ENV", "DEFAULT_DB_URL", "FLAGGED", "REST", "SAMPLE", "STRATA", "Intake", "PendingRecord", "Store",
    "resolve_db_url",
]  # fmt: skip


class Store(Queue, Queries, Feedback):
    """Records, results, labels and drift reports behind one SQLAlchemy URL (tables created when missing)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = connect(url)

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
