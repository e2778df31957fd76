"""``medmlops monitor serve`` with the real INFORMER analyser over registered smoke models: records built as serving
builds them (the model's own prediction and logits for a real simulated upload) get the logit tier from the
version's contract at ingest and come back with INFORMER results computed by the version that made the prediction;
an unreadable upload fails alone; a version that does not exist is stored unscored and, after its bounded retries,
marked failed naming it, while the service keeps serving."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import uuid

import numpy as np
import pytest

from ...conftest import project_registry
from ...monitoring.records import call, start_monitor, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
CXR_CLASSES = {"Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"}


@pytest.fixture(scope="module")
def predictors(registered_project):
    from medmlops.inference.predict import Predictor

    with project_registry(registered_project):
        return {f: Predictor.from_registry(f, "candidate", device="cpu") for f in ("cxr-findings", "ich-prognosis")}


@pytest.fixture(scope="module")
def service(registered_project, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("monitor-informer")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{registered_project / '.medmlops' / 'mlflow.db'}"}
    server = start_monitor(workdir, "--batch-size", "4", env=env, factory=None, cwd=registered_project)
    yield server
    server.stop()


def _record(family: str, version: str, data: bytes, predictions: dict | None = None, logits=None) -> dict:
    return {
        "request_id": uuid.uuid4().hex, "model": family, "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "predictions": predictions or {}, "logits": list(logits or []),
        "input": {"sha256": hashlib.sha256(data).hexdigest(), "bytes_b64": base64.b64encode(data).decode()},
    }  # fmt: skip


def _served_record(predictor, data: bytes) -> dict:
    """What serving forwards for ``data``: its prediction, logits and the upload."""
    image = predictor.preprocess(data)
    prediction = predictor.predict_tensors([image])[0]
    return _record(predictor.family, predictor.version, data, prediction, predictor.forward(image[None])[0].tolist())


def _post(url: str, record: dict) -> int:
    return call(f"{url}/records", method="POST", body=record)[0]


def _finished(url: str, request_id: str, timeout_s: float = 600) -> dict:
    state: dict = {}

    def done() -> bool:
        state.update(call(f"{url}/v1/records/{request_id}")[1])
        return state.get("status") in ("done", "failed")

    assert wait_for(done, timeout_s, every_s=1.0), state
    return state


def _png(path) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def test_real_informer_results_by_the_version_that_predicted(registered_project, predictors, service):
    from PIL import Image

    jpgs = sorted((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg"))[:2]
    uploads = [jpgs[0].read_bytes(), _png(jpgs[1])]
    nifti = next((registered_project / "data" / "raw-smoke" / "ich").rglob("*.nii.gz")).read_bytes()
    cxr = [_served_record(predictors["cxr-findings"], data) for data in uploads]
    ct = _served_record(predictors["ich-prognosis"], nifti)
    for record in (*cxr, ct):
        assert _post(service.url, record) == 202

    for record in cxr:
        result = _finished(service.url, record["request_id"])
        assert result["status"] == "done", result
        assert result["version"] == predictors["cxr-findings"].version and result["model"] == "cxr-findings"
        assert result["classes"] == predictors["cxr-findings"].contract.output_names()  # one class per logit
        assert {name.split("/")[-1] for name in result["classes"]} == CXR_CLASSES
        for name in result["classes"]:  # INFORMER's probabilities are the serving model's
            task, _, finding = name.partition("/")
            served = record["predictions"][task]["probabilities"][finding]
            assert result["probabilities"][name] == pytest.approx(served, abs=1e-4)
            assert np.isfinite(result["distinctiveness"][name]) and result["distinctiveness"][name] >= 0
            assert isinstance(result["flags"][name], bool)
        if not result["calibrated"]:
            assert not any(result["flags"].values()) and result["flagged"] is False
        assert result["tier"] == "saliency" and result["logit_tier"]["at"] <= result["saliency_tier"]["at"]
        assert list(result["logit_tier"]["scores"]["msr"]) == result["classes"]  # the served logits, scored at ingest
        assert result["features"] and all(isinstance(v, float | None) for v in result["features"].values())
        status, png, _ = call(f"{service.url}{result['saliency_url']}")
        assert status == 200 and Image.open(io.BytesIO(png)).size[0] > 0

    result = _finished(service.url, ct["request_id"])
    assert result["status"] == "done" and result["model"] == "ich-prognosis"
    assert result["classes"] == predictors["ich-prognosis"].contract.output_names()
    assert set(result["distinctiveness"]) == set(result["classes"])

    status, summary, _ = call(f"{service.url}/v1/summary?family=cxr-findings")
    assert status == 200 and summary["counts"]["done"] >= 2
    status, text, _ = call(f"{service.url}/metrics")
    version = predictors["cxr-findings"].version
    assert (
        f'medmlops_informer_flag_rate{{class_name="findings/Edema",family="cxr-findings",version="{version}"}}'.encode()
        in text
    )


def test_an_unreadable_upload_fails_and_an_unknown_version_fails_naming_it_while_the_service_serves(
    predictors, service
):
    version = predictors["cxr-findings"].version
    bad = _record("cxr-findings", version, b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # a truncated PNG: serving refuses it
    missing = _record("cxr-findings", "999", _png_from_array(1))
    assert _post(service.url, bad) == 202 and _post(service.url, missing) == 202
    unscored = call(f"{service.url}/v1/records/{missing['request_id']}")[1]
    assert unscored["tier"] == "unscored" and "cxr-findings version 999" in unscored["logit_tier"]["error"]
    failed = _finished(service.url, bad["request_id"])
    assert failed["status"] == "failed" and failed["error"] and failed.get("probabilities") is None
    assert call(f"{service.url}/healthz")[0] == 200
    late = _served_record(predictors["cxr-findings"], _png_from_array(2))  # other records go on
    assert _post(service.url, late) == 202
    assert _finished(service.url, late["request_id"])["status"] == "done"
    gone = _finished(service.url, missing["request_id"])  # 5 attempts, 1 + 2 + 4 + 8 s apart
    assert gone["status"] == "failed" and gone["attempts"] == 5
    assert "model cxr-findings version 999 cannot be loaded" in gone["error"] and "gave up after 5" in gone["error"]


def _png_from_array(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
