"""``medmlops.inference.forwarding``: records spooled while monitoring is down are delivered exactly once when it comes up,
against a minimal real HTTP receiver on 127.0.0.1; concurrent writers never share a file; the retry backoff is
jittered and bounded; a stop delivers what it can within its grace period and leaves the rest on disk; the spool is
owner-only, and one it cannot use is refused naming the path and the fix."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medmlops.inference.forwarding import Forwarder, SpoolError, next_backoff, prepare_spool
from medmlops.inference.record import PredictionRecord, RecordError

from ..conftest import _free_port


class Receiver:
    """POST /records: stores by request_id; a repeated id answers 409 (as the monitoring service will).

    With ``hang_after``, it stores that many records and then answers nothing more until closed (a monitoring service
    that stopped responding mid-delivery); with ``refuse``, it answers 422 to every record."""

    def __init__(self, port: int, hang_after: int | None = None, refuse: bool = False) -> None:
        self.records: dict[str, dict] = {}
        self.posts = 0
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                record = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.posts += 1
                if refuse:  # a record monitoring will never take
                    self.send_response(422)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if hang_after is not None and len(receiver.records) >= hang_after:
                    receiver.released.wait(60)
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                duplicate = record["request_id"] in receiver.records
                receiver.records.setdefault(record["request_id"], record)
                self.send_response(409 if duplicate else 201)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def _record(request_id: str, version: str = "1", **predictions: float) -> PredictionRecord:
    return PredictionRecord.build(request_id=request_id, family="cxr-findings", version=version,
                                  upload=f"image {request_id}".encode(), predictions=predictions, logits=[0.5])  # fmt: skip


def wait_for(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_records_spooled_while_down_are_delivered_exactly_once(tmp_path):
    port = _free_port()
    forwarder = Forwarder(f"http://127.0.0.1:{port}", tmp_path / "spool", min_backoff_s=0.05, max_backoff_s=0.2).start()
    try:
        for i in range(25):
            forwarder.submit(_record(f"r{i:03d}", p=i))
        time.sleep(0.5)  # the sender tries and fails meanwhile
        assert len(forwarder.pending()) == 25
        receiver = Receiver(port)
        try:
            assert wait_for(lambda: len(receiver.records) == 25 and not forwarder.pending())
            assert sorted(receiver.records) == [f"r{i:03d}" for i in range(25)]
            delivered = PredictionRecord.parse(receiver.records["r007"])  # the wire form monitoring parses
            assert delivered.predictions == {"p": 7} and delivered.upload == b"image r007"
            assert receiver.posts == 25  # nothing sent twice
        finally:
            receiver.close()
    finally:
        forwarder.stop()


@pytest.mark.reliability(
    "Faults",
    "serving's sender restarted with records still spooled, one of them already delivered",
    "the spool is delivered; the duplicate is not stored twice",
)
def test_a_restarted_sender_picks_up_the_spool_and_duplicates_count_as_delivered(tmp_path):
    port = _free_port()
    first = Forwarder(f"http://127.0.0.1:{port}", tmp_path / "spool")  # never started: as if killed
    for i in range(5):
        first.submit(_record(f"x{i}", version="2"))
    receiver = Receiver(port)
    receiver.records["x0"] = {"request_id": "x0"}  # delivered before the "crash", file not yet deleted
    second = Forwarder(f"http://127.0.0.1:{port}", tmp_path / "spool").start()
    try:
        assert wait_for(lambda: not second.pending())
        assert sorted(receiver.records) == ["x0", "x1", "x2", "x3", "x4"]
    finally:
        second.stop()
        receiver.close()


@pytest.mark.reliability(
    "Security",
    "a request id such as ../../etc/passwd reaching the spool",
    "refused with an error naming the id",
)
def test_unsafe_ids_and_unusable_spools_are_errors(tmp_path):
    forwarder = Forwarder("http://127.0.0.1:9", tmp_path / "spool")
    with pytest.raises(RecordError, match="etc/passwd"):  # no record can carry it, so none reaches the spool
        forwarder.submit(_record("../../etc/passwd"))
    assert forwarder.pending() == [] and [p.name for p in (tmp_path / "spool").iterdir()] == []
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError, match="cannot be created"):
        Forwarder("http://127.0.0.1:9", blocker / "spool")


def test_concurrent_writes_of_one_id_never_share_a_file(tmp_path):
    """The same id from 8 threads at once (before record ids were the server's, a client reusing its X-Request-ID
    did this: the writers shared one temporary file, half failed with 503 and one spool file was invalid JSON)."""
    forwarder = Forwarder("http://127.0.0.1:9", tmp_path / "spool")  # not started: the spool stays for reading
    records = [_record("same-id", p=i) for i in range(8)]
    barrier = threading.Barrier(len(records))

    def submit(record):
        barrier.wait()
        return forwarder.submit(record)

    with concurrent.futures.ThreadPoolExecutor(len(records)) as pool:
        list(pool.map(submit, records))  # none raises SpoolError
    kept = [PredictionRecord.parse(json.loads(p.read_text())) for p in forwarder.pending()]  # each file whole
    assert sorted(r.predictions["p"] for r in kept) == list(range(8))
    assert [p.name for p in (tmp_path / "spool").iterdir() if not p.name.endswith(".json")] == []  # no temp left


def test_the_backoff_is_jittered_and_bounded():
    rng = random.Random(7)
    waits, wait = [], 0.5
    for _ in range(2000):
        wait = next_backoff(wait, 0.5, 30.0, rng)
        waits.append(wait)
    assert all(0.5 <= w <= 30.0 for w in waits) and max(waits) == 30.0
    assert len(set(waits)) > 1000  # random, not a fixed ladder
    first = [next_backoff(0.5, 0.5, 30.0, random.Random(seed)) for seed in range(12)]  # 12 replicas, same failure
    assert len(set(first)) == 12 and all(0.5 <= w <= 1.5 for w in first)

    def ladder(seed: int, steps: int = 6) -> list[float]:
        rng, wait, waits = random.Random(seed), 0.5, []
        for _ in range(steps):
            wait = next_backoff(wait, 0.5, 30.0, rng)
            waits.append(wait)
        return waits

    assert ladder(3) == ladder(3) != ladder(4)  # seeded: repeatable; replicas: apart
    ladders = [ladder(seed) for seed in range(200)]
    means = [sum(column) / len(column) for column in zip(*ladders, strict=True)]
    assert means == sorted(means) and means[-1] > 8 * means[0]  # exponential on average
    assert next_backoff(100.0, 2.0, 1.0, random.Random(0)) == 2.0  # a cap below the floor: the floor


def test_a_stop_delivers_the_spool_within_its_grace_period(tmp_path):
    """Monitoring comes back while the sender is deep in its backoff: the stop wakes it and delivers at once."""
    port = _free_port()
    forwarder = Forwarder(f"http://127.0.0.1:{port}", tmp_path / "spool", min_backoff_s=30, max_backoff_s=60)
    forwarder.start()
    for i in range(5):
        forwarder.submit(_record(f"d{i}"))
    time.sleep(0.5)  # the first attempt (to a closed port) failed: the sender now waits 30-60 s
    assert forwarder.delivered == 0 and len(forwarder.pending()) == 5
    receiver = Receiver(port)
    try:
        started = time.monotonic()
        assert forwarder.stop(grace_s=10) == 0
        assert time.monotonic() - started < 5 and sorted(receiver.records) == [f"d{i}" for i in range(5)]
    finally:
        receiver.close()


@pytest.mark.reliability(
    "Faults",
    "serving stopped while monitoring stops answering mid-delivery",
    "the stop returns within its grace period; what was not delivered stays spooled, whole",
)
def test_a_stop_is_bounded_and_leaves_what_it_could_not_deliver(tmp_path):
    port = _free_port()
    receiver = Receiver(port, hang_after=2)
    forwarder = Forwarder(f"http://127.0.0.1:{port}", tmp_path / "spool", min_backoff_s=0.05, max_backoff_s=0.2)
    try:
        for i in range(6):
            forwarder.submit(_record(f"h{i}"))
        forwarder.start()
        assert wait_for(lambda: receiver.posts >= 3, 10)  # two stored, the third hangs
        started = time.monotonic()
        left = forwarder.stop(grace_s=1.5)
        assert time.monotonic() - started < 2.5
    finally:
        receiver.close()
    assert sorted(receiver.records) == ["h0", "h1"] and left == 4
    spooled = [PredictionRecord.parse(json.loads(p.read_text())).request_id for p in forwarder.pending()]
    assert spooled == ["h2", "h3", "h4", "h5"]


@pytest.mark.reliability(
    "Security",
    "the spool (patients' uploads) under a permissive umask, an older world-readable spool, a refused record",
    "folders 0700 and files 0600, rejected/ included; folders it did not make keep their mode",
)
def test_the_spool_is_owner_only_whatever_the_umask(tmp_path):
    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    port = _free_port()
    receiver = Receiver(port, refuse=True)
    outside = mode(tmp_path)
    old_umask = os.umask(0)
    try:
        (tmp_path / "old").mkdir(mode=0o755)  # a spool an older version made
        Forwarder("http://127.0.0.1:9", tmp_path / "old")
        forwarder = Forwarder(f"http://127.0.0.1:{port}", tmp_path / "new" / "spool", min_backoff_s=0.05)
        spooled = forwarder.submit(_record("m1"))
        assert mode(spooled) == 0o600
        forwarder.start()
        rejected = tmp_path / "new" / "spool" / "rejected" / spooled.name
        assert wait_for(rejected.exists, 10)
    finally:
        os.umask(old_umask)
        forwarder.stop()
        receiver.close()
    folders = [tmp_path / "old", tmp_path / "new", tmp_path / "new" / "spool", rejected.parent]
    assert [mode(f) for f in folders] == [0o700] * 4 and mode(rejected) == 0o600 and mode(tmp_path) == outside


@pytest.mark.parametrize("file_at", ["taken/spool", "taken"], ids=["the spool is a file", "a parent is a file"])
def test_a_spool_where_a_file_is_is_refused_naming_the_path_and_the_fix(tmp_path, file_at):
    spool, blocker = tmp_path / "taken" / "spool", tmp_path / file_at
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    with pytest.raises(SpoolError) as caught:
        prepare_spool(spool)
    assert str(caught.value) == (
        f"the monitoring spool {spool} cannot be created because {blocker} is a file, not a folder; move that file "
        "away or choose another spool folder (--spool-dir)"
    )
