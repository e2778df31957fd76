"""``medmlops.monitoring.worker`` with an in-process fake analyser: exactly-once processing, failed uploads, a model that
cannot be loaded, an analyser that raises, the background thread."""

from __future__ import annotations

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


def test_a_batch_analysed_but_not_committed_is_processed_by_the_next_worker(store):
    """A process killed mid-batch: nothing was committed, so the records are still pending."""
    for i in range(3):
        store.add_record(prediction_record(f"r{i}"))
    batch = store.next_batch(8)
    FakeAnalyser("cxr-findings", "3").analyse_bytes([r.upload for r in batch])  # ... and then the process died
    assert store.pending_count() == 3
    _drain(Worker(store, factory=Factory()))
    assert _result_count(store) == 3 and store.pending_count() == 0


def test_two_workers_racing_on_one_record_commit_one_result(store):
    store.add_record(prediction_record("r1"))
    first, second = store.next_batch(8), store.next_batch(8)  # both replicas took it
    analyser = FakeAnalyser("cxr-findings", "3")
    (one,), (two,) = analyser.analyse_bytes([first[0].upload]), analyser.analyse_bytes([second[0].upload])
    assert store.finish({"r1": one}) == 1
    assert store.finish({"r1": two}) == 0
    assert _result_count(store) == 1


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


def test_a_model_that_cannot_be_loaded_leaves_its_records_pending_and_backs_off(store, caplog):
    store.add_record(prediction_record("m1", family="missing"))
    store.add_record(prediction_record("m2", family="missing"))
    store.add_record(prediction_record("ok", family="cxr-findings"))
    factory = Factory(broken={"missing"})
    now = [100.0]
    worker = Worker(store, factory=factory, min_backoff_s=10, max_backoff_s=60, clock=lambda: now[0])
    with caplog.at_level("ERROR"):
        _drain(worker)
        _drain(worker)
    assert "model missing version 3 cannot be loaded" in caplog.text
    assert store.record("ok")["status"] == "done"  # the other family went on
    m1 = store.record("m1")
    assert m1["status"] == "pending" and m1["attempts"] == 1 and "not found" in m1["error"]
    assert factory.loads.count(("missing", "3")) == 1  # backing off: not retried at once
    now[0] += 10.5
    worker.run_once()
    assert factory.loads.count(("missing", "3")) == 2 and store.record("m1")["attempts"] == 2
    factory.broken.clear()  # the registry is back
    now[0] += 15  # the backoff doubled to 20 s
    _drain(worker)
    assert store.record("m1")["status"] == "pending"
    now[0] += 6
    _drain(worker)
    assert store.record("m1")["status"] == "done" and store.record("m2")["status"] == "done"
    assert store.record("m1")["error"] is None


def test_an_upload_that_makes_the_analyser_raise_fails_after_max_attempts_others_go_on(store):
    store.add_record(prediction_record("a"))
    store.add_record(prediction_record("poison", data=b"RAISE please"))
    store.add_record(prediction_record("b"))
    worker = Worker(store, factory=Factory(), max_attempts=3)
    _drain(worker)
    assert store.record("a")["status"] == "done" and store.record("b")["status"] == "done"
    poison = store.record("poison")
    assert poison["status"] == "failed" and poison["attempts"] == 3
    assert "analysis failed 3 times: RuntimeError: the analyser crashed" in poison["error"]


def test_the_analyser_cache_keeps_the_most_recently_used_versions():
    factory = Factory()
    cache = AnalyserCache(factory, size=2)
    for version in ("1", "2", "1", "3", "1", "2"):
        cache.get("cxr-findings", version)
    assert factory.loads == [("cxr-findings", v) for v in ("1", "2", "3", "2")]


def test_the_background_thread_processes_new_records_and_stops(store):
    seen: list[tuple] = []
    worker = Worker(store, factory=Factory(), poll_s=600.0, on_batch=lambda *a: seen.append(a)).start()
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
