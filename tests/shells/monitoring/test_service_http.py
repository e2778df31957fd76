"""``medmlops monitor serve`` as a real process on 127.0.0.1 (fake analyser and logit-tier source, temp SQLite):
ingest with the logit tier at once and the saliency tier after, 409 on a duplicate, auth, bad and hostile input
answered 4xx JSON with the server staying up, /metrics names and labels, the forwarder delivering spooled records,
clean SIGTERM, refusal to listen beyond loopback without a token, ``--no-worker`` with a ``medmlops monitor worker``
process doing the saliency tier, and the kill test: SIGKILL mid-processing, restart, every record processed exactly
once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medmlops.inference.forwarding import Forwarder
from medmlops.inference.record import PredictionRecord
from medmlops.monitoring.store import Store

from ...browser import CHROMIUM, CHROMIUM_ARGS, watch
from ...conftest import REPO
from ...monitoring.fake_analyser import CLASSES
from ...monitoring.records import UNSURE, call, make_record, start_monitor, start_worker, wait_for

pytestmark = pytest.mark.timeout(300)
WRITE = "write-secret"
READ = "read-secret"
MAX_BODY = 410_000  # room for a JSON body nested 200,000 deep (400 kB), which must be refused for its depth
METRIC_NAMES = (
    "medmlops_monitoring_http_requests_total", "medmlops_informer_flag_rate", "medmlops_drift_share",
    "medmlops_drift_report_timestamp_seconds", "medmlops_monitoring_records_ingested_total",
    "medmlops_monitoring_processing_seconds", "medmlops_monitoring_queue_depth", "medmlops_monitoring_queue_pending",
    "medmlops_logit_flag_rate", "medmlops_monitoring_records", "medmlops_ood_rate",
)  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("monitor-http")
    server = start_monitor(workdir, "--max-body-bytes", str(MAX_BODY), "--batch-size", "4", env={
        "MEDMLOPS_MONITORING_TOKEN": WRITE})  # fmt: skip
    yield server
    server.stop()


def _post(url: str, record, token: str | None = WRITE, **kwargs):
    return call(f"{url}/records", method="POST", body=record, token=token, **kwargs)


def _done(url: str, request_id: str, timeout_s: float = 60.0) -> dict:
    state: dict = {}

    def finished() -> bool:
        state.update(call(f"{url}/v1/records/{request_id}")[1])
        return state.get("status") in ("done", "failed")

    assert wait_for(finished, timeout_s), state
    return state


def test_a_record_is_accepted_then_processed_and_a_duplicate_is_409(served):
    record = make_record("http-ok-1")
    status, body, _ = _post(served.url, record)
    assert (status, body) == (202, {"request_id": "http-ok-1", "status": "accepted"})
    status, body, _ = call(f"{served.url}/v1/records/http-ok-1")
    assert status == 200 and body["status"] in ("pending", "done") and body["model"] == "cxr-findings"
    status, body, _ = _post(served.url, make_record("http-ok-1", version="9"))
    assert status == 409 and body["error"] == "duplicate" and "http-ok-1" in body["detail"]

    result = _done(served.url, "http-ok-1")
    assert result["status"] == "done" and result["version"] == "3" and result["error"] is None
    assert result["classes"] == CLASSES and result["tier"] == "saliency" and result["saliency_tier"]["at"]
    assert result["logit_tier"]["at"] <= result["saliency_tier"]["at"] and result["logit_tier"]["flagged"] is False
    assert (
        set(result["distinctiveness"]) == set(result["flags"]) == set(result["probabilities"]) == set(result["classes"])
    )
    assert result["entropy"] and result["labels"] and isinstance(result["flagged"], bool)
    assert result["predictions"] == record["predictions"]  # serving's own answer is kept beside INFORMER's
    status, png, headers = call(f"{served.url}{result['saliency_url']}")
    assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG")


def test_summary_timeseries_flagged_families_and_labels(served):
    now = time.time()
    for i in range(6):
        assert _post(served.url, make_record(f"sum-{i}", family="covid-prognosis", version=str(1 + i % 2),
                                             created_at=now - 7200 + 1800 * i))[0] == 202  # fmt: skip
    assert _post(served.url, make_record("sum-bad", family="covid-prognosis", version="1", data=b"BAD bytes"))[0] == 202
    for i in range(6):
        _done(served.url, f"sum-{i}")
    assert _done(served.url, "sum-bad")["status"] == "failed"

    status, summary, _ = call(f"{served.url}/v1/summary?family=covid-prognosis")
    assert status == 200
    assert summary["counts"] == {"total": 7, "pending": 0, "done": 6, "failed": 1,
                                 "flagged": summary["counts"]["flagged"]}  # fmt: skip
    assert {v["version"]: v["counts"]["done"] for v in summary["versions"]} == {"1": 3, "2": 3}
    assert set(summary["flag_rate"]) == set(CLASSES) and summary["estimate"]["complete"]
    assert all(0 <= r <= 1 for r in summary["flag_rate"].values())
    since = now - 7200 + 1800 * 4 - 1
    status, windowed, _ = call(f"{served.url}/v1/summary?family=covid-prognosis&version=1&since={since}")
    assert windowed["counts"]["done"] == 1  # sum-4 only (version 1, created in the window)

    status, series, _ = call(f"{served.url}/v1/timeseries?family=covid-prognosis&bucket_s=3600")
    assert status == 200 and series["classes"] == CLASSES
    assert sum(p["n"] for p in series["points"]) == 6 and len(series["points"]) >= 3
    assert [p["t"] for p in series["points"]] == sorted(p["t"] for p in series["points"])

    status, flagged, _ = call(f"{served.url}/v1/flagged?family=covid-prognosis&limit=50")
    assert status == 200 and len(flagged["cases"]) == summary["counts"]["flagged"]
    for case in flagged["cases"]:
        assert case["flagged_classes"] and set(case["flagged_classes"]) <= set(case["distinctiveness"])

    status, families, _ = call(f"{served.url}/v1/families")
    assert {f["family"] for f in families["families"]} >= {"covid-prognosis"}

    labels = {"request_id": "sum-0", "labels": {"Atelectasis": 1, "Cardiomegaly": 0}}
    status, body, _ = call(f"{served.url}/v1/labels", method="POST", body=labels, token=WRITE)
    assert status == 200 and body["status"] == "stored"
    assert call(f"{served.url}/v1/records/sum-0")[1]["ground_truth"] == labels["labels"]
    status, body, _ = call(f"{served.url}/v1/labels", method="POST", body={**labels, "request_id": "nope"}, token=WRITE)
    assert status == 404 and body["error"] == "unknown_request_id"


@pytest.mark.reliability(
    "Security",
    "monitoring writes with no token, a wrong one, the read token",
    "401 with WWW-Authenticate: Bearer; nothing stored",
)
def test_writes_need_the_token_reads_are_open(served):
    record = make_record("auth-1")
    for token in (None, "wrong", READ):
        status, body, headers = _post(served.url, record, token=token)
        assert status == 401 and body["error"] == "unauthorized" and "Authorization: Bearer" in body["detail"]
        assert headers["www-authenticate"] == "Bearer"
    status, body, _ = call(f"{served.url}/v1/labels", method="POST", body={"request_id": "x", "labels": {"a": 1}})
    assert status == 401
    assert call(f"{served.url}/v1/records/auth-1")[0] == 404  # nothing stored by the refused posts
    assert _post(served.url, record)[0] == 202
    for path in ("/v1/records/auth-1", "/v1/summary", "/v1/families", "/healthz", "/metrics", "/dashboard"):
        assert call(f"{served.url}{path}")[0] == 200, path


@pytest.mark.reliability(
    "Security",
    "monitoring reads without the read token, or with a wrong one",
    "401; probes and metrics stay open",
)
def test_a_read_token_guards_reads_but_not_probes(tmp_path):
    server = start_monitor(tmp_path, "--token", WRITE, "--read-token", READ)
    try:
        assert _post(server.url, make_record("rt-1"))[0] == 202
        assert _post(server.url, make_record("rt-2"), token=READ)[0] == 401  # the read token cannot write
        for path in ("/v1/records/rt-1", "/v1/summary", "/v1/timeseries", "/v1/records/rt-1/saliency.png"):
            status, body, _ = call(f"{server.url}{path}")
            assert status == 401 and body["error"] == "unauthorized", path
            assert call(f"{server.url}{path}", token="wrong")[0] == 401
        assert call(f"{server.url}/v1/records/rt-1", token=READ)[0] == 200
        assert call(f"{server.url}/v1/records/rt-1", token=WRITE)[0] == 200  # the write token reads too
        for path in ("/healthz", "/metrics", "/dashboard"):
            assert call(f"{server.url}{path}")[0] == 200, path
    finally:
        assert server.stop() == 0


def _raw(url: str, body: bytes, content_type: str | None):
    return call(f"{url}/records", method="POST", raw=body, token=WRITE, content_type=content_type)


@pytest.mark.reliability(
    "Bad input",
    "malformed records posted to monitoring",
    "a 4xx JSON naming the problem for each; the service stays up",
)
def test_bad_requests_get_a_4xx_json_naming_the_problem_and_the_server_stays_up(served):
    good = make_record("bad-corpus-good")
    too_big = make_record("big", data=os.urandom(MAX_BODY * 3 // 4 + 2_000))  # base64: just over the limit
    no_sha = make_record("x1")
    del no_sha["input"]["sha256"]
    cases = [
        (_raw(served.url, b"{not json", "application/json"), 400, "bad_json"),
        (_raw(served.url, b"\xff\xfe\x00", "application/json"), 400, "bad_json"),
        (_raw(served.url, json.dumps(good).encode(), "text/plain"), 415, "wrong_content_type"),
        (_raw(served.url, json.dumps(good).encode(), None), 415, "wrong_content_type"),
        (_raw(served.url, json.dumps(too_big).encode(), "application/json"), 413, "too_large"),
        (_raw(served.url, b"[1, 2]", "application/json"), 422, "bad_type"),
        (_post(served.url, {**good, "request_id": None}), 422, "missing_field"),
        (_post(served.url, {**good, "request_id": "../etc/passwd"}), 422, "bad_request_id"),
        (_post(served.url, no_sha), 422, "missing_field"),
        (_post(served.url, {**good, "input": {**good["input"], "bytes_b64": "%%%"}}), 422, "bad_base64"),
        (_post(served.url, {**good, "input": {**good["input"], "sha256": "f" * 64}}), 422, "sha256_mismatch"),
        (_post(served.url, {**good, "created_at": "noon"}), 422, "bad_time"),
        (
            call(f"{served.url}/v1/labels", method="POST", body={"request_id": "x", "labels": {"a": 3}}, token=WRITE),
            422,
            "bad_label",
        ),  # fmt: skip
        (call(f"{served.url}/v1/labels", method="POST", raw=b"{", token=WRITE), 400, "bad_json"),
        (call(f"{served.url}/v1/records/unknown-id"), 404, "unknown_request_id"),
        (call(f"{served.url}/v1/records/unknown-id/saliency.png"), 404, "unknown_request_id"),
        (call(f"{served.url}/v1/summary?since=yesterday"), 422, "bad_query"),
        (call(f"{served.url}/v1/timeseries?bucket_s=-5"), 422, "bad_query"),
        (call(f"{served.url}/v1/timeseries?bucket_s=abc"), 422, "bad_query"),
        (call(f"{served.url}/v1/flagged?limit=many"), 422, "bad_query"),
        (call(f"{served.url}/v1/drift/abc/report.html"), 422, "bad_request"),
        (call(f"{served.url}/v1/drift/12345/report.html"), 404, "no_report"),
        (call(f"{served.url}/no/such/route"), 404, "not_found"),
        (call(f"{served.url}/records"), 405, "method_not_allowed"),
        # Found by a hostile test run: each was a 500 (or a stored record nothing could show).
        *((call(f"{served.url}/v1/flagged?limit={limit}"), 422, "bad_query") for limit in ("inf", "nan", "1e400")),
        (call(f"{served.url}/v1/summary?since=-1e300"), 422, "bad_query"),
        (call(f"{served.url}/v1/timeseries?until=1e300"), 422, "bad_query"),
        (call(f"{served.url}/v1/drift/99999999999999999999/report.html"), 404, "no_report"),
        (_raw(served.url, b"[" * 200_000 + b"]" * 200_000, "application/json"), 400, "bad_json"),
        (call(f"{served.url}/v1/labels", method="POST", raw=b'{"a":' * 80_000 + b"1" + b"}" * 80_000, token=WRITE),
         400, "bad_json"),
        (_post(served.url, {**good, "predictions": json.loads("[" * 500 + "]" * 500)}), 400, "bad_json"),
        (_post(served.url, {**good, "created_at": 1e18}), 422, "bad_time"),
        (call(f"{served.url}/v1/records/a%00b"), 422, "bad_request_id"),
        (call(f"{served.url}/v1/summary?family=cxr%00findings"), 422, "bad_query"),
    ]  # fmt: skip
    for (status, body, _headers), expected, error in cases:
        assert status == expected and isinstance(body, dict), (expected, error, status, body)
        assert body["error"] == error and body["detail"].strip(), body
    deep = _raw(served.url, b"[" * 200_000 + b"]" * 200_000, "application/json")[1]
    assert deep["detail"] == "the body nests more than 64 levels" and deep["field"] == "body"
    named = _post(served.url, no_sha)[1]
    assert named["field"] == "input.sha256" and "'input.sha256'" in named["detail"]
    assert call(f"{served.url}/v1/records/big")[0] == 404  # nothing of the refused records was stored
    assert _post(served.url, good)[0] == 202  # still serving
    assert call(f"{served.url}/healthz")[0] == 200
    assert served.process.poll() is None


def test_metrics_export_the_names_the_alert_rules_use(served):
    out = {"in_distribution": False, "ood": {"score": 9.0, "threshold": 4.0}}  # serving's verdict
    assert _post(served.url, {**make_record("metrics-1", family="ich-prognosis"), **out})[0] == 202
    _done(served.url, "metrics-1")
    store = Store(served.db_url)  # what `medmlops monitor report` does from another process
    try:
        store.add_drift_report("ich-prognosis", {"drift_share": 0.25, "detected": False, "n_current": 1,
                                                 "n_reference": 10, "created_at": 1_790_000_000.5})  # fmt: skip
    finally:
        store.close()
    call(f"{served.url}/no/such/route")
    status, text, headers = call(f"{served.url}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = text.decode()
    for name in METRIC_NAMES:
        assert f"\n{name}" in text, name
    assert 'medmlops_drift_share{family="ich-prognosis"} 0.25' in text
    assert 'medmlops_drift_report_timestamp_seconds{family="ich-prognosis"} 1.7900000005e+09' in text
    assert 'medmlops_monitoring_records_ingested_total{family="ich-prognosis",version="3"} 1.0' in text
    assert f'medmlops_informer_flag_rate{{class_name="{CLASSES[0]}",family="ich-prognosis",version="3"}}' in text
    assert f'medmlops_logit_flag_rate{{class_name="{CLASSES[0]}",family="ich-prognosis",version="3"}} 0.0' in text
    assert 'medmlops_ood_rate{family="ich-prognosis",version="3"} 1.0' in text
    assert 'medmlops_monitoring_records_processed_total{family="ich-prognosis",status="done",version="3"}' in text
    assert re.search(r"^medmlops_monitoring_queue_depth \d", text, flags=re.MULTILINE)
    assert 'medmlops_monitoring_http_requests_total{handler="/records",method="POST",status="202"}' in text
    assert 'handler="unmatched",method="GET",status="404"' in text
    assert "medmlops_monitoring_processing_seconds_count" in text


def test_the_forwarder_delivers_spooled_records_exactly_once(served, tmp_path):
    forwarder = Forwarder(served.url, tmp_path / "spool", token=WRITE, min_backoff_s=0.05, max_backoff_s=0.5)
    assert _post(served.url, make_record("fwd-0"))[0] == 202  # already there: its 409 counts as delivered
    for i in range(4):
        forwarder.submit(PredictionRecord.parse(make_record(f"fwd-{i}")))
    forwarder.start()
    try:
        assert wait_for(lambda: not forwarder.pending(), timeout_s=30)
    finally:
        forwarder.stop()
    assert forwarder.delivered == 4 and not (tmp_path / "spool" / "rejected").exists()
    for i in range(4):
        assert _done(served.url, f"fwd-{i}")["status"] == "done"


def test_the_dashboard_renders_in_headless_chromium_without_errors(served, tmp_path):
    """Debian's Chromium (``make browser``) driven by Playwright: charts, drift status and saliency thumbnails render,
    no console error, no failed request; a screenshot is kept."""
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: run `make browser` (Debian's chromium package)"
    from playwright.sync_api import sync_playwright

    study = {"accession_number": "ACC-DASH-1", "study_instance_uid": "1.2.840.1"}
    flagged_ood = {"in_distribution": False, "ood": {"score": 9.0, "threshold": 4.0}, "study": study}
    assert _post(served.url, {**make_record("dash-1", family="dash"), **flagged_ood})[0] == 202
    for i in range(2, 12):
        _post(served.url, make_record(f"dash-{i}", family="dash", created_at=time.time() - 600 * i))
    for i in range(1, 12):
        _done(served.url, f"dash-{i}")
    store = Store(served.db_url)
    try:
        store.add_drift_report("dash", {"drift_share": 0.6, "detected": True, "n_current": 11, "n_reference": 30,
                                        "html_path": str(tmp_path / "report.html")})  # fmt: skip
    finally:
        store.close()
    (tmp_path / "report.html").write_text("<html><body>drift</body></html>")
    page_html = call(f"{served.url}/dashboard")[1].decode()
    assert "<script src" not in page_html and "http://" not in page_html and "https://" not in page_html

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            problems = watch(page)
            page.goto(f"{served.url}/dashboard#family=dash", wait_until="networkidle")
            page.wait_for_selector("#chart svg polyline", timeout=20_000)
            page.wait_for_selector("#cases img", timeout=20_000)
            page.wait_for_function(
                "[...document.querySelectorAll('#cases img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=20_000,
            )
            chart = page.inner_html("#chart")
            drift = page.inner_text("#drift")
            n_thumbnails = page.locator("#cases img").count()
            ood_rate, cases_text = page.inner_text("#ood-rate"), page.inner_text("#cases")
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert problems == [], problems
    # Two classes, each the INFORMER rate (solid) and the ingest tier (dashed); a line breaks over gaps in traffic.
    assert chart.count("<polyline") >= 4 and "Atelectasis (INFORMER)" in chart and "Cardiomegaly (at ingest)" in chart
    assert "drift detected" in drift and "60.0 %" in drift
    assert "100.0 %" in ood_rate and "1 / 1" in ood_rate  # dash-1 is the one record with a verdict
    assert "ACC-DASH-1" in cases_text and "out of distribution" in cases_text  # the flagged case and its study
    flagged = call(f"{served.url}/v1/flagged?family=dash")[1]["cases"]
    assert flagged and n_thumbnails >= 1
    from PIL import Image

    picture = Image.open(shot).convert("L")
    assert picture.size[0] == 1280 and len(set(picture.getdata())) > 20, "the screenshot is blank"
    print(f"dashboard screenshot: {shot}")


@pytest.mark.reliability(
    "Faults",
    "SIGTERM to the monitoring service",
    "the worker stops and the process exits 0",
)
def test_sigterm_stops_the_worker_and_exits_cleanly(tmp_path):
    server = start_monitor(tmp_path)
    assert _post(server.url, make_record("term-1"), token=None)[0] == 202  # loopback without a token: open
    _done(server.url, "term-1")
    assert server.stop() == 0
    log = server.log_text()
    assert "no write token" in log and re.search(r"monitoring worker \S+ stopped", log)
    assert "Application shutdown complete" in log
    assert f"monitoring on {server.url}" in log


@pytest.mark.reliability(
    "Security",
    "monitoring asked to listen on 0.0.0.0 without a write token",
    "refuses in one sentence; no database created",
)
def test_it_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MEDMLOPS_MONITORING_TOKEN"}
    run = subprocess.run(
        [sys.executable, "-m", "medmlops.cli", "monitor", "serve", "--host", "0.0.0.0", "--port", "1",
         "--db-url", f"sqlite:///{tmp_path / 'm.db'}", "--repo", str(REPO)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 1
    message = run.stderr.strip().splitlines()[-1]
    assert message.startswith("medmlops: error: refusing to listen on 0.0.0.0 without a write token"), run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "m.db").exists()


def _sqlite_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30) as db:
        counts = dict(db.execute("SELECT status, COUNT(*) FROM records GROUP BY status").fetchall())
        counts["results"] = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    return counts


@pytest.mark.reliability(
    "Faults",
    "monitoring SIGKILLed mid-batch with 40 records queued, then restarted",
    "every record processed exactly once; results committed before the kill kept",
)
def test_sigkill_mid_processing_then_restart_processes_every_record_exactly_once(tmp_path):
    n = 40
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    # A short lease: the restarted service's worker takes the killed one's records once their leases run out.
    server = start_monitor(tmp_path, "--batch-size", "4", "--lease-s", "3", env={"FAKE_ANALYSER_DELAY_S": "0.15",
                                                               "FAKE_ANALYSER_LOG": str(first_log)})  # fmt: skip
    db_path = tmp_path / "monitoring.db"
    try:
        for i in range(n):
            assert _post(server.url, make_record(f"kill-{i:02d}"), token=None)[0] == 202

        def mid_batch() -> bool:  # 8+ records done and the next batch being analysed
            done = _sqlite_counts(db_path).get("done", 0)
            return done >= 8 and first_log.exists() and len(first_log.read_text().split()) > done

        assert wait_for(mid_batch, timeout_s=120, every_s=0.03)
        server.process.send_signal(signal.SIGKILL)  # no shutdown
        server.process.wait(timeout=10)
    finally:
        server.stop()
    at_kill = _sqlite_counts(db_path)
    assert 8 <= at_kill.get("done", 0) < n and at_kill.get("pending", 0) == n - at_kill["done"]
    assert at_kill["results"] == at_kill["done"]
    assert len(first_log.read_text().split()) > at_kill["done"]  # killed with analysed, uncommitted records
    with sqlite3.connect(db_path) as db:
        done_before = dict(db.execute("SELECT request_id, processed_at FROM results").fetchall())

    restarted = start_monitor(tmp_path, env={"FAKE_ANALYSER_LOG": str(second_log)}, name="restarted")
    try:
        assert wait_for(lambda: _sqlite_counts(db_path).get("done", 0) == n, timeout_s=120)
    finally:
        assert restarted.stop() == 0
    final = _sqlite_counts(db_path)
    assert final == {"done": n, "results": n}  # none lost, none failed, one result each
    with sqlite3.connect(db_path) as db:
        after = dict(db.execute("SELECT request_id, processed_at FROM results").fetchall())
        assert db.execute("SELECT COUNT(DISTINCT request_id) FROM results").fetchone()[0] == n
    assert {k: after[k] for k in done_before} == done_before  # results committed before the kill were kept
    reanalysed = second_log.read_text().split()
    assert len(set(reanalysed)) == len(reanalysed)
    assert len(reanalysed) == n - len(done_before)  # the restart analysed exactly the records not yet done
    hashes_done = {hashlib.sha256(f"image-{k}".encode()).hexdigest() for k in done_before}
    assert not hashes_done & set(reanalysed)  # nothing done was processed again


def test_no_worker_answers_with_the_logit_tier_and_a_worker_process_adds_the_saliency_tier(tmp_path):
    """The cluster's split: ``monitor serve --no-worker`` stores records with their logit tier and analyses nothing;
    a ``medmlops monitor worker`` process on the same database does the saliency tier."""
    server = start_monitor(tmp_path, "--no-worker")
    worker = None
    try:
        assert call(f"{server.url}/healthz")[1]["worker"] == "off"
        assert _post(server.url, make_record("split-sure"), token=None)[0] == 202
        assert _post(server.url, make_record("split-unsure", logits=UNSURE), token=None)[0] == 202
        time.sleep(1.5)  # an in-process worker would have taken them by now
        waiting = call(f"{server.url}/v1/records/split-unsure")[1]
        assert (waiting["status"], waiting["tier"], waiting["saliency_tier"]) == ("pending", "logit", None)
        assert waiting["logit_tier"]["flagged"] is True and waiting["queue"]["stratum"] == "flagged"
        summary = call(f"{server.url}/v1/summary")[1]
        assert summary["logit"]["flagged"] == 1 and summary["flag_rate"] == {} and summary["flagged_rate"] is None
        text = call(f"{server.url}/metrics")[1].decode()
        assert 'medmlops_monitoring_queue_pending{family="cxr-findings",version="3"} 2.0' in text
        assert "medmlops_monitoring_queue_depth 2.0" in text

        worker = start_worker(tmp_path, db_url=server.db_url)
        for request_id in ("split-sure", "split-unsure"):
            done = _done(server.url, request_id)
            assert done["status"] == "done" and done["tier"] == "saliency" and done["queue"]["lease_owner"] is None
        text = call(f"{server.url}/metrics")[1].decode()
        assert "medmlops_monitoring_queue_depth 0.0" in text
        # The work of another process shows on the API's /metrics: read from the database, not counted here.
        assert 'medmlops_monitoring_records{family="cxr-findings",status="done",version="3"} 2.0' in text
    finally:
        if worker is not None:
            assert worker.stop() == 0
        assert server.stop() == 0
