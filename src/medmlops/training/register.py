"""Register a trained experiment as ``FAMILY@candidate`` with its model contract.

The registered weights are the best fold's best checkpoint (highest validation score of the primary task);
the contract carries the cross-validated metrics (mean ± SD over folds), so promotion gates judge the method,
not one lucky fold. Everything the contract needs is checked before anything is written to the registry.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medmlops.config import Params
from medmlops.data import preprocess as prep
from medmlops.models import build_model
from medmlops.training.experiment import ExperimentResult
from medmlops.training.tasks import resolve_tasks

CT_FORMATS = (".nii", ".nii.gz")


def build_contract(result: ExperimentResult, params: Params, repo: Path = Path(".")):
    from medmlops.registry import InputSpec, ModelContract, TaskSpec, tracking

    exp = params.experiment(result.experiment)
    tasks = resolve_tasks(exp.dataset, list(exp.tasks))
    cfg = getattr(params.preprocess, exp.dataset)
    specs = tuple(
        TaskSpec(name=t.name, kind=t.kind, classes=t.classes, thresholds=tuple([0.5] * t.out_features)) for t in tasks.values()
    )
    input_spec = InputSpec(
        modality="ct", formats=CT_FORMATS, shape=(1, *cfg.spatial_size), spacing_mm=None,
        intensity_window=tuple(cfg.window), channels=1,
    )  # fmt: skip
    preprocessing = {"dataset": exp.dataset, **asdict(cfg)}
    metrics = {k: float(v) for k, v in result.summary.items() if np.isfinite(v)}
    return ModelContract(
        family=exp.family, tasks=specs, input=input_spec, preprocessing=preprocessing,
        data_version=tracking.data_version(repo), git_commit=tracking.git_commit(repo), metrics=metrics,
        experiment=result.experiment, created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )  # fmt: skip


def register_experiment(result: ExperimentResult, params: Params, repo: Path = Path("."), alias: str = "candidate") -> str:
    from medmlops.registry import register_model

    exp = params.experiment(result.experiment)
    tasks = resolve_tasks(exp.dataset, list(exp.tasks))
    contract = build_contract(result, params, repo)
    contract.validate()
    model = build_model(exp.model, tasks={t: d.out_features for t, d in tasks.items()})
    model.load_state_dict(torch.load(result.checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    manifest = prep.load_manifest(params, exp.dataset, repo)
    example_ds = prep.make_dataset(params, exp.dataset, prep.items_from_manifest(manifest.head(1), exp.dataset), augment=False, repo=repo)
    example = example_ds[0]["image"].unsqueeze(0).numpy().astype(np.float32)
    extra = {p.name: p for p in (result.run_dir / "summary_table.csv", result.run_dir / "splits.csv") if p.is_file()}
    version = register_model(
        model, contract, run_id=result.run_id, input_example=example, family=exp.family, alias=alias, extra_artifacts=extra
    )
    return str(getattr(version, "version", version))
