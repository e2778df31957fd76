"""Per-task metrics of prediction frames (a fold's test metrics, Youden thresholds, bootstrap CIs, the mean ± SD
table), checked against the metric functions they dispatch to."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medmlops.evaluation import metrics as M
from medmlops.evaluation.experiment_metrics import bootstrap_table, summary_table, task_metrics, youden_thresholds
from medmlops.training.tasks import CHEXPERT_TASKS, COVID_TASKS, ICH_TASKS, TaskDef

N = 40


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """A prediction frame as ``training.loop.predict`` writes it: labels (-1 / NaN = not this task's) and probs."""
    rng = np.random.default_rng(0)
    cols: dict[str, np.ndarray] = {"sample_id": np.array([f"s{i}" for i in range(N)])}
    prognosis = rng.integers(0, 2, N)
    prognosis[:5] = -1
    cols["prognosis"] = prognosis
    cols["prognosis_p0"] = np.clip(0.3 * prognosis + rng.uniform(0, 0.7, N), 0, 1)
    cols["gcs_ordinal"] = rng.integers(0, 3, N)
    cols["gcs_ordinal_p0"], cols["gcs_ordinal_p1"] = rng.uniform(0, 1, N), rng.uniform(0, 1, N)
    severity = rng.dirichlet(np.ones(4), N)
    for k in range(4):
        cols[f"severity_p{k}"] = severity[:, k]
    cols["severity"] = rng.integers(0, 4, N)
    findings = rng.integers(0, 2, (N, 5)).astype(float)
    findings[rng.uniform(size=(N, 5)) < 0.2] = np.nan
    findings[:, 4] = np.nan  # a finding never labelled
    for k in range(5):
        cols[f"findings_y{k}"] = findings[:, k]
        cols[f"findings_p{k}"] = np.clip(0.4 * np.nan_to_num(findings[:, k]) + rng.uniform(0, 0.6, N), 0, 1)
    return pd.DataFrame(cols)


def test_binary_metrics_at_half_on_the_task_rows_only(frame):
    values = task_metrics(frame, ICH_TASKS["prognosis"])
    rows = frame["prognosis"] >= 0
    expected = M.binary_metrics(frame.loc[rows, "prognosis"], frame.loc[rows, "prognosis_p0"], threshold=0.5)
    assert values == {f"prognosis_{k}": pytest.approx(v, nan_ok=True) for k, v in expected.items()}


def test_ordinal_metrics_decode_monotonically(frame):
    task = ICH_TASKS["gcs_ordinal"]
    values = task_metrics(frame, task)
    predicted = task.predict(frame[["gcs_ordinal_p0", "gcs_ordinal_p1"]].to_numpy())
    expected = M.ordinal_metrics(frame["gcs_ordinal"], predicted, n_classes=3)
    assert values == {f"gcs_ordinal_{k}": pytest.approx(v) for k, v in expected.items()}


def test_multiclass_gets_auc_with_two_classes_only(frame):
    two = frame.assign(prognosis_p1=1 - frame["prognosis_p0"])  # COVID's prognosis: two softmax classes
    binary = task_metrics(two, COVID_TASKS["prognosis"])
    rows = two["prognosis"] >= 0
    assert binary["prognosis_auc"] == pytest.approx(
        M.binary_metrics(two.loc[rows, "prognosis"], two.loc[rows, "prognosis_p1"])["auc"]
    )
    four = task_metrics(frame, COVID_TASKS["severity"])
    assert "severity_auc" not in four and {"severity_accuracy", "severity_gmean"} <= set(four)


def test_a_task_without_labelled_rows_has_no_metrics(frame):
    assert task_metrics(frame.assign(prognosis=-1), ICH_TASKS["prognosis"]) == {}


def test_multilabel_metrics_at_given_thresholds(frame):
    task = CHEXPERT_TASKS["findings"]
    cut = np.array([0.2, 0.4, 0.5, 0.6, 0.5])
    values = task_metrics(frame, task, cut)
    labels = frame[[f"findings_y{k}" for k in range(5)]].to_numpy()
    probs = frame[[f"findings_p{k}" for k in range(5)]].to_numpy()
    names = ["atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion"]
    expected = M.multilabel_metrics(labels, probs, cut, names)
    assert values == {f"findings_{k}": pytest.approx(v, nan_ok=True) for k, v in expected.items()}
    pd.testing.assert_series_equal(
        pd.Series(task_metrics(frame, task)), pd.Series(task_metrics(frame, task, np.full(5, 0.5)))
    )


def test_youden_thresholds_per_finding_skip_unknown_labels(frame):
    thresholds = youden_thresholds(frame, CHEXPERT_TASKS["findings"])
    keep = frame["findings_y0"].notna()
    assert thresholds.shape == (5,)
    assert thresholds[0] == M.youden_threshold(frame.loc[keep, "findings_y0"], frame.loc[keep, "findings_p0"])
    assert thresholds[4] == 0.5  # never labelled


def test_bootstrap_table_brackets_the_point_estimates(frame):
    tasks = {"prognosis": ICH_TASKS["prognosis"], "findings": CHEXPERT_TASKS["findings"]}
    cut = {"findings": np.full(5, 0.4)}
    table = bootstrap_table(frame, tasks, n_boot=50, seed=3, thresholds=cut)
    assert list(table.columns) == ["task", "metric", "value", "ci_low", "ci_high"]
    assert set(table["task"]) == {"prognosis", "findings"}
    point = {**task_metrics(frame, tasks["prognosis"]), **task_metrics(frame, tasks["findings"], cut["findings"])}
    for row in table.itertuples():
        assert row.value == pytest.approx(point[f"{row.task}_{row.metric}"], nan_ok=True)
        if np.isfinite(row.ci_low):
            assert row.ci_low <= row.ci_high
    pd.testing.assert_frame_equal(table, bootstrap_table(frame, tasks, n_boot=50, seed=3, thresholds=cut))
    assert bootstrap_table(frame.assign(prognosis=-1), {"prognosis": tasks["prognosis"]}, 10, 0, {}).empty


def test_summary_table_rows_are_metrics_columns_tasks():
    tasks = {
        "gcs": TaskDef("gcs", "gcs", "binary", ("a", "b")),
        "gcs_age": TaskDef("gcs_age", "x", "binary", ("a", "b")),
    }
    summary = {"gcs_auc_mean": 0.8, "gcs_auc_sd": 0.05, "gcs_age_auc_mean": 0.7, "gcs_age_auc_sd": 0.1,
               "gcs_f1_mean": 0.6, "other_auc_mean": 0.5, "best_epoch": 3.0}  # fmt: skip
    table = summary_table(summary, tasks)
    assert table.loc["auc", "gcs"] == "0.80 ± 0.05" and table.loc["auc", "gcs_age"] == "0.70 ± 0.10"
    assert table.loc["f1", "gcs"] == "0.60 ± nan"
    assert set(table.index) == {"auc", "f1"}
