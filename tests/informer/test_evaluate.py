"""The FD-Shifts protocol of ``medmlops informer evaluate``: the metrics against hand-computed values, the paired
bootstrap differences, the aggregation over versions, the refusal to evaluate fitted CSFs on their own images, and
the command end to end on a registered smoke model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medmlops.informer import csf, fd_report, scores
from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec

FINDINGS = ModelContract(
    family="toy", tasks=(TaskSpec("findings", "multilabel", ("a", "b"), (0.5, 0.5)),),
    input=InputSpec("xray", (".png",), (3, 32, 32), None, None, 3), preprocessing={}, data_version="x",
    git_commit="y", metrics={},
)  # fmt: skip

# One class: 4 images, most confident first, errors at ranks 2 and 4.
CONF = np.array([0.9, 0.8, 0.7, 0.6])
ERR = np.array([0.0, 1.0, 0.0, 1.0])
# The same with a tie between ranks 2 and 3 (accepted or rejected together).
TIED = np.array([0.9, 0.5, 0.5, 0.1])


# ---------------------------------------------------------------------------------------------------------------
# The metrics against their definitions
# ---------------------------------------------------------------------------------------------------------------


def test_aurc_is_the_mean_selective_risk_over_accepted_counts():
    # Selective risk after accepting k = 1..4: 0, 1/2, 1/3, 2/4.
    assert scores.aurc(CONF, ERR) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    # E-AURC: minus the AURC of the perfect ranking at the same error rate (risks 0, 0, 1/3, 2/4).
    assert scores.eaurc(CONF, ERR) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4 - (0 + 0 + 1 / 3 + 2 / 4) / 4)
    # A tie group is accepted at once: coverage 1/4 (risk 0), then 3/4 (risk 1/3, width 2/4), then 1 (risk 2/4).
    assert scores.aurc(TIED, ERR) == pytest.approx(0 * 1 / 4 + 1 / 3 * 2 / 4 + 2 / 4 * 1 / 4)
    # One tie group: the whole set at once, risk = error rate.
    assert scores.aurc(np.ones(4), ERR) == pytest.approx(0.5)


def test_augrc_is_traub_et_als_linear_interpolation_from_the_origin():
    # Curve points (coverage, generalised risk = accepted errors / N): (0, 0), (1/4, 0), (2/4, 1/4), (3/4, 1/4),
    # (1, 2/4); the area under the straight lines between them (FD-Shifts' rc_stats.py).
    assert scores.augrc(CONF, ERR) == pytest.approx(0 + (0 + 1 / 4) / 8 + 1 / 16 + (1 / 4 + 2 / 4) / 8)
    # A tie group is one straight segment: (0, 0), (1/4, 0), (3/4, 1/4), (1, 2/4).
    assert scores.augrc(TIED, ERR) == pytest.approx((2 / 4) * (0 + 1 / 4) / 2 + (1 / 4) * (1 / 4 + 2 / 4) / 2)
    # A constant score is one segment from (0, 0) to (1, error rate): half the error rate, a random ranking's value.
    assert scores.augrc(np.ones(4), ERR) == pytest.approx(0.25)
    # A ranking that puts both errors last is better than one that puts them first.
    assert scores.augrc(-np.arange(4.0), np.array([0, 0, 1, 1])) < scores.augrc(-np.arange(4.0), np.array([1, 1, 0, 0]))


def test_metric_table_is_the_class_average_times_1000_with_a_bootstrap_ci():
    confidence = np.c_[CONF, TIED]
    targets = np.array([[1, 0], [1, 0], [0, 0], [np.nan, 1]], dtype=np.float64)
    predictions = np.array([[1, 1], [0, 0], [0, 0], [1, 0]])
    # Class a: the first three rows (the 4th target unknown), errors 0, 1, 0; class b: errors 1, 0, 0, 1.
    a = (scores.aurc(CONF[:3], np.array([0, 1, 0])), scores.augrc(CONF[:3], np.array([0, 1, 0])))
    b = (scores.aurc(TIED, np.array([1, 0, 0, 1])), scores.augrc(TIED, np.array([1, 0, 0, 1])))
    assert a[0] == pytest.approx((0 + 1 / 2 + 1 / 3) / 3)
    # Every resample the full set: the CI collapses onto the value.
    same = np.tile(np.arange(4), (3, 1))
    table = fd_report.metric_table({"msr": confidence}, targets, predictions, same, test_set="iid")
    row = table.iloc[0]
    assert row["test_set"] == "iid" and row["csf"] == "msr" and row["label"] == "MSR" and row["n"] == 4
    assert row["AURC"] == pytest.approx(1000 * (a[0] + b[0]) / 2)
    assert row["AUGRC"] == pytest.approx(1000 * (a[1] + b[1]) / 2)
    assert row["AURC_low"] == pytest.approx(row["AURC"]) and row["AUGRC_high"] == pytest.approx(row["AUGRC"])
    # Two resamples: the percentile interval of their two values, by hand (numpy's linear percentile).
    two = np.array([[0, 1, 2, 3], [1, 1, 3, 3]])
    v1 = row["AUGRC"]
    # Resample rows 1, 1, 3, 3: class a keeps row 1 twice (row 3's target unknown), class b all four.
    v2 = (
        1000
        * (scores.augrc(CONF[[1, 1]], np.array([1, 1])) + scores.augrc(TIED[[1, 1, 3, 3]], np.array([0, 0, 1, 1])))
        / 2
    )
    low, high = sorted([v1, v2])
    ci = fd_report.metric_table({"msr": confidence}, targets, predictions, two, test_set="iid").iloc[0]
    assert ci["AUGRC_low"] == pytest.approx(low + 0.025 * (high - low))
    assert ci["AUGRC_high"] == pytest.approx(low + 0.975 * (high - low))


# ---------------------------------------------------------------------------------------------------------------
# Paired differences
# ---------------------------------------------------------------------------------------------------------------


def _world(n=200, seed=0):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 2)) < 0.5).astype(np.float64)
    predictions = np.where(rng.random((n, 2)) < 0.25, 1 - targets, targets)  # 25 % errors
    errors = predictions != targets
    oracle = np.where(errors, 0.0, 1.0) + rng.normal(0, 0.1, (n, 2))  # errors least confident
    noise = rng.normal(size=(n, 2))  # uninformative
    return targets, predictions, oracle, noise


def test_paired_difference_by_hand_and_its_ci():
    targets, predictions, oracle, noise = _world()
    idx = fd_report.bootstrap_indices(len(targets), 50, seed=1)
    d = fd_report.paired_difference(oracle, noise, targets, predictions, idx)
    by_hand = 1000 * np.mean(
        csf.class_metric("augrc", oracle, targets, predictions) - csf.class_metric("augrc", noise, targets, predictions)
    )
    assert d["difference"] == pytest.approx(by_hand) and d["difference"] < 0

    def paired(i):
        a = csf.class_metric("augrc", oracle[i], targets[i], predictions[i])
        return 1000 * np.mean(a - csf.class_metric("augrc", noise[i], targets[i], predictions[i]))

    boot = [paired(i) for i in idx]
    assert (d["low"], d["high"]) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])))
    assert d["high"] < 0 and fd_report.verdict(d["low"], d["high"]) == "lower"
    base = fd_report.class_averaged("augrc", noise, targets, predictions)
    assert d["relative"] == pytest.approx(d["difference"] / base)
    # A CSF against itself: exactly 0 on every resample (paired), so the CI is [0, 0].
    same = fd_report.paired_difference(noise, noise, targets, predictions, idx)
    assert (same["difference"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    assert fd_report.verdict(same["low"], same["high"]) == "no clear difference"
    assert fd_report.verdict(1.0, 2.0) == "higher" and fd_report.verdict(np.nan, 1.0) == "not computable"


def test_pairing_removes_what_two_csfs_share():
    # b = a plus a tiny monotone change: their AUGRCs move together over resamples, so the paired CI of the
    # difference is far narrower than the spread of either AUGRC alone.
    targets, predictions, _, noise = _world(seed=3)
    idx = fd_report.bootstrap_indices(len(targets), 60, seed=2)
    a, b = noise, noise + 0.05 * np.random.default_rng(9).normal(size=noise.shape)
    d = fd_report.paired_difference(a, b, targets, predictions, idx)
    alone = [fd_report.class_averaged("augrc", a[i], targets[i], predictions[i]) for i in idx]
    assert d["high"] - d["low"] < 0.5 * (np.percentile(alone, 97.5) - np.percentile(alone, 2.5))


def test_comparisons_name_the_deployed_csf_and_the_ablation():
    targets, predictions, oracle, noise = _world()
    idx = fd_report.bootstrap_indices(len(targets), 20)
    confidences = {"msr": noise, "entropy": noise, "informer_learned": oracle, "logit_learned": noise}
    table = fd_report.comparisons(confidences, targets, predictions, idx, selected="informer_learned", test_set="noise")
    assert list(table["comparison"]) == [
        fd_report.SELECTED_VS_MSR,
        fd_report.LEARNED_VS_LOGIT,
        fd_report.LEARNED_VS_MSR,
    ]
    assert (table["verdict"] == "lower").all() and (table["test_set"] == "noise").all()
    # MSR deployed: its difference to itself is 0; no learned CSFs: no ablation rows.
    msr_only = fd_report.comparisons({"msr": noise}, targets, predictions, idx, selected="msr", test_set="iid")
    assert list(msr_only["comparison"]) == [fd_report.SELECTED_VS_MSR] and msr_only["difference"].iloc[0] == 0


# ---------------------------------------------------------------------------------------------------------------
# Curves, operating point, aggregation over versions
# ---------------------------------------------------------------------------------------------------------------


def test_risk_coverage_curve_by_hand():
    confidence = np.c_[CONF, CONF]
    targets = np.array([[1, 1], [1, 0], [0, 0], [0, 1]], dtype=np.float64)
    predictions = np.array([[1, 1], [0, 0], [0, 0], [1, 1]])  # class a: errors 0,1,0,1; class b: 0,0,0,0
    risk = fd_report.risk_coverage(confidence, targets, predictions, grid=np.array([0.25, 0.5, 0.6, 1.0]))
    # coverage 0.6 of 4 images: the first ceil(2.4) = 3 accepted.
    assert risk == pytest.approx(np.array([0, 1 / 2, 1 / 3, 2 / 4]) / 2)


def test_operating_rows_at_the_stored_tau():
    confidence = np.c_[CONF, CONF]
    targets = np.array([[1, 1], [1, 0], [0, 0], [0, 1]], dtype=np.float64)
    predictions = np.array([[1, 1], [0, 0], [0, 0], [1, 1]])
    rows = fd_report.operating_rows(confidence, targets, predictions, [0.75, None], ["a", "b"], test_set="iid")
    assert list(rows["class"]) == ["a", "b", "mean"]
    assert rows["coverage"].tolist() == pytest.approx([0.5, 1.0, 0.75])  # tau 0.75 accepts 0.9, 0.8; None: all
    assert rows["risk"].tolist() == pytest.approx([0.5, 0.0, 0.25])


def test_aggregate_over_versions_mean_sd_and_how_often_the_deployed_csf_beat_msr():
    def table(msr, best):
        rows = [{"test_set": t, "csf": n, "AURC": v, "E-AURC": v / 2, "AUGRC": v / 4}
                for t in ("iid", "noise") for n, v in (("msr", msr), ("mahalanobis", best))]  # fmt: skip
        return pd.DataFrame(rows)

    agg = fd_report.aggregate({"1": table(100, 80), "2": table(120, 90), "3": table(110, 130)})
    row = agg[(agg["test_set"] == "noise") & (agg["csf"] == "mahalanobis")].iloc[0]
    assert row["n_versions"] == 3 and row["label"] == "Mahalanobis"
    assert row["AURC_mean"] == pytest.approx(100) and row["AURC_sd"] == pytest.approx(np.std([80, 90, 130], ddof=1))
    assert row["AUGRC_mean"] == pytest.approx(25)
    one = fd_report.aggregate({"7": table(100, 80)})
    assert np.isnan(one["AURC_sd"]).all() and (one["n_versions"] == 1).all()

    def compared(diff, high, name="mahalanobis"):
        return pd.DataFrame([{"test_set": "iid", "comparison": fd_report.SELECTED_VS_MSR, "csf": name,
                              "difference": diff, "low": diff - 1, "high": high}])  # fmt: skip

    beats = fd_report.beats_msr({"1": compared(-5.0, -1.0), "2": compared(-2.0, 0.5), "3": compared(0.0, 0.0, "msr")})
    row = beats.iloc[0]
    assert (row["n_versions"], row["n_lower"], row["n_lower_ci"]) == (3, 2, 1)
    assert row["difference_mean"] == pytest.approx(-7 / 3) and row["csfs"] == "mahalanobis, msr"


def test_wide_table_cells_and_the_calibration_column():
    fd = pd.DataFrame([{"test_set": "iid", "csf": "msr", "label": "MSR", "AUGRC": 41.0, "AUGRC_low": 30.0,
                        "AUGRC_high": 52.5},
                       {"test_set": "iid", "csf": "tta", "label": "TTA", "AUGRC": np.nan, "AUGRC_low": np.nan,
                        "AUGRC_high": np.nan}])  # fmt: skip
    wide = fd_report.wide_table(fd, calibration={"msr": 12.345, "tta": None})
    assert wide.loc["MSR", "iid"] == "41.0 [30.0, 52.5]" and wide.loc["TTA", "iid"] == "-"
    assert wide.loc["MSR", "calibration"] == "12.3" and wide.loc["TTA", "calibration"] == "-"


def test_csf_confidences_use_stored_states_and_say_why_others_are_missing():
    from medmlops.informer.evaluate import csf_confidences

    logits = np.array([[2.0, -1.0], [-3.0, 0.5]])
    outputs = {"logits": logits, "predictions": (logits > 0).astype(int), "d": {"ixg": np.ones((2, 2))}}
    section = {"method": "ixg", "states": {}, "unavailable": {"informer_learned": "too few errors"}}
    confidences, unavailable = csf_confidences(
        outputs, FINDINGS, section, ["msr", "tta", "informer_ixg", "informer_learned", "mahalanobis"]
    )
    assert set(confidences) == {"msr", "informer_ixg"}
    assert unavailable["informer_learned"] == "too few errors"
    assert unavailable["mahalanobis"] == "not fitted in the stored calibration" and "tta needs" in unavailable["tta"]


# ---------------------------------------------------------------------------------------------------------------
# The learned combiner never sees test data
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_tracking():
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def test_evaluate_refuses_when_the_calibration_images_overlap_the_test_split(
    monkeypatch, tmp_path, capsys, params_file, restore_tracking
):
    from medmlops.cli import main
    from medmlops.informer import evaluate
    from medmlops.informer.calibrate import SplitImages
    from medmlops.registry.trained_params import VersionParams

    stored = {"methods": {"ixg": {}}, "direction": "low", "baselines": {}, "method": "ixg",
              "validation_ids": ["img-1", "img-2"],
              "csf": {"method": "ixg", "selected": "logit_learned", "states": {"logit_learned": {}}}}  # fmt: skip
    monkeypatch.setattr(evaluate, "informer_model", lambda family, alias: ("3", FINDINGS, None))
    monkeypatch.setattr(
        evaluate, "trained_version_params", lambda params, family, version: VersionParams(params, "this test")
    )
    monkeypatch.setattr(evaluate, "load_calibration", lambda family, version, contract: stored)
    monkeypatch.setattr(
        evaluate,
        "informer_splits",
        lambda *a, **k: (
            SplitImages(None, {}, ["img-1"], "fold 0 val split"),
            SplitImages(None, {}, ["img-0", "img-2", "img-3"], "fold 0 test split"),
        ),
    )  # the test split holds img-2, which the calibration was fitted on
    monkeypatch.setattr(evaluate, "batched_outputs", lambda *a, **k: pytest.fail("the model ran"))
    code = main(["informer", "evaluate", "cxr-findings", "--alias", "3", "--method", "ixg", "--tta", "0", "--params",
                 str(params_file), "--repo", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "fitted on 1 images of the test split (e.g. img-2)" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_an_unknown_shift_in_one_sentence(
    monkeypatch, tmp_path, capsys, params_file, restore_tracking
):
    from medmlops.cli import main

    code = main(["informer", "evaluate", "cxr-findings", "--shift", "weather", "--params", str(params_file), "--repo",
                 str(tmp_path), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "invalid choice 'weather'" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------
# End to end on a registered smoke model
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_end_to_end_writes_tables_figure_and_mlflow_runs(registered_project, monkeypatch, capsys):
    from mlflow import MlflowClient

    from medmlops.cli import main
    from medmlops.config import load_params
    from medmlops.registry import tracking
    from medmlops.registry.tracking import resolve_version

    monkeypatch.chdir(registered_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    common = ["--profile", "smoke", "--method", "ixg", "--tta", "2", "--quiet"]
    assert main(["informer", "calibrate", "cxr-findings", *common]) == 0
    out = registered_project / "reports" / "fd-shifts-test"
    code = main(["informer", "evaluate", "cxr-findings", "--alias", "candidate", *common, "--bootstrap", "4",
                 "--shift", "noise", "--shift", "population", "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    tracking.configure(
        load_params(registered_project / "params.yaml", profile="smoke").registry, cwd=registered_project
    )
    version = str(resolve_version("cxr-findings", "candidate").version)
    folder, agg = out / f"cxr-findings-v{version}", out / "cxr-findings-fd-shifts"
    assert f"report: {agg / 'report.html'}" in printed

    fd = pd.read_csv(folder / "failure_detection.csv")
    assert list(dict.fromkeys(fd["test_set"])) == ["iid", "noise", "population"]
    assert {"msr", "maxlogit", "entropy", "energy", "tta", "informer_ixg"} <= set(fd["csf"])
    finite = fd.dropna(subset=["AURC", "AUGRC"])
    assert len(finite) and (finite["AURC"] >= finite["E-AURC"] - 1e-9).all() and (finite["AUGRC"] >= 0).all()
    assert {"AUGRC_low", "AUGRC_high", "AURC_low", "E-AURC_high"} <= set(fd.columns)
    summary = json.loads((folder / "summary.json").read_text())
    selected = summary["csf"]["selected"]
    compared = pd.read_csv(folder / "comparisons.csv")
    assert set(compared.loc[compared["comparison"] == fd_report.SELECTED_VS_MSR, "test_set"]) == {
        "iid", "noise", "population"
    }  # fmt: skip
    # The iid MSR AUGRC in the table is the class average of csf.class_metric (x1000) on what the model output.
    operating = pd.read_csv(folder / "operating_point.csv")
    assert list(dict.fromkeys(operating["test_set"])) == ["calibration", "iid", "noise", "population"]
    assert (operating["csf"] == selected).all()
    # CBPE from the logits alone beside the realized AUROC and F1 on each labelled test set, per class and the gate.
    estimation = pd.read_csv(folder / "performance_estimation.csv")
    assert list(dict.fromkeys(estimation["test_set"])) == ["iid", "noise", "population"]
    assert "gate: findings_mean_auroc_mean" in set(estimation["class"])
    rows = estimation.dropna(subset=["auroc_estimated", "auroc_realized"])
    assert len(rows) and (rows["auroc_error"] - (rows["auroc_estimated"] - rows["auroc_realized"])).abs().max() < 1e-9
    assert (agg / "performance_estimation.csv").is_file()
    for name in ("risk_coverage.png", "bootstrap_f1_boxplot.png"):
        assert (folder / name).read_bytes().startswith(b"\x89PNG")
    for name in ("report.html", "augrc_table.md", "f1_table.csv", "comparisons.md"):
        assert (folder / name).stat().st_size > 0
    # The paper's protocol beside it.
    table = pd.read_csv(folder / "f1_table.csv", index_col=0)
    assert list(table.index) == ["No QC", "INFORMER_ixg", "MSR", "Pred. Entropy", "TTA"]

    aggregate = pd.read_csv(agg / "aggregate.csv")
    assert (aggregate["n_versions"] == 1).all() and {"AUGRC_mean", "AUGRC_sd"} <= set(aggregate.columns)
    msr_iid = aggregate[(aggregate["test_set"] == "iid") & (aggregate["csf"] == "msr")]["AUGRC_mean"].iloc[0]
    assert msr_iid == pytest.approx(fd[(fd["test_set"] == "iid") & (fd["csf"] == "msr")]["AUGRC"].iloc[0])
    assert (agg / "risk_coverage.png").read_bytes().startswith(b"\x89PNG")
    assert (agg / "beats_msr.md").is_file() and json.loads((agg / "summary.json").read_text())["versions"] == [version]

    client = MlflowClient()
    experiment = client.get_experiment_by_name(
        f"{load_params(registered_project / 'params.yaml').registry.experiment_prefix}-cxr-findings"
    )
    runs = client.search_runs([experiment.experiment_id], "tags.kind = 'informer-evaluation'")
    latest = max(runs, key=lambda r: r.info.start_time)
    assert latest.data.tags["selected_csf"] == selected
    assert any(k.startswith("fd/iid/msr/AUGRC") for k in latest.data.metrics)
    assert client.search_runs([experiment.experiment_id], "tags.kind = 'informer-fd-shifts'")
    artifacts = {a.path for a in client.list_artifacts(latest.info.run_id, "informer")}
    assert "informer/failure_detection.csv" in artifacts and "informer/risk_coverage.png" in artifacts


# ---------------------------------------------------------------------------------------------------------------
# Simulator shifts only beside a model of simulated data
# ---------------------------------------------------------------------------------------------------------------


def _evaluate_small(monkeypatch, tmp_path, simulated: bool):
    """evaluate_version on a tiny model and random 40-image splits, the version's params saying ``simulated``;
    returns (summary, the shifts the simulator was asked for)."""
    import torch

    from medmlops.config import load_params
    from medmlops.informer import evaluate
    from medmlops.informer.calibrate import SplitImages
    from medmlops.interpret.saliency import LogitsModel
    from medmlops.registry.trained_params import VersionParams
    from tests.conftest import REPO
    from tests.informer.test_outputs import CONTRACT, _Images, _Tiny

    params = load_params(REPO / "params.yaml", profile="smoke", overrides=[f"data.simulated={str(simulated).lower()}"])
    torch.manual_seed(0)
    model = LogitsModel(_Tiny(), ["findings"]).eval()
    rng = np.random.default_rng(0)

    def split(name: str, n: int = 40) -> SplitImages:
        labels = {"findings": rng.integers(0, 2, (n, 5)).astype(np.float64)}
        return SplitImages(_Images(n), labels, [f"{name}-{k}" for k in range(n)], f"fold 0 {name} split")

    asked = []

    def shifted(params, contract, shift, n, seed, run):
        asked.append(shift)
        made = split(f"shift-{shift}", n)
        return run(made), made.labels

    monkeypatch.setattr(evaluate, "informer_model", lambda family, alias: ("3", CONTRACT, model))
    monkeypatch.setattr(evaluate, "trained_version_params", lambda p, f, v: VersionParams(params, "this test"))
    monkeypatch.setattr(evaluate, "load_calibration", lambda family, version, contract: None)
    monkeypatch.setattr(evaluate, "informer_splits", lambda *a, **k: (split("val"), split("test")))
    monkeypatch.setattr(evaluate, "shifted_outputs", shifted)
    summary = evaluate.evaluate_version(
        params, "cxr-findings", "3", methods=("ixg",), tta_samples=0, n_bootstrap=3, shifts=("scanner",),
        out_dir=tmp_path, progress=False, log_run=False,
    )  # fmt: skip
    return summary, asked


def test_a_model_of_real_data_gets_no_simulator_shifts_and_the_report_says_why(monkeypatch, tmp_path):
    from medmlops.informer.evaluate import REAL_DATA_NO_SHIFTS

    summary, asked = _evaluate_small(monkeypatch, tmp_path, simulated=False)
    assert asked == []  # the simulator was never asked for a shifted set
    assert summary["test_sets"] == ["iid"] and summary["shifts_absent"] == REAL_DATA_NO_SHIFTS
    fd = pd.read_csv(tmp_path / "cxr-findings-v3" / "failure_detection.csv")
    assert set(fd["test_set"]) == {"iid"}
    report = (tmp_path / "cxr-findings-v3" / "report.html").read_text()
    assert "trained on real data (data.simulated: false)" in report
    assert summary["splits"]["test"]["source"] == "fold 0 test split" and summary["n_test"] == 40


def test_a_model_of_simulated_data_gets_its_shifted_test_sets(monkeypatch, tmp_path):
    summary, asked = _evaluate_small(monkeypatch, tmp_path, simulated=True)
    assert asked == ["scanner"] and summary["test_sets"] == ["iid", "scanner"] and summary["shifts_absent"] is None
    assert "simulated at the same size" in (tmp_path / "cxr-findings-v3" / "report.html").read_text()
