"""The dashboard's trends and readability, against the real monitoring server on 127.0.0.1 and Debian's Chromium
driven by Playwright: the demo's clean and shifted traffic (a burst each, a minute apart, two model versions) are
separate points with ``bucket=auto``; alias marks, performance and drift share over time; the version selector;
legends and tables inside their cards; drift features by their human names; UTC times with the local time on
hover; no server filesystem path in any answer of the service. Screenshots are kept in ``$MEDMLOPS_TEST_ARTIFACTS``
(else the test's tmp folder); their paths are printed."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from medmlops.monitoring.store import Store

from ...browser import CHROMIUM, CHROMIUM_ARGS, watch
from ...conftest import REPO
from ...monitoring.records import UNSURE, call, make_record, start_monitor, wait_for

pytestmark = pytest.mark.timeout(300)
FAMILY = "trend"
N = 24  # records per burst (the demo sends params.yaml demo.traffic, 40 by default, 24 in the smoke profile)
GAP_S = 70  # the shifted burst comes about a minute after the clean one (a drift report runs in between)
# An absolute path under a folder a server's files live in; URLs ("/v1/...") never start so.
SERVER_PATH = re.compile(r"(?<![\w.:/-])/(?:tmp|home|root|work|var|srv|usr|opt|mnt|data)/")


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    """A server with the fake analyser, the clean burst of version 2 and the shifted burst of version 3, a drift
    report after each, and an alias history (v2 champion before the clean burst, v3 between the bursts)."""
    workdir = tmp_path_factory.mktemp("dashboard-trends")
    t0 = float(int(time.time()) // 10 * 10 - 1800)
    aliases = {
        "events": [{"version": "2", "alias": "champion", "at": t0 - 20}, {"version": "3", "alias": "champion", "at": t0 + 50}],
        "current": {"champion": "3", "candidate": "3"},
    }  # fmt: skip
    server = start_monitor(workdir, source="tests.monitoring.fake_aliases:calibration_source",
                           env={"FAKE_ALIASES": json.dumps(aliases)})  # fmt: skip
    try:
        for i in range(N):
            clean = make_record(f"clean-{i}", family=FAMILY, version="2", created_at=t0 + i / 4)
            shifted = make_record(
                f"shift-{i}", family=FAMILY, version="3", created_at=t0 + GAP_S + i / 4, logits=UNSURE
            )
            assert call(f"{server.url}/records", method="POST", body={**clean, "in_distribution": True,
                        "ood": {"score": 1.0, "threshold": 4.0}})[0] == 202  # fmt: skip
            assert call(f"{server.url}/records", method="POST", body={**shifted, "in_distribution": False,
                        "ood": {"score": 9.0, "threshold": 4.0}})[0] == 202  # fmt: skip
            if i % 2 == 0:
                labels = {"Atelectasis": int(i % 4 == 0), "Cardiomegaly": int(i % 4 != 0)}
                assert (
                    call(f"{server.url}/v1/labels", method="POST", body={"request_id": f"clean-{i}", "labels": labels})[
                        0
                    ]
                    == 200
                )

        def processed() -> bool:
            counts = call(f"{server.url}/v1/summary?family={FAMILY}")[1]["counts"]
            return counts["pending"] == 0

        assert wait_for(processed, 120)
        html = workdir / "reports" / "shifted.html"
        html.parent.mkdir()
        html.write_text("<html><body>drift</body></html>")
        store = Store(server.db_url)
        try:
            store.add_drift_report(FAMILY, {
                "created_at": t0 + 20, "version": "2", "drift_share": 0.1, "detected": False, "n_current": N,
                "n_reference": 200, "n_drifted": 1, "n_columns": 10, "drifted_columns": ["img.p05"],
                "html_path": str(workdir / "reports" / "gone.html"), "json_path": str(workdir / "reports" / "clean.json"),
            })  # fmt: skip
            store.add_drift_report(FAMILY, {
                "created_at": t0 + GAP_S + 25, "version": "3", "drift_share": 0.7, "detected": True, "n_current": N,
                "n_reference": 200, "n_drifted": 7, "n_columns": 10, "drift_share_threshold": 0.5,
                "drifted_columns": ["emb.pc1", "img.p05", "d.findings/Atelectasis"], "html_path": str(html),
                "json_path": str(workdir / "reports" / "shifted.json"), "summary_path": str(workdir / "s.json"),
            })  # fmt: skip
        finally:
            store.close()
        yield server, t0, workdir
    finally:
        server.stop()


def test_auto_buckets_separate_the_clean_and_shifted_bursts_over_http(traffic):
    server, t0, _ = traffic
    series = call(f"{server.url}/v1/timeseries?family={FAMILY}&bucket_s=auto")[1]
    assert series["auto"] is True and series["bucket_s"] <= 5
    clean = [p for p in series["points"] if p["t"] < t0 + 60]
    shifted = [p for p in series["points"] if p["t"] >= t0 + 60]
    assert len(clean) >= 2 and len(shifted) >= 2
    assert {p["ood_rate"] for p in clean} == {0.0} and {p["ood_rate"] for p in shifted} == {1.0}
    assert {(e["version"], e["alias"]) for e in series["aliases"]["events"]} == {("2", "champion"), ("3", "champion")}
    old = call(f"{server.url}/v1/timeseries?family={FAMILY}&bucket_s=600")[1]
    assert len(old["points"]) <= 2  # the smallest bucket the page offered before: one dot per class for both bursts
    history = call(f"{server.url}/v1/drift/history?family={FAMILY}")[1]
    assert [r["drift_share"] for r in history["reports"]] == [0.1, 0.7]
    assert [
        r["drift_share"] for r in call(f"{server.url}/v1/drift/history?family={FAMILY}&version=3")[1]["reports"]
    ] == [0.7]
    status, bad, _ = call(f"{server.url}/v1/drift/history")
    assert status == 422 and "family" in bad["detail"]
    status, bad, _ = call(f"{server.url}/v1/timeseries?bucket_s=soon")
    assert status == 422 and "bucket_s" in bad["detail"]


def test_no_answer_of_the_service_holds_a_server_filesystem_path(traffic):
    server, _, workdir = traffic
    report_id = call(f"{server.url}/v1/drift?family={FAMILY}")[1]["reports"][0]["id"]
    paths = [
        "/v1/families", "/v1/summary", f"/v1/summary?family={FAMILY}", "/v1/timeseries?bucket_s=auto",
        f"/v1/timeseries?family={FAMILY}&bucket_s=auto", "/v1/drift", f"/v1/drift?family={FAMILY}",
        f"/v1/drift/history?family={FAMILY}", "/v1/flagged", f"/v1/flagged?family={FAMILY}", "/v1/performance",
        f"/v1/performance?family={FAMILY}&since=0", "/v1/records/clean-0", "/v1/records/shift-3", "/healthz", "/metrics",
        "/dashboard", f"/v1/drift/{report_id - 1}/report.html", "/v1/drift/999/report.html", "/v1/records/nope",
        "/v1/timeseries?bucket_s=-1", "/v1/drift/history", "/nowhere",
    ]  # fmt: skip
    for path in paths:
        status, body, _ = call(f"{server.url}{path}")
        text = body.decode(errors="replace") if isinstance(body, bytes) else json.dumps(body)
        assert status < 500, (path, status, text[:300])
        for secret in (str(workdir), str(REPO)):
            assert secret not in text, (path, text[:500])
        assert not SERVER_PATH.search(text), (path, SERVER_PATH.search(text))
    latest = call(f"{server.url}/v1/drift?family={FAMILY}")[1]["reports"][0]
    assert latest["html_url"] == f"/v1/drift/{report_id}/report.html" and "html_path" not in latest
    assert call(f"{server.url}{latest['html_url']}")[0] == 200


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MEDMLOPS_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _circle_times(page, chart: str) -> list[float]:
    return page.eval_on_selector_all(f"#{chart} circle.pt", "cs => cs.map(c => Number(c.dataset.t))")


OVERFLOW = """() => [...document.querySelectorAll('section, .case, .legend li, table, td:not(.name), th')]
    .filter(e => e.scrollWidth > e.clientWidth + 1)
    .map(e => (e.id || e.className || e.tagName) + ' ' + e.scrollWidth + '>' + e.clientWidth)"""


def test_the_trends_render_in_headless_chromium_readably(traffic, tmp_path):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: run `make browser` (Debian's chromium package)"
    from playwright.sync_api import sync_playwright

    server, t0, workdir = traffic
    shots = _artifacts(tmp_path)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000}, timezone_id="Europe/Berlin")
            problems = watch(page)
            page.goto(f"{server.url}/dashboard#family={FAMILY}", wait_until="networkidle")
            page.wait_for_selector("#drift-chart svg circle.pt", timeout=20_000)
            page.evaluate("() => window.dashboardReady")
            flag_times = _circle_times(page, "chart")
            ood_times = _circle_times(page, "ood-chart")
            perf_lines = page.locator("#perf-chart polyline").count()
            drift_points = page.locator("#drift-chart circle.pt").count()
            marks = page.locator("#chart line.alias-mark").count()
            legend = page.inner_text("#chart .legend")
            drift_text = page.inner_text("#drift")
            bucket_text = page.inner_text("#trend-bucket")
            time_title = page.get_attribute("#drift time", "title")
            time_text = page.inner_text("#drift time")
            overflow = page.evaluate(OVERFLOW)
            everything = page.content()
            page.screenshot(path=str(shots / "dashboard-trends.png"), full_page=True)

            page.select_option("#version", "3")
            page.wait_for_function(
                f"[...document.querySelectorAll('#chart circle.pt')].every(c => Number(c.dataset.t) >= {t0 + 60})",
                timeout=20_000,
            )
            only3 = _circle_times(page, "chart")
            only3_drift = page.locator("#drift-chart circle.pt").count()
            page.screenshot(path=str(shots / "dashboard-trends-v3.png"), full_page=True)
            narrow = browser.new_page(viewport={"width": 700, "height": 900})
            narrow.goto(f"{server.url}/dashboard#family={FAMILY}", wait_until="networkidle")
            narrow.wait_for_selector("#drift-chart svg circle.pt", timeout=20_000)
            narrow_overflow = narrow.evaluate(OVERFLOW)
            narrow.screenshot(path=str(shots / "dashboard-trends-narrow.png"), full_page=True)
        finally:
            browser.close()
    assert problems == [], problems
    clean = {t for t in flag_times if t < t0 + 60}
    shifted = {t for t in flag_times if t >= t0 + 60}
    assert len(clean) >= 2 and len(shifted) >= 2, flag_times  # separate points for each burst, not one dot
    assert len({t for t in ood_times if t < t0 + 60}) >= 2 and len({t for t in ood_times if t >= t0 + 60}) >= 2
    assert perf_lines >= 3 and drift_points == 2 and marks == 2
    assert "Atelectasis (INFORMER)" in legend and "findings/" not in legend and "became champion" in legend
    assert "(auto)" in bucket_text
    assert "drift detected" in drift_text and "70.0 %" in drift_text
    assert "Image content, axis 1" in drift_text and "Image: dark end (5th percentile)" in drift_text
    assert "emb.pc1" not in drift_text and "Open the Evidently report" in drift_text
    assert time_text.endswith("UTC") and "local time" in (time_title or "")
    assert str(workdir) not in everything and not SERVER_PATH.search(everything)
    assert overflow == [] and narrow_overflow == [], (overflow, narrow_overflow)
    assert only3 and all(t >= t0 + 60 for t in only3) and only3_drift == 1
    from PIL import Image

    picture = Image.open(shots / "dashboard-trends.png").convert("L")
    assert picture.size[0] == 1280 and len(set(picture.getdata())) > 20, "the screenshot is blank"
    print(f"dashboard screenshots: {shots}/dashboard-trends*.png")
