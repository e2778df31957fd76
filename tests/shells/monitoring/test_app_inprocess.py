"""``monitoring/app.py`` in-process (Starlette's TestClient): a bug answers 500 JSON and the next request is served;
a chunked body without Content-Length is still held to the size limit."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from medmlops.monitoring.service import Monitor, Settings
from monitoring.app import create_app

from ...monitoring.records import make_record


@pytest.fixture
def monitor(tmp_path, monkeypatch):
    # The monitor reads contracts from MLflow: its default store would land in the working directory (the repo).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monitor = Monitor(Settings(db_url=f"sqlite:///{tmp_path / 'm.db'}", max_body_bytes=4096))
    yield monitor
    monitor.close()


def test_an_unexpected_exception_is_a_500_json_and_the_app_keeps_serving(monitor, monkeypatch):
    client = TestClient(create_app(monitor), raise_server_exceptions=False)
    assert client.post("/records", json=make_record("ok-1")).status_code == 202

    def broken(_request_id):
        raise RuntimeError("a bug")

    monkeypatch.setattr(monitor, "record_view", broken)
    response = client.get("/v1/records/ok-1")
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    monkeypatch.undo()
    assert client.get("/v1/records/ok-1").json()["status"] == "pending"
    text = client.get("/metrics").text
    assert (
        'medmlops_monitoring_http_requests_total{handler="/v1/records/{request_id}",method="GET",status="500"} 1.0'
        in text
    )


def test_a_chunked_body_over_the_limit_is_413_and_nothing_is_stored(monitor):
    client = TestClient(create_app(monitor))
    body = json.dumps(make_record("big", data=b"x" * 8000)).encode()

    def chunks():
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    response = client.post("/v1/records", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    assert monitor.store.pending_count() == 0
    small = client.post("/v1/records", json=make_record("small"))
    assert small.status_code == 202 and small.json() == {"request_id": "small", "status": "accepted"}
