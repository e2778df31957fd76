"""``medmlops train EXPERIMENT``: preprocess → splits → train each fold → evaluate each fold → aggregate, all
tracked in MLflow (a parent run per experiment, a nested run per fold), optionally registered as a candidate.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medmlops.config import ExperimentConfig, Params, save_resolved
from medmlops.data import preprocess as prep
from medmlops.errors import UserError
from medmlops.models import build_model
from medmlops.training import metrics as M
from medmlops.training import stats as S
from medmlops.training.loop import predict, resolve_device, seed_everything, task_probs, train_fold
from medmlops.training.splits import load_splits, save_splits, stratified_kfold_splits
from medmlops.training.tasks import TaskDef, resolve_tasks

log = logging.getLogger(__name__)

# Splits are stratified on this label for every experiment of a dataset, so all experiments share folds and the
# ablation compares models on identical test sets (the paper's Fig. 2).
SPLIT_LABEL = {"ich": "prognosis"}


@dataclass
class ExperimentResult:
    experiment: str
    run_id: str
    run_dir: Path
    summary: dict[str, float]
    per_fold: pd.DataFrame  # tidy: fold, metric, value
    best_fold: int
    checkpoint: Path
    folds: list[int] = field(default_factory=list)


def run_dir_for(params: Params, name: str, repo: Path = Path(".")) -> Path:
    return repo / params.train.runs_dir / params.profile / name


def task_metrics(frame: pd.DataFrame, task: TaskDef) -> dict[str, float]:
    """Test metrics of one task at the 0.5 threshold (the paper's conservative threshold)."""
    labels = frame[task.column].to_numpy()
    keep = labels >= 0
    probs = task_probs(frame, task)[keep]
    labels = labels[keep]
    if task.kind == "binary":
        values = M.binary_metrics(labels, probs[:, 0], threshold=0.5)
    else:
        values = M.ordinal_metrics(labels, task.predict(probs), n_classes=len(task.classes))
    return {f"{task.name}_{k}": float(v) for k, v in values.items()}


def _bootstrap(frame: pd.DataFrame, tasks: dict[str, TaskDef], n_boot: int, seed: int) -> pd.DataFrame:
    rows = []
    for task in tasks.values():
        labels = frame[task.column].to_numpy()
        keep = labels >= 0
        probs = task_probs(frame, task)[keep]
        if task.kind == "binary":
            fn = lambda y, p: M.binary_metrics(y, p, 0.5)  # noqa: E731
            values = S.bootstrap_ci(labels[keep], probs[:, 0], fn, n_boot=n_boot, seed=seed)
        else:
            fn = lambda y, p, t=task: M.ordinal_metrics(y, t.predict(p), n_classes=len(t.classes))  # noqa: E731
            values = S.bootstrap_ci(labels[keep], probs, fn, n_boot=n_boot, seed=seed)
        for metric, (point, lo, hi) in values.items():
            rows.append({"task": task.name, "metric": metric, "value": point, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def _mlflow():
    import mlflow

    return mlflow


def run_experiment(
    name: str,
    params: Params,
    *,
    repo: Path = Path("."),
    progress: bool = True,
    resume: bool = True,
) -> ExperimentResult:
    """Train and evaluate ``name`` over the configured folds; returns the aggregated result and the MLflow run."""
    from medmlops.registry import tracking

    exp: ExperimentConfig = params.experiment(name)
    tasks = resolve_tasks(exp.dataset, list(exp.tasks))
    if exp.primary_task not in tasks:
        raise UserError(f"experiment {name}: primary_task '{exp.primary_task}' is not one of its tasks ({', '.join(tasks)})")
    model_probe = build_model(exp.model, tasks={t: d.out_features for t, d in tasks.items()})
    spatial = getattr(params.preprocess, exp.dataset).spatial_size
    if min(spatial) < getattr(model_probe, "min_input_size", 1):
        raise UserError(
            f"experiment {name}: model {exp.model} needs every spatial size ≥ {model_probe.min_input_size}, "
            f"but preprocess.{exp.dataset}.spatial_size is {list(spatial)}"
        )
    del model_probe

    run_dir = run_dir_for(params, name, repo)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(params, run_dir / "params.yaml")
    prep.preprocess(params, exp.dataset, repo=repo, progress=progress)
    manifest = prep.load_manifest(params, exp.dataset, repo)
    items = {item["sample_id"]: item for item in prep.items_from_manifest(manifest, exp.dataset)}

    splits_path = run_dir / "splits.csv"
    split_label = SPLIT_LABEL[exp.dataset]
    splits = stratified_kfold_splits(
        manifest["sample_id"], manifest[split_label].to_numpy(), params.train.n_folds, params.train.val_fraction, params.seed
    )
    if splits_path.is_file() and not load_splits(splits_path).equals(
        splits.sort_values(["fold", "split", "sample_id"]).reset_index(drop=True)
    ):
        raise UserError(f"{splits_path}: existing splits differ from the data/params now; remove {run_dir} to start over")
    save_splits(splits, splits_path)
    folds = list(params.train.folds) or list(range(params.train.n_folds))
    bad = [f for f in folds if f >= params.train.n_folds]
    if bad:
        raise UserError(f"train.folds has fold {bad[0]} but train.n_folds is {params.train.n_folds}")

    mlflow = _mlflow()
    tracking.configure(params.registry, cwd=repo)
    experiment_id = tracking.get_or_create_experiment(f"{params.registry.experiment_prefix}-{exp.family}")
    device = resolve_device(params.train.device)
    per_fold_rows, fold_scores = [], {}
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as parent:
        mlflow.set_tags({
            "experiment": name, "family": exp.family, "profile": params.profile, "model": exp.model,
            "data_version": tracking.data_version(repo), "git_commit": tracking.git_commit(repo),
        })  # fmt: skip
        mlflow.log_params(_flat_params(params, exp))
        mlflow.log_artifact(str(run_dir / "params.yaml"))
        mlflow.log_artifact(str(splits_path))
        for fold in folds:
            fold_dir = run_dir / f"fold-{fold}"
            part = splits[splits["fold"] == fold]
            ids = {s: part.loc[part["split"] == s, "sample_id"].tolist() for s in ("train", "val", "test")}
            with mlflow.start_run(run_name=f"{name}/fold-{fold}", nested=True, experiment_id=experiment_id):
                mlflow.set_tags({"fold": fold, "experiment": name})
                seed_everything(params.seed + fold)  # initial weights are part of the reproducible run
                model = build_model(exp.model, tasks={t: d.out_features for t, d in tasks.items()})
                train_ds = prep.make_dataset(params, exp.dataset, [items[i] for i in ids["train"]], augment=params.train.augment, repo=repo)
                val_ds = prep.make_dataset(params, exp.dataset, [items[i] for i in ids["val"]], augment=False, repo=repo)
                test_ds = prep.make_dataset(params, exp.dataset, [items[i] for i in ids["test"]], augment=False, repo=repo)
                primary_column = tasks[exp.primary_task].column
                result = train_fold(
                    model, train_ds, val_ds, tasks=tasks, weights=exp.tasks, primary_task=exp.primary_task,
                    cfg=params.train, out_dir=fold_dir, seed=params.seed + fold,
                    train_labels=[items[i][primary_column] for i in ids["train"]],
                    on_epoch=lambda rec: mlflow.log_metrics(
                        {k: float(v) for k, v in rec.items() if k not in ("epoch", "best")}, step=int(rec["epoch"])
                    ),
                    progress=progress, resume=resume,
                )  # fmt: skip
                model.load_state_dict(torch.load(result.checkpoint, map_location="cpu", weights_only=True))
                model.to(device)
                loader = torch.utils.data.DataLoader(test_ds, batch_size=params.train.batch_size, shuffle=False)
                test_frame = predict(model, loader, tasks, device)
                test_frame.to_csv(fold_dir / "predictions_test.csv", index=False)
                values = {}
                for task in tasks.values():
                    values.update(task_metrics(test_frame, task))
                mlflow.log_metrics({f"test_{k}": v for k, v in values.items() if np.isfinite(v)})
                mlflow.log_metrics({"best_epoch": result.best_epoch, "best_val_score": result.best_score})
                mlflow.log_artifact(str(fold_dir / "predictions_test.csv"))
                mlflow.log_artifact(str(result.checkpoint), artifact_path="checkpoint")
                pd.DataFrame(result.history).to_csv(fold_dir / "history.csv", index=False)
                mlflow.log_artifact(str(fold_dir / "history.csv"))
                fold_scores[fold] = result.best_score
                per_fold_rows += [{"fold": fold, "metric": k, "value": v} for k, v in values.items()]
                print(f"{name} fold {fold}: best epoch {result.best_epoch + 1}, val bAcc {result.best_score:.3f}, "
                      + ", ".join(f"{k} {v:.3f}" for k, v in values.items() if k.endswith(("_auc", "_balanced_accuracy", "_mae"))))
        per_fold = pd.DataFrame(per_fold_rows)
        per_fold.to_csv(run_dir / "metrics_per_fold.csv", index=False)
        wide = per_fold.pivot(index="fold", columns="metric", values="value")
        summary = S.flatten_summary(S.aggregate_folds(wide.to_dict(orient="records")))
        mlflow.log_metrics({k: v for k, v in summary.items() if np.isfinite(v)})
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        _summary_table(summary, tasks).to_csv(run_dir / "summary_table.csv")
        mlflow.log_artifact(str(run_dir / "metrics_per_fold.csv"))
        mlflow.log_artifact(str(run_dir / "summary.json"))
        mlflow.log_artifact(str(run_dir / "summary_table.csv"))

        boot_fold = params.train.bootstrap_fold if params.train.bootstrap_fold in folds else folds[0]
        boot_frame = pd.read_csv(run_dir / f"fold-{boot_fold}" / "predictions_test.csv", dtype={"sample_id": str})
        boot = _bootstrap(boot_frame, tasks, params.train.n_bootstrap, params.seed)
        boot.insert(0, "fold", boot_fold)
        boot.to_csv(run_dir / "bootstrap_ci.csv", index=False)
        mlflow.log_artifact(str(run_dir / "bootstrap_ci.csv"))
        curves = _training_curves(run_dir, folds)
        if curves is not None:
            mlflow.log_artifact(str(curves))
        best_fold = max(fold_scores, key=lambda f: (fold_scores[f], -f))
        mlflow.set_tag("best_fold", best_fold)
        run_id = parent.info.run_id
    return ExperimentResult(name, run_id, run_dir, summary, per_fold, best_fold, run_dir / f"fold-{best_fold}" / "best.pt", folds)


def _flat_params(params: Params, exp: ExperimentConfig) -> dict[str, str]:
    flat = {f"experiment.{k}": json.dumps(v) if isinstance(v, dict) else v for k, v in asdict(exp).items()}
    flat.update({f"train.{k}": v for k, v in asdict(params.train).items()})
    flat.update({f"preprocess.{k}": v for k, v in asdict(getattr(params.preprocess, exp.dataset)).items()})
    flat["profile"] = params.profile
    flat["seed"] = params.seed
    return {k: str(v)[:500] for k, v in flat.items()}


def _summary_table(summary: dict[str, float], tasks: dict[str, TaskDef]) -> pd.DataFrame:
    """Mean ± SD per task and metric, shaped like the paper's tables (rows: metrics, columns: tasks)."""
    table: dict[str, dict[str, str]] = {}
    for key, value in summary.items():
        if not key.endswith("_mean"):
            continue
        base = key[: -len("_mean")]
        task = next((t for t in sorted(tasks, key=len, reverse=True) if base.startswith(f"{t}_")), None)
        if task is None:
            continue
        metric = base[len(task) + 1 :]
        sd = summary.get(f"{base}_sd", float("nan"))
        table.setdefault(metric, {})[task] = f"{value:.2f} ± {sd:.2f}"
    return pd.DataFrame(table).T


def _training_curves(run_dir: Path, folds: list[int]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    drawn = False
    for fold in folds:
        path = run_dir / f"fold-{fold}" / "history.csv"
        if not path.is_file():
            continue
        history = pd.read_csv(path)
        if history.empty:
            continue
        axes[0].plot(history["epoch"] + 1, history["train_loss"], label=f"fold {fold} train")
        axes[0].plot(history["epoch"] + 1, history["val_loss"], "--", label=f"fold {fold} val")
        score = [c for c in history.columns if c.startswith("val_") and c.endswith("balanced_accuracy")][0]
        axes[1].plot(history["epoch"] + 1, history[score], label=f"fold {fold}")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[1].set(xlabel="epoch", ylabel="balanced accuracy", title="validation (primary task)")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    path = run_dir / "training_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
