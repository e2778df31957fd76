"""``medmlops informer evaluate``: INFORMER against its baselines on a registered model version.

Two protocols:

* Shu et al.'s: per-class F1 on the test split after flag-and-swap with the thresholds fitted on validation, for
  INFORMER (each saliency method), predictive entropy, TTA and MSR, next to the model without quality control
  (Table 1); the same on 30 bootstrap test sets (n-sized resamples with replacement, seeded), mean F1 over classes,
  paired t-tests of each INFORMER variant against each baseline, and a box plot (Fig. 3); sensitivity and
  specificity per class after swapping (Tables S1/S2).
* FD-Shifts' (Jaeger et al. 2023): each score as a confidence ranking of the model's own per-class predictions,
  AURC, E-AURC and AUGRC (all × 1000, lower is better), on the i.i.d. test split and on shifted test sets made by
  the simulator's shift knobs, so INFORMER meets MSR on equal terms.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmlops.config import Params
from medmlops.informer import scores
from medmlops.informer.calibrate import (
    baseline_scores,
    fit_calibration,
    informer_model,
    load_calibration,
    version_split,
)
from medmlops.informer.outputs import batched_outputs
from medmlops.registry.contract import ModelContract

log = logging.getLogger(__name__)

BASELINE_NAMES = {"entropy": "Pred. Entropy", "tta": "TTA", "msr": "MSR"}
NO_QC = "No QC"


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


def failure_detection(outputs: dict[str, Any], targets: np.ndarray, calibration: dict[str, Any]) -> pd.DataFrame:
    """AURC, E-AURC, AUGRC (× 1000) of each score as the confidence of the model's per-class predictions,
    averaged over classes (rows with unknown targets left out)."""
    rows = []
    for name, (score, fit) in approach_scores(outputs, calibration).items():
        confidence = score if fit["direction"] == "low" else -score  # high confidence = far from "uncertain"
        per_class = []
        for j in range(targets.shape[1]):
            keep = np.isfinite(targets[:, j])
            if keep.sum() < 2:
                continue
            errors = (outputs["predictions"][keep, j] != targets[keep, j]).astype(float)
            c = confidence[keep, j]
            per_class.append((scores.aurc(c, errors), scores.eaurc(c, errors), scores.augrc(c, errors)))
        values = np.asarray(per_class) * 1000
        rows.append(
            {"approach": name, "AURC": values[:, 0].mean(), "E-AURC": values[:, 1].mean(), "AUGRC": values[:, 2].mean()}
        )
    return pd.DataFrame(rows)


def shifted_test_set(
    params: Params, contract: ModelContract, shift: str, n: int, seed: int
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """``n`` simulated images of the model's first source dataset with the simulator's ``shift`` knob,
    preprocessed from their files as serving does, and their labels by task."""
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
        images = torch.stack([preprocess(Path(item["image"]).read_bytes()) for item in items])
    labels = {}
    for spec in contract.tasks:
        if spec.kind == "multilabel":
            labels[spec.name] = np.stack([np.asarray(item["findings"], dtype=np.float64) for item in items])
        else:
            column = spec.name if spec.name in items[0] else None
            labels[spec.name] = np.asarray([item[column] if column else -1 for item in items], dtype=np.float64)
    return images, labels


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
) -> dict[str, Any]:
    """Run both protocols on ``family@alias``; write tables (CSV, Markdown, HTML), the box plot and a JSON summary
    into ``out_dir``, log them to an MLflow run of the family's experiment, and return the summary."""
    version, contract, logits_model = informer_model(family, alias)
    classes = contract.output_names()
    run = lambda images, desc: batched_outputs(  # noqa: E731
        logits_model,
        contract,
        images,
        methods=methods,
        tta_samples=tta_samples,
        progress=progress,
        desc=desc,
        seed=seed,
    )
    stored = load_calibration(family, version, contract)
    if (
        stored is not None
        and all(m in stored["methods"] for m in methods)
        and stored["direction"] == direction
        and ("tta" in stored["baselines"] or tta_samples == 0)
    ):
        calibration = stored
    else:
        images, labels, _ = version_split(params, family, version, "val", repo=repo, progress=progress)
        calibration = fit_calibration(
            run(images, f"{family} v{version} validation"), scores.logit_targets(contract, labels), contract,
            methods=methods, direction=direction, min_per_class=params.informer.min_per_class,
        )  # fmt: skip
    images, labels, _ = version_split(params, family, version, "test", repo=repo, progress=progress)
    targets = scores.logit_targets(contract, labels)
    outputs = run(images, f"{family} v{version} test")
    predictions = swapped_predictions(outputs, calibration)

    out_dir = Path(out_dir) / f"{family}-v{version}"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = f1_table(targets, predictions, classes)
    sens = pd.DataFrame({k: _sens_spec(targets, v)[0] for k, v in predictions.items()}, index=classes).T
    spec = pd.DataFrame({k: _sens_spec(targets, v)[1] for k, v in predictions.items()}, index=classes).T
    boot = bootstrap_f1(targets, predictions, n_bootstrap=n_bootstrap, seed=seed)
    tests = paired_tests(boot)
    fd = {"iid": failure_detection(outputs, targets, calibration)}
    for k, shift in enumerate(shifts):
        shifted_images, shifted_labels = shifted_test_set(params, contract, shift, len(images), seed + 101 + k)
        fd[shift] = failure_detection(
            run(shifted_images, f"{family} v{version} shift {shift}"), scores.logit_targets(contract, shifted_labels),
            calibration,
        )  # fmt: skip
    fd_table = pd.concat([f.assign(test_set=name) for name, f in fd.items()], ignore_index=True)

    files = {
        "f1_table.csv": table, "sensitivity.csv": sens, "specificity.csv": spec, "bootstrap_f1.csv": boot,
        "paired_tests.csv": tests, "failure_detection.csv": fd_table,
    }  # fmt: skip
    for name, frame in files.items():
        frame.to_csv(
            out_dir / name, index=name not in ("bootstrap_f1.csv", "paired_tests.csv", "failure_detection.csv")
        )
    figure = box_plot(
        boot, tests, out_dir / "bootstrap_f1_boxplot.png", f"{family} v{version}: {n_bootstrap} bootstrap test sets"
    )
    best_informer = table.loc[[i for i in table.index if i.startswith("INFORMER_")], "mean"].max()
    baselines = table.loc[[i for i in table.index if i in BASELINE_NAMES.values()], "mean"]
    verdict = {
        name: ("better" if best_informer > value + 1e-9 else "equal" if abs(best_informer - value) <= 1e-9 else "worse")
        for name, value in baselines.items()
    }
    summary = {
        "family": family, "version": version, "n_validation": calibration["n_validation"], "n_test": int(len(targets)),
        "methods": list(methods), "direction": direction, "tau": {m: calibration["methods"][m]["tau"] for m in methods},
        "mean_f1": table["mean"].to_dict(), "informer_vs_baselines_mean_f1": verdict,
        "failure_detection": fd_table.to_dict(orient="records"), "paired_tests": tests.to_dict(orient="records"),
        "figure": str(figure),
    }  # fmt: skip
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    html = ["<html><head><meta charset='utf-8'><title>INFORMER evaluation</title></head><body>",
            f"<h1>INFORMER evaluation: {family} v{version}</h1>",
            f"<p>{calibration['n_validation']} validation images (thresholds), {len(targets)} test images.</p>",
            "<h2>F1 per class after flag-and-swap (Table 1)</h2>", table.round(3).to_html(),
            "<h2>Sensitivity</h2>", sens.round(3).to_html(), "<h2>Specificity</h2>", spec.round(3).to_html(),
            f"<h2>{n_bootstrap} bootstrap test sets (Fig. 3)</h2><img src='{figure.name}'>", tests.round(4).to_html(index=False),
            "<h2>Failure detection (FD-Shifts; x1000, lower is better)</h2>", fd_table.round(2).to_html(index=False),
            "</body></html>"]  # fmt: skip
    (out_dir / "report.html").write_text("\n".join(html), encoding="utf-8")
    (out_dir / "f1_table.md").write_text(table.round(3).to_markdown(), encoding="utf-8")
    _log_to_mlflow(params, family, version, out_dir, table, repo)
    return summary


def _log_to_mlflow(params: Params, family: str, version: str, out_dir: Path, table: pd.DataFrame, repo: Path) -> None:
    import mlflow

    from medmlops.registry import tracking

    experiment_id = tracking.family_experiment_id(params.registry, family, repo)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"informer-evaluate v{version}"):
        mlflow.set_tags({"kind": "informer-evaluation", "model_version": version})
        mlflow.log_metrics({f"mean_f1/{k.replace(' ', '_').replace('.', '')}": float(v) for k, v in table["mean"].items()
                            if np.isfinite(v)})  # fmt: skip
        mlflow.log_artifacts(str(out_dir), artifact_path="informer")
