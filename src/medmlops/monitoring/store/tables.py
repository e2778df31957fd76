"""Where the monitoring store lives and what it holds: the database URL, the engine, the four tables.

Times are stored as Unix seconds (double precision), which every backend compares and orders the same way.

A record carries two tiers of monitoring. The logit tier (``logit``, ``logit_flags``, ``logit_at``) is computed at
ingest from the logits the record carries, with no model call; the saliency tier (INFORMER, a row of ``results``)
follows from the workers. ``stratum`` and ``sample_p`` are the backlog policy's design, fixed at ingest
(:mod:`medmlops.monitoring.estimate`); ``lease_owner`` and ``lease_expires`` are the work queue's claims
(:mod:`.queue`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url

from medmlops.paths import state_path

log = logging.getLogger(__name__)

DEFAULT_DB_URL = "sqlite:///.medmlops/monitoring.db"
DB_URL_ENV = "MEDMLOPS_MONITORING_DB_URL"
# The uploads are medical images: nobody but the service's user reads the database or lists its folder.
FOLDER_MODE, FILE_MODE = 0o700, 0o600
# Any constant: every process that creates the schema takes this PostgreSQL advisory lock first.
_SCHEMA_LOCK = 7_342_019

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
    sa.Column("correlation_id", sa.String(128), nullable=True),
    sa.Column("status", sa.String(16), nullable=False, default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text, nullable=True),
    # The work queue: who holds the record and until when. With no owner, ``lease_expires`` is a retry delay.
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_expires", sa.Double, nullable=True),
    # The logit tier: {"score", "scores": {name: {class: value}}, "flags", "calibrated"} or {"error"} (unscored).
    sa.Column("logit", sa.JSON, nullable=True),
    sa.Column("logit_flags", sa.JSON, nullable=True),  # {class: bool}, apart from `logit` so rates read little
    sa.Column("logit_at", sa.Double, nullable=True),  # None: unscored
    # The backlog design: 0 flagged by the logit tier, 1 in the ingest-time random sample, 2 the rest.
    sa.Column("stratum", sa.SmallInteger, nullable=False, default=1, server_default=sa.text("1")),
    sa.Column("sample_p", sa.Double, nullable=True),  # the sample's inclusion probability, recorded at ingest
    # Serving's out-of-distribution verdict (medmlops.inference.ood); None: no reference, or a record from before.
    sa.Column("in_distribution", sa.Boolean, nullable=True),
    sa.Column("ood_score", sa.Double, nullable=True),
    sa.Column("ood_threshold", sa.Double, nullable=True),
    # Where the case is in the hospital's systems: {study_instance_uid, accession_number, study_id}, those known.
    sa.Column("study", sa.JSON, nullable=True),
    sa.Index("ix_records_status_received", "status", "received_at"),
    sa.Index("ix_records_status_stratum_received", "status", "stratum", "received_at"),
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
    sa.Column("note", sa.Text, nullable=True),  # the reviewer's note (the review queue, medmlops.monitoring.review)
)

# The saliency tier's map of every class (the analyser's ``class_pngs``, in output order): the review page shows
# them side by side. ``results.saliency_png`` stays the one thumbnail.
class_maps = sa.Table(
    "class_maps",
    metadata,
    sa.Column("request_id", sa.String(128), sa.ForeignKey("records.request_id"), primary_key=True),
    sa.Column("position", sa.SmallInteger, primary_key=True),
    sa.Column("class_name", sa.String(256), nullable=False),
    sa.Column("png", sa.LargeBinary, nullable=False),
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
    """``url``, else ``$MEDMLOPS_MONITORING_DB_URL``, else SQLite under ``.medmlops/`` in the working directory
    (``$MEDMLOPS_STATE_DIR`` when set)."""
    return url or os.environ.get(DB_URL_ENV) or f"sqlite:///{state_path('.medmlops/monitoring.db')}"


@contextlib.contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the database's write lock from its first statement (SQLite ``BEGIN IMMEDIATE``).

    SQLite has one writer at a time; a deferred transaction that reads and then writes can fail at once with
    "database is locked" when another process wrote in between, instead of waiting out the busy timeout. Taking
    the lock first makes read-then-write steps (a claim, the schema check) wait their turn and see the latest
    commit. PostgreSQL: an ordinary transaction (row locks do the work there).
    """
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # pysqlite opens a transaction of its own only before DML; this one is ours and commit() ends it.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()


def _private_database(database: Path) -> None:
    """The SQLite file owner-only (0600; SQLite gives its -wal and -shm files the database's mode) and its folder
    too (0700): created so, or tightened when this user owns it.

    An existing folder is left as it is when it is shared by design (sticky like /tmp, the filesystem root, the
    home folder): narrowing those would lock other users out of far more than this database.
    """
    folder = database.expanduser().resolve().parent
    missing = [f for f in (folder, *folder.parents) if not f.is_dir()]
    for created in reversed(missing):
        created.mkdir(mode=FOLDER_MODE, exist_ok=True)
        created.chmod(FOLDER_MODE)  # mkdir's mode passes through the umask
    if not missing:
        info = folder.stat()
        shared = info.st_mode & stat.S_ISVTX or folder in (Path("/"), Path(os.path.expanduser("~")).resolve())
        if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.geteuid() and not shared:
            log.info("monitoring database folder %s: made owner-only (0700)", folder)
            folder.chmod(FOLDER_MODE)
        elif stat.S_IMODE(info.st_mode) & 0o077:
            log.warning("monitoring database folder %s is readable by others; the database file is owner-only", folder)
    path = folder / database.name
    # Created here with 0600 before SQLite opens it: SQLite itself would create it 0644 (the umask's default).
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE))
    if path.stat().st_uid == os.geteuid():
        for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if name.exists():
                name.chmod(FILE_MODE)


def _add_missing_columns(connection: Connection) -> None:
    """Columns added to a table since an older version created it: ``ALTER TABLE ... ADD COLUMN`` (every new
    column is nullable or has a server default, so existing rows stay valid), and the new indexes."""
    inspector = sa.inspect(connection)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                ddl = sa.schema.CreateColumn(column).compile(dialect=connection.dialect)
                connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(connection)


def connect(url: str) -> Engine:
    """An engine for ``url`` with the tables created (or completed) when missing; SQLite in WAL mode with
    ``synchronous=FULL``, its file and folder owner-only."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            kwargs["poolclass"] = sa.pool.StaticPool
        else:
            _private_database(Path(database))
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

    # Several processes (the service, N workers) start at once on one database: one of them creates the schema.
    with write_transaction(engine) as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        metadata.create_all(connection)
        _add_missing_columns(connection)
    return engine
