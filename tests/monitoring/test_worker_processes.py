"""``medmlops monitor worker`` as real processes sharing one database, SQLite and PostgreSQL: three workers (a pool of
two children and a lone one) analyse every record exactly once, and a pool restarts a child that dies; a worker
SIGKILLed mid-batch loses its records to another worker once its lease expires, and only those are analysed twice;
SIGTERM ends a worker cleanly. The fake analyser leaves one file per analysed upload (``FAKE_ANALYSER_CALLS``):
which process analysed what, and how often."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from medmlops.monitoring.store import Store

from .records import Child, prediction_record, start_worker, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitoring.db'}"
    return request.getfixturevalue("postgres_url")


def _calls(folder: Path) -> list[tuple[str, int, int]]:
    """(sha256 of the upload, pid, time in ns) of every analysis, in time order."""
    calls = []
    for path in folder.iterdir():
        digest, pid, ns = path.name.split(".")
        calls.append((digest, int(pid), int(ns)))
    return sorted(calls, key=lambda call: call[2])


def _digest(request_id: str) -> str:
    return hashlib.sha256(f"image-{request_id}".encode()).hexdigest()


def _count(child: Child, event: str) -> int:
    return len(re.findall(rf"monitoring worker \S+ {event}", child.log_text()))


def _started(child: Child, n: int = 1) -> bool:
    return _count(child, "started") >= n


def _statuses(store: Store) -> Counter:
    return Counter(row["status"] for row in store.population())


@pytest.mark.reliability(
    "Load",
    "three `monitor worker` processes on one database (SQLite and PostgreSQL), one pool child killed",
    "every record analysed exactly once (the analyser's calls counted); the killed child restarted",
)
def test_three_worker_processes_analyse_every_record_exactly_once(db_url, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    env = {"FAKE_ANALYSER_CALLS": str(calls), "FAKE_ANALYSER_DELAY_S": "0.05"}
    options = ("--batch-size", "3", "--lease-s", "20", "--poll-s", "0.2")
    store = Store(db_url)
    pool = start_worker(tmp_path, "--workers", "2", *options, db_url=db_url, env=env, name="pool")
    lone = start_worker(tmp_path, "--workers", "1", *options, db_url=db_url, env=env, name="lone")
    try:
        assert wait_for(lambda: _started(pool, 2) and _started(lone), 90), pool.log_text() + lone.log_text()
        n = 60
        for i in range(n):
            store.add_record(prediction_record(f"r{i:02d}"))
        assert wait_for(lambda: _statuses(store)["done"] == n, 120), _statuses(store)
        seen = _calls(calls)
        assert Counter(digest for digest, _pid, _ns in seen) == Counter({_digest(f"r{i:02d}"): 1 for i in range(n)})
        workers = Counter(pid for _digest_, pid, _ns in seen)
        assert len(workers) >= 2, workers  # the work was shared, not one worker's alone
        assert pool.process.pid not in workers  # the pool itself analyses nothing: its children do
        assert {store.record(f"r{i:02d}")["attempts"] for i in range(n)} == {1}
        child = int(re.search(r"workers started \(pids (\d+)", pool.log_text()).group(1))
        os.kill(child, signal.SIGKILL)  # a pool's child dies: the pool starts another in its place
        assert wait_for(lambda: _started(pool, 3), 60), pool.log_text()
        assert f"(pid {child}) died (exit code -9); restarting it" in pool.log_text()
    finally:
        codes = pool.stop(), lone.stop()
        store.close()
    assert codes == (0, 0), pool.log_text()[-2000:] + lone.log_text()[-2000:]
    assert (_count(pool, "stopped"), _count(lone, "stopped")) == (2, 1)  # the two alive at the end


@pytest.mark.reliability(
    "Faults",
    "a worker process SIGKILLed mid-batch while another runs (SQLite and PostgreSQL)",
    "its leased records analysed by the other once the lease expires; every record done once",
)
def test_a_worker_killed_mid_batch_loses_its_records_to_another_once_the_lease_expires(db_url, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    lease_s = 4.0
    env = {"FAKE_ANALYSER_CALLS": str(calls), "FAKE_ANALYSER_DELAY_S": "0.3"}
    options = ("--batch-size", "4", "--lease-s", str(lease_s), "--poll-s", "0.2")
    store = Store(db_url)
    doomed = start_worker(tmp_path, *options, db_url=db_url, env=env, name="doomed")
    try:
        assert wait_for(lambda: _started(doomed), 90), doomed.log_text()
        n = 24
        for i in range(n):
            store.add_record(prediction_record(f"k{i:02d}"))
        pid = doomed.process.pid

        def in_flight() -> list[str]:  # records leased to the doomed worker, at least one of them being analysed
            held = [r["request_id"] for r in store.population() if _held_by(store, r["request_id"], pid)]
            started = {digest for digest, who, _ns in _calls(calls) if who == pid}
            return held if any(_digest(r) in started for r in held) else []

        assert wait_for(lambda: bool(in_flight()), 60, every_s=0.05), doomed.log_text()
        lost = in_flight()
        doomed.process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        doomed.process.wait(10)
        survivor = start_worker(tmp_path, *options, db_url=db_url, env=env, name="survivor")
        try:
            assert wait_for(lambda: _statuses(store)["done"] == n, 120), (_statuses(store), survivor.log_text())
        finally:
            assert survivor.stop() == 0
    finally:
        doomed.stop()
    rows = {r["request_id"]: store.record(r["request_id"]) for r in store.population()}
    store.close()
    seen = Counter(digest for digest, _pid, _ns in _calls(calls))
    twice = {request_id for request_id in rows if seen[_digest(request_id)] == 2}
    assert set(lost) & twice == twice and twice, (lost, twice)  # only the killed batch's started records twice
    assert all(seen[_digest(r)] in (1, 2) for r in rows) and sum(seen.values()) == n + len(twice)
    for request_id in lost:
        row = rows[request_id]
        assert row["status"] == "done" and row["attempts"] == 2
        # Not before the lease ran out: it was renewed at most a third of a lease before the kill.
        assert row["processed_at"] >= killed_at + lease_s * 2 / 3 - 0.5
    assert all(row["attempts"] == 1 for request_id, row in rows.items() if request_id not in lost)


def _held_by(store: Store, request_id: str, pid: int) -> bool:
    owner = store.record(request_id)["lease_owner"] or ""
    return f":{pid}:" in owner


def test_sigterm_lets_a_worker_finish_its_batch_and_exit_cleanly(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    calls = tmp_path / "calls"
    calls.mkdir()
    store = Store(db_url)
    worker = start_worker(tmp_path, "--batch-size", "4", "--poll-s", "0.2", db_url=db_url,
                          env={"FAKE_ANALYSER_CALLS": str(calls), "FAKE_ANALYSER_DELAY_S": "0.4"})  # fmt: skip
    try:
        assert wait_for(lambda: _started(worker), 90), worker.log_text()
        for i in range(12):
            store.add_record(prediction_record(f"t{i:02d}"))
        assert wait_for(lambda: len(_calls(calls)) >= 1, 60, every_s=0.05)
        assert worker.stop(timeout_s=30) == 0  # mid-batch: the batch is finished and committed first
        statuses = _statuses(store)
        assert statuses["done"] >= 4 and statuses["done"] % 4 == 0 and statuses["done"] + statuses["pending"] == 12
        assert not any(row["lease_owner"] for row in map(store.record, (f"t{i:02d}" for i in range(12))))
        assert len(_calls(calls)) == statuses["done"]  # nothing analysed and thrown away
        assert "SIGTERM: finishing the batch in hand" in worker.log_text()
    finally:
        worker.stop()
        store.close()
