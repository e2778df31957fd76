"""A throwaway PostgreSQL server for the monitoring tests (the cluster's database), one per session, and a fresh
database on it per test.

Needs the PostgreSQL server binaries (``initdb``, ``pg_ctl``) on PATH (this machine kind has them) and psycopg2 (a
project dependency); without them the tests fail, they are never silently skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from ..conftest import _free_port


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    assert runuser is not None, "PostgreSQL refuses to run as root and runuser (util-linux) is missing"
    return [runuser, "-u", "postgres", "--", *command]


@pytest.fixture(scope="session")
def postgres_server():
    """The server's URL prefix (``postgresql+psycopg2://monitoring@127.0.0.1:PORT``), no database."""
    import psycopg2  # noqa: F401 - a project dependency: the cluster's monitoring store is PostgreSQL

    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    # Not skipped: a store that only ever met SQLite is untested for the cluster. Debian: apt-get install postgresql.
    assert initdb and pg_ctl, "the PostgreSQL server binaries (initdb, pg_ctl) are not on PATH"
    root = Path(tempfile.mkdtemp(prefix="medmlops-pg-"))  # outside pytest's 0700 folders: the postgres user reads it
    root.chmod(0o755)
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = _free_port()
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "monitoring", "--no-sync"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"]),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        yield f"postgresql+psycopg2://monitoring@127.0.0.1:{port}"
    finally:
        if data.exists():
            subprocess.run(
                _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True, timeout=60
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A database of its own for this test on the session's server."""
    import psycopg2

    name = f"monitoring_{uuid.uuid4().hex[:12]}"
    connection = psycopg2.connect(postgres_server.replace("postgresql+psycopg2://", "postgresql://") + "/postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        connection.cursor().execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()
    return f"{postgres_server}/{name}"
