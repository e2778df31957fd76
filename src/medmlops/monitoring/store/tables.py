"""Where the monitoring store lives and what it holds: the database URL, the engine, the four tables.

Times are stored as Unix seconds (double precision), which every backend compares and orders the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

DEFAULT_DB_URL = "sqlite:///.medmlops/monitoring.db"
DB_URL_ENV = "MEDMLOPS_MONITORING_DB_URL"

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


def resolve_db_url(url: str | None = None) -> str:
    """``url``, else ``$MEDMLOPS_MONITORING_DB_URL``, else SQLite under ``.medmlops/`` in the working directory."""
    return url or os.environ.get(DB_URL_ENV) or DEFAULT_DB_URL


def connect(url: str) -> Engine:
    """An engine for ``url`` with the tables created when missing; SQLite in WAL mode with ``synchronous=FULL``."""
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

    metadata.create_all(engine)
    return engine
