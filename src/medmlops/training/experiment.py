"""``medmlops train EXPERIMENT``: preprocess → splits → train each fold → evaluate each fold → aggregate, all
tracked in MLflow (a parent run per experiment, a nested run per fold), optionally registered as a candidate.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medmlops.config import ExperimentConfig, Params, TrainConfig, save_resolved
from medmlops.data import preprocess as prep
from medmlops.errors import UserError
from medmlops.evaluation import stats as S
from medmlops.evaluation.experiment_metrics import bootstrap_table, summary_table, task_metrics, youden_thresholds
from medmlops.evaluation.figures import training_curves
from medmlops.models import build_model
from medmlops.training.loop import predict, resolve_device, seed_everything, train_fold
from medmlops.training.splits import experiment_splits, load_splits, save_splits
from medmlops.training.tasks import TaskDef, resolve_tasks

log = logging.getLogger(__name__)

# Splits are stratified on this label for every experiment of a dataset, so all experiments share folds and the
# ablation compares models on identical test sets (the paper's Fig. 2).
SPLIT_LABEL = {"ich": "prognosis"}
# Which dataset carries which task (Ruffini et al.: τ1 AIforCOVID prognosis, τ2 BRIXIA severity).
TASK_SOURCE = {"covid": {"prognosis": "aiforcovid", "severity": "brixia"}}
SOURCES = {"ich": ("ich",), "chexpert": ("chexpert",)}


def experiment_sources(exp: ExperimentConfig) -> tuple[str, ...]:
    if exp.dataset in TASK_SOURCE:
        return tuple(sorted({TASK_SOURCE[exp.dataset][t] for t in exp.tasks}))
    return SOURCES[exp.dataset]


def variant_name(params: Params, name: str) -> str:
    """Run folder name: the experiment, its backbone when it has one, ``-loco`` for leave-one-center-out, and
    ``-seed<N>`` when the seed is not the default one (the seed makes the splits, so each seed's run, splits and
    checkpoints need their own folder: training the same experiment over several seeds is how failure detection is
    evaluated, ``docs/failure-detection.md``)."""
    exp = params.experiment(name)
    out = f"{name}@{exp.backbone}" if exp.backbone else name
    out = f"{out}-loco" if params.train_for(name).validation == "loco" else out
    return out if params.seed == DEFAULT_SEED else f"{out}-seed{params.seed}"


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


DEFAULT_SEED = next(f.default for f in fields(Params) if f.name == "seed")


def run_dir_for(params: Params, name: str, repo: Path = Path(".")) -> Path:
    return repo / params.train_for(name).runs_dir / params.profile / variant_name(params, name)


def build_experiment_model(
    exp: ExperimentConfig, tasks: dict[str, TaskDef], train: TrainConfig | None = None, repo: Path = Path(".")
) -> torch.nn.Module:
    """``exp``'s model. With ``train`` (a training run: its settings for this experiment), the 2D backbone starts
    from ImageNet weights: ``exp.weights_path`` when set, else, with ``train.pretrained``, the weights store
    ``train.weights_dir`` or timm's/torchvision's local cache (docs/models.md). Without ``train`` nothing is loaded:
    rebuilding a model to load a trained checkpoint into never needs ImageNet files. Relative paths are under ``repo``.

    No ImageNet file is read for an ``init_from`` experiment (its backbone is then replaced by its sources'
    checkpoints), nor for the 3D ICH models, which have no ImageNet weights: ``train.pretrained`` applies to every
    experiment at once (``--set train.pretrained=true``; the pipelines train several families), so for them it is
    ignored with a logged line, while an explicit ``exp.weights_path`` on a 3D model is an error.

    Raises:
        UserError: ``weights_path`` on a model without a 2D backbone, or weights missing or not fitting the backbone
            (:mod:`medmlops.models.weights`: one sentence naming the file and how to make it).
    """
    from medmlops.models.weights import imagenet_backbone, resolve_weights

    kwargs: dict = {"tasks": {t: d.out_features for t, d in tasks.items()}}
    if exp.backbone:
        kwargs["backbone"] = exp.backbone
    if train is not None and (exp.weights_path or train.pretrained):
        backbone = imagenet_backbone(exp.model, exp.backbone)
        if backbone is None and exp.weights_path:
            raise UserError(
                f"weights_path {exp.weights_path} is set for model {exp.model}, which has no 2D ImageNet backbone "
                "to load it into; remove weights_path from that experiment"
            )
        if backbone is None:
            log.info("train.pretrained is ignored for model %s: it is 3D and has no ImageNet weights", exp.model)
        elif exp.init_from:
            log.info("ImageNet weights not loaded: the backbone comes from %s", ", ".join(exp.init_from))
        elif exp.weights_path:  # the experiment's own file wins over the store
            kwargs.update(pretrained=True, weights_path=Path(repo) / exp.weights_path)
        else:
            source = resolve_weights(backbone, Path(repo) / train.weights_dir)
            log.info("backbone %s starts from ImageNet weights %s (%s)", backbone, source.path, source.origin)
            kwargs.update(pretrained=True, weights_path=source.path)
    return build_model(exp.model, **kwargs)


def load_experiment_data(
    params: Params, exp: ExperimentConfig, repo: Path, progress: bool
) -> tuple[pd.DataFrame, dict]:
    """Preprocess the datasets of ``exp``'s family; return the joint manifest (every dataset of the family, so
    all its experiments share one fold structure: STL τ2's folds pair with FT's and MDMT's) and the items of
    ``exp``'s own sources by sample id."""
    frames, items = [], {}
    family_sources = (
        tuple(sorted(TASK_SOURCE[exp.dataset].values())) if exp.dataset in TASK_SOURCE else SOURCES[exp.dataset]
    )
    for source in family_sources:
        prep.preprocess(params, source, repo=repo, progress=progress)
        manifest = prep.load_manifest(params, source, repo)
        manifest["dataset"] = source
        frames.append(manifest)
        if source in experiment_sources(exp):
            items.update({item["sample_id"]: item for item in prep.items_from_manifest(manifest, source)})
    return pd.concat(frames, ignore_index=True), items


def _init_backbone(model: torch.nn.Module, params: Params, exp: ExperimentConfig, fold: int, repo: Path) -> list[str]:
    """Load the backbone of ``exp.init_from`` experiments' fold checkpoints (their average when several)."""
    from medmlops.models.backbones import average_state_dicts

    states, used = [], []
    for source in exp.init_from:
        checkpoint = run_dir_for(params, source, repo) / f"fold-{fold}" / "best.pt"
        if not checkpoint.is_file():
            raise UserError(f"{checkpoint}: not found; train {source} first (same profile, backbone and validation)")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        states.append({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})
        used.append(str(checkpoint))
    if not states:
        return []
    merged = states[0]
    for other in states[1:]:
        merged = average_state_dicts(merged, other)
    if len(states) > 2:  # pairwise averaging would weight the later ones more
        raise UserError("init_from supports at most two experiments (the paper averages the two STL backbones)")
    model.backbone.load_state_dict(merged)
    return used


def _sampler_weights(items: list[dict], exp: ExperimentConfig) -> list[float] | None:
    """Weights for a fixed-ratio sampler: ``mix_ratio`` of AIforCOVID per batch on average, the rest BRIXIA."""
    if exp.mix_ratio is None:
        return None
    is_prog = np.array([item.get("prognosis", -1) >= 0 for item in items])
    n_prog, n_other = int(is_prog.sum()), int((~is_prog).sum())
    if n_prog == 0 or n_other == 0:
        return None
    return np.where(is_prog, exp.mix_ratio / n_prog, (1 - exp.mix_ratio) / n_other).tolist()


@dataclass
class ExperimentPlan:
    """What every phase of an experiment needs: its config, tasks, data items, the saved splits and the folds to run.

    Built identically (same data, params and seed → same splits) by the CLI process and by every pipeline step,
    so a fold trained on one node and aggregated on another agree on what the folds are.
    """

    name: str
    exp: ExperimentConfig
    tasks: dict[str, TaskDef]
    run_dir: Path
    splits: pd.DataFrame
    items: dict[str, dict]
    folds: list[int]
    variant: str

    @property
    def splits_path(self) -> Path:
        return self.run_dir / "splits.csv"


def plan_experiment(name: str, params: Params, *, repo: Path = Path("."), progress: bool = True) -> ExperimentPlan:
    """Check the experiment against its model and data, preprocess (cached), make and save the splits.

    Raises:
        UserError: unknown primary task, a spatial size the model cannot take, splits on disk that differ from the
            data/params now, or ``train.folds`` naming a fold the validation does not have.
    """
    exp: ExperimentConfig = params.experiment(name)
    tasks = resolve_tasks(exp.dataset, list(exp.tasks))
    if exp.primary_task not in tasks:
        raise UserError(
            f"experiment {name}: primary_task '{exp.primary_task}' is not one of its tasks ({', '.join(tasks)})"
        )
    probe = build_experiment_model(exp, tasks, params.train_for(name), repo)  # missing weights fail here, early
    cfg = prep.preprocess_config(params, experiment_sources(exp)[0])
    spatial = cfg.spatial_size if hasattr(cfg, "spatial_size") else (cfg.size, cfg.size)
    if min(spatial) < getattr(probe, "min_input_size", 1):
        raise UserError(
            f"experiment {name}: model {exp.model} needs every spatial size ≥ {probe.min_input_size}, "
            f"but the preprocessing gives {list(spatial)}"
        )
    del probe

    run_dir = run_dir_for(params, name, repo)
    run_dir.mkdir(parents=True, exist_ok=True)
    frame, items = load_experiment_data(params, exp, repo, progress)

    splits_path = run_dir / "splits.csv"
    train = params.train_for(name)  # train:, then its family's and its own settings
    official = exp.dataset == "chexpert" and params.data.chexpert.cohort == "paper"  # Shu et al.: CheXpert's own csvs
    splits = experiment_splits(frame, exp.dataset, train, params.seed, official=official)
    splits = splits[splits["sample_id"].isin(items)].reset_index(drop=True)
    if splits_path.is_file() and not load_splits(splits_path).equals(
        splits.sort_values(["fold", "split", "sample_id"]).reset_index(drop=True)
    ):
        raise UserError(_splits_differ(splits_path, params))
    save_resolved(params, run_dir / "params.yaml")  # after the check: the params the splits there were made with
    save_splits(splits, splits_path)
    n_folds = int(splits["fold"].max()) + 1
    folds = list(train.folds) or list(range(n_folds))
    bad = [f for f in folds if f >= n_folds]
    if bad:
        raise UserError(f"train.folds has fold {bad[0]} but this validation has {n_folds} folds")
    return ExperimentPlan(name, exp, tasks, run_dir, splits, items, folds, variant_name(params, name))


# The params the splits depend on (besides the data itself): experiment_splits reads these.
SPLIT_KEYS = ("seed", "data.", "train.n_folds", "train.val_fraction", "train.validation")


def _splits_differ(splits_path: Path, params: Params) -> str:
    """Why the splits on disk differ from the ones the params make now, and the fix that keeps the trained runs:
    name the overrides that differ (from the run folder's ``params.yaml``), never deleting the folder first."""
    import yaml

    from medmlops.config import params_from_dict
    from medmlops.registry.trained_params import differences

    run_dir = splits_path.parent
    aside = f"to train with the params now instead, move {run_dir} aside first (its MLflow runs and registered " \
        "versions are kept)"  # fmt: skip
    try:
        before = yaml.safe_load((run_dir / "params.yaml").read_text(encoding="utf-8"))
        changed = [
            (key, then, now)
            for key, then, now in differences(params_from_dict(before, profile=before["profile"]), params)
            if key.startswith(SPLIT_KEYS) and key not in ("data.dvc_file", "data.simulated")
        ]
    except (OSError, yaml.YAMLError, TypeError, KeyError, UserError):
        changed = []
    if changed:
        sets = " ".join(f"--set {key}={_yaml_value(then)}" for key, then, _ in changed)
        now = ", ".join(f"{key}={_yaml_value(value)}" for key, _, value in changed)
        return (
            f"{splits_path} was made with other params than now ({now}): add {sets} to use the trained runs there "
            f"(commands acting on a registered version, such as informer calibrate, take them from the version); {aside}"
        )
    return (
        f"{splits_path} was made from other data than {params.data.raw_dir} holds now (same params): restore that data "
        f"(`dvc checkout {params.data.dvc_file}`) to use the trained runs there; {aside}"
    )


def _yaml_value(value: object) -> str:
    """``value`` as one shell word ``--set`` parses back (YAML): ``2``, ``true``, ``[16,64,64]``, ``data/raw``."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def start_experiment_run(
    plan: ExperimentPlan,
    params: Params,
    *,
    repo: Path = Path("."),
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Create the experiment's MLflow parent run (nested under ``parent_run_id``, e.g. a pipeline run, when given),
    log the resolved params and the splits, and return its id. The run stays open until `aggregate_experiment`."""
    from mlflow import MlflowClient

    from medmlops.registry import tracking

    experiment_id = tracking.family_experiment_id(params.registry, plan.exp.family, repo)
    # Provenance: the data version is what data.raw_dir hashes to, checked against its DVC record (or the version a
    # pipeline validated), and whether the code had uncommitted changes; registration copies these to the version.
    provenance = tracking.provenance_tags(
        repo, params.data.raw_dir, tracking.data_record(params), expected=(tags or {}).get("data_version")
    )
    all_tags = {
        "experiment": plan.name, "family": plan.exp.family, "profile": params.profile, "model": plan.exp.model,
        "backbone": plan.exp.backbone or plan.exp.model, "validation": params.train_for(plan.name).validation,
        "folds": ",".join(map(str, plan.folds)), **(tags or {}), **provenance,
    }  # fmt: skip
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name=plan.variant, tags={k: str(v) for k, v in all_tags.items()})
    run_id = run.info.run_id
    tracking.log_data_input(
        run_id, plan.exp.dataset, provenance["data_version"], repo / params.data.raw_dir,
        verified=provenance["data_version_verified"] == "true",
    )  # fmt: skip
    for key, value in _flat_params(params, plan.name).items():
        client.log_param(run_id, key, value)
    client.log_artifact(run_id, str(plan.run_dir / "params.yaml"))
    client.log_artifact(run_id, str(plan.splits_path))
    return run_id


def train_experiment_fold(
    plan: ExperimentPlan,
    params: Params,
    fold: int,
    run_id: str,
    *,
    repo: Path = Path("."),
    progress: bool = True,
    resume: bool = True,
    tags: dict[str, str] | None = None,
) -> dict[str, float]:
    """Train and test one fold as an MLflow run nested under the experiment run ``run_id``; return its test metrics.

    Everything the aggregation needs (test metrics, predictions, thresholds, history, the best checkpoint) is logged
    to that nested run, so folds can train on different machines and be aggregated from MLflow alone.
    """
    import mlflow

    from medmlops.registry import tracking

    if fold not in plan.folds:
        raise UserError(f"experiment {plan.name}: fold {fold} is not one of its folds ({plan.folds})")
    exp, tasks, items = plan.exp, plan.tasks, plan.items
    main = _is_main_process()
    fold_dir = plan.run_dir / f"fold-{fold}"
    part = plan.splits[plan.splits["fold"] == fold]
    ids = {s: part.loc[part["split"] == s, "sample_id"].tolist() for s in ("train", "val", "test")}
    train = params.train_for(plan.name)
    device = resolve_device(train.device)
    experiment_id = tracking.family_experiment_id(params.registry, exp.family, repo)
    context = (
        mlflow.start_run(run_name=f"{plan.variant}/fold-{fold}", experiment_id=experiment_id, parent_run_id=run_id)
        if main
        else contextlib.nullcontext()
    )
    log_metrics = mlflow.log_metrics if main else (lambda *a, **k: None)
    with context:
        if main:
            # torch_threads: CPU threads of this training (a local pipeline run divides the cores among its folds)
            mlflow.set_tags({"fold": fold, "experiment": plan.name, "torch_threads": torch.get_num_threads(),
                             **(tags or {})})  # fmt: skip
        seed_everything(params.seed + fold)  # initial weights are part of the reproducible run
        model = build_experiment_model(exp, tasks, train, repo)
        initialised = _init_backbone(model, params, exp, fold, repo) if exp.init_from else []
        if initialised and main:
            mlflow.set_tag("init_from", ",".join(initialised))
        datasets = {
            split: prep.make_dataset(
                params,
                experiment_sources(exp)[0],
                [items[i] for i in ids[split]],
                augment=train.augment and split == "train",
                repo=repo,
            )  # fmt: skip
            for split in ("train", "val", "test")
        }
        primary_column = tasks[exp.primary_task].column
        train_items = [items[i] for i in ids["train"]]
        oversample_labels = (
            [item[primary_column] for item in train_items]
            if exp.oversample and tasks[exp.primary_task].kind != "multilabel"
            else None
        )
        result = train_fold(
            model, datasets["train"], datasets["val"], tasks=tasks, weights=exp.tasks, primary_task=exp.primary_task,
            cfg=train, out_dir=fold_dir, seed=params.seed + fold, loss_reduction=exp.loss_reduction,
            train_labels=oversample_labels,
            sample_weights=_sampler_weights(train_items, exp),
            on_epoch=lambda rec: log_metrics(
                {k: float(v) for k, v in rec.items() if k not in ("epoch", "best") and np.isfinite(v)}, step=int(rec["epoch"])
            ),
            progress=progress and main, resume=resume,
        )  # fmt: skip
        if not main:
            return {}
        model.load_state_dict(torch.load(result.checkpoint, map_location="cpu", weights_only=True))
        model.to(device)
        frames = {}
        for split in ("val", "test"):
            loader = torch.utils.data.DataLoader(datasets[split], batch_size=train.batch_size, shuffle=False)
            frames[split] = predict(model, loader, tasks, device)
            frames[split].to_csv(fold_dir / f"predictions_{split}.csv", index=False)
        thresholds = {t.name: youden_thresholds(frames["val"], t) for t in tasks.values() if t.kind == "multilabel"}
        (fold_dir / "thresholds.json").write_text(json.dumps({k: v.tolist() for k, v in thresholds.items()}))
        values = {}
        for task in tasks.values():
            values.update(task_metrics(frames["test"], task, thresholds.get(task.name)))
        mlflow.log_metrics({f"test_{k}": v for k, v in values.items() if np.isfinite(v)})
        mlflow.log_metrics({"best_epoch": result.best_epoch, "best_val_score": result.best_score})
        pd.DataFrame(result.history).to_csv(fold_dir / "history.csv", index=False)
        (fold_dir / "fold_metrics.json").write_text(json.dumps({"metrics": values, "best_score": result.best_score}))
        for artifact in FOLD_ARTIFACTS:
            mlflow.log_artifact(str(fold_dir / artifact))
        mlflow.log_artifact(str(result.checkpoint), artifact_path="checkpoint")
        print(f"{plan.variant} fold {fold}: best epoch {result.best_epoch + 1}, val score {result.best_score:.3f}, "
              + ", ".join(f"{k} {v:.3f}" for k, v in values.items()
                          if k.endswith(("_auc", "_balanced_accuracy", "_mae", "_gmean", "mean_auroc"))))  # fmt: skip
    return values


def _is_main_process() -> bool:
    """Rank 0 under torch.distributed (DDP over the GPUs of one node), else True: only it logs and writes files."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


# Logged by every fold run; with the checkpoint, all that aggregation and registration read back from MLflow.
FOLD_ARTIFACTS = ("predictions_test.csv", "predictions_val.csv", "thresholds.json", "history.csv", "fold_metrics.json")


def _fold_runs(params: Params, plan: ExperimentPlan, run_id: str, repo: Path) -> dict[int, str]:
    """The newest finished nested run of every planned fold under ``run_id`` (a retried fold has several)."""
    from mlflow import MlflowClient

    from medmlops.registry import tracking

    client = MlflowClient()
    runs = client.search_runs(
        [tracking.family_experiment_id(params.registry, plan.exp.family, repo)],
        filter_string=(
            f"tags.mlflow.parentRunId = '{run_id}' and tags.experiment = '{plan.name}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
    )
    found: dict[int, str] = {}
    for run in runs:
        fold = run.data.tags.get("fold")
        if fold is not None and int(fold) not in found:
            found[int(fold)] = run.info.run_id
    missing = [f for f in plan.folds if f not in found]
    if missing:
        raise UserError(
            f"experiment {plan.name}: MLflow run {run_id} has no finished run for fold(s) {missing}; train them first"
        )
    return {f: found[f] for f in plan.folds}


def aggregate_experiment(
    plan: ExperimentPlan, params: Params, run_id: str, *, repo: Path = Path(".")
) -> ExperimentResult:
    """Aggregate the folds of MLflow run ``run_id`` from MLflow (not from local files: in a cluster each fold trained on
    its own node), log mean ± SD, bootstrap CIs on one fold and the training curves to it, and close it."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    tasks, folds, run_dir = plan.tasks, plan.folds, plan.run_dir
    fold_runs = _fold_runs(params, plan, run_id, repo)
    per_fold_rows, fold_scores, fold_thresholds = [], {}, {}
    for fold, fold_run in fold_runs.items():
        fold_dir = run_dir / f"fold-{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        for artifact in FOLD_ARTIFACTS:
            download_artifacts(run_id=fold_run, artifact_path=artifact, dst_path=str(fold_dir))
        record = json.loads((fold_dir / "fold_metrics.json").read_text())
        fold_scores[fold] = float(record["best_score"])
        fold_thresholds[fold] = json.loads((fold_dir / "thresholds.json").read_text())
        per_fold_rows += [{"fold": fold, "metric": k, "value": v} for k, v in record["metrics"].items()]
    per_fold = pd.DataFrame(per_fold_rows)
    per_fold.to_csv(run_dir / "metrics_per_fold.csv", index=False)
    wide = per_fold.pivot(index="fold", columns="metric", values="value")
    summary = S.flatten_summary(S.aggregate_folds(wide.to_dict(orient="records")))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    summary_table(summary, tasks).to_csv(run_dir / "summary_table.csv")

    train = params.train_for(plan.name)
    boot_fold = train.bootstrap_fold if train.bootstrap_fold in folds else folds[0]
    boot_frame = pd.read_csv(run_dir / f"fold-{boot_fold}" / "predictions_test.csv", dtype={"sample_id": str})
    boot_thresholds = {k: np.asarray(v) for k, v in fold_thresholds.get(boot_fold, {}).items()}
    boot = bootstrap_table(boot_frame, tasks, train.n_bootstrap, params.seed, boot_thresholds)
    boot.insert(0, "fold", boot_fold)
    boot.to_csv(run_dir / "bootstrap_ci.csv", index=False)
    best_fold = max(fold_scores, key=lambda f: (fold_scores[f] if np.isfinite(fold_scores[f]) else -1, -f))
    checkpoint_dir = run_dir / f"fold-{best_fold}"
    checkpoint = Path(
        download_artifacts(
            run_id=fold_runs[best_fold], artifact_path="checkpoint/best.pt", dst_path=str(checkpoint_dir)
        )
    )
    (run_dir / "result.json").write_text(
        json.dumps({"run_id": run_id, "best_fold": best_fold, "folds": folds, "fold_runs": fold_runs}, indent=2)
    )

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({k: v for k, v in summary.items() if np.isfinite(v)})
        for name in ("metrics_per_fold.csv", "summary.json", "summary_table.csv", "bootstrap_ci.csv", "result.json"):
            mlflow.log_artifact(str(run_dir / name))
        histories = {f: pd.read_csv(p) for f in folds if (p := run_dir / f"fold-{f}" / "history.csv").is_file()}
        curves = training_curves(histories, run_dir / "training_curves.png")
        if curves is not None:
            mlflow.log_artifact(str(curves))
        mlflow.set_tag("best_fold", best_fold)
    return ExperimentResult(plan.name, run_id, run_dir, summary, per_fold, best_fold, checkpoint, folds)


def load_experiment_result(plan: ExperimentPlan, run_id: str) -> ExperimentResult:
    """The result ``aggregate_experiment`` wrote for run ``run_id`` (read back by a later step, e.g. registration);
    the best fold's checkpoint is fetched from MLflow again if this node lacks it."""
    from mlflow.artifacts import download_artifacts

    run_dir = plan.run_dir
    record_path = run_dir / "result.json"
    if not record_path.is_file():
        raise UserError(f"{record_path}: not found; aggregate experiment {plan.name} first")
    record = json.loads(record_path.read_text())
    if record["run_id"] != run_id:
        raise UserError(
            f"{record_path} belongs to MLflow run {record['run_id']}, not {run_id}; aggregate this run first"
        )
    best_fold = int(record["best_fold"])
    fold_run = record["fold_runs"][str(best_fold)]
    checkpoint = Path(
        download_artifacts(
            run_id=fold_run, artifact_path="checkpoint/best.pt", dst_path=str(run_dir / f"fold-{best_fold}")
        )
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    per_fold = pd.read_csv(run_dir / "metrics_per_fold.csv")
    return ExperimentResult(plan.name, run_id, run_dir, summary, per_fold, best_fold, checkpoint, list(record["folds"]))


def train_prerequisites(
    name: str,
    params: Params,
    fold: int,
    run_id: str,
    *,
    repo: Path = Path("."),
    progress: bool = True,
    plan: Callable[[str, Params], ExperimentPlan] | None = None,
) -> list[str]:
    """Train fold ``fold`` of every ``init_from`` experiment of ``name`` that has no checkpoint for it yet, as a run
    nested under ``run_id`` tagged ``prerequisite`` (never registered); return the experiments trained.

    What `medmlops train` (through `run_experiment`) and the pipelines' train-fold step both do, so covid-ft and
    covid-mdmt train on a fresh project without their STL runs first. ``plan`` plans the prerequisite (default
    `plan_experiment`; the pipeline step passes its rank-ordered one).
    """
    trained = []
    for source in params.experiment(name).init_from:
        if (run_dir_for(params, source, repo) / f"fold-{fold}" / "best.pt").is_file():
            continue
        if _is_main_process():
            print(f"{name}: fold {fold} starts from {source}, not trained yet: training it first (not registered)",
                  flush=True)  # fmt: skip
        source_plan = plan(source, params) if plan else plan_experiment(source, params, repo=repo, progress=False)
        train_experiment_fold(source_plan, params, fold, run_id, repo=repo, progress=progress,
                              tags={"prerequisite": source})  # fmt: skip
        trained.append(source)
    return trained


def run_experiment(
    name: str,
    params: Params,
    *,
    repo: Path = Path("."),
    progress: bool = True,
    resume: bool = True,
    parent_run_id: str | None = None,
) -> ExperimentResult:
    """Train and evaluate ``name`` over the configured folds; returns the aggregated result and the MLflow run.

    The same phases the Kubeflow pipelines run as separate steps (`plan_experiment`, `start_experiment_run`,
    `train_experiment_fold` per fold, `aggregate_experiment`), here in one process.
    """
    from mlflow import MlflowClient

    plan = plan_experiment(name, params, repo=repo, progress=progress)
    run_id = start_experiment_run(plan, params, repo=repo, parent_run_id=parent_run_id)
    try:
        for fold in plan.folds:
            train_prerequisites(name, params, fold, run_id, repo=repo, progress=progress)
            train_experiment_fold(plan, params, fold, run_id, repo=repo, progress=progress, resume=resume)
        return aggregate_experiment(plan, params, run_id, repo=repo)
    except BaseException:
        MlflowClient().set_terminated(run_id, status="FAILED")
        raise


def _flat_params(params: Params, name: str) -> dict[str, str]:
    """The MLflow params of experiment ``name``'s run: its config and the training settings it trains with (the
    layers resolved; the family layer itself is in the run's params.yaml artifact)."""
    exp = params.experiment(name)
    flat = {f"experiment.{k}": json.dumps(v) if isinstance(v, dict) else v for k, v in asdict(exp).items()}
    flat["experiment.loss_reduction"] = exp.loss_reduction
    flat.update({f"train.{k}": v for k, v in asdict(params.train_for(name)).items() if k != "families"})
    flat.update({f"preprocess.{k}": v for k, v in asdict(getattr(params.preprocess, exp.dataset)).items()})
    flat["profile"] = params.profile
    flat["seed"] = params.seed
    return {k: str(v)[:500] for k, v in flat.items()}
