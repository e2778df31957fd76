"""End to end over HTTP: a real ``medmlops monitor serve`` on 127.0.0.1 (fake analyser, fake calibration source whose
contract carries a CBPE section). Records posted now get estimated performance on ``/metrics`` at once; labels
posted later turn into realized metrics there, with the values scikit-learn computes from the same logits and labels;
a version whose estimate is under the gate floor raises the below-floor gauge; ``/v1/performance`` says the same."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import f1_score, roc_auc_score

from .fake_analyser import CLASSES, GATE_FLOOR
from .records import call, make_record, start_monitor

N = 40
GATE = "findings_mean_auroc_mean"


def samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body, _ = call(f"{url}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name.startswith(("medmlops_estimated_performance", "medmlops_realized_performance",
                              "medmlops_performance_"))
    }  # fmt: skip


def key(name: str, version: str, metric: str | None = None, class_name: str | None = None):
    labels = {"family": "cxr-findings", "version": version}
    if metric is not None:
        labels.update(metric=metric, class_name=class_name)
    return (name, tuple(sorted(labels.items())))


@pytest.fixture
def served(tmp_path):
    server = start_monitor(tmp_path)
    yield server
    server.stop()


def test_labels_posted_later_become_realized_metrics_on_metrics(served):
    rng = np.random.default_rng(7)
    z = rng.normal(0, 2.0, size=(N, 2))
    y = (rng.random((N, 2)) < 1 / (1 + np.exp(-z))).astype(int)
    y[0], y[1] = (1, 1), (0, 0)  # both labels present for both classes, whatever the draw
    for i in range(N):
        body = make_record(f"good-{i}", version="3", logits=tuple(z[i]))
        assert call(f"{served.url}/v1/records", method="POST", body=body)[0] == 202
        unsure = make_record(f"flat-{i}", version="4", logits=tuple(rng.normal(0, 0.05, 2)))
        assert call(f"{served.url}/v1/records", method="POST", body=unsure)[0] == 202

    before = samples(served.url)
    assert key("medmlops_estimated_performance", "3", GATE, "") in before
    assert not any(name == "medmlops_realized_performance" for name, _ in before)  # no label yet: nothing realized
    assert before[key("medmlops_performance_below_floor", "3")] == 0.0
    assert before[key("medmlops_estimated_performance", "4", GATE, "")] < GATE_FLOOR
    assert before[key("medmlops_performance_below_floor", "4")] == 1.0

    for i in range(N):
        labels = {"Atelectasis": int(y[i, 0]), "findings/Cardiomegaly": int(y[i, 1])}
        status, _, _ = call(
            f"{served.url}/v1/labels", method="POST", body={"request_id": f"good-{i}", "labels": labels}
        )
        assert status == 200

    after = samples(served.url)
    assert after[key("medmlops_performance_labelled_records", "3")] == N
    aurocs = []
    for j, name in enumerate(CLASSES):
        auroc = roc_auc_score(y[:, j], z[:, j])
        aurocs.append(auroc)
        assert after[key("medmlops_realized_performance", "3", "auroc", name)] == pytest.approx(auroc)
        assert after[key("medmlops_realized_performance", "3", "f1", name)] == pytest.approx(
            f1_score(y[:, j], z[:, j] >= 0)
        )
        # The estimate does not depend on labels: unchanged by them.
        estimated = key("medmlops_estimated_performance", "3", "auroc", name)
        assert after[estimated] == before[estimated]
    assert after[key("medmlops_realized_performance", "3", GATE, "")] == pytest.approx(np.mean(aurocs))
    assert not any(k == key("medmlops_realized_performance", "4", GATE, "") for k in after)

    status, report, _ = call(f"{served.url}/v1/performance?family=cxr-findings")
    assert status == 200
    by_version = {v["version"]: v for v in report["versions"]}
    assert by_version["3"]["gate"]["realized"] == pytest.approx(np.mean(aurocs))
    assert by_version["3"]["n_labelled"] == N and by_version["4"]["gate"]["below_floor"] is True
    status, bad, _ = call(f"{served.url}/v1/performance?limit=-3")
    assert status == 422 and bad["error"] == "bad_query" and "limit" in bad["detail"]


def test_a_version_without_a_performance_calibration_is_reported_not_estimable(served):
    body = make_record("u-1", family="uncalibrated", version="1")
    assert call(f"{served.url}/v1/records", method="POST", body=body)[0] == 202
    status, report, _ = call(f"{served.url}/v1/performance?family=uncalibrated")
    assert status == 200
    (entry,) = report["versions"]
    assert entry["estimable"] is False and "no performance calibration" in entry["reason"]
    metrics = samples(served.url)
    assert not any(dict(labels).get("family") == "uncalibrated" and name != "medmlops_performance_labelled_records"
                   for name, labels in metrics)  # fmt: skip
