"""A throwaway PostgreSQL server for the monitoring tests (the cluster's database), one per session, and a fresh
database on it per test.

Needs the PostgreSQL server binaries (``initdb``, ``pg_ctl``) on PATH (this machine kind has them) and psycopg2 (a
project dependency); without them the tests fail, they are never silently skipped.
"""

from __future__ import annotations

import uuid

import pytest

from benchmarks._common import create_database
from benchmarks._common import postgres_server as throwaway_postgres


@pytest.fixture(scope="session")
def postgres_server():
    """The server's URL prefix (``postgresql+psycopg2://monitoring@127.0.0.1:PORT``), no database; the same
    throwaway server the monitoring benchmark starts (``runuser -u postgres`` when root). Not skipped: a store that
    only ever met SQLite is untested for the cluster (Debian: apt-get install postgresql)."""
    import psycopg2  # noqa: F401 - a project dependency: the cluster's monitoring store is PostgreSQL

    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server):
    """A database of its own for this test on the session's server."""
    return create_database(postgres_server, f"monitoring_{uuid.uuid4().hex[:12]}")
