"""``medmlops.inference.forwarding``: records spooled while monitoring is down are delivered exactly once when it comes up,
against a minimal real HTTP receiver on 127.0.0.1 (the monitoring service lands in a later issue)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medmlops.inference.forwarding import Forwarder, SpoolError
from medmlops.inference.record import PredictionRecord, RecordError

from ..conftest import _free_port


class Receiver:
    """POST /records: stores by request_id; a repeated id answers 409 (as the monitoring service will)."""

    def __init__(self, port: int) -> None:
        self.records: dict[str, dict] = {}
        self.posts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                record = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.posts += 1
                duplicate = record["request_id"] in receiver.records
                receiver.records.setdefault(record["request_id"], record)
                self.send_response(409 if duplicate else 201)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
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
