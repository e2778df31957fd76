"""``medmlops.monitoring.worker`` with an in-process fake analyser: exactly-once processing, failed uploads, a model that
cannot be loaded (retry delays, then failed), an analyser that raises, leases renewed through a slow batch, two
workers on one database, the background thread, the heartbeat."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from medmlops.monitoring.store import Store
from medmlops.monitoring.store.tables import results
from medmlops.monitoring.worker import AnalyserCache, Worker

from .fake_analyser import FakeAnalyser
from .records import prediction_record, wait_for


class Factory:
    """Counts loads; families in ``broken`` cannot be loaded."""

    def __init__(self, broken: set[str] | None = None) -> None:
        self.broken = set(broken or ())
        self.loads: list[tuple[str, str]] = []
        self.analysers: dict[tuple[str, str], FakeAnalyser] = {}

    def __call__(self, family: str, version: str) -> FakeAnalyser:
        self.loads.append((family, version))
        if family in self.broken:
            raise RuntimeError(f"registered model '{family}' version {version} not found")
        return self.analysers.setdefault((family, version), FakeAnalyser(family, version))


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'monitoring.db'}")
    yield store
    store.close()


def _drain(worker: Worker, limit: int = 50) -> int:
    rounds = 0
    while worker.run_once() and rounds < limit:
        rounds += 1
    return rounds


def _result_count(store: Store) -> int:
    with store.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(results)).scalar_one()


def test_each_record_is_analysed_once_in_batches_of_one_version(store):
    for i in range(10):
        store.add_record(prediction_record(f"r{i:02d}", version="3" if i % 3 else "4"))
    factory = Factory()
    worker = Worker(store, factory=factory, batch_size=4)
    _drain(worker)
    calls = {key: analyser.calls for key, analyser in factory.analysers.items()}
    assert sum(sum(c) for c in calls.values()) == 10 and all(n <= 4 for c in calls.values() for n in c)
    assert sum(calls[("cxr-findings", "4")]) == 4 and sum(calls[("cxr-findings", "3")]) == 6
    assert _result_count(store) == 10 and store.pending_count() == 0
    assert worker.run_once() == 0  # a done record is never taken again
    assert sum(sum(a.calls) for a in factory.analysers.values()) == 10
    assert store.record("r05")["result"]["version"] == "3"  # analysed by the version that predicted it


def test_a_batch_analysed_but_not_committed_is_processed_by_another_worker_once_its_lease_expires(store):
    """A process killed mid-batch: nothing was committed, its leases run out, another worker takes the records."""
    for i in range(3):
        store.add_record(prediction_record(f"r{i}"))
    now = [1_000.0]
    dead = Worker(store, factory=Factory(), lease_s=30, clock=lambda: now[0], owner="dead")
    batch = store.claim(dead.owner, 8, lease_s=dead.lease_s, now=now[0])
    FakeAnalyser("cxr-findings", "3").analyse_bytes([r.upload for r in batch])  # ... and then the process died
    factory = Factory()
    other = Worker(store, factory=factory, lease_s=30, clock=lambda: now[0], owner="other")
    assert other.run_once() == 0 and store.pending_count() == 3  # still leased to the dead worker
    now[0] += 31
    _drain(other)
    assert _result_count(store) == 3 and store.pending_count() == 0
    assert sum(sum(a.calls) for a in factory.analysers.values()) == 3
    assert {store.record(f"r{i}")["attempts"] for i in range(3)} == {2}


def test_two_workers_on_one_database_take_disjoint_batches(store):
    for i in range(10):
        store.add_record(prediction_record(f"r{i:02d}"))
    factory = Factory()
    first, second = (Worker(store, factory=factory, batch_size=3, owner=name) for name in ("first", "second"))
    while first.run_once() + second.run_once():
        pass
    assert _result_count(store) == 10 and sum(factory.analysers[("cxr-findings", "3")].calls) == 10
    assert first.processed + second.processed == 10 and first.processed and second.processed


def test_a_slow_batch_keeps_its_leases_and_a_lost_lease_drops_the_result(store):
    store.add_record(prediction_record("slow"))
    seen: list[float] = []

    class Slow(FakeAnalyser):
        def analyse_bytes(self, uploads):
            time.sleep(1.6)  # longer than the lease: only the renewals (every 0.2 s) keep it
            seen.append(store.record("slow")["lease_expires"] - time.time())
            return super().analyse_bytes(uploads)

    worker = Worker(store, factory=lambda f, v: Slow(f, v), lease_s=0.6, owner="slow-worker")
    assert worker.run_once() == 1 and store.record("slow")["status"] == "done" and seen[0] > 0

    store.add_record(prediction_record("stolen"))

    class Robbed(FakeAnalyser):
        def analyse_bytes(self, uploads):  # another worker takes the record meanwhile (this one's lease had lapsed)
            with store.engine.begin() as connection:
                connection.exec_driver_sql("UPDATE records SET lease_owner = 'thief' WHERE request_id = 'stolen'")
            return super().analyse_bytes(uploads)

    robbed = Worker(store, factory=lambda f, v: Robbed(f, v), owner="robbed")
    robbed.run_once()
    assert store.record("stolen")["status"] == "pending" and store.record("stolen")["lease_owner"] == "thief"


def test_an_input_error_fails_that_record_only(store):
    store.add_record(prediction_record("good1"))
    store.add_record(prediction_record("bad", data=b"BAD upload"))
    store.add_record(prediction_record("good2"))
    worker = Worker(store, factory=Factory())
    _drain(worker)
    bad = store.record("bad")
    assert bad["status"] == "failed" and bad["error"].startswith("unreadable_image: the upload is not")
    assert bad["result"] is None and store.saliency_png("bad") is None
    assert [store.record(r)["status"] for r in ("good1", "good2")] == ["done", "done"]
    assert (worker.processed, worker.failed) == (2, 1)


def test_a_model_that_cannot_be_loaded_waits_out_retry_delays_then_fails_visibly(store, caplog):
    store.add_record(prediction_record("m1", family="missing"))
    store.add_record(prediction_record("m2", family="missing"))
    store.add_record(prediction_record("ok", family="cxr-findings"))
    factory = Factory(broken={"missing"})
    now = [100.0]
    worker = Worker(store, factory=factory, min_backoff_s=10, max_backoff_s=60, max_attempts=4, clock=lambda: now[0])
    with caplog.at_level("ERROR"):
        _drain(worker)
        _drain(worker)
    assert "model missing version 3 cannot be loaded" in caplog.text
    assert store.record("ok")["status"] == "done"  # the other family went on
    m1 = store.record("m1")
    assert m1["status"] == "pending" and m1["attempts"] == 1 and "not found" in m1["error"]
    assert m1["lease_owner"] is None and m1["lease_expires"] == 110.0  # the retry delay every worker sees
    assert factory.loads.count(("missing", "3")) == 1  # waiting: not retried at once
    now[0] += 10.5
    worker.run_once()
    assert factory.loads.count(("missing", "3")) == 2 and store.record("m1")["attempts"] == 2
    now[0] += 15  # the delay doubled to 20 s
    _drain(worker)
    assert store.record("m1")["attempts"] == 2
    factory.broken.clear()  # the registry is back
    now[0] += 6
    _drain(worker)
    assert store.record("m1")["status"] == "done" and store.record("m1")["error"] is None

    store.add_record(prediction_record("gone", family="missing", version="999"))
    factory.broken.add("missing")
    for _ in range(4):
        _drain(worker)
        now[0] += 60
    gone = store.record("gone")
    assert gone["status"] == "failed" and gone["attempts"] == 4
    assert gone["error"].startswith("model missing version 999 cannot be loaded")
    assert gone["error"].endswith("gave up after 4 attempts")


def test_an_upload_that_makes_the_analyser_raise_fails_after_max_attempts_others_go_on(store):
    store.add_record(prediction_record("a"))
    store.add_record(prediction_record("poison", data=b"RAISE please"))
    store.add_record(prediction_record("b"))
    worker = Worker(store, factory=Factory(), max_attempts=3, min_backoff_s=0)
    _drain(worker)
    assert store.record("a")["status"] == "done" and store.record("b")["status"] == "done"
    poison = store.record("poison")
    assert poison["status"] == "failed" and poison["attempts"] == 3
    assert "analysis failed: RuntimeError: the analyser crashed; gave up after 3 attempts" in poison["error"]


def test_the_analyser_cache_keeps_the_most_recently_used_versions():
    factory = Factory()
    cache = AnalyserCache(factory, size=2)
    for version in ("1", "2", "1", "3", "1", "2"):
        cache.get("cxr-findings", version)
    assert factory.loads == [("cxr-findings", v) for v in ("1", "2", "3", "2")]


def test_the_background_thread_processes_new_records_and_stops(store, tmp_path):
    seen: list[tuple] = []
    beat = tmp_path / "heartbeat"
    worker = Worker(store, factory=Factory(), poll_s=600.0, on_batch=lambda *a: seen.append(a), heartbeat=beat)
    worker.start()
    try:
        assert worker.running
        for i in range(5):
            store.add_record(prediction_record(f"r{i}"))
        worker.wake()  # not the 10-minute poll
        assert wait_for(lambda: store.pending_count() == 0, timeout_s=60)
    finally:
        assert worker.stop(timeout_s=10)
    assert not worker.running
    assert sum(s[3] for s in seen) == 5 and all(s[:2] == ("cxr-findings", "3") for s in seen)
    assert time.time() - beat.stat().st_mtime < 60  # touched on every poll
