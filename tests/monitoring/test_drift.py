"""medmlops.monitoring.drift: Evidently drift reports over per-prediction features.

The frames are built here (no simulator in src): 19 feature columns for three classes whose names carry ``/``
and ``>=``; a shift moves the 16 continuous ones (image statistics, embedding components, probabilities on the
logit scale, distinctiveness and the entropy that follows the probabilities) by ``shift`` standard deviations
and leaves the 0/1 flags alone. Reference 200 records, 5 seeds per cell, measured by :func:`detection_table`
(``python tests/monitoring/test_drift.py``):

    shift 1.0 SD: detected within 10 records (5/5 seeds at every size from 10 to 50)
    shift 0.5 SD: detected within 50 records (0/5 at 10, 15 and 20; 2/5 at 30; 4/5 at 40; 5/5 at 50)
    no shift:     never detected at 20, 50 or 200 records (largest drift share 0.21)

"""

from __future__ import annotations

import json
import logging
import os
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")

from medmlops.errors import UserError  # noqa: E402
from medmlops.monitoring.drift import DriftError, DriftSummary, drift_report  # noqa: E402

CLASSES = ("findings/Atelectasis", "findings/Pleural Effusion", "gcs>=13")
REFERENCE_ROWS = 200
SEEDS = (0, 1, 2, 3, 4)
# Measured (see the module docstring): the smallest window, among 10, 15, 20, 30, 40, 50, at which every seed detects.
DETECTED_WITHIN = {1.0: 10, 0.5: 50}


def features(n: int, *, seed: int, shift: float = 0.0, flag_rate: float = 0.1, labels: bool = False) -> pd.DataFrame:
    """``n`` rows of monitoring features; ``shift`` moves every continuous column by that many SDs."""
    rng = np.random.default_rng(seed)
    frame: dict[str, np.ndarray] = {
        "img.mean": rng.normal(0.45, 0.05, n) + shift * 0.05,
        "img.std": rng.normal(0.20, 0.02, n) + shift * 0.02,
        "img.p05": rng.normal(0.05, 0.01, n) + shift * 0.01,
        "img.p95": rng.normal(0.90, 0.03, n) + shift * 0.03,
    }
    for k in range(1, 4):
        frame[f"emb.pc{k}"] = rng.normal(0.0, 1.0, n) + shift
    for c, name in enumerate(CLASSES):
        logit = rng.normal(-1.0 + c, 1.0, n) + shift
        p = 1.0 / (1.0 + np.exp(-logit))
        frame[f"p.{name}"] = p
        frame[f"d.{name}"] = rng.normal(1.5, 0.3, n) + shift * 0.3
        frame[f"entropy.{name}"] = -(p * np.log(p) + (1 - p) * np.log(1 - p))
        frame[f"flag.{name}"] = (rng.random(n) < flag_rate).astype("float64")
        if labels:
            truth = (rng.random(n) < p).astype("float64")
            truth[rng.random(n) < 0.3] = np.nan  # ground truth arrives for some records only
            frame[f"label:{name}"] = truth
    out = pd.DataFrame(frame)
    out.insert(0, "request_id", [f"r{seed}-{i}" for i in range(n)])
    out.insert(1, "version", "3")
    out["flagged"] = out[[f"flag.{name}" for name in CLASSES]].max(axis=1) > 0
    return out


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return features(REFERENCE_ROWS, seed=1000)


def test_unshifted_windows_do_not_alarm(reference, tmp_path):
    for seed in SEEDS:
        summary = drift_report(reference, features(50, seed=seed), family="cxr-findings", out_dir=tmp_path)
        assert not summary.detected, (seed, summary.drifted_columns)
        assert summary.drift_share < 0.25
        assert summary.n_columns == 19
        assert summary.flag_alerts == []


def test_shifted_window_is_detected_and_summarised(reference, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="medmlops.monitoring.drift"):
        summary = drift_report(
            reference, features(50, seed=7, shift=1.5), family="cxr-findings", version="3", out_dir=tmp_path
        )
    assert summary.detected
    assert summary.drift_share >= 0.5
    assert summary.n_drifted == len(summary.drifted_columns)
    assert summary.drift_share == pytest.approx(summary.n_drifted / summary.n_columns)
    assert "img.mean" in summary.drifted_columns
    assert not any(c.startswith("flag.") for c in summary.drifted_columns)  # flags were not shifted
    assert (summary.n_current, summary.n_reference, summary.version) == (50, REFERENCE_ROWS, "3")
    drift_lines = [r.getMessage() for r in caplog.records if "drift detected" in r.getMessage()]
    assert len(drift_lines) == 1
    assert "cxr-findings" in drift_lines[0] and summary.drifted_columns[0] in drift_lines[0]
    assert f"{100 * summary.drift_share:.0f}%" in drift_lines[0]


@pytest.mark.parametrize("shift", sorted(DETECTED_WITHIN))
def test_shift_detected_within_measured_records(reference, tmp_path, shift):
    n = DETECTED_WITHIN[shift]
    for seed in SEEDS:
        summary = drift_report(
            reference, features(n, seed=seed, shift=shift), family="cxr-findings", out_dir=tmp_path, min_rows=n
        )
        assert summary.detected, (shift, n, seed, summary.drift_share)


def test_files_written_and_snapshot_reloads(reference, tmp_path):
    from evidently.core.report import Snapshot

    summary = drift_report(reference, features(30, seed=3, shift=1.0), family="cxr-findings", out_dir=tmp_path / "r")
    html = Path(summary.html_path)
    assert html.name.startswith("drift-cxr-findings-") and html.suffix == ".html"
    text = html.read_text(encoding="utf-8")
    assert len(text) > 10_000 and "cxr-findings" in text
    reloaded = Snapshot.loads(Path(summary.json_path).read_text(encoding="utf-8"))
    metrics = reloaded.dict()["metrics"]
    counts = [m for m in metrics if m["config"]["type"].endswith(":DriftedColumnsCount")]
    assert counts[0]["value"]["share"] == pytest.approx(summary.drift_share)
    stored = json.loads(Path(summary.summary_path).read_text(encoding="utf-8"))
    assert stored == summary.to_dict()
    assert stored["html_path"] == str(html) and stored["detected"] is True
    # Evidently shows the columns by their human names; the summary keeps the column names the store uses.
    shown = {m["config"].get("column") for m in metrics if m["config"]["type"].endswith(":ValueDrift")}
    assert "Image: mean intensity" in shown and not any(str(c).startswith("img.") for c in shown)
    assert summary.drifted_columns and all(c in reference.columns for c in summary.drifted_columns)
    # A second report in the same second gets its own files.
    again = drift_report(reference, features(30, seed=4), family="cxr-findings", out_dir=tmp_path / "r")
    assert again.html_path != summary.html_path and Path(summary.html_path).exists()


def test_workspace_project_reused_across_reports(reference, tmp_path):
    from evidently.ui.workspace import Workspace

    workspace = tmp_path / "workspace"
    first = drift_report(
        reference, features(30, seed=1), family="cxr-findings", out_dir=tmp_path / "r", workspace=workspace
    )
    second = drift_report(
        reference, features(30, seed=2, shift=1.0), family="cxr-findings", out_dir=tmp_path / "r", workspace=workspace
    )
    ws = Workspace(str(workspace))
    projects = ws.search_project("cxr-findings")
    assert len(projects) == 1 and len(ws.list_projects()) == 1
    assert first.workspace_project_id == second.workspace_project_id == str(projects[0].id)
    runs = {str(run) for run in ws.list_runs(projects[0].id)}
    assert runs == {first.snapshot_id, second.snapshot_id}
    stored = ws.get_run(projects[0].id, second.snapshot_id)
    assert any(title.startswith("Data drift: cxr-findings") for title in (w.title for w in stored.widgets))


def test_flag_rate_alert(reference, tmp_path, caplog):
    current = features(40, seed=5)
    current["flag.gcs>=13"] = (np.arange(40) < 12).astype("float64")  # 0.30
    with caplog.at_level(logging.WARNING, logger="medmlops.monitoring.drift"):
        summary = drift_report(reference, current, family="ich-prognosis", out_dir=tmp_path, flag_rate_threshold=0.25)
    assert summary.flag_rate["gcs>=13"] == pytest.approx(0.30)
    assert summary.flag_alerts == ["gcs>=13"]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "flag rate" in r.getMessage()]
    assert len(lines) == 1 and "ich-prognosis" in lines[0] and "gcs>=13" in lines[0] and "0.30" in lines[0]
    calm = drift_report(reference, current, family="ich-prognosis", out_dir=tmp_path, flag_rate_threshold=0.35)
    assert calm.flag_alerts == []


def test_labels_add_a_quality_section_per_class(tmp_path):
    from evidently.core.report import Snapshot

    reference = features(REFERENCE_ROWS, seed=1000, labels=True)
    current = features(60, seed=11, labels=True)
    current["label:gcs>=13"] = np.nan  # no ground truth yet for this class
    summary = drift_report(reference, current, family="cxr-findings", out_dir=tmp_path, thresholds={CLASSES[0]: 0.4})
    assert set(summary.quality) == {CLASSES[0], CLASSES[1]}
    first = summary.quality[CLASSES[0]]
    assert first["n_labelled"] == current[f"label:{CLASSES[0]}"].notna().sum()
    assert first["threshold"] == 0.4
    assert 0.5 < first["roc_auc"] <= 1.0 and 0.0 <= first["f1"] <= 1.0
    assert summary.n_columns == 19  # labels are not drift features
    snapshot = Snapshot.loads(Path(summary.json_path).read_text(encoding="utf-8"))
    tasks = {m["config"].get("classification_name") for m in snapshot.dict()["metrics"]}
    assert {CLASSES[0], CLASSES[1]} <= tasks
    html = Path(summary.html_path).read_text(encoding="utf-8")
    assert "Classification quality: findings/Atelectasis" in html


def test_single_label_value_skips_that_class(reference, tmp_path, caplog):
    current = features(30, seed=12)
    current[f"label:{CLASSES[0]}"] = 0.0
    with caplog.at_level(logging.WARNING, logger="medmlops.monitoring.drift"):
        summary = drift_report(reference, current, family="cxr-findings", out_dir=tmp_path)
    assert summary.quality == {CLASSES[0]: {"n_labelled": 30.0, "threshold": 0.5}}
    assert any("all have label 0" in r.getMessage() for r in caplog.records)


def test_bad_label_value_is_a_user_error(reference, tmp_path):
    current = features(30, seed=12)
    current[f"label:{CLASSES[0]}"] = 2.0
    with pytest.raises(UserError, match=r"column 'label:findings/Atelectasis' of the current frame"):
        drift_report(reference, current, family="cxr-findings", out_dir=tmp_path)


def test_missing_values_are_left_out_per_column(reference, tmp_path, caplog):
    current = features(40, seed=6)
    current.loc[:9, "img.mean"] = np.inf  # 30 finite values left: compared
    current.loc[:29, "img.std"] = np.nan  # 10 left: under min_rows, skipped
    current["emb.pc1"] = np.nan
    with caplog.at_level(logging.WARNING, logger="medmlops.monitoring.drift"):
        summary = drift_report(reference, current, family="cxr-findings", out_dir=tmp_path)
    assert summary.skipped_columns == ["img.std", "emb.pc1"]
    assert summary.n_columns == 17 and summary.n_current == 40
    assert not summary.detected
    assert any("leaves out 2 column(s)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("current", "reference", "message"),
    [
        (features(0, seed=0), features(50, seed=1), r"current window of cxr-findings has no records"),
        (features(5, seed=0), features(50, seed=1), r"has 5 records, fewer than the 20"),
        (features(30, seed=0), features(0, seed=1), r"reference frame of cxr-findings has no rows"),
        (
            features(30, seed=0)[["request_id", "version", "img.mean"]],
            features(50, seed=1)[["request_id", "version", "img.std"]],
            r"no numeric feature column is common .*\(img.mean\) .*\(img.std\)",
        ),
        (
            features(30, seed=0)[["img.mean"]].assign(**{"img.mean": np.nan}),
            features(50, seed=1)[["img.mean"]],
            r"fewer than 20 finite values",
        ),
    ],
    ids=["empty-window", "small-window", "empty-reference", "no-common-columns", "all-missing"],
)
def test_unusable_frames_are_user_errors(current, reference, message, tmp_path):
    with pytest.raises(DriftError, match=message) as caught:
        drift_report(reference, current, family="cxr-findings", out_dir=tmp_path)
    assert isinstance(caught.value, UserError)
    assert "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_summary_to_dict_is_plain_json(reference, tmp_path):
    summary = drift_report(reference, features(25, seed=9), family="cxr-findings", out_dir=tmp_path)
    assert isinstance(summary, DriftSummary)
    data = summary.to_dict()
    json.dumps(data, allow_nan=False)
    for key in ("family", "version", "drift_share", "n_drifted", "n_columns", "drifted_columns", "detected",
                "flag_rate", "flag_alerts", "n_current", "n_reference", "html_path", "json_path", "created_at"):  # fmt: skip
        assert key in data
    assert set(data["flag_rate"]) == set(CLASSES)


# -- report_command against the real monitoring store ------------------------------------------------------------


def _store_record(store, request_id: str, version: str, created_at: float, row: pd.Series) -> None:
    from medmlops.inference.record import PredictionRecord

    record = PredictionRecord.build(
        request_id=request_id, family="cxr-findings", version=version, upload=request_id.encode(), predictions={},
        logits=[0.0, 0.0, 0.0], created_at=created_at,
    )  # fmt: skip
    assert store.add_record(record)
    values = {k: float(v) for k, v in row.items() if isinstance(k, str) and "." in k and not k.startswith("label:")}
    flags = {k[len("flag.") :]: bool(v) for k, v in values.items() if k.startswith("flag.")}
    (claimed,) = store.claim("drift-test", 1, lease_s=60)  # the one pending record: the worker's lease, then done
    assert claimed.request_id == request_id
    assert store.finish("drift-test", done={request_id: {"features": values, "flags": flags}}) == 1


def test_report_command_reads_the_store_and_keeps_the_summary(reference, tmp_path, monkeypatch, capsys):
    import time

    import medmlops.monitoring.store as store_module
    from medmlops.monitoring.drift import report_command

    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    store = store_module.Store(url)
    now = time.time()
    old = features(10, seed=20)
    for i, row in old.iterrows():  # outside the window asked for
        _store_record(store, f"old-{i}", "3", now - 10 * 3600, row)
    window = features(30, seed=21, shift=1.5)
    for i, row in window.iterrows():
        _store_record(store, f"new-{i}", "3", now - 60 + i, row)
    for i, row in features(5, seed=22).iterrows():  # a minority version in the window
        _store_record(store, f"v2-{i}", "2", now - 30, row)
    store.add_labels("new-0", {CLASSES[0]: 1})
    store.close()

    asked: list[tuple[str, str]] = []

    def load_reference(family: str, version: str) -> pd.DataFrame:
        asked.append((family, version))
        return reference

    # The colleague's medmlops.informer.calibrate reads the reference from MLflow; a stand-in with its signature.
    monkeypatch.setitem(
        sys.modules, "medmlops.informer.calibrate", types.SimpleNamespace(load_reference=load_reference)
    )
    args = types.SimpleNamespace(
        family="cxr-findings", workspace=str(tmp_path / "ws"), db_url=url, version=None, since_hours=1.0, last=None,
        out=None,
    )  # fmt: skip
    assert report_command(args) == 0
    assert asked == [("cxr-findings", "3")]
    # Found by content: in the full suite another test's logging handler may also write to the captured stdout.
    out = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip()]
    share = [line for line in out if line.startswith("cxr-findings version 3: drift share")]
    assert len(share) == 1 and "30 current vs 200 reference" in share[0]
    assert sum(line.startswith("drift detected: yes") for line in out) == 1
    reports = sorted((tmp_path / "ws" / "reports").glob("drift-cxr-findings-*.html"))
    assert len(reports) == 1 and any(line.startswith("report: ") and str(reports[0]) in line for line in out)
    kept = store_module.Store(url).latest_drift("cxr-findings")
    assert kept["detected"] is True and kept["n_current"] == 30 and kept["html_path"] == str(reports[0])
    assert kept["summary"]["version"] == "3"


def test_report_command_empty_window_is_a_user_error(tmp_path, monkeypatch):
    from medmlops.monitoring.drift import report_command

    monkeypatch.setitem(
        sys.modules, "medmlops.informer.calibrate", types.SimpleNamespace(load_reference=lambda *a: pytest.fail())
    )
    args = types.SimpleNamespace(
        family="cxr-findings", workspace=str(tmp_path / "ws"), db_url=f"sqlite:///{tmp_path / 'm.db'}", version=None,
        since_hours=None, last=50, out=None,
    )  # fmt: skip
    with pytest.raises(UserError, match="no processed records of cxr-findings"):
        report_command(args)


def detection_table(shifts=(0.0, 0.5, 1.0), sizes=(10, 15, 20, 30, 40, 50), out_dir: Path | None = None) -> None:
    """Print, per shift and window size, how many of the seeds detect drift (how DETECTED_WITHIN was measured)."""
    import tempfile

    reference = features(REFERENCE_ROWS, seed=1000)
    with tempfile.TemporaryDirectory() as tmp:
        for shift in shifts:
            row = []
            for n in sizes:
                found = [
                    drift_report(
                        reference,
                        features(n, seed=s, shift=shift),
                        family="cxr-findings",
                        out_dir=out_dir or Path(tmp),
                        min_rows=n,
                    )  # fmt: skip
                    for s in SEEDS
                ]
                row.append(
                    f"n={n}: {sum(f.detected for f in found)}/{len(SEEDS)} (max share {max(f.drift_share for f in found):.2f})"
                )
            print(f"shift {shift} SD: " + "; ".join(row))


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    detection_table()


def test_report_waits_for_pending_records_and_gives_up_after_wait_s(caplog):
    """``monitor report --wait-s``: waits while the family has records pending analysis, returns once none is
    left, and after the bound reports on what is analysed with a warning naming how many were still pending."""
    import time

    from medmlops.monitoring.drift import _wait_for_analysis

    class Store:  # the one query the wait makes, answering from a script of pending counts
        def __init__(self, pending):
            self.pending, self.calls = list(pending), 0

        def status_counts(self, family):
            self.calls += 1
            n = self.pending.pop(0) if len(self.pending) > 1 else self.pending[0]
            return [{"status": "pending", "n": n}, {"status": "done", "n": 3}]

    drained = Store([2, 1, 0])
    _wait_for_analysis(drained, "cxr-findings", 30.0)
    assert drained.calls == 3
    stuck = Store([5])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="medmlops"):
        _wait_for_analysis(stuck, "cxr-findings", 1.5)
    assert 1.4 <= time.monotonic() - started < 10
    assert "5 records of cxr-findings still pending" in caplog.text
    no_wait = Store([5])
    _wait_for_analysis(no_wait, "cxr-findings", 0.0)
    assert no_wait.calls == 1
