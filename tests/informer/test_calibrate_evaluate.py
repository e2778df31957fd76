"""``medmlops informer calibrate|evaluate`` on real registered smoke models (SQLite registry of the session's
``registered_project``): calibration stored with the version, read back by the analyser; the paper's tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medmlops.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def in_project(registered_project, monkeypatch):
    monkeypatch.chdir(registered_project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return registered_project


def _configure(root):
    from medmlops.config import load_params
    from medmlops.registry import tracking

    tracking.configure(load_params(root / "params.yaml", profile="smoke").registry, cwd=root)


def test_calibrate_stores_thresholds_reference_and_contract(in_project, capsys):
    from medmlops.informer.analyser import Analyser
    from medmlops.informer.calibrate import load_calibration, load_reference
    from medmlops.registry.tracking import load_contract, resolve_version

    assert main(["informer", "calibrate", "cxr-findings", "--profile", "smoke", "--method", "ixg", "--method", "lrp",
                 "--tta", "2", "--quiet"]) == 0  # fmt: skip
    assert "calibrated on" in capsys.readouterr().out
    _configure(in_project)
    version = str(resolve_version("cxr-findings", "candidate").version)
    contract = load_contract("cxr-findings", version)
    calibration = load_calibration("cxr-findings", version, contract)
    classes = contract.output_names()
    assert calibration["classes"] == classes and len(classes) == 5
    assert set(calibration["methods"]) == {"ixg", "lrp"}
    assert set(calibration["baselines"]) == {"msr", "entropy", "energy", "tta"}
    assert contract.informer["method"] == "ixg" and contract.informer["tau"] == calibration["methods"]["ixg"]["tau"]
    # The CSFs: every one ranked by validation AUGRC (or said why not), one deployed at the review budget's
    # operating point, the fitted ones' states stored, the ids they were fitted on kept for evaluation's check.
    section = calibration["csf"]
    assert set(section["augrc"]) | set(section["unavailable"]) >= {"msr", "maxlogit", "entropy", "energy", "tta",
        "informer_ixg", "informer_lrp", "mahalanobis", "informer_learned", "logit_learned"}  # fmt: skip
    assert section["selected"] in section["augrc"] and section["reason"]
    assert set(section["states"]) >= {
        n for n in ("mahalanobis", "informer_learned", "logit_learned") if n in section["augrc"]
    }
    assert len(section["operating_point"]["tau"]) == len(classes) and section["operating_point"]["review_budget"] == 0.1
    assert len(calibration["validation_ids"]) == calibration["n_validation"]
    assert contract.informer["csf"]["selected"] == section["selected"] and "states" not in contract.informer["csf"]
    assert contract.informer["performance"] == calibration["performance"]  # CBPE's calibrated probabilities
    # The logit tier: the best logit-only CSF at the same operating point; the contract carries it.
    tier = calibration["logit_tier"]
    assert tier["score"] in {"msr", "maxlogit", "entropy", "energy"}
    assert set(tier["selection"]) == {"msr", "maxlogit", "entropy", "energy"}
    assert len(tier["tau"]) == len(tier["direction"]) == len(classes)
    assert contract.informer["logit_tier"] == tier
    for fit in calibration["methods"].values():
        for cls in classes:
            assert fit["f1_after"][cls] >= fit["f1_before"][cls]  # the search never picks a worse threshold
    reference = load_reference("cxr-findings", version)
    # Reference = the fold's held-out images (validation + test), thresholds from validation alone.
    assert len(reference) == calibration["n_reference"] > calibration["n_validation"] > 0
    assert sorted(reference["split"].unique()) == ["test", "val"]
    assert (reference["split"] == "val").sum() == calibration["n_validation"]
    for cls in classes:
        assert {f"p.{cls}", f"d.{cls}", f"flag.{cls}", f"entropy.{cls}", f"label:{cls}"} <= set(reference.columns)
    assert {"img.mean", "img.std", "emb.pc1"} <= set(reference.columns)

    # The monitoring side: the analyser of that exact version reads the calibration and flags by it.
    analyser = Analyser.from_registry("cxr-findings", version)
    assert analyser.calibration is not None and analyser.method == "ixg"
    png = next((in_project / "data" / "raw-smoke" / "chexpert").rglob("*.jpg"), None) or next(
        (in_project / "data" / "raw-smoke" / "chexpert").rglob("*.png")
    )
    [result, bad] = analyser.analyse_bytes([png.read_bytes(), b"not an image"])
    assert isinstance(bad, Exception) and "unsupported_format" in str(bad)
    assert result["version"] == version and result["calibrated"] is True
    assert set(result["distinctiveness"]) == set(classes)
    for j, (cls, d) in enumerate(result["distinctiveness"].items()):
        tau = calibration["methods"]["ixg"]["tau"][cls]
        assert result["informer_flags"][cls] == (tau is not None and d < tau)  # the paper's d_c flag, beside
        deployed_tau = section["operating_point"]["tau"][j]
        assert result["flags"][cls] == (deployed_tau is not None and result["confidence"][cls] < deployed_tau)
        assert 0 <= d <= 8
    assert result["csf"] == section["selected"]
    assert result["saliency_png"].startswith(b"\x89PNG")
    # The reference features of the validation set and a production record's features share their columns.
    assert set(result["features"]) <= set(reference.columns)


def test_multi_task_family_calibrates_with_its_heads_as_classes(in_project):
    assert main(["informer", "calibrate", "ich-prognosis", "--profile", "smoke", "--method", "ixg", "--tta", "0",
                 "--quiet"]) == 0  # fmt: skip
    from medmlops.informer.calibrate import load_calibration
    from medmlops.registry.tracking import resolve_version

    _configure(in_project)
    version = str(resolve_version("ich-prognosis", "candidate").version)
    calibration = load_calibration("ich-prognosis", version)
    # ich-mt-ord: prognosis (1 logit) + ordinal GCS (2) + age (1)
    assert len(calibration["classes"]) == 4 and calibration["classes"][0].startswith("prognosis/")
    assert "tta" not in calibration["baselines"]
    assert calibration["min_per_class"] == 0  # smoke: tiny splits, the guard off

    # informer.min_per_class above what the validation split holds: no class gets a tau, and the log says why.
    assert main(["informer", "calibrate", "ich-prognosis", "--profile", "smoke", "--method", "ixg", "--tta", "0",
                 "--quiet", "--set", "informer.min_per_class=1000"]) == 0  # fmt: skip
    guarded = load_calibration("ich-prognosis", version)
    assert guarded["methods"]["ixg"]["too_few"] == guarded["classes"]
    assert set(guarded["methods"]["ixg"]["tau"].values()) == {None}
    assert set(guarded["baselines"]["msr"]["tau"].values()) == {None}
    # Nothing to rank the CSFs on: MSR deployed; the review budget needs no labels, so it still sets τ (flag the
    # least-confident 10 %), where the paper's F1 search had nothing to fit.
    assert guarded["csf"]["selected"] == guarded["logit_tier"]["score"] == "msr"
    assert guarded["csf"]["reason"].startswith("too few") and None not in guarded["logit_tier"]["tau"]


def test_evaluate_writes_the_papers_table_figure_and_fd_shifts(in_project, capsys):
    out = in_project / "reports" / "informer-test"
    code = main(["informer", "evaluate", "cxr-findings", "--alias", "candidate", "--profile", "smoke", "--method",
                 "ixg", "--tta", "2", "--bootstrap", "5", "--shift", "noise", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    folder = next(out.glob("cxr-findings-v*"))
    table = pd.read_csv(folder / "f1_table.csv", index_col=0)
    assert list(table.index) == ["No QC", "INFORMER_ixg", "MSR", "Pred. Entropy", "TTA"]
    assert "mean" in table.columns and len(table.columns) == 6
    assert np.isclose(table.loc["No QC", "mean"], table.loc["No QC"].iloc[:5].mean())
    boot = pd.read_csv(folder / "bootstrap_f1.csv")
    assert boot["bootstrap"].nunique() == 5 and boot["approach"].nunique() == 5
    tests = pd.read_csv(folder / "paired_tests.csv")
    assert set(tests["baseline"]) == {"No QC", "MSR", "Pred. Entropy", "TTA"}
    # FD-Shifts beside it: every available CSF (tests/informer/test_evaluate.py checks it in detail).
    fd = pd.read_csv(folder / "failure_detection.csv").dropna(subset=["AURC", "AUGRC"])
    assert set(fd["test_set"]) == {"iid", "noise"} and (fd[["AURC", "AUGRC"]] >= 0).all().all()
    assert (fd["AURC"] >= fd["E-AURC"] - 1e-9).all() and {"msr", "informer_ixg"} <= set(fd["csf"])
    assert (folder / "bootstrap_f1_boxplot.png").read_bytes().startswith(b"\x89PNG")
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["informer_vs_baselines_mean_f1"]) == {"MSR", "Pred. Entropy", "TTA"}
    assert "INFORMER vs baselines" in capsys.readouterr().out


def test_calibrate_refuses_unknown_family_in_one_sentence(in_project, capsys):
    assert main(["informer", "calibrate", "no-such-family", "--profile", "smoke", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no-such-family" in err and "Traceback" not in err
