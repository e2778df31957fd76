"""``medmlops evaluate``: the ICH paper's tables and figures from trained experiments, on whatever data was used.

- Table 1: tabular models (DNN, LR, RF, DTC and XGBoost on all features, GCS, and GCS & age) under the same
  exclusions as the image models (``data.ich.exclude``), with SHAP feature importances.
- Table 2: bootstrap 95 % CIs of each model on one test fold.
- Fig. 2: the ablation as box plots per metric and model over the CV test folds.
- Supplementary tables: each experiment's mean ± SD per task.
- Saliency: Guided Backprop and Guided Grad-CAM of each model's prognosis head on test cases of one fold.
It also says, in plain words, whether the proposed multi-task model beat the DenseNet baseline on these folds;
it reports, it does not assert.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medmlops.config import Params
from medmlops.errors import UserError
from medmlops.training.experiment import run_dir_for

# What the report's importance figure shows (every kind is in tabular_importance.csv): SHAP of every model and RF's
# permutation importance, on all clinical features (the paper's Supplementary Fig. 1).
FIGURE_IMPORTANCE_KINDS = ("shap", "permutation")
PROGNOSIS_METRICS = ("auc", "accuracy", "balanced_accuracy", "specificity", "npv", "precision", "recall", "f1")


def _load_experiment(name: str, params: Params, repo: Path) -> dict:
    run_dir = run_dir_for(params, name, repo)
    per_fold = run_dir / "metrics_per_fold.csv"
    if not per_fold.is_file():
        raise UserError(
            f"experiment {name} has no results for profile {params.profile} ({per_fold}); run `medmlops train {name}` first"
        )
    return {
        "name": name,
        "dir": run_dir,
        "per_fold": pd.read_csv(per_fold),
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "bootstrap": pd.read_csv(run_dir / "bootstrap_ci.csv") if (run_dir / "bootstrap_ci.csv").is_file() else None,
    }


def comparison_verdict(results: dict[str, dict], proposed: str = "ich-mt-ord", baseline: str = "ich-baseline") -> str:
    """One honest sentence: did the proposed model beat the baseline on mean prognosis AUC and balanced accuracy?"""
    if proposed not in results or baseline not in results:
        return f"(comparison needs both {proposed} and {baseline})"
    parts = []
    for metric in ("auc", "balanced_accuracy"):
        key = f"prognosis_{metric}_mean"
        a, b = results[proposed]["summary"].get(key), results[baseline]["summary"].get(key)
        if a is None or b is None or not np.isfinite(a) or not np.isfinite(b):
            parts.append(f"{metric}: not available")
            continue
        word = "higher" if a > b else ("equal" if a == b else "LOWER")
        parts.append(f"{metric} {a:.3f} vs {b:.3f} ({word})")
    return f"{proposed} vs {baseline} on these folds: " + "; ".join(parts)


def evaluate_experiments(
    names: list[str],
    params: Params,
    *,
    repo: Path = Path("."),
    out_dir: Path | None = None,
    progress: bool = True,
    parent_run_id: str | None = None,
) -> Path:
    """Tables and figures across trained experiments; logged to MLflow (nested under ``parent_run_id`` when given,
    e.g. a pipeline run). Returns the report's index.html."""
    from medmlops.evaluation.figures import ablation_boxplot, metric_table_html

    results = {name: _load_experiment(name, params, repo) for name in names}
    family = params.experiment(names[0]).family
    out = out_dir or repo / "reports" / family / params.profile
    out.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []

    # Supplementary tables: every experiment, every task, mean ± SD.
    rows = {}
    for name, res in results.items():
        for key, value in res["summary"].items():
            if key.endswith("_mean"):
                rows.setdefault(key[: -len("_mean")], {})[name] = (
                    f"{value:.2f} ± {res['summary'].get(key[:-5] + '_sd', float('nan')):.2f}"
                )
    models_table = pd.DataFrame(rows).T.sort_index()
    models_table.to_csv(out / "models_mean_sd.csv")
    metric_table_html(models_table, out / "models_mean_sd.html", "Image models: mean ± SD over CV test folds")
    sections.append("<h2>Image models (mean ± SD over folds)</h2>" + models_table.to_html(na_rep="—"))

    # Fig. 2: the ablation on the primary task's metrics (prognosis for ICH and COVID, findings for CXR).
    primary = params.experiment(names[0]).primary_task
    tidy = []
    for name, res in results.items():
        frame = res["per_fold"]
        frame = frame[frame["metric"].str.startswith(f"{primary}_")].assign(model=name)
        frame["metric"] = frame["metric"].str.removeprefix(f"{primary}_")
        tidy.append(frame)
    tidy_frame = (
        pd.concat(tidy, ignore_index=True) if tidy else pd.DataFrame(columns=["model", "fold", "metric", "value"])
    )
    if not tidy_frame.empty:
        shown = [m for m in PROGNOSIS_METRICS if m in set(tidy_frame["metric"])]
        shown = shown or sorted(m for m in set(tidy_frame["metric"]) if m.endswith("auroc"))[:8]
        ablation_boxplot(tidy_frame, shown, out / "ablation_boxplot.png")
        sections.append("<h2>Ablation (paper Fig. 2)</h2><img src='ablation_boxplot.png' style='max-width:100%'>")

    # Table 2: bootstrap CIs on one fold.
    boots = []
    for name, res in results.items():
        if res["bootstrap"] is not None:
            boot = res["bootstrap"]
            boot = boot[boot["task"] == primary].assign(model=name)
            boots.append(boot)
    boots = [b for b in boots if not b.empty]
    if boots:
        boot_frame = pd.concat(boots, ignore_index=True)
        boot_frame["cell"] = boot_frame.apply(lambda r: f"{r.value:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]", axis=1)
        table2 = boot_frame.pivot(index="metric", columns="model", values="cell")
        table2.to_csv(out / "bootstrap_table.csv")
        fold = int(boot_frame["fold"].iloc[0])
        sections.append(f"<h2>Bootstrap 95 % CIs, test fold {fold} (paper Table 2)</h2>" + table2.to_html())

    # Table 1: tabular models on the clinical table.
    table = clinical_table(params, repo) if family == "ich-prognosis" else None
    if table is not None:
        sections.append(tabular_section(table, params, out, family))

    # Saliency of each model's prognosis head.
    saliency_html = _saliency_figures(results, params, repo, out, params.evaluate.saliency_cases)
    if saliency_html:
        sections.append("<h2>Saliency (Guided Backprop, Guided Grad-CAM)</h2>" + saliency_html)

    verdict = comparison_verdict(results)
    (out / "verdict.txt").write_text(verdict + "\n")
    sections.insert(0, f"<p><b>{html.escape(verdict)}</b></p>")
    index = out / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>medmlops evaluation</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}</style>"
        f"</head><body><h1>{html.escape(family)} — profile {html.escape(params.profile)}</h1>{''.join(sections)}</body></html>",
        encoding="utf-8",
    )
    print(verdict)
    log_report_to_mlflow(out, params, family, parent_run_id)
    return index


def clinical_table(params: Params, repo: Path = Path(".")) -> pd.DataFrame | None:
    """The ICH clinical table the tabular models use, without the patients of ``data.ich.exclude`` (the image models
    never see them either); None where the profile's data has no table."""
    from medmlops.data.readers import ICH_ID, ICH_TABLE, read_ich_table

    path = repo / params.data.raw_dir / "ich" / ICH_TABLE
    if not path.is_file():
        return None
    table = read_ich_table(path)
    if params.data.ich.exclude and ICH_ID in table.columns:
        ids = pd.to_numeric(table[ICH_ID], errors="coerce")
        table = table[~ids.isin(list(params.data.ich.exclude))].reset_index(drop=True)
    return table


def tabular_section(table: pd.DataFrame, params: Params, out: Path, family: str = "ich-prognosis") -> str:
    """Fit the tabular models on ``table`` (see :func:`clinical_table`), write ``tabular_table1.csv``,
    ``tabular_importance.csv`` and ``tabular_importance.png`` into ``out``; return the report's HTML section."""
    from medmlops.data.readers import ICH_LABEL
    from medmlops.evaluation.figures import importance_barplot
    from medmlops.training.tabular import fit_tabular_models

    n_folds = params.train_for_family(family).n_folds  # the paper: 10-fold CV, as its image models
    smallest = int(table[ICH_LABEL].value_counts().min()) if ICH_LABEL in table.columns else 2
    tab = fit_tabular_models(
        table, ICH_LABEL, n_splits=max(2, min(n_folds, smallest)), seed=params.seed,
        estimator_params={"rf": {"n_estimators": params.evaluate.rf_trees}},
        permutation_repeats=params.evaluate.permutation_repeats,
    )  # fmt: skip
    tab.summary.to_csv(out / "tabular_table1.csv")
    tab.importance.to_csv(out / "tabular_importance.csv", index=False)
    importance = tab.importance
    shown = importance[(importance["features"] == "all") & importance["kind"].isin(FIGURE_IMPORTANCE_KINDS)]
    importance_barplot(shown if not shown.empty else importance, out / "tabular_importance.png")
    excluded = list(params.data.ich.exclude)
    caption = (
        f"{len(table)} patients"
        + (f" (excluded: {', '.join(map(str, excluded))})" if excluded else "")
        + f"; {tab.metrics['fold'].nunique()}-fold CV, mean ± SD. DNN: a one-hidden-layer MLP (scikit-learn); XGB is "
        "shown although the paper left it out of Table 1. Importances: mean |SHAP value| on the held-out folds "
        "(every model) and RF permutation importance, on all clinical features; every kind per model and feature set "
        "is in tabular_importance.csv."
    )
    return (
        "<h2>Tabular models (paper Table 1)</h2>"
        + f"<p>{html.escape(caption)}</p>"
        + tab.summary.to_html()
        + "<img src='tabular_importance.png' style='max-width:100%'>"
    )


def _saliency_figures(results: dict[str, dict], params: Params, repo: Path, out: Path, n_cases: int) -> str:
    from medmlops.data import preprocess as prep
    from medmlops.interpret.figures import montage, save_nifti
    from medmlops.interpret.saliency import GUIDED_METHODS, saliency
    from medmlops.models import build_model
    from medmlops.training.splits import load_splits
    from medmlops.training.tasks import resolve_tasks

    if n_cases <= 0:
        return ""
    parts = []
    for name, res in results.items():
        exp = params.experiment(name)
        if "prognosis" not in exp.tasks:
            continue
        tasks = resolve_tasks(exp.dataset, list(exp.tasks))
        splits = load_splits(res["dir"] / "splits.csv")
        bootstrap_fold = params.train_for(name).bootstrap_fold
        fold = int(splits["fold"].min()) if bootstrap_fold not in set(splits["fold"]) else bootstrap_fold
        checkpoint = res["dir"] / f"fold-{fold}" / "best.pt"
        if not checkpoint.is_file():
            continue
        model = build_model(exp.model, tasks={t: d.out_features for t, d in tasks.items()})
        model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        manifest = prep.load_manifest(params, exp.dataset, repo)
        test_ids = splits[(splits["fold"] == fold) & (splits["split"] == "test")]["sample_id"].tolist()[:n_cases]
        items = prep.items_from_manifest(manifest[manifest["sample_id"].isin(test_ids)], exp.dataset)
        ds = prep.make_dataset(params, exp.dataset, items, augment=False, repo=repo)
        for i in range(len(ds)):
            x = ds[i]["image"].unsqueeze(0)
            sid = ds[i]["sample_id"]
            for method in GUIDED_METHODS:
                sal = saliency(model, x, "prognosis", method)[0, 0]
                save_nifti(sal, out / "saliency" / name / f"{sid}_{method}.nii.gz")
                png = montage(
                    x[0, 0].numpy(),
                    sal,
                    out / "saliency" / name / f"{sid}_{method}.png",
                    title=f"{name} · {sid} · {method}",
                )
                parts.append(
                    f"<figure><img src='{png.relative_to(out)}' style='max-width:100%'><figcaption>{html.escape(png.stem)}</figcaption></figure>"
                )
    return "".join(parts)


def log_report_to_mlflow(out: Path, params: Params, family: str, parent_run_id: str | None = None) -> None:
    """Log a report folder as the artifacts of an ``evaluate-<profile>`` run in the family's experiment."""
    import mlflow

    from medmlops.registry import tracking

    tracking.configure(params.registry)
    experiment_id = tracking.get_or_create_experiment(f"{params.registry.experiment_prefix}-{family}")
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"evaluate-{params.profile}", parent_run_id=parent_run_id
    ):
        mlflow.set_tag("kind", "evaluation")
        mlflow.log_artifacts(str(out), artifact_path="report")
