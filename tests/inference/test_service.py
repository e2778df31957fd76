"""``medmlops.inference.service``: the serving core without BentoML. A PNG upload goes through the contract's real
preprocessing chain and a tiny torch model to the client's answer and the spooled record; the forward is resent
when its connection drops and given up at once when the model service refuses; the answer is decoded with the
contract of the version that computed it; each prediction gets a record id of the server's own, a client's
X-Request-ID being kept as its correlation id; a bad request id, a bad upload or a broken spool is an error naming
it; closing gives the spool its bounded drain. The real BentoML server is exercised in ``tests/shells/serving``."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import time

import anyio
import numpy as np
import pytest
import torch
from PIL import Image

from medmlops.inference.predict import InputError, Predictor
from medmlops.inference.record import PredictionRecord, RecordError
from medmlops.inference.service import Gateway, ServedModel, ServiceUnavailable, ServingSettings
from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec

CLASSES = ("Atelectasis", "Cardiomegaly", "Edema")
SIZE = 32


def _contract(thresholds: tuple[float, ...] = (0.5, 0.5, 0.5)) -> ModelContract:
    return ModelContract(
        family="cxr-findings", tasks=(TaskSpec("findings", "multilabel", CLASSES, thresholds),),
        input=InputSpec(modality="xray", formats=("png", "jpeg", "dicom"), shape=(3, SIZE, SIZE), spacing_mm=None,
                        intensity_window=None, channels=3),
        preprocessing={"chain": "cxr", "size": SIZE, "lung_crop": False, "percentiles": [0.5, 99.5]},
        data_version="0123456789abcdef.dir", git_commit="feedface", metrics={},
    )  # fmt: skip


def _png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class Dropped(ConnectionError):
    """Stands for aiohttp's "Server disconnected" on a pooled connection."""


class Refused(RuntimeError):
    """Stands for BentoML's "overloaded"."""


class ModelService:
    """The model service as the gateway sees it: an async forward, failing first with the errors it is given."""

    def __init__(self, outputs: np.ndarray, *failures: BaseException) -> None:
        self.outputs, self.failures, self.shapes = outputs, list(failures), []

    async def forward(self, images: np.ndarray) -> np.ndarray:
        self.shapes.append(images.shape)
        if self.failures:
            raise self.failures.pop(0)
        return self.outputs


# Logits of the three classes, then the version that computed them (ServedModel.forward's last column).
VERSION_3 = np.array([[2.0, -2.0, 0.1, 3.0]], np.float32)


@pytest.fixture
def gateway(tmp_path):
    settings = ServingSettings("cxr-findings", "3", max_upload_bytes=100_000, monitoring_url="http://127.0.0.1:9",
                               spool_dir=str(tmp_path / "spool"))  # fmt: skip
    gateway = Gateway(settings, _contract(), resend_on=(Dropped,), give_up_on=(Refused,))
    gateway.forwarder.stop()  # monitoring is down: records stay in the spool for the test to read
    yield gateway


def _predict(gateway: Gateway, model: ModelService, data: bytes, request_id: str | None = None) -> dict:
    return anyio.run(gateway.predict, data, request_id, model.forward)


def _spooled(tmp_path) -> list[PredictionRecord]:
    return [PredictionRecord.parse(json.loads(p.read_text())) for p in sorted((tmp_path / "spool").glob("*.json"))]


def test_an_upload_becomes_the_answer_and_its_record_is_spooled_first(gateway, tmp_path):
    data = _png()
    answer = _predict(gateway, ModelService(VERSION_3), data, "case-0001")
    findings = answer["predictions"]["findings"]
    assert (answer["correlation_id"], answer["model"], answer["version"]) == ("case-0001", "cxr-findings", "3")
    assert len(answer["request_id"]) == 32 and answer["request_id"] != "case-0001"  # the server's id
    assert findings["labels"] == ["Atelectasis", "Edema"]  # sigmoid(2.0), sigmoid(0.1) >= 0.5
    assert findings["probabilities"]["Atelectasis"] == pytest.approx(1 / (1 + np.exp(-2.0)))
    (record,) = _spooled(tmp_path)
    assert record.answer() == answer and record.upload == data and record.logits == (2.0, -2.0, pytest.approx(0.1))


def test_the_answer_is_decoded_with_the_contract_of_the_version_that_computed_it(gateway, tmp_path):
    gateway.contracts["4"] = _contract(thresholds=(0.95, 0.5, 0.5))  # version 4 is stricter on Atelectasis
    version_4 = VERSION_3.copy()
    version_4[0, -1] = 4
    answer = _predict(gateway, ModelService(version_4), _png())
    assert answer["version"] == "4" and answer["predictions"]["findings"]["labels"] == ["Edema"]
    assert len(answer["request_id"]) == 32 and [r.version for r in _spooled(tmp_path)] == ["4"]


@pytest.mark.reliability(
    "Load",
    "8 concurrent predictions sent with one X-Request-ID",
    "all answered; 8 records with 8 server ids, each keeping the client's id as its correlation id",
)
def test_requests_reusing_one_client_id_are_distinct_records(gateway, tmp_path):
    model = ModelService(VERSION_3)

    async def eight() -> list[dict]:
        answers: list[dict] = []

        async def one(seed: int) -> None:
            answers.append(await gateway.predict(_png(seed), "study-42", model.forward))

        async with anyio.create_task_group() as group:
            for seed in range(8):
                group.start_soon(one, seed)
        return answers

    answers = anyio.run(eight)
    assert len({a["request_id"] for a in answers}) == 8 and {a["correlation_id"] for a in answers} == {"study-42"}
    records = _spooled(tmp_path)
    assert sorted(r.request_id for r in records) == sorted(a["request_id"] for a in answers)
    assert {r.correlation_id for r in records} == {"study-42"} and len({r.upload for r in records}) == 8
    assert "correlation_id" not in _predict(gateway, model, _png())  # none sent, none echoed


def test_closing_gives_the_spool_a_bounded_drain(tmp_path):
    settings = ServingSettings("cxr-findings", "3", monitoring_url="http://127.0.0.1:9",
                               spool_dir=str(tmp_path / "spool"), spool_drain_s=0.5)  # fmt: skip
    gateway = Gateway(settings, _contract())
    _predict(gateway, ModelService(VERSION_3), _png())
    started = time.monotonic()
    gateway.close()  # monitoring is down throughout: the record stays, whole, for the next start
    assert time.monotonic() - started < 2 and len(_spooled(tmp_path)) == 1


def test_a_dropped_connection_is_resent_and_a_refusal_is_not(gateway, tmp_path):
    model = ModelService(VERSION_3, Dropped("Server disconnected"), Dropped("Server disconnected"))
    assert _predict(gateway, model, _png())["version"] == "3" and len(model.shapes) == 3
    assert model.shapes[0] == (1, 3, SIZE, SIZE)

    model = ModelService(VERSION_3, *(Dropped("Server disconnected") for _ in range(3)))
    with pytest.raises(ServiceUnavailable) as dropped:
        _predict(gateway, model, _png())
    assert len(model.shapes) == 3 and "Server disconnected" in dropped.value.detail

    model = ModelService(VERSION_3, Refused("overloaded"))
    with pytest.raises(ServiceUnavailable) as refused:
        _predict(gateway, model, _png())
    assert len(model.shapes) == 1
    assert (refused.value.status, refused.value.error, refused.value.retry_after_s) == (503, "model_unavailable", 1)
    assert "overloaded" in refused.value.detail and len(_spooled(tmp_path)) == 1  # only the answered request


def test_a_bad_request_id_or_upload_is_refused_before_the_model_is_called(gateway, tmp_path):
    model = ModelService(VERSION_3)
    with pytest.raises(RecordError) as bad_id:
        _predict(gateway, model, _png(), "../etc/passwd")
    assert (bad_id.value.status, bad_id.value.error, bad_id.value.field) == (400, "bad_request_id", "X-Request-ID")
    with pytest.raises(InputError) as bad_upload:
        _predict(gateway, model, b"just some text, not an image")
    assert (bad_upload.value.status, bad_upload.value.error) == (400, "unsupported_format")
    with pytest.raises(InputError) as too_large:
        _predict(gateway, model, b"\x89PNG\r\n\x1a\n" + bytes(100_000))
    assert (too_large.value.status, too_large.value.error) == (413, "too_large")
    assert model.shapes == [] and _spooled(tmp_path) == []


def test_a_record_the_spool_cannot_keep_is_a_503_not_a_silent_answer(gateway, tmp_path):
    shutil.rmtree(tmp_path / "spool")
    (tmp_path / "spool").write_text("a file where the spool folder was")
    with pytest.raises(ServiceUnavailable) as caught:
        _predict(gateway, ModelService(VERSION_3), _png())
    assert (caught.value.error, caught.value.retry_after_s) == ("spool_unavailable", None)
    assert str(tmp_path / "spool") in caught.value.detail


def test_without_a_monitoring_url_nothing_is_spooled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gateway = Gateway(ServingSettings("cxr-findings", "3"), _contract())
    assert gateway.forwarder is None
    assert _predict(gateway, ModelService(VERSION_3), _png())["version"] == "3"
    assert list(tmp_path.iterdir()) == []


def test_the_served_model_appends_the_version_to_each_row():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, len(CLASSES)))
    served = ServedModel(ServingSettings("cxr-findings", "7"), Predictor("cxr-findings", "7", _contract(), model))
    images = np.random.default_rng(1).random((2, 3, SIZE, SIZE), dtype=np.float32)
    outputs = served.forward(images)
    assert outputs.shape == (2, len(CLASSES) + 2) and list(outputs[:, -1]) == [7.0, 7.0]
    with torch.no_grad():
        expected = model(torch.as_tensor(images)).numpy()
    np.testing.assert_allclose(outputs[:, :-2], expected, rtol=1e-5)
    assert np.isnan(outputs[:, -2]).all()  # no out-of-distribution reference in this contract: no score


class Surfaced(torch.nn.Module):
    """A tiny model with the uniform surface (``forward_features``, ``forward_head(pre_logits=...)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 8), torch.nn.Tanh())
        self.head = torch.nn.Linear(8, len(CLASSES))
        self.calls = 0

    def forward_features(self, x):
        self.calls += 1
        return self.features(x)

    def forward_head(self, features, pre_logits=False):
        return features if pre_logits else {"findings": self.head(features)}

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _gated(contract: ModelContract, reference: dict | None) -> ModelContract:
    from medmlops.registry.contract import InputGate

    return dataclasses.replace(contract, input_gate=InputGate(ood=reference))


def test_the_served_model_adds_the_out_of_distribution_score_from_the_same_forward():
    from medmlops.inference import ood

    torch.manual_seed(0)
    model = Surfaced().eval()
    rng = np.random.default_rng(2)
    train, val = (torch.as_tensor(rng.random((n, 3, SIZE, SIZE), dtype=np.float32)) for n in (40, 20))
    reference = ood.fit_reference(ood.embeddings(model, train), ood.embeddings(model, val))
    contract = _gated(_contract(), reference)
    served = ServedModel(ServingSettings("cxr-findings", "7"), Predictor("cxr-findings", "7", contract, model))
    images = np.concatenate([val[:1].numpy(), np.full((1, 3, SIZE, SIZE), 50.0, np.float32)])
    model.calls = 0
    outputs = served.forward(images)
    assert model.calls == 1  # logits and embedding from one pass
    assert outputs.shape == (2, len(CLASSES) + 2) and list(outputs[:, -1]) == [7.0, 7.0]
    expected = ood.score(reference, ood.embeddings(model, torch.as_tensor(images)))
    np.testing.assert_allclose(outputs[:, -2], expected, rtol=1e-4)
    assert outputs[0, -2] <= reference["threshold"] < outputs[1, -2]


def test_the_answer_carries_the_ood_verdict_and_the_study_and_refuses_when_the_contract_says_so(gateway, tmp_path):
    reference = {"action": "warn", "threshold": 5.0, "percentile": 99.0}
    gateway.contracts["3"] = _gated(_contract(), reference)
    outputs = np.array([[2.0, -2.0, 0.1, 9.5, 3.0]], np.float32)  # logits, score, version
    study = {"study_instance_uid": "1.2.3", "study_id": "s-9"}
    answer = gateway.answer("r-warn", _png(), outputs, study=study)
    assert answer["in_distribution"] is False and answer["ood"] == {"score": 9.5, "threshold": 5.0}
    assert answer["study"] == study and answer["predictions"]["findings"]["labels"] == ["Atelectasis", "Edema"]
    inside = gateway.answer("r-in", _png(), np.array([[2.0, -2.0, 0.1, 4.0, 3.0]], np.float32))
    assert inside["in_distribution"] is True and "study" not in inside
    (warned, _) = sorted(_spooled(tmp_path), key=lambda r: r.request_id != "r-warn")
    assert warned.ood == {"in_distribution": False, "score": 9.5, "threshold": 5.0} and warned.study == study

    gateway.contracts["3"] = _gated(_contract(), {**reference, "action": "refuse"})
    with pytest.raises(InputError) as refused:
        gateway.answer("r-refused", _png(), outputs, study=study)
    assert (refused.value.status, refused.value.error) == (422, "out_of_distribution")
    assert "9.5" in refused.value.detail and "5" in refused.value.detail
    assert "r-refused" not in {r.request_id for r in _spooled(tmp_path)}  # nothing recorded
    assert gateway.answer("r-in-2", _png(), np.array([[2.0, -2.0, 0.1, 4.0, 3.0]], np.float32))["in_distribution"]


def test_a_version_without_a_reference_or_outputs_without_a_score_answer_in_distribution_null(gateway):
    assert gateway.answer("r-old", _png(), VERSION_3)["in_distribution"] is None  # no score column
    with_nan = np.array([[2.0, -2.0, 0.1, np.nan, 3.0]], np.float32)
    assert gateway.answer("r-nan", _png(), with_nan)["ood"] == {"score": None, "threshold": None}


def test_settings_come_from_the_environment_medmlops_serve_writes():
    assert ServingSettings.from_env({}) == ServingSettings("", "")
    assert ServingSettings("", "").spool_drain_s == 20.0  # below Kubernetes' default 30 s grace period
    env = {"MEDMLOPS_FAMILY": "ich-prognosis", "MEDMLOPS_MODEL_VERSION": "2", "MEDMLOPS_MAX_UPLOAD_BYTES": "1000",
           "MEDMLOPS_BATCHING": "0", "MEDMLOPS_MAX_BATCH_SIZE": "4", "MEDMLOPS_MAX_LATENCY_MS": "500",
           "MEDMLOPS_ALIAS": "champion", "MEDMLOPS_RELOAD_S": "0.5", "MONITORING_URL": "http://m:8080",
           "MEDMLOPS_SPOOL_DIR": "/spool/ich", "MEDMLOPS_MONITORING_TOKEN": "secret",
           "MEDMLOPS_SPOOL_DRAIN_S": "7.5"}  # fmt: skip
    assert ServingSettings.from_env(env) == ServingSettings(
        "ich-prognosis", "2", max_upload_bytes=1000, batching=False, max_batch_size=4, max_latency_ms=500,
        alias="champion", reload_s=0.5, monitoring_url="http://m:8080", spool_dir="/spool/ich",
        monitoring_token="secret", spool_drain_s=7.5,
    )  # fmt: skip


def test_at_most_the_configured_number_of_uploads_are_decoded_at_once(tmp_path):
    """Decoding is the memory-hungry step: with ``max_concurrent_preprocessing=2``, eight concurrent requests never
    have more than two uploads in the preprocessor at once, and all eight are answered."""
    import threading

    settings = ServingSettings("cxr-findings", "3", max_concurrent_preprocessing=2)
    gateway = Gateway(settings, _contract())
    real, lock, state = gateway.preprocess.prepare, threading.Lock(), {"now": 0, "most": 0}

    def counting(data: bytes):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(0.05)
            return real(data)
        finally:
            with lock:
                state["now"] -= 1

    gateway.preprocess.prepare = counting
    answers = []

    async def main():
        async with anyio.create_task_group() as group:
            for seed in range(8):
                group.start_soon(lambda s=seed: _answer_into(answers, gateway, _png(s)))

    anyio.run(main)
    assert len(answers) == 8 and state["most"] == 2


async def _answer_into(answers: list, gateway: Gateway, data: bytes) -> None:
    answers.append(await gateway.predict(data, None, ModelService(VERSION_3).forward))
