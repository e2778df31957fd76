"""The review page (``/review``) and its JSON (``GET /v1/review``) on a real ``medmlops monitor serve`` on 127.0.0.1,
driven in Debian's headless Chromium through Playwright (as the dashboard's test): the queue lists the flagged
and sampled cases in priority order, a case page shows the study id, the image as the model saw it beside every
class's map, the prediction with its thresholds, why it is here in words, and the label form; saving a label with
the keyboard takes the case out of the queue and moves the realized numbers. No console error, no failed request;
screenshots are kept (their paths are printed; copied to ``$MEDMLOPS_TEST_ARTIFACTS``
when it is set)."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest

from ...browser import CHROMIUM, CHROMIUM_ARGS, watch
from ...monitoring.fake_analyser import CLASSES
from ...monitoring.records import CONFIDENT, UNSURE, call, make_record, start_monitor, wait_for
from ...monitoring.review_fakes import FACTORY, SOURCE, xray_png

pytestmark = pytest.mark.timeout(300)
WRITE = "write-secret"
ATEL, CARDIO = CLASSES
UID = "1.2.840.113619.2.55.3.4242"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("monitor-review")
    # --sample-p 1: every unflagged record is in the ingest sample, so the queue holds a sampled case too
    server = start_monitor(workdir, "--sample-p", "1", factory=FACTORY, source=SOURCE,
                           env={"MEDMLOPS_MONITORING_TOKEN": WRITE})  # fmt: skip
    yield server
    server.stop()


def _post(url: str, record) -> None:
    assert call(f"{url}/records", method="POST", body=record, token=WRITE)[0] == 202


def _cases(url: str) -> dict:
    status, body, _ = call(f"{url}/v1/review?family=review")
    assert status == 200, body
    return body


@pytest.fixture(scope="module")
def cases(served):
    now = time.time()
    ood = {"in_distribution": False, "ood": {"score": 8.1, "threshold": 2.2}, "study": {"accession_number": "ACC-77"}}
    _post(served.url, {**make_record("rv-ood", family="review", data=xray_png(1), created_at=now - 40), **ood})
    unsure = make_record("rv-unsure", family="review", data=xray_png(2), logits=UNSURE, created_at=now - 30)
    _post(served.url, {**unsure, "study": {"study_instance_uid": UID, "study_id": "S-9"}})
    _post(
        served.url, make_record("rv-doubt", family="review", data=xray_png(3), logits=(0.3, -0.3), created_at=now - 20)
    )
    _post(served.url, make_record("rv-calm", family="review", data=xray_png(4), logits=CONFIDENT, created_at=now - 10))
    ids = ("rv-ood", "rv-unsure", "rv-doubt", "rv-calm")
    assert wait_for(lambda: all(call(f"{served.url}/v1/records/{i}")[1]["status"] == "done" for i in ids), 90)
    return ids


def test_the_queue_json_orders_cases_and_says_why_and_the_images_are_served(served, cases):
    body = _cases(served.url)
    assert [c["request_id"] for c in body["cases"]] == ["rv-ood", "rv-unsure", "rv-doubt", "rv-calm"]
    assert [c["category"] for c in body["cases"]] == ["out_of_distribution", "confidence", "confidence", "sampled"]
    assert body["cases"][0]["reasons"][0].startswith("out of distribution: score 8.10 above the threshold 2.20")
    assert body["cases"][1]["study_label"] == {"key": "study_instance_uid", "name": "StudyInstanceUID", "value": UID}
    case = call(f"{served.url}/v1/review/rv-unsure")[1]
    assert case["prediction"] == "Atelectasis" and [k["threshold"] for k in case["classes"]] == [0.5, 0.5]
    from PIL import Image

    status, png, headers = call(f"{served.url}{case['image_url']}")
    assert status == 200 and headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png)).size == (160, 160)
    for k in case["classes"]:
        status, png, _ = call(f"{served.url}{k['map_url']}")
        assert status == 200 and png.startswith(b"\x89PNG")
    assert call(f"{served.url}/v1/records/rv-unsure/maps/9.png")[1]["error"] == "no_class_map"
    assert call(f"{served.url}/v1/review/nope")[0] == 404
    assert call(f"{served.url}/v1/review?family=a%00b")[0] == 422 and call(f"{served.url}/v1/review?limit=x")[0] == 422
    assert call(f"{served.url}/v1/records/nope/image.png")[0] == 404
    status, body, _ = call(f"{served.url}/v1/labels", method="POST", token=WRITE,
                           body={"request_id": "rv-calm", "labels": {ATEL: 1}, "note": "\x00"})  # fmt: skip
    assert status == 422 and body["field"] == "note"
    assert call(f"{served.url}/v1/labels", method="POST", body={"request_id": "rv-calm", "labels": {ATEL: 1}})[0] == 401


def test_the_review_page_lists_cases_shows_every_class_map_and_a_keyboard_label_leaves_the_queue(
    served, cases, tmp_path
):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} not found: run `make browser` (Debian's chromium package)"
    from playwright.sync_api import sync_playwright

    page_html = call(f"{served.url}/review")[1].decode()
    assert "<script src" not in page_html and "http://" not in page_html and "https://" not in page_html
    before = _cases(served.url)
    assert before["versions"] == []
    shots = {name: tmp_path / f"review-{name}.png" for name in ("queue", "case", "after")}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems = watch(page)
            page.goto(f"{served.url}/review#family=review", wait_until="networkidle")
            page.wait_for_selector("#queue li[role=option]", timeout=20_000)
            queue_ids = page.eval_on_selector_all("#queue li[role=option]", "els => els.map(e => e.dataset.id)")
            queue_text = page.inner_text("#queue")
            page.screenshot(path=str(shots["queue"]), full_page=True)

            page.keyboard.press("j")  # the first case: rv-ood
            page.wait_for_selector(".study", timeout=20_000)
            assert "ACC-77" in page.inner_text(".study")
            page.keyboard.press("j")  # the next: rv-unsure
            page.wait_for_function("document.querySelector('.study') && "
                                   f"document.querySelector('.study').textContent.includes('{UID}')")  # fmt: skip
            page.wait_for_function(
                "[...document.querySelectorAll('.maps img')].length === 3 && "
                "[...document.querySelectorAll('.maps img')].every(i => i.complete && i.naturalWidth > 0)",
                timeout=20_000,
            )
            case = {
                "study": page.inner_text(".study"), "rid": page.inner_text("#case .rid"),
                "prediction": page.inner_text("#prediction"), "why": page.inner_text("#why"),
                "maps": page.inner_text(".maps"), "form": page.inner_text("#label-form"),
                "radios": page.locator("#label-form input[type=radio]").count(),
                "original": page.eval_on_selector("#original", "i => [i.naturalWidth, i.naturalHeight]"),
            }  # fmt: skip
            page.screenshot(path=str(shots["case"]), full_page=True)

            page.fill("#token", WRITE)
            page.dispatch_event("#token", "change")
            page.locator("body").click(position={"x": 5, "y": 5})  # out of the field: keys go to the page again
            page.keyboard.press("1")  # Atelectasis: present
            page.keyboard.press("1")  # ... absent
            page.keyboard.press("2")  # Cardiomegaly: present
            checked = page.eval_on_selector_all(
                "#label-form input[type=radio]:checked", "els => els.map(e => e.name + '=' + e.value)"
            )
            page.keyboard.press("n")
            page.keyboard.type("enlarged heart, lungs clear")
            page.keyboard.press("Control+Enter")
            page.wait_for_function(
                "!document.querySelector('#queue li[data-id=\"rv-unsure\"]') && "
                "document.querySelector('#versions .flag-precision')",
                timeout=20_000,
            )
            after_ids = page.eval_on_selector_all("#queue li[role=option]", "els => els.map(e => e.dataset.id)")
            versions = page.inner_text("#versions")
            page.wait_for_selector("#case .study", timeout=20_000)
            page.wait_for_function("document.querySelector('#case .rid').textContent.includes('rv-doubt')")
            next_case = page.inner_text("#case .study")
            page.screenshot(path=str(shots["after"]), full_page=True)
        finally:
            browser.close()

    assert problems == [], problems
    assert queue_ids == ["rv-ood", "rv-unsure", "rv-doubt", "rv-calm"]
    assert "out of distribution" in queue_text and "sampled" in queue_text and UID in queue_text
    assert case["study"].startswith("StudyInstanceUID " + UID) and "rv-unsure" in case["rid"]
    assert case["prediction"] == "Atelectasis"
    assert "confidence (MSR) at intake: Atelectasis 0.52 below its threshold 0.60" in case["why"]
    assert "Atelectasis" in case["maps"] and "Cardiomegaly" in case["maps"] and "as the model saw it" in case["maps"]
    assert "p 0.52 / 0.50" in case["maps"]  # probability / threshold under each map
    assert case["radios"] == 4 and "ground truth" in case["form"] and "reviewer note" in case["form"]
    assert case["original"] == [160, 160]
    assert checked == ["c0=0", "c1=1"]
    assert after_ids == ["rv-ood", "rv-doubt", "rv-calm"] and next_case == "no study id"  # the next case opened
    assert "review v3" in versions and "100.0 %" in versions  # predicted Atelectasis, reviewed absent: an error
    assert "(1 labelled)" in versions  # the realized metrics' count moved with the review

    after = _cases(served.url)
    assert after["total"] == before["total"] - 1
    (stats,) = after["versions"]
    assert stats["reviewed"] == 1 and stats["errors"] == 1 and stats["flag_precision"] == 1.0
    record = call(f"{served.url}/v1/records/rv-unsure")[1]
    assert record["ground_truth"] == {ATEL: 0, CARDIO: 1}
    case_after = call(f"{served.url}/v1/review/rv-unsure")[1]
    assert case_after["review"]["note"] == "enlarged heart, lungs clear" and case_after["review"]["error"] is True
    assert not case_after["in_queue"]
    performance = call(f"{served.url}/v1/performance?family=review&limit=100")[1]["versions"][0]
    assert performance["n_labelled"] == 1  # the realized metrics count the reviewed case
    metrics = call(f"{served.url}/metrics")[1].decode()
    assert 'medmlops_review_flag_precision{family="review",version="3"} 1.0' in metrics

    from PIL import Image

    for shot in shots.values():
        picture = Image.open(shot).convert("L")
        assert picture.size[0] == 1400 and len(set(picture.getdata())) > 20, f"{shot} is blank"
        if os.environ.get("MEDMLOPS_TEST_ARTIFACTS"):  # kept beyond pytest's rotating temporary folders
            kept = Path(os.environ["MEDMLOPS_TEST_ARTIFACTS"])
            kept.mkdir(parents=True, exist_ok=True)
            shot = Path(shutil.copy(shot, kept / shot.name))
        print(f"review screenshot: {shot}")
