"""``medmlops informer evaluate``: every confidence scoring function (CSF) against MSR on registered model versions.

Two protocols, reported side by side:

* Shu et al.'s: per-class F1 on the test split after flag-and-swap with the thresholds fitted on validation, for
  INFORMER (each saliency method), predictive entropy, TTA and MSR, next to the model without quality control
  (Table 1); the same on ``n_bootstrap`` resampled test sets, mean F1 over classes, paired t-tests of each INFORMER
  variant against each baseline, and a box plot (Fig. 3); sensitivity and specificity per class after swapping
  (Tables S1/S2).
* FD-Shifts' (Jaeger et al. 2023; AUGRC: Traub et al. 2024): every CSF of :mod:`medmlops.informer.csf` as a
  confidence ranking of the model's own per-class predictions, AURC, E-AURC and AUGRC (× 1000, class-averaged, lower
  is better) with bootstrap 95 % CIs, on the i.i.d. test split and, for a model of simulated data, on shifted test
  sets made by the simulator's shift knobs (a model of real data gets none: the report says why); the deployed
  CSF's and INFORMER-learned's paired AUGRC differences to MSR and to logit-learned; the deployed CSF's coverage
  and selective risk at its stored τ. Fitted CSFs use the states stored with the
  calibration, checked to be fitted on images disjoint from the test split.

:func:`evaluate_versions` runs this on several versions (training seeds) and aggregates (mean, sd, how many versions'
deployed CSF beat MSR). The numbers and tables are in :mod:`medmlops.informer.fd_report`.
"""

from __future__ import annotations

import html
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmlops.config import Params
from medmlops.data.simulate import SHIFTS as SIMULATOR_SHIFTS
from medmlops.errors import UserError
from medmlops.informer import csf, fd_report, scores
from medmlops.informer.calibrate import (
    SplitImages,
    baseline_scores,
    fit_calibration,
    informer_model,
    informer_splits,
    load_calibration,
)
from medmlops.informer.outputs import batched_outputs
from medmlops.informer.probability import estimate
from medmlops.registry.contract import ModelContract
from medmlops.registry.trained_params import version_params as trained_version_params

log = logging.getLogger(__name__)

BASELINE_NAMES = {"entropy": "Pred. Entropy", "tta": "TTA", "msr": "MSR"}
NO_QC = "No QC"


class EvaluationError(UserError, ValueError):
    """The evaluation cannot run as asked; the message says why."""


def approach_name(method: str) -> str:
    return f"INFORMER_{method}"


def approach_scores(outputs: dict[str, Any], calibration: dict[str, Any]) -> dict[str, tuple[np.ndarray, dict]]:
    """Approach name → (per-class score (N, C), its fit: direction and τ per class)."""
    out = {approach_name(m): (outputs["d"][m], fit) for m, fit in calibration["methods"].items() if m in outputs["d"]}
    for name, score in baseline_scores(outputs).items():
        if name in calibration["baselines"]:
            out[BASELINE_NAMES[name]] = (score, calibration["baselines"][name])
    return out


def swapped_predictions(outputs: dict[str, Any], calibration: dict[str, Any]) -> dict[str, np.ndarray]:
    """Approach → (N, C) predictions after flag-and-swap; ``No QC`` is the model as it is."""
    classes = calibration["classes"]
    out = {NO_QC: outputs["predictions"]}
    for name, (score, fit) in approach_scores(outputs, calibration).items():
        flags = np.stack(
            [scores.flag(score[:, j], fit["tau"].get(c), fit["direction"]) for j, c in enumerate(classes)], 1
        )
        out[name] = scores.swap(outputs["predictions"], flags)
    return out


def per_class_f1(targets: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """F1 of each class over the rows with a known target."""
    values = []
    for j in range(targets.shape[1]):
        keep = np.isfinite(targets[:, j])
        values.append(scores.f1_scores(targets[keep, j], predictions[keep, j][None, :])[0] if keep.any() else np.nan)
    return np.asarray(values)


def _sens_spec(targets: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sens, spec = [], []
    for j in range(targets.shape[1]):
        keep = np.isfinite(targets[:, j])
        y, p = targets[keep, j].astype(bool), predictions[keep, j].astype(bool)
        sens.append((p & y).sum() / y.sum() if y.sum() else np.nan)
        spec.append((~p & ~y).sum() / (~y).sum() if (~y).sum() else np.nan)
    return np.asarray(sens), np.asarray(spec)


def f1_table(targets: np.ndarray, predictions: dict[str, np.ndarray], classes: list[str]) -> pd.DataFrame:
    """Table 1: rows are approaches, columns the classes and their mean."""
    rows = {name: per_class_f1(targets, pred) for name, pred in predictions.items()}
    table = pd.DataFrame(rows, index=classes).T
    table["mean"] = table[classes].mean(axis=1)
    return table


def bootstrap_f1(
    targets: np.ndarray, predictions: dict[str, np.ndarray], n_bootstrap: int = 30, seed: int = 0
) -> pd.DataFrame:
    """Mean F1 over classes on ``n_bootstrap`` resampled test sets (same resamples for every approach)."""
    rng = np.random.default_rng(seed)
    n = len(targets)
    rows = []
    for b in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        for name, pred in predictions.items():
            rows.append(
                {"bootstrap": b, "approach": name, "mean_f1": float(np.nanmean(per_class_f1(targets[idx], pred[idx])))}
            )
    return pd.DataFrame(rows)


def paired_tests(boot: pd.DataFrame) -> pd.DataFrame:
    """Paired t-test of every INFORMER variant against every other approach over the bootstrap sets."""
    from scipy.stats import ttest_rel

    wide = boot.pivot(index="bootstrap", columns="approach", values="mean_f1")
    rows = []
    for ours in [c for c in wide.columns if c.startswith("INFORMER_")]:
        for other in [c for c in wide.columns if not c.startswith("INFORMER_")]:
            diff = wide[ours] - wide[other]
            if np.allclose(diff, 0):
                t, p = 0.0, 1.0
            else:
                result = ttest_rel(wide[ours], wide[other])
                t, p = float(result.statistic), float(result.pvalue)
            rows.append({"informer": ours, "baseline": other, "mean_difference": float(diff.mean()), "t": t, "p_value": p,
                         "median_informer": float(wide[ours].median()), "median_baseline": float(wide[other].median())})  # fmt: skip
    return pd.DataFrame(rows)


def _stars(p: float) -> str:
    return "***" if p <= 0.001 else "**" if p <= 0.01 else "*" if p <= 0.05 else ""


def box_plot(boot: pd.DataFrame, tests: pd.DataFrame, path: Path, title: str) -> Path:
    """Fig. 3: mean F1 over classes on the bootstrap test sets; baselines grey, INFORMER blue; stars from the paired
    t-test against predictive entropy (the paper's reference)."""
    from medmlops.evaluation.figures import pyplot, save_figure

    plt = pyplot()

    order = [a for a in boot["approach"].unique() if not a.startswith("INFORMER_")] + sorted(
        a for a in boot["approach"].unique() if a.startswith("INFORMER_")
    )
    data = [boot.loc[boot["approach"] == a, "mean_f1"].to_numpy() for a in order]
    fig, ax = plt.subplots(figsize=(1.4 * len(order) + 1.5, 3.6))
    parts = ax.boxplot(data, patch_artist=True)
    for patch, name in zip(parts["boxes"], order, strict=True):
        patch.set_facecolor("#4C72B0" if name.startswith("INFORMER_") else "#BBBBBB")
    ax.set_xticks(range(1, len(order) + 1), order, rotation=20, fontsize=8)
    ax.set_ylabel("mean F1 over classes")
    top = max(float(np.max(d)) for d in data)
    for i, name in enumerate(order, start=1):
        row = tests[(tests["informer"] == name) & (tests["baseline"] == "Pred. Entropy")]
        if len(row):
            ax.text(i, top + 0.005, _stars(float(row["p_value"].iloc[0])), ha="center", fontsize=10)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


# Why a model trained on real data gets no shifted test sets (FD-Shifts' shifts here come from the simulator).
REAL_DATA_NO_SHIFTS = (
    "none: the model was trained on real data (data.simulated: false) and the shifted test sets are made by the "
    "simulator, whose images are not this data's distribution; only the test split is evaluated"
)


def shifted_outputs(
    params: Params, contract: ModelContract, shift: str, n: int, seed: int, run: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``run`` (images → outputs) on ``n`` simulated images of the model's first source dataset with the
    simulator's ``shift`` knob, preprocessed from their files as serving does, one batch at a time; and their
    labels by task."""
    from medmlops.data import preprocess as prep
    from medmlops.data.readers import read_manifest
    from medmlops.data.simulate import generate
    from medmlops.inference.predict import Preprocessor

    source = (contract.preprocessing.get("sources") or [contract.preprocessing["dataset"]])[0]
    cfg = getattr(params.data, source)
    extra = {"n_valid": 1} if source == "chexpert" else {}  # the simulator needs one; the reader reads both
    with tempfile.TemporaryDirectory(prefix=f"medmlops-shift-{shift}-") as tmp:
        generate(source, tmp, n=n, seed=seed, shape=cfg.shape, shift=shift, progress=False, **extra)
        manifest = prep._standardise(read_manifest(source, tmp, params), source)
        items = prep.items_from_manifest(manifest, source)
        preprocess = Preprocessor(contract.family, contract)
        ids = [str(item["sample_id"]) for item in items]
        outputs = run(SplitImages(_Files(items, preprocess), {}, ids, f"simulated {shift} shift"))
    labels = {}
    for spec in contract.tasks:
        if spec.kind == "multilabel":
            labels[spec.name] = np.stack([np.asarray(item["findings"], dtype=np.float64) for item in items])
        else:
            column = spec.name if spec.name in items[0] else None
            labels[spec.name] = np.asarray([item[column] if column else -1 for item in items], dtype=np.float64)
    return outputs, labels


class _Files:
    """Image files read and preprocessed when indexed (``files[k]["image"]``), as :class:`SplitImages` reads."""

    def __init__(self, items: list[dict], preprocess: Any) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return {"image": self.preprocess(Path(self.items[k]["image"]).read_bytes())}


# ---------------------------------------------------------------------------------------------------------------
# One version: both protocols
# ---------------------------------------------------------------------------------------------------------------


def csf_section(calibration: dict[str, Any], methods: tuple[str, ...], tta: bool) -> dict[str, Any]:
    """The calibration's ``csf`` section; for a calibration made before CSFs existed, the unfitted CSFs only, MSR
    deployed and no operating point (the log says so)."""
    if "csf" in calibration:
        return calibration["csf"]
    log.warning("the stored calibration has no CSF ranking (made before it existed): unfitted CSFs only, MSR as the "
                "deployed one; run `medmlops informer calibrate` again for the full protocol")  # fmt: skip
    names = [n for n in csf.default_names(methods, tta) if not csf.get(n, methods[0]).fitted]
    return {"method": methods[0], "candidates": names, "augrc": {}, "se": {}, "selected": csf.DEFAULT_CSF,
            "reason": "no CSF ranking stored", "pinned": False, "states": {}, "operating_point": None,
            "unavailable": {n: "not fitted: the stored calibration predates CSFs" for n in csf.NAMES
                            if n not in names}}  # fmt: skip


def csf_confidences(
    outputs: dict[str, Any], contract: ModelContract, section: dict[str, Any], names: list[str]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every CSF of ``names`` that these outputs and the stored states allow, as ``(N, C)`` confidences; the others
    with the reason. A fitted CSF is scored with the state refitted on the whole calibration split."""
    out, unavailable = {}, {}
    states = section.get("states") or {}
    for name in names:
        model = csf.get(name, section.get("method", "ixg"))
        if model.fitted and name not in states:
            unavailable[name] = (section.get("unavailable") or {}).get(name, "not fitted in the stored calibration")
            continue
        try:
            out[name] = np.asarray(model.confidence(outputs, contract, states.get(name)), dtype=np.float64)
        except csf.CSFUnavailable as exc:
            unavailable[name] = str(exc)
    return out, unavailable


def fd_shifts_test_set(
    outputs: dict[str, Any], targets: np.ndarray, contract: ModelContract, section: dict[str, Any],
    names: list[str], *, test_set: str, n_bootstrap: int, seed: int, min_per_class: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """The FD-Shifts protocol on one test set: the metric table with CIs, the paired comparisons, the deployed CSF's
    operating point and the risk-coverage curves."""
    predictions = outputs["predictions"]
    confidences, unavailable = csf_confidences(outputs, contract, section, names)
    indices = fd_report.bootstrap_indices(len(targets), n_bootstrap, seed)
    table = fd_report.metric_table(
        confidences, targets, predictions, indices, test_set=test_set, min_per_class=min_per_class
    )
    selected = section["selected"]
    compared = fd_report.comparisons(
        confidences, targets, predictions, indices, selected=selected, test_set=test_set, min_per_class=min_per_class
    )
    point = section.get("operating_point")
    operating = None
    if point is not None and selected in confidences:
        operating = fd_report.operating_rows(
            confidences[selected], targets, predictions, point["tau"], contract.output_names(), test_set=test_set
        )
    curves = {n: fd_report.risk_coverage(c, targets, predictions) for n, c in confidences.items()}
    return {"table": table, "comparisons": compared, "operating": operating, "curves": curves,
            "unavailable": unavailable}  # fmt: skip


def evaluate_version(
    params: Params,
    family: str,
    alias: str = "champion",
    *,
    methods: tuple[str, ...] = ("ixg", "lrp"),
    direction: str = "low",
    tta_samples: int = 8,
    n_bootstrap: int = 30,
    shifts: tuple[str, ...] = ("scanner", "corruption"),
    out_dir: Path = Path("reports/informer"),
    repo: Path = Path("."),
    progress: bool = True,
    seed: int = 0,
    log_run: bool = True,
) -> dict[str, Any]:
    """Run both protocols on ``family@alias`` (or a version number); write tables (CSV, Markdown, HTML), the box
    plot, the risk-coverage figure and a JSON summary into ``out_dir/<family>-v<version>``, log them to an MLflow
    run of the family's experiment, and return the summary (with the FD-Shifts frames under ``frames``)."""
    unknown = [s for s in shifts if s not in SIMULATOR_SHIFTS]
    if unknown:
        raise EvaluationError(f"unknown shift '{unknown[0]}' (the simulator knows: {', '.join(SIMULATOR_SHIFTS)})")
    version, contract, logits_model = informer_model(family, alias)
    # The version's splits, data and preprocessing; the current informer.* settings.
    trained = trained_version_params(params, family, version)
    params = trained.params
    cfg = params.informer
    classes = contract.output_names()
    # FD-Shifts' shifted sets come from the simulator: beside a model of real data they would measure nothing of it.
    shifts_absent = REAL_DATA_NO_SHIFTS if shifts and not params.data.simulated else None
    if shifts_absent:
        log.warning("%s v%s: no shifted test sets (%s asked): %s", family, version, ", ".join(shifts), shifts_absent)
        shifts = ()
    split, test = informer_splits(params, family, version, repo=repo, progress=progress)
    stored = load_calibration(family, version, contract)
    method = stored.get("csf", {}).get("method", stored["method"]) if stored else methods[0]
    run_methods = tuple(dict.fromkeys([*methods, method]))
    run = lambda images, desc: batched_outputs(  # noqa: E731
        logits_model, contract, images, methods=run_methods, tta_samples=tta_samples, progress=progress, desc=desc,
        seed=seed,
    )  # fmt: skip
    if (
        stored is not None
        and all(m in stored["methods"] for m in methods)
        and stored["direction"] == direction
        and ("tta" in stored["baselines"] or tta_samples == 0)
    ):
        calibration = stored
        log.info("%s v%s: stored calibration of %s", family, version, stored.get("created_at", "?"))
    else:
        log.info("%s v%s: no matching stored calibration, fitting one on the %s", family, version, split.source)
        calibration = fit_calibration(
            run(split, f"{family} v{version} {split.source}"), scores.logit_targets(contract, split.labels), contract,
            methods=run_methods, direction=direction, min_per_class=cfg.min_per_class, csf_names=tuple(cfg.csfs),
            pinned=None if cfg.csf == "auto" else cfg.csf, review_budget=cfg.review_budget,
            target_risk=cfg.target_risk, folds=cfg.cv_folds, seed=params.seed,
        )  # fmt: skip
        calibration["validation_ids"] = split.ids
    section = csf_section(calibration, run_methods, tta_samples > 0)
    test_ids = test.ids
    validation_ids = calibration.get("validation_ids")
    if validation_ids is None:
        if section.get("states"):
            log.warning("%s v%s: the calibration stores no validation_ids, so the fitted CSFs' data cannot be "
                        "checked against the test split: they are left out", family, version)  # fmt: skip
            section = {**section, "states": {}}
    else:
        try:
            csf.check_disjoint(validation_ids, test_ids)
        except csf.CSFUnavailable as exc:
            raise EvaluationError(f"{family} v{version}: {exc}") from exc
    targets = scores.logit_targets(contract, test.labels)
    log.info("%s v%s: %d test images (%s), checked disjoint from the %s calibration images", family, version,
             len(targets), test.source, "?" if validation_ids is None else len(validation_ids))  # fmt: skip
    outputs = run(test, f"{family} v{version} {test.source}")

    # The paper's protocol (Table 1, Fig. 3, Tables S1/S2): flag-and-swap with the validation thresholds.
    predictions = swapped_predictions(outputs, calibration)
    folder = Path(out_dir) / f"{family}-v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    table = f1_table(targets, predictions, classes)
    sens = pd.DataFrame({k: _sens_spec(targets, v)[0] for k, v in predictions.items()}, index=classes).T
    spec = pd.DataFrame({k: _sens_spec(targets, v)[1] for k, v in predictions.items()}, index=classes).T
    boot = bootstrap_f1(targets, predictions, n_bootstrap=n_bootstrap, seed=seed)
    tests = paired_tests(boot)
    log.info("%s v%s: flag-and-swap F1 (the paper's protocol) done", family, version)

    # FD-Shifts: every CSF on the i.i.d. test split and each simulator shift.
    names = list(dict.fromkeys([*section.get("candidates", []), *csf.default_names(run_methods, tta_samples > 0)]))
    results = {"iid": fd_shifts_test_set(outputs, targets, contract, section, names, test_set="iid",
                                         n_bootstrap=n_bootstrap, seed=seed, min_per_class=cfg.min_per_class)}  # fmt: skip
    performance = calibration.get("performance")
    cbpe = [cbpe_rows(contract, outputs["logits"], targets, performance, "iid")] if performance else []
    log.info("%s v%s: FD-Shifts on iid done (%d CSFs)", family, version, len(results["iid"]["curves"]))
    for k, shift in enumerate(shifts):
        desc = f"{family} v{version} shift {shift}"
        shifted, shifted_labels = shifted_outputs(
            params, contract, shift, len(test), seed + 101 + k, lambda images, desc=desc: run(images, desc)
        )
        shifted_targets = scores.logit_targets(contract, shifted_labels)
        results[shift] = fd_shifts_test_set(
            shifted, shifted_targets, contract, section, names, test_set=shift, n_bootstrap=n_bootstrap, seed=seed,
            min_per_class=cfg.min_per_class,
        )  # fmt: skip
        if performance:
            cbpe.append(cbpe_rows(contract, shifted["logits"], shifted_targets, performance, shift))
        log.info("%s v%s: FD-Shifts on shift %s done", family, version, shift)
    fd = pd.concat([r["table"] for r in results.values()], ignore_index=True)
    compared = pd.concat([r["comparisons"] for r in results.values()], ignore_index=True)
    operating = _operating_frame(section, classes, results)
    unavailable = {**section.get("unavailable", {}), **{n: why for r in results.values()
                                                        for n, why in r["unavailable"].items()}}  # fmt: skip
    wide = fd_report.wide_table(fd, "AUGRC", section.get("augrc") or None)

    # Files.
    for name, frame in {"f1_table.csv": table, "sensitivity.csv": sens, "specificity.csv": spec}.items():
        frame.to_csv(folder / name)
    boot.to_csv(folder / "bootstrap_f1.csv", index=False)
    tests.to_csv(folder / "paired_tests.csv", index=False)
    (folder / "f1_table.md").write_text(table.round(3).to_markdown() + "\n", encoding="utf-8")
    fd_report.write_table(fd, folder, "failure_detection")
    fd_report.write_table(compared, folder, "comparisons")
    fd_report.write_table(wide, folder, "augrc_table", index=True)
    if operating is not None:
        fd_report.write_table(operating, folder, "operating_point", digits=3)
    estimation = pd.concat(cbpe, ignore_index=True) if cbpe else None
    if estimation is not None:
        fd_report.write_table(estimation, folder, "performance_estimation", digits=3)
    else:
        log.warning("%s v%s: the calibration has no performance section (made before CBPE): no estimate to check",
                    family, version)  # fmt: skip
    box = box_plot(
        boot, tests, folder / "bootstrap_f1_boxplot.png", f"{family} v{version}: {n_bootstrap} bootstrap test sets"
    )
    rc = fd_report.risk_coverage_figure(
        {t: r["curves"] for t, r in results.items()}, folder / "risk_coverage.png",
        f"{family} v{version}: selective risk vs coverage", selected=section["selected"],
    )  # fmt: skip
    best_informer = table.loc[[i for i in table.index if i.startswith("INFORMER_")], "mean"].max()
    baselines = table.loc[[i for i in table.index if i in BASELINE_NAMES.values()], "mean"]
    verdict = {
        name: ("better" if best_informer > value + 1e-9 else "equal" if abs(best_informer - value) <= 1e-9 else "worse")
        for name, value in baselines.items()
    }
    summary = {
        "family": family, "version": version, "seed": params.seed, "n_validation": calibration["n_validation"],
        "n_test": int(len(targets)), "methods": list(run_methods), "direction": direction,
        "tau": {m: calibration["methods"][m]["tau"] for m in methods if m in calibration["methods"]},
        "mean_f1": table["mean"].to_dict(), "informer_vs_baselines_mean_f1": verdict,
        "paired_tests": tests.to_dict(orient="records"), "figure": str(box), "risk_coverage_figure": str(rc),
        "csf": {k: section.get(k) for k in ("method", "selected", "reason", "pinned", "augrc", "se")},
        "unavailable": unavailable, "n_bootstrap": n_bootstrap, "test_sets": list(results),
        "failure_detection": fd.to_dict(orient="records"), "comparisons": compared.to_dict(orient="records"),
        "operating_point": None if operating is None else operating.to_dict(orient="records"),
        "performance_estimation": None if estimation is None else estimation.to_dict(orient="records"),
        "report": str(folder / "report.html"), "trained_params": trained.describe(),
        "trained_params_summary": trained.summary(family, version), "shifts_absent": shifts_absent,
        "splits": {"calibration": calibration.get("splits", {}).get("calibration", split.describe()),
                   "test": test.describe()},
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    (folder / "report.html").write_text(
        _version_html(family, version, calibration, section, table, sens, spec, tests, box, rc, wide, fd, compared,
                      operating, unavailable, n_bootstrap, len(targets), estimation, splits=summary["splits"],
                      shifts_absent=shifts_absent),
        encoding="utf-8",
    )  # fmt: skip
    if log_run:
        _log_to_mlflow(params, family, version, folder, table, repo, fd=fd, compared=compared, section=section)
    log.info("%s v%s: report written to %s", family, version, folder)
    return {**summary, "frames": {"failure_detection": fd, "comparisons": compared, "operating": operating,
                                  "estimation": estimation, "curves": {t: r["curves"] for t, r in results.items()}}}  # fmt: skip


def cbpe_rows(
    contract: ModelContract, logits: np.ndarray, targets: np.ndarray, performance: dict[str, Any], test_set: str
) -> pd.DataFrame:
    """CBPE's estimate (from the logits alone, :func:`medmlops.informer.probability.estimate`) beside the realized
    value on the labelled test set, per class and for the family's gate metric: AUROC and F1 and their errors
    (estimated - realized)."""
    result = estimate(contract, logits, performance, targets)
    rows = []
    for name, c in result["classes"].items():
        rows.append({"test_set": test_set, "class": name, **_pair(c["estimated"], c["realized"])})
    gate = result["gate"]
    if gate.get("metric"):
        which = gate.get("estimate")
        rows.append({"test_set": test_set, "class": f"gate: {gate['metric']}",
                     **_pair({which: gate.get("estimated")}, {which: gate.get("realized")})})  # fmt: skip
    return pd.DataFrame(rows)


def _pair(estimated: dict[str, Any], realized: dict[str, Any]) -> dict[str, float]:
    out = {}
    for metric in ("auroc", "f1"):
        e, r = estimated.get(metric), realized.get(metric)
        out[f"{metric}_estimated"] = np.nan if e is None else float(e)
        out[f"{metric}_realized"] = np.nan if r is None else float(r)
        out[f"{metric}_error"] = out[f"{metric}_estimated"] - out[f"{metric}_realized"]
    return out


def _operating_frame(section: dict[str, Any], classes: list[str], results: dict[str, Any]) -> pd.DataFrame | None:
    """The deployed CSF's coverage and risk at its τ: the calibration split's (stored) above each test set's."""
    point = section.get("operating_point")
    if point is None:
        return None
    frames = [fd_report.point_rows(point, point["tau"], classes, test_set="calibration")]
    frames += [r["operating"] for r in results.values() if r["operating"] is not None]
    rule = {k: point[k] for k in ("review_budget", "target_risk") if point.get(k) is not None}
    return pd.concat(frames, ignore_index=True).assign(
        csf=section["selected"], rule=", ".join(f"{k}={v}" for k, v in rule.items())
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _version_html(family, version, calibration, section, table, sens, spec, tests, box, rc, wide, fd, compared,
                  operating, unavailable, n_bootstrap, n_test, estimation=None, splits=None,
                  shifts_absent=None) -> str:  # fmt: skip
    selected = section["selected"]
    splits = splits or {}
    calibrated_on, tested_on = (splits.get(k, {}).get("source", "") for k in ("calibration", "test"))
    shifted = f"shifted test sets: {shifts_absent}" if shifts_absent else "shifted test sets simulated at the same size"
    sections = [
        ("Setup", f"<p>{calibration['n_validation']} calibration images ({calibrated_on or 'validation'}): "
                  f"thresholds, CSF ranking and fitted CSFs; {n_test} test images ({tested_on or 'test split'}); "
                  f"{shifted}. Bootstrap: {n_bootstrap} resamples of the images, percentile 95 % CI.</p>"
                  + "".join(f"<p><b>{html.escape(splits[k]['note'])}</b></p>" for k in splits if splits[k].get("note"))
                  + _cohort_html(splits)
                  + f"<p>Deployed CSF: <b>{fd_report.csf_label(selected)}</b> ({section.get('reason', '')}).</p>"),
        ("Failure detection: AUGRC x1000 (lower is better) [95 % CI]", wide.to_html()),
        ("Deployed CSF vs MSR, INFORMER-learned vs logit-learned (paired AUGRC difference x1000)",
         compared.round(2).to_html(index=False)),
        ("Operating point (coverage, selective risk at the stored tau)",
         "<p>none stored</p>" if operating is None else operating.round(3).to_html(index=False)),
        ("Risk-coverage curves", f"<img src='{rc.name}'>"),
        ("Performance without labels: CBPE's estimate vs the realized value (error = estimated - realized)",
         "<p>the calibration has no performance section</p>" if estimation is None
         else estimation.round(3).to_html(index=False)),
        ("All metrics (AURC, E-AURC, AUGRC x1000 with CIs)", fd.round(2).to_html(index=False)),
        ("Not evaluated", "<ul>" + "".join(f"<li>{n}: {why}</li>" for n, why in unavailable.items()) + "</ul>"),
        ("The paper's protocol: F1 per class after flag-and-swap (Table 1)", table.round(3).to_html()),
        ("Sensitivity", sens.round(3).to_html()),
        ("Specificity", spec.round(3).to_html()),
        (f"{n_bootstrap} bootstrap test sets (Fig. 3)", f"<img src='{box.name}'>" + tests.round(4).to_html(index=False)),
    ]  # fmt: skip
    return fd_report.html_page(f"INFORMER evaluation: {family} v{version}", sections)


def _cohort_html(splits: dict[str, Any]) -> str:
    """The paper cohort's images left after each exclusion, per CheXpert csv (empty for other cohorts)."""
    from medmlops.data.readers import selection_lines

    selection = next((v["selection"] for v in splits.values() if v.get("selection")), None)
    if not selection:
        return ""
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in selection_lines(selection))
    return f"<p>Cohort (data.chexpert.cohort: paper; the paper: 90,839 train, 128 valid, 284 test):</p><ul>{lines}</ul>"


def _metric_key(*parts: str) -> str:
    return "/".join(p.replace(" ", "_").replace(".", "").replace("-", "_") for p in parts)


def _log_to_mlflow(
    params: Params, family: str, version: str, out_dir: Path, table: pd.DataFrame, repo: Path, *,
    fd: pd.DataFrame | None = None, compared: pd.DataFrame | None = None, section: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    import mlflow

    from medmlops.registry import tracking

    experiment_id = tracking.family_experiment_id(params.registry, family, repo)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"informer-evaluate v{version}"):
        mlflow.set_tags({"kind": "informer-evaluation", "model_version": version, "seed": str(params.seed),
                         "selected_csf": (section or {}).get("selected", "")})  # fmt: skip
        metrics = {f"mean_f1/{k.replace(' ', '_').replace('.', '')}": float(v) for k, v in table["mean"].items()}
        for _, row in (fd if fd is not None else pd.DataFrame()).iterrows():
            for column in fd_report.METRICS.values():
                metrics[_metric_key("fd", row["test_set"], row["csf"], column)] = float(row[column])
        for _, row in (compared if compared is not None else pd.DataFrame()).iterrows():
            metrics[_metric_key("fd", row["test_set"], row["comparison"].replace(" - ", "_minus_"))] = float(
                row["difference"]
            )
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_artifacts(str(out_dir), artifact_path="informer")


# ---------------------------------------------------------------------------------------------------------------
# Several versions (training seeds)
# ---------------------------------------------------------------------------------------------------------------


def evaluate_versions(
    params: Params, family: str, aliases: list[str], *, out_dir: Path = Path("reports/informer"),
    repo: Path = Path("."), **kwargs: Any,
) -> dict[str, Any]:  # fmt: skip
    """:func:`evaluate_version` for each of ``aliases`` (versions of ``family``, each trained with another seed),
    then the aggregate over them in ``out_dir/<family>-fd-shifts``: mean and sd of every metric per test set and
    CSF, and per test set how many versions' deployed CSF beat MSR. Logged to its own MLflow run."""
    if not aliases:
        raise EvaluationError("name at least one version to evaluate (--alias)")
    summaries: dict[str, dict[str, Any]] = {}
    for k, alias in enumerate(aliases, start=1):
        log.info("%s: evaluating %s (%d of %d)", family, alias, k, len(aliases))
        summary = evaluate_version(params, family, alias, out_dir=out_dir, repo=repo, **kwargs)
        if summary["version"] in summaries:
            log.warning("%s: %s is version %s again: counted once", family, alias, summary["version"])
        summaries[summary["version"]] = summary
    folder = Path(out_dir) / f"{family}-fd-shifts"
    folder.mkdir(parents=True, exist_ok=True)
    tables = {v: s["frames"]["failure_detection"] for v, s in summaries.items()}
    agg = fd_report.aggregate(tables)
    beats = fd_report.beats_msr({v: s["frames"]["comparisons"] for v, s in summaries.items()})
    per_version = pd.concat([t.assign(version=v) for v, t in tables.items()], ignore_index=True)
    fd_report.write_table(per_version, folder, "failure_detection_by_version")
    fd_report.write_table(agg, folder, "aggregate")
    fd_report.write_table(beats, folder, "beats_msr")
    estimations = [s["frames"]["estimation"].assign(version=v) for v, s in summaries.items()
                   if s["frames"].get("estimation") is not None]  # fmt: skip
    cbpe = None
    if estimations:
        gates = pd.concat(estimations, ignore_index=True)
        gates = gates[gates["class"].str.startswith("gate: ")]
        cbpe = gates.groupby(["test_set", "class"], sort=False).agg(
            versions=("version", "nunique"), auroc_error_mean=("auroc_error", "mean"),
            auroc_abs_error_max=("auroc_error", lambda e: float(np.nanmax(np.abs(e))) if e.notna().any() else np.nan),
            f1_error_mean=("f1_error", "mean"),
        ).reset_index()  # fmt: skip
        fd_report.write_table(cbpe, folder, "performance_estimation", digits=3)
    versions = list(summaries)
    curves = {}
    for test_set in dict.fromkeys(t for s in summaries.values() for t in s["frames"]["curves"]):
        names = dict.fromkeys(n for s in summaries.values() for n in s["frames"]["curves"].get(test_set, {}))
        curves[test_set] = {
            n: np.nanmean([s["frames"]["curves"][test_set][n] for s in summaries.values()
                           if n in s["frames"]["curves"].get(test_set, {})], axis=0)
            for n in names
        }  # fmt: skip
    selected = [s["csf"]["selected"] for s in summaries.values()]
    figure = fd_report.risk_coverage_figure(
        curves, folder / "risk_coverage.png", f"{family}, versions {', '.join(versions)}: mean selective risk",
        selected=selected[0] if len(set(selected)) == 1 else None,
    )  # fmt: skip
    seeds = {v: s["seed"] for v, s in summaries.items()}
    summary = {
        "family": family, "versions": versions, "seeds": seeds, "selected": dict(zip(versions, selected, strict=True)),
        "aggregate": agg.to_dict(orient="records"), "beats_msr": beats.to_dict(orient="records"),
        "performance_estimation": None if cbpe is None else cbpe.to_dict(orient="records"),
        "version_reports": {v: s["report"] for v, s in summaries.items()}, "figure": str(figure),
        "report": str(folder / "report.html"),
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    mean_augrc = agg.pivot(index="label", columns="test_set", values="AUGRC_mean")
    mean_augrc = mean_augrc[list(dict.fromkeys(agg["test_set"]))].reindex(list(dict.fromkeys(agg["label"])))
    links = "".join(f"<li><a href='../{Path(r).parent.name}/report.html'>version {v}</a> (seed {seeds[v]}, "
                    f"deployed {summaries[v]['csf']['selected']})</li>" for v, r in summary["version_reports"].items())  # fmt: skip
    sections = [
        ("Versions", f"<ul>{links}</ul>"),
        ("Mean AUGRC x1000 over versions", mean_augrc.round(1).to_html()),
        ("Does the deployed CSF beat MSR? (per test set, over versions)", beats.round(2).to_html(index=False)),
        ("Mean and sd of every metric", agg.round(2).to_html(index=False)),
        ("CBPE: the gate metric estimated without labels minus realized (over versions)",
         cbpe.round(3).to_html(index=False) if cbpe is not None else "<p>no calibration had a performance section</p>"),
        ("Risk-coverage curves (mean over versions)", f"<img src='{figure.name}'>"),
    ]  # fmt: skip
    (folder / "report.html").write_text(
        fd_report.html_page(f"FD-Shifts protocol: {family}, {len(versions)} versions", sections), encoding="utf-8"
    )
    _log_aggregate(params, family, versions, folder, agg, beats, repo)
    log.info("%s: aggregate over %d versions written to %s", family, len(versions), folder)
    return {**summary, "per_version": {v: {k: s[k] for k in s if k != "frames"} for v, s in summaries.items()}}


def _log_aggregate(params, family, versions, folder, agg, beats, repo) -> None:
    import mlflow

    from medmlops.registry import tracking

    experiment_id = tracking.family_experiment_id(params.registry, family, repo)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"informer-fd-shifts v{','.join(versions)}"):
        mlflow.set_tags({"kind": "informer-fd-shifts", "model_versions": ",".join(versions)})
        metrics = {_metric_key("fd_mean", r["test_set"], r["csf"], "AUGRC"): float(r["AUGRC_mean"])
                   for _, r in agg.iterrows()}  # fmt: skip
        for _, r in beats.iterrows():
            key = _metric_key("n_lower", r["test_set"], r["comparison"].replace(" - ", "_minus_"))
            metrics[key] = float(r["n_lower"])
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_artifacts(str(folder), artifact_path="informer-fd-shifts")
