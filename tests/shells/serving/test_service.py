"""`medmlops serve FAMILY`: the real BentoML server on 127.0.0.1 for registered smoke models, over HTTP: good
predictions (NIfTI for ich-prognosis; JPEG/PNG/DICOM for cxr-findings), concurrent requests, a corpus of bad
requests each answered 4xx JSON naming the problem (never 5xx), the server serving good requests afterwards, records
reaching monitoring (one per prediction, whatever X-Request-ID clients send), the spool drained on SIGTERM within its
grace period, and a clear refusal to start without a model or with a spool folder where a file is."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from ...conftest import REPO, _free_port
from ...inference.test_predict import _bad_corpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
MAX_UPLOAD = 2_000_000
BODY_TIMEOUT_S = 5


def _multipart(fields: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, data) in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(url: str, body: bytes, content_type: str | None, headers: dict | None = None) -> tuple[int, dict]:
    import json

    request = urllib.request.Request(url, data=body, method="POST", headers={**(headers or {})})
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _predict(
    url: str, data: bytes, filename: str = "case.bin", field: str = "image", headers: dict | None = None
) -> tuple[int, dict]:
    body, content_type = _multipart({field: (filename, data)})
    return _post(f"{url}/predict", body, content_type, headers)


def _start(project: Path, family: str, *extra: str, env: dict[str, str] | None = None):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / '.medmlops' / 'mlflow.db'}", **(env or {})}
    log = (project / f"serve-{family}.log").open("w")
    command = [sys.executable, "-m", "medmlops.cli", "serve", family, "--alias", "candidate", "--port", str(port),
               "--max-upload-bytes", str(MAX_UPLOAD), "--repo", str(REPO), *extra]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() - started > 180:
            process.kill()
            raise RuntimeError(
                f"medmlops serve {family} did not start:\n{(project / f'serve-{family}.log').read_text()[-3000:]}"
            )
        time.sleep(1)
    return process, url


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(process) -> bool:
    """SIGTERM the server; True when it and every worker it started exited on their own within 30 s."""
    pgid = process.pid  # start_new_session: the server leads its own process group
    process.terminate()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (process.poll() is None or _group_alive(pgid)):
        time.sleep(0.5)
    clean = process.poll() is not None and not _group_alive(pgid)
    if not clean:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=10)
    return clean


@pytest.fixture(scope="module")
def servers(registered_project):
    # A short body timeout, so the slow-body test waits seconds, not the default 30 s.
    started = {
        family: _start(registered_project, family, "--set", f"serving.body_timeout_s={BODY_TIMEOUT_S}")
        for family in ("ich-prognosis", "cxr-findings")
    }
    yield {family: url for family, (_, url) in started.items()}
    for process, _ in started.values():
        _stop(process)


@pytest.mark.reliability(
    "Faults",
    "the spool's disk full (48 KiB tmpfs) while monitoring is down; then SIGTERM",
    "503 naming the spool and the cause; every 200 has its record, no partial file; every worker stops",
)
def test_a_full_spool_is_a_503_never_a_silent_drop_and_sigterm_stops_every_worker(registered_project, tmp_path):
    """Fault: monitoring is down and the disk holding the spool fills up (a real 48 KiB tmpfs). Each prediction is
    either answered 200 with its record durable in the spool, or refused 503 naming the spool and the cause — never
    answered without its record. Then SIGTERM stops the server and all its workers (unbatched path)."""
    import json

    from ...conftest import small_disk

    data = next((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg")).read_bytes()
    with small_disk(tmp_path / "spool", "48k") as spool:
        process, url = _start(registered_project, "cxr-findings", "--no-batching", "--spool-dir", str(spool),
                              "--monitoring-url", f"http://127.0.0.1:{_free_port()}")  # fmt: skip
        try:
            answers = [_predict(url, data) for _ in range(3 + 48 * 1024 // len(data))]
            ok = [body["request_id"] for status, body in answers if status == 200]
            refused = [body for status, body in answers if status != 200]
            assert ok and refused, [status for status, _ in answers]
            assert {status for status, _ in answers} == {200, 503}
            for body in refused:
                assert body["error"] == "spool_unavailable", body
                assert "No space left on device" in body["detail"] and str(spool) in body["detail"], body
            kept = {json.loads(p.read_text())["request_id"] for p in (spool / "cxr-findings").glob("*.json")}
            assert kept == set(ok)  # every 200 has its record; no partial file of a refused one is left
            assert not list((spool / "cxr-findings").glob(".*.tmp"))
        finally:
            assert _stop(process), "workers outlived the server after SIGTERM"


def test_ct_prediction_over_http(registered_project, servers):
    data = next((registered_project / "data" / "raw-smoke" / "ich").rglob("*.nii.gz")).read_bytes()
    status, body = _predict(servers["ich-prognosis"], data, "case.nii.gz")
    assert status == 200, body
    assert body["model"] == "ich-prognosis" and body["version"] == "1" and len(body["request_id"]) == 32
    assert list(body["predictions"]) == ["prognosis", "gcs_ordinal", "age_binary"]
    assert body["predictions"]["prognosis"]["label"] in ("good", "poor")


def test_covid_prognosis_over_http(registered_project):
    """The third family: MDMT with two heads (AIforCOVID prognosis, BRIXIA severity) from a DICOM upload."""
    process, url = _start(registered_project, "covid-prognosis", "--reload-s", "0")
    try:
        data = next((registered_project / "data" / "raw-smoke" / "aiforcovid").rglob("*.dcm")).read_bytes()
        status, body = _predict(url, data, "film.dcm")
    finally:
        _stop(process)
    assert status == 200, body
    assert body["model"] == "covid-prognosis"
    assert set(body["predictions"]) == {"prognosis", "severity"}
    assert body["predictions"]["prognosis"]["label"] in body["predictions"]["prognosis"]["probabilities"]


def test_xray_predictions_over_http_match_in_process(registered_project, servers):
    import numpy as np
    from PIL import Image

    from ...inference.test_predict import _png_bytes

    jpg = next((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg"))
    dcm = next((registered_project / "data" / "raw-smoke" / "aiforcovid").rglob("*.dcm"))
    for data in (jpg.read_bytes(), _png_bytes(np.asarray(Image.open(jpg))), dcm.read_bytes()):
        status, body = _predict(servers["cxr-findings"], data)
        assert status == 200, body
        assert set(body["predictions"]["findings"]["probabilities"]) == {
            "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"
        }  # fmt: skip


@pytest.mark.reliability(
    "Load",
    "24 requests from 8 concurrent clients to the adaptively batched service",
    "all 200; the same image gets the same answer whatever batch it lands in",
)
def test_concurrent_requests_all_succeed(registered_project, servers):
    files = sorted((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg"))[:6]
    payloads = [f.read_bytes() for f in files] * 4
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda d: _predict(servers["cxr-findings"], d), payloads))
    assert [status for status, _ in results] == [200] * len(payloads)
    assert len({body["request_id"] for _, body in results}) == len(payloads)
    # Same image → same answer, whatever batch it landed in.
    by_image = {}
    for data, (_, body) in zip(payloads, results, strict=True):
        probs = body["predictions"]["findings"]["probabilities"]
        by_image.setdefault(data, []).append(probs)
    for answers in by_image.values():
        for other in answers[1:]:
            assert all(abs(other[k] - answers[0][k]) < 1e-4 for k in other)


@pytest.mark.reliability(
    "Bad input",
    "the bad-request corpus: truncated or corrupt NIfTI, PNG, JPEG, DICOM; 2D to the 3D model and back; NaN/Inf voxels; absurd shapes; empty body; wrong field; wrong content type; oversized upload; path-like file names",
    "a 4xx JSON {error, detail} naming the problem for each, never a 5xx; the server keeps serving",
)
def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(registered_project, servers):
    problems = []
    cases = []
    for name, (family, data, code, text) in _bad_corpus(registered_project).items():
        cases.append((name, family, lambda f=family, d=data: _predict(servers[f], d), code, text))
    good = next((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg")).read_bytes()
    url = servers["cxr-findings"]
    http_cases = [
        ("empty body", lambda: _post(f"{url}/predict", b"", None), "wrong_content_type", "multipart"),
        ("json body", lambda: _post(f"{url}/predict", b"{}", "application/json"), "wrong_content_type", "application/json"),
        ("wrong field name", lambda: _predict(url, good, field="file"), "missing_field", "fields sent: ['file']"),
        ("path-like filename", lambda: _predict(url, good, filename="../../etc/passwd"), "bad_filename", "etc/passwd"),
        ("absolute filename", lambda: _predict(url, good, filename="/etc/passwd"), "bad_filename", "path"),
        ("broken multipart", lambda: _post(f"{url}/predict", b"--x\r\ngarbage", "multipart/form-data; boundary=x"), None, ""),
        ("oversized body", lambda: _predict(url, b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_UPLOAD + 100_000)), "too_large", "limit"),
    ]  # fmt: skip
    cases += [(name, "cxr-findings", call, code, text) for name, call, code, text in http_cases]
    for name, _family, call, code, text in cases:
        status, body = call()
        if not 400 <= status < 500:
            problems.append(f"{name}: status {status} {body}")
        elif set(body) != {"error", "detail"}:
            problems.append(f"{name}: body {body}")
        elif code is not None and (body["error"] != code or text.lower() not in body["detail"].lower()):
            problems.append(f"{name}: {body}")
    assert not problems, "\n".join(problems)
    assert len(cases) >= 15
    for family, data in (
        ("cxr-findings", good),
        ("ich-prognosis", next((registered_project / "data" / "raw-smoke" / "ich").rglob("*.nii.gz")).read_bytes()),
    ):
        status, _ = _predict(servers[family], data)
        assert status == 200, f"{family} stopped serving after the bad requests"


@pytest.mark.reliability(
    "Faults",
    "serving an alias no version has",
    "refuses to start with one sentence",
)
def test_refuses_to_start_without_the_model(registered_project):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{registered_project / '.medmlops' / 'mlflow.db'}"}
    result = subprocess.run(
        [sys.executable, "-m", "medmlops.cli", "serve", "cxr-findings", "--alias", "champion", "--repo", str(REPO)],
        cwd=registered_project, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == "medmlops: error: registered model 'cxr-findings' has no version with alias 'champion'"
    )


def test_bento_builds_offline(tmp_path):
    """`bentoml build` packages the service (serving + core source, pinned requirements) without the network."""
    import json

    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    build = subprocess.run([bentoml, "build", "-f", "serving/bentofile.yaml", "."], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    listed = json.loads(
        subprocess.run([bentoml, "list", "-o", "json"], env=env, capture_output=True, text=True, check=True).stdout
    )
    assert [b["tag"].split(":")[0] for b in listed] == ["medmlops-serving"]
    (bento,) = (tmp_path / "bentoml" / "bentos" / "medmlops-serving").glob("*/")
    assert (bento / "src" / "serving" / "service.py").is_file()
    assert (bento / "src" / "src" / "medmlops" / "inference" / "service.py").is_file()
    assert "torch==2.14.1" in (bento / "env" / "python" / "requirements.txt").read_text()


@pytest.mark.reliability(
    "Faults",
    "N predictions while the monitoring service is down (8 at once reusing one X-Request-ID), then it starts",
    "all answered 200; exactly N records delivered, each with its own id (the client's kept as correlation id)",
)
def test_records_reach_monitoring_exactly_once_after_it_comes_up(registered_project, tmp_path):
    """N requests while the monitoring endpoint is down: all answered; once it is up, exactly N records arrive,
    each with its request id, version, outputs and the upload (sha256 checked). Eight of them are sent at once with
    the same X-Request-ID: eight records, each keeping the client's id as its correlation id."""
    import base64
    import hashlib
    import json

    from medmlops.inference.record import PredictionRecord

    from ...inference.test_forwarding import Receiver, wait_for

    monitoring_port = _free_port()
    process, url = _start(
        registered_project, "cxr-findings", "--monitoring-url", f"http://127.0.0.1:{monitoring_port}",
        "--spool-dir", str(tmp_path / "spool"),
    )  # fmt: skip
    receiver = None
    try:
        files = sorted((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg"))[:4]
        uploads = [files[i % len(files)].read_bytes() for i in range(12)]
        answers = [_predict(url, data) for data in uploads[:4]]
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:  # one client id, reused at once
            answers += pool.map(lambda d: _predict(url, d, headers={"X-Request-ID": "study-42"}), uploads[4:])
        assert [status for status, _ in answers] == [200] * 12, answers
        sent = {body["request_id"]: (data, body) for data, (_, body) in zip(uploads, answers, strict=True)}
        assert len(sent) == 12 and [body.get("correlation_id") for _, body in answers] == [None] * 4 + ["study-42"] * 8
        spooled = list((tmp_path / "spool" / "cxr-findings").glob("*.json"))
        assert len(spooled) == 12  # kept on disk meanwhile
        assert {json.loads(p.read_text())["request_id"] for p in spooled} == set(sent)
        receiver = Receiver(monitoring_port)
        assert wait_for(lambda: len(receiver.records) == 12, timeout_s=90), f"{len(receiver.records)} of 12 arrived"
        time.sleep(1.0)
        assert sorted(receiver.records) == sorted(sent) and receiver.posts == 12
        for request_id, record in receiver.records.items():
            data, body = sent[request_id]
            assert record["version"] == "1" and record["model"] == "cxr-findings"
            assert record["predictions"] == body["predictions"]
            assert record["input"]["sha256"] == hashlib.sha256(data).hexdigest()
            assert base64.b64decode(record["input"]["bytes_b64"]) == data
            assert len(record["logits"]) == 5
            assert PredictionRecord.parse(record).answer() == body  # the record is what the client was told
            assert record.get("correlation_id") == body.get("correlation_id")
        assert not list((tmp_path / "spool" / "cxr-findings").glob("*.json"))
    finally:
        _stop(process)
        if receiver is not None:
            receiver.close()


@pytest.mark.reliability(
    "Faults",
    "the served alias moved to a new version while requests flow",
    "no request dropped; each answer names the version that computed it",
)
def test_a_moved_alias_is_served_without_dropping_requests(registered_project, monkeypatch):
    """Requests flow while a new version is registered as @candidate: every answer is 200, and the answers switch
    from version 1 to the new version (reported with each response). The alias is put back afterwards."""
    from mlflow import MlflowClient

    from medmlops.cli import main

    uri = f"sqlite:///{registered_project / '.medmlops' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    process, url = _start(registered_project, "cxr-findings", "--reload-s", "1")
    data = next((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg")).read_bytes()
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            status, body = _predict(url, data)
            answers.append((status, body.get("version", "")))

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(2)
        monkeypatch.chdir(registered_project)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert (
            main(["train", "cxr-findings", "--profile", "smoke", "--quiet", "--register"]) == 0
        )  # resumes: new version
        new = str(client.get_registered_model("cxr-findings").aliases["candidate"])
        assert new != "1"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (answers and answers[-1][1] == new):
            time.sleep(0.5)
        time.sleep(1)
    finally:
        stop.set()
        thread.join(30)
        client.set_registered_model_alias("cxr-findings", "candidate", "1")
        _stop(process)
    statuses = {status for status, _ in answers}
    versions = [version for _, version in answers]
    assert statuses == {200}, answers
    assert versions[0] == "1" and versions[-1] == new
    switch = versions.index(new)
    assert set(versions[switch:]) == {new}, "once switched, the new version serves every request"


@pytest.mark.reliability(
    "Faults",
    "SIGTERM to serving with 10 records spooled while monitoring was down; monitoring back, but stalling after 4",
    "every record delivered or still spooled as valid JSON, none half-written; the server exits once the drain "
    "period is over",
)
def test_sigterm_drains_the_spool_within_its_grace_period(registered_project, tmp_path):
    """Ten predictions while monitoring is down, each with its X-Request-ID; monitoring comes back, takes four records
    and then stops answering; SIGTERM. The server tries to deliver for its drain period (MEDMLOPS_SPOOL_DRAIN_S) and
    no longer: the four are delivered, the six others stay in the spool, whole, for the next start."""
    import json

    from medmlops.inference.record import PredictionRecord

    from ...inference.test_forwarding import Receiver

    drain_s, monitoring_port, spool = 8.0, _free_port(), tmp_path / "spool" / "cxr-findings"
    process, url = _start(
        registered_project, "cxr-findings", "--monitoring-url", f"http://127.0.0.1:{monitoring_port}",
        "--spool-dir", str(tmp_path / "spool"), env={"MEDMLOPS_SPOOL_DRAIN_S": str(drain_s)},
    )  # fmt: skip
    receiver = None
    try:
        data = next((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg")).read_bytes()
        answers = [_predict(url, data, headers={"X-Request-ID": f"case-{i}"}) for i in range(10)]
        assert [status for status, _ in answers] == [200] * 10, answers
        sent = {body["request_id"]: body["correlation_id"] for _, body in answers}
        assert len(list(spool.glob("*.json"))) == 10
        receiver = Receiver(monitoring_port, hang_after=4)
        started = time.monotonic()
        clean = _stop(process)
        stopped_s = time.monotonic() - started
    finally:
        if process.poll() is None:
            _stop(process)
        if receiver is not None:
            receiver.close()
    assert clean, "workers outlived the server after SIGTERM"
    # Monitoring stalls on the fifth record, so the drain uses its whole period (a quicker stop means it never ran),
    # then BentoML stops its workers: with the default 20 s, well inside Kubernetes' default 30 s grace period.
    assert drain_s - 0.5 < stopped_s < drain_s + 5, f"the server took {stopped_s:.1f} s to stop"
    delivered = {request_id: record.get("correlation_id") for request_id, record in receiver.records.items()}
    kept = {}
    for path in spool.glob("*.json"):
        record = PredictionRecord.parse(json.loads(path.read_text()))  # valid JSON, a whole record
        kept[record.request_id] = record.correlation_id
    assert len(delivered) == 4 and len(kept) == 6 and {**delivered, **kept} == sent  # none lost, none twice
    assert not [p.name for p in spool.iterdir() if p.suffix != ".json"]  # no temporary file left behind


@pytest.mark.reliability(
    "Faults",
    "`medmlops serve --spool-dir X` where X, or a folder above it, is a regular file",
    "refuses to start: one sentence naming the path and the fix, exit 1 (no server that listens but never answers)",
)
@pytest.mark.parametrize("below", ["", "sub"], ids=["the spool dir is a file", "a parent is a file"])
def test_refuses_to_start_with_a_spool_where_a_file_is(tmp_path, below):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    spool_dir = taken / below if below else taken
    result = subprocess.run(
        [sys.executable, "-m", "medmlops.cli", "serve", "cxr-findings", "--spool-dir", str(spool_dir),
         "--monitoring-url", "http://127.0.0.1:9", "--port", str(_free_port()), "--repo", str(REPO),
         "--params", str(REPO / "params.yaml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == "", result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"medmlops: error: the monitoring spool {spool_dir / 'cxr-findings'} cannot be created because {taken} is a "
        "file, not a folder; move that file away or choose another spool folder (--spool-dir)"
    ]


# ----------------------------------------------------------------------------------------------------------------------
# The door: what a hospital's systems send
# ----------------------------------------------------------------------------------------------------------------------


def _probabilities(body: dict) -> dict[str, float]:
    return {f"{task}/{k}": v for task, entry in body["predictions"].items() for k, v in entry["probabilities"].items()}


def _close(a: dict, b: dict, tol: float) -> bool:
    pa, pb = _probabilities(a), _probabilities(b)
    return pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) <= tol for k in pa)


@pytest.mark.reliability(
    "Bad input",
    "pydicom's own test files to a chest model: CT, MR, ultrasound (RGB, palette, multi-frame), secondary captures, "
    "NM, RT dose, a segmentation; and radiographs that are lateral or of a hand",
    "422 naming the attribute, its value and what the model takes",
)
def test_the_chest_gate_answers_only_what_the_contract_allows(registered_project, servers):
    from ...dicom_samples import bundled_objects, chest_like

    url, problems = servers["cxr-findings"], []
    for name, (data, header) in bundled_objects().items():
        status, body = _predict(url, data, "study.dcm")
        if status == 422 and body.get("error") == "not_accepted":
            if body["attribute"] not in body["detail"] or str(body["value"]) not in body["detail"]:
                problems.append(f"{name}: {body}")
        elif not (400 <= status < 500 and body.get("error") in ("corrupt_file", "unreadable_image")):
            problems.append(f"{name} ({header['Modality']}): {status} {body}")
    import io

    import pydicom

    for attribute, value in (("ViewPosition", "LL"), ("BodyPartExamined", "HAND"), ("Modality", "MR")):
        ds = pydicom.dcmread(io.BytesIO(chest_like(pydicom.uid.ExplicitVRLittleEndian)))
        setattr(ds, attribute, value)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        status, body = _predict(url, buffer.getvalue(), "film.dcm")
        if (status, body.get("attribute"), body.get("value")) != (422, attribute, value):
            problems.append(f"{attribute}={value}: {status} {body}")
    assert not problems, "\n".join(problems)


def test_every_pacs_transfer_syntax_gives_the_uncompressed_objects_answer(registered_project, servers):
    """JPEG Lossless (process 14, SV1), JPEG-LS, JPEG 2000, RLE, deflated, big endian: the same pixels as the
    uncompressed object, so the same answer; lossy JPEG within its measured tolerance of pixels (answer compared
    loosely)."""
    import pydicom

    from ...dicom_samples import CHEST_LIKE_SYNTAXES, LOSSLESS_SYNTAXES, chest_like

    url = servers["cxr-findings"]
    status, reference = _predict(url, chest_like(pydicom.uid.ExplicitVRLittleEndian), "film.dcm")
    assert status == 200, reference
    problems = []
    for syntax in CHEST_LIKE_SYNTAXES:
        status, body = _predict(url, chest_like(syntax), "film.dcm")
        tol = 1e-5 if syntax in LOSSLESS_SYNTAXES else 0.2
        if status != 200 or not _close(body, reference, tol):
            problems.append(f"{pydicom.uid.UID(syntax).name}: {status} {body}")
    assert not problems, "\n".join(problems)


def _smoke_ct_in_hu(project: Path):
    """A smoke head CT as int16 HU and its affine: what a DICOM series can hold exactly."""
    import nibabel as nib
    import numpy as np

    image = nib.load(next((project / "data" / "raw-smoke" / "ich").rglob("*.nii.gz")))
    return np.rint(np.asarray(image.dataobj, dtype=np.float32)).astype(np.int16), image.affine


def test_nifti_as_written_plain_and_gzipped_and_a_dicom_series_give_the_same_answer(registered_project, servers):
    """dcm2niix writes .nii by default: it is answered like its .nii.gz. A zip of the same volume as one DICOM
    series (slices shuffled) gives the same prediction within 1e-4, and the study identity travels with it."""
    import gzip

    import nibabel as nib

    from medmlops.data.dicom_series import series_zip_from_volume

    from ...inference.test_predict import _nifti_bytes

    url = servers["ich-prognosis"]
    hu, affine = _smoke_ct_in_hu(registered_project)
    nifti_gz = gzip.compress(nib.Nifti1Image(hu, affine).to_bytes())
    answers = {}
    for name, data in (
        ("nii.gz", nifti_gz), ("nii", gzip.decompress(nifti_gz)),
        ("series", series_zip_from_volume(hu, affine, study_uid="1.2.826.0.1.3680043.8.498.77")),
    ):  # fmt: skip
        status, body = _predict(url, data, f"case.{name}")
        assert status == 200, (name, body)
        answers[name] = body
    assert _close(answers["nii"], answers["nii.gz"], 0.0)
    assert _close(answers["series"], answers["nii.gz"], 1e-4), (answers["series"], answers["nii.gz"])
    assert answers["series"]["study"]["study_instance_uid"] == "1.2.826.0.1.3680043.8.498.77"
    assert _nifti_bytes  # the helper the bad corpus builds NIfTI with


@pytest.mark.reliability(
    "Bad input",
    "DICOM series zips: a zip bomb, a path-traversal entry, two series mixed, a missing slice, an MR series",
    "a 4xx JSON naming the problem; nothing inflated past the bound; the server keeps serving",
)
def test_bad_series_zips_are_refused_naming_the_problem(registered_project, servers):
    import io
    import zipfile

    from medmlops.data.dicom_series import series_zip_from_volume

    url = servers["ich-prognosis"]
    hu, affine = _smoke_ct_in_hu(registered_project)
    good = series_zip_from_volume(hu, affine)

    def rezip(entries: dict[str, bytes]) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in entries.items():
                z.writestr(name, data)
        return out.getvalue()

    with zipfile.ZipFile(io.BytesIO(good)) as z:
        slices = {name: z.read(name) for name in z.namelist()}
    other = series_zip_from_volume(hu, affine)
    with zipfile.ZipFile(io.BytesIO(other)) as z:
        foreign = {f"other-{name}": z.read(name) for name in z.namelist()[:2]}
    ordered = sorted(slices)
    cases = {
        "zip bomb": (rezip({"a.dcm": b"\0" * (700 << 20)}), "too_large"),
        "traversal": (rezip({**slices, "../../etc/cron.d/x.dcm": slices[ordered[0]]}), "bad_entry_name"),
        "mixed series": (rezip({**slices, **foreign}), "mixed_series"),
        "missing slice": (rezip({k: v for k, v in slices.items() if k != ordered[len(ordered) // 2]}), None),
        "MR series": (series_zip_from_volume(hu, affine, modality="MR"), "not_ct"),
    }
    problems = []
    for name, (data, code) in cases.items():
        status, body = _predict(url, data, "series.zip")
        if not 400 <= status < 500 or (code is not None and body.get("error") != code):
            problems.append(f"{name}: {status} {body}")
    assert not problems, "\n".join(problems)
    status, _ = _predict(url, good, "series.zip")
    assert status == 200


def _tree_rss(pid: int) -> int:
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a worker that just exited
            total += proc.memory_info().rss
    return total


def _peak_rss_during(pid: int, call) -> tuple[object, int, float]:
    """(call's result, the server tree's peak RSS while it ran, seconds it took)."""
    peak, done = [_tree_rss(pid)], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(_tree_rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        result = call()
    finally:
        elapsed = time.monotonic() - started
        done.set()
        sampler.join(5)
    return result, max(peak), elapsed


@pytest.mark.reliability(
    "Bad input",
    "amplification over HTTP: a 16-bit PNG of 8192² (131 kB), a 1-bit DICOM of 8192², a gzipped NIfTI of "
    "1024² x 256 (261 kB), a deflated DICOM inflating to 512 MiB (522 kB)",
    "413 from the header; the server's peak RSS measured while each is refused (grows < 100 MiB)",
)
def test_amplification_is_refused_before_decoding_with_flat_server_memory(registered_project):
    from ...inference.test_upload import chest_dataset, deflated_dicom, dicom_bytes, nifti_gz_header_only, png_16bit

    one_bit = chest_dataset(8192, 8192, 8)
    one_bit.BitsAllocated, one_bit.BitsStored, one_bit.HighBit = 1, 1, 0
    one_bit.PixelData = b"\0" * (8192 * 8192 // 8)
    cases = {
        "PNG": ("cxr-findings", png_16bit(8192), "too_many_pixels"),
        "DICOM": ("cxr-findings", dicom_bytes(one_bit), "too_many_pixels"),
        "NIfTI": ("ich-prognosis", nifti_gz_header_only((1024, 1024, 256), 256), "too_many_pixels"),
        "deflated DICOM": ("cxr-findings", deflated_dicom(512), "too_large"),
    }
    lines, problems = [], []
    for family in ("cxr-findings", "ich-prognosis"):
        process, url = _start(registered_project, family, "--max-upload-bytes", str(16 << 20), "--reload-s", "0")
        try:
            warm = next((registered_project / "data" / "raw-smoke" / ("chexpert" if family == "cxr-findings"
                                                                        else "ich")).rglob("*frontal.jpg" if family == "cxr-findings" else "*.nii.gz"))  # fmt: skip
            assert _predict(url, warm.read_bytes())[0] == 200  # memory after one real prediction is the baseline
            for name, (target, data, code) in cases.items():
                if target != family:
                    continue
                baseline = _tree_rss(process.pid)
                (status, body), peak, elapsed = _peak_rss_during(process.pid, lambda u=url, d=data: _predict(u, d))
                growth = (peak - baseline) / 2**20
                lines.append(f"{name}: {len(data) / 1e3:.0f} kB, {status} {body.get('error')} in {elapsed:.2f} s, "
                             f"server RSS +{growth:.0f} MiB")  # fmt: skip
                if status != 413 or body.get("error") != code or growth > 100:
                    problems.append(lines[-1])
        finally:
            _stop(process)
    print("\n".join(lines))
    assert not problems, "\n".join(problems)


def _raw_request(url: str, head: bytes, body_chunks, read_timeout_s: float) -> tuple[bytes, int]:
    """Send ``head`` then the chunks from another thread; (the response's first bytes, body bytes sent by then)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=read_timeout_s)
    sent = [0]

    def send():
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    response, at_response = b"", None
    try:
        while chunk := sock.recv(65536):  # the server answers with Connection: close, so read until it closes
            if at_response is None:
                at_response = sent[0]
            response += chunk
    except OSError:
        pass
    at_response = sent[0] if at_response is None else at_response
    sock.close()
    sender.join(10)
    return response, at_response


@pytest.mark.reliability(
    "Bad input",
    "a chunked upload with no Content-Length that never ends (up to 1 GB offered); a body that stops after 10 bytes",
    "413 once the byte limit is passed, reading stopped there; 408 after the body timeout; the server keeps serving",
)
def test_unbounded_and_stalled_bodies_are_cut_off(registered_project, servers):
    url = servers["cxr-findings"]
    boundary = "b0undary"
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n').encode()

    def chunked():
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
        block = b"\0" * (1 << 20)
        for _ in range(1024):
            yield f"{len(block):x}\r\n".encode() + block + b"\r\n"

    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()  # fmt: skip
    response, sent = _raw_request(url, head, chunked(), 60)
    assert response.startswith(b"HTTP/1.1 413"), response[:300]
    assert b"too_large" in response
    assert sent < 200 << 20, f"{sent >> 20} MiB were sent before the answer: the server kept reading"

    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()  # fmt: skip
    started = time.monotonic()
    response, _ = _raw_request(url, head, [part[:10]], BODY_TIMEOUT_S + 30)
    waited = time.monotonic() - started
    assert response.startswith(b"HTTP/1.1 408") and b"body_timeout" in response, response[:300]
    assert BODY_TIMEOUT_S - 0.5 < waited < BODY_TIMEOUT_S + 20, waited
    good = next((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg")).read_bytes()
    assert _predict(url, good)[0] == 200


def test_the_api_documents_itself_with_its_error_codes(servers):
    import json

    with urllib.request.urlopen(f"{servers['cxr-findings']}/docs", timeout=30) as response:
        assert response.status == 200 and b"swagger" in response.read().lower()
    with urllib.request.urlopen(f"{servers['cxr-findings']}/openapi.json", timeout=30) as response:
        spec = json.loads(response.read())
    post = spec["paths"]["/predict"]["post"]
    assert {"400", "408", "413", "415", "422", "503"} <= set(post["responses"])
    assert "not_accepted" in post["responses"]["422"]["description"]
    assert "image" in post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]


def test_the_study_identity_travels_with_the_answer(registered_project, servers):
    import pydicom

    from ...dicom_samples import chest_like

    url = servers["cxr-findings"]
    status, body = _predict(url, chest_like(pydicom.uid.ExplicitVRLittleEndian), "film.dcm")
    assert status == 200 and set(body["study"]) >= {"study_instance_uid", "accession_number"}, body
    jpg = next((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg")).read_bytes()
    multipart, content_type = _multipart({"image": ("x.jpg", jpg)})
    boundary = content_type.split("=", 1)[1]
    multipart = (f'--{boundary}\r\nContent-Disposition: form-data; name="study_id"\r\n\r\nRIS-2026-0042\r\n'
                 .encode() + multipart)  # fmt: skip
    status, body = _post(f"{url}/predict", multipart, content_type)
    assert status == 200 and body["study"] == {"study_id": "RIS-2026-0042"}, body
