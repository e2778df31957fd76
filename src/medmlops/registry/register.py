"""Register a trained experiment as ``FAMILY@candidate`` with its model contract.

The registered weights are the best fold's best checkpoint (highest validation score of the primary task);
the contract carries the cross-validated metrics (mean ± SD over folds), so promotion gates judge the method,
not one lucky fold. Everything the contract needs is checked before anything is written to the registry.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medmlops.config import Params
from medmlops.data import preprocess as prep
from medmlops.training.experiment import ExperimentResult, build_experiment_model, experiment_sources
from medmlops.training.tasks import resolve_tasks

CT_FORMATS = (".nii", ".nii.gz", ".zip")  # .zip: one DICOM series (medmlops.data.dicom_series)
XRAY_FORMATS = (".dcm", ".png", ".jpg", ".jpeg")


def build_contract(result: ExperimentResult, params: Params, repo: Path = Path(".")):
    """The model contract: tasks with their thresholds (0.5 / argmax; Youden per class on validation for
    multilabel, from the registered fold), the input spec, and the preprocessing chain's parameters."""
    from medmlops.registry import InputSpec, ModelContract, TaskSpec, tracking

    exp = params.experiment(result.experiment)
    tasks = resolve_tasks(exp.dataset, list(exp.tasks))
    source = experiment_sources(exp)[0]
    cfg = prep.preprocess_config(params, source)
    fold_thresholds = result.run_dir / f"fold-{result.best_fold}" / "thresholds.json"
    youden = json.loads(fold_thresholds.read_text()) if fold_thresholds.is_file() else {}
    specs = tuple(
        TaskSpec(
            name=t.name,
            kind=t.kind,
            classes=t.classes,
            thresholds=tuple(float(v) for v in youden.get(t.name, [0.5] * t.out_features)),
        )  # fmt: skip
        for t in tasks.values()
    )
    if source == "ich":
        input_spec = InputSpec(
            modality="ct", formats=CT_FORMATS, shape=(1, *cfg.spatial_size), spacing_mm=None,
            intensity_window=tuple(cfg.window), channels=1,
        )  # fmt: skip
        preprocessing = {"chain": "ct", "dataset": source, **asdict(cfg)}
    else:
        input_spec = InputSpec(
            modality="xray", formats=XRAY_FORMATS, shape=(3, cfg.size, cfg.size), spacing_mm=None,
            intensity_window=None, channels=3,
        )  # fmt: skip
        preprocessing = {"chain": "cxr", "dataset": source, "sources": list(experiment_sources(exp)), **asdict(cfg)}
    metrics = {k: float(v) for k, v in result.summary.items() if np.isfinite(v)}
    return ModelContract(
        family=exp.family, tasks=specs, input=input_spec, preprocessing=preprocessing,
        input_gate=input_gate(params, exp.family, input_spec.modality),
        data_version=_run_data_version(result.run_id) or tracking.data_version(repo, tracking.data_record(params)),
        git_commit=tracking.git_commit(repo), metrics=metrics,
        experiment=result.experiment, created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )  # fmt: skip


def input_gate(params: Params, family: str, modality: str):
    """The family's input gate from params (``serving.inputs``), with the validation suite's plausibility limits
    for the modality, as the contract stores it; the out-of-distribution reference is added once computed."""
    from medmlops.registry import InputGate

    gate, limits = params.serving.gate(family), asdict(params.validation)
    prefix = "ct_" if modality == "ct" else "cxr_"
    kept = {k: v for k, v in limits.items() if k.startswith(prefix) or k == "min_image_std"}
    return InputGate(
        modalities=tuple(gate.modalities), body_parts=tuple(gate.body_parts),
        view_positions=tuple(gate.view_positions), photometric=tuple(gate.photometric),
        samples_per_pixel=gate.samples_per_pixel, max_frames=gate.max_frames, raster=gate.raster,
        max_pixels=gate.max_pixels, limits=json.loads(json.dumps(kept)),
    )  # fmt: skip


def fold_images(result: ExperimentResult, params: Params, split: str, repo: Path = Path("."), limit: int | None = None):
    """The preprocessed images ``(N, *shape)`` of ``split`` (train | val | test) of the registered fold
    (``result.best_fold`` in the run's ``splits.csv``), every source of the experiment, as in training (no
    augmentation); at most ``limit`` (a seeded sample). Empty when the run folder has no splits file."""
    from medmlops.inference.ood import sample_ids
    from medmlops.training.splits import load_splits

    exp = params.experiment(result.experiment)
    path = result.run_dir / "splits.csv"
    if not path.is_file():
        return torch.zeros((0,))
    splits = load_splits(path)
    wanted = set(splits.loc[(splits["fold"] == result.best_fold) & (splits["split"] == split), "sample_id"])
    images = []
    for source in experiment_sources(exp):
        items = [i for i in prep.items_from_manifest(prep.load_manifest(params, source, repo), source)
                 if i["sample_id"] in wanted]  # fmt: skip
        chosen = set(sample_ids([i["sample_id"] for i in items], limit or len(items) or 1, seed=params.seed))
        items = [i for i in items if i["sample_id"] in chosen]
        dataset = prep.make_dataset(params, source, items, augment=False, repo=repo)
        images += [torch.as_tensor(dataset[k]["image"], dtype=torch.float32) for k in range(len(dataset))]
    return torch.stack(images) if images else torch.zeros((0,))


def with_ood_reference(contract, model: torch.nn.Module, result: ExperimentResult, params: Params, repo: Path):
    """``contract`` with the out-of-distribution reference (:mod:`medmlops.inference.ood`) in its input gate:
    fitted on the registered fold's training images (at most ``ood.MAX_REFERENCE_IMAGES``), thresholded on its
    validation images. Unchanged (with a warning) when the fold has too few images to fit one."""
    import dataclasses

    from medmlops.inference import ood

    if contract.input_gate is None:
        return contract
    gate = params.serving.gate(contract.family)
    limit = ood.MAX_REFERENCE_IMAGES
    train = fold_images(result, params, "train", repo, limit)
    val = fold_images(result, params, "val", repo, limit)
    try:
        reference = ood.fit_reference(
            ood.embeddings(model, train) if len(train) else np.zeros((0, 0)),
            ood.embeddings(model, val) if len(val) else np.zeros((0, 0)),
            action=gate.ood, percentile=gate.ood_percentile,
        )  # fmt: skip
    except ood.OodError as exc:
        print(f"warning: {contract.family}: no out-of-distribution reference ({exc})", file=sys.stderr, flush=True)
        return contract
    n = reference["n_validation"]
    if n < 100 / (100 - min(reference["percentile"], 99.99)):
        # The threshold is then the largest validation score: a new in-distribution image is under it with
        # probability about n / (n + 1), well below the percentile asked for.
        print(
            f"warning: {contract.family}: the out-of-distribution threshold comes from {n} validation images, too "
            f"few for a {reference['percentile']:g}th percentile; about {n / (n + 1):.0%} of in-distribution images "
            "will be in distribution", file=sys.stderr, flush=True,
        )  # fmt: skip
    return dataclasses.replace(contract, input_gate=dataclasses.replace(contract.input_gate, ood=reference))


def _run_data_version(run_id: str) -> str | None:
    """The data version the experiment run recorded (a pipeline run records the DVC version it checked)."""
    from mlflow import MlflowClient

    return MlflowClient().get_run(run_id).data.tags.get("data_version") or None


def register_experiment(
    result: ExperimentResult, params: Params, repo: Path = Path("."), alias: str = "candidate"
) -> str:
    from medmlops.registry import register_model

    exp = params.experiment(result.experiment)
    tasks = resolve_tasks(exp.dataset, list(exp.tasks))
    contract = build_contract(result, params, repo)
    contract.validate()
    model = build_experiment_model(exp, tasks)
    model.load_state_dict(torch.load(result.checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    contract = with_ood_reference(contract, model, result, params, repo)
    source = experiment_sources(exp)[0]
    manifest = prep.load_manifest(params, source, repo)
    example_ds = prep.make_dataset(
        params, source, prep.items_from_manifest(manifest.head(1), source), augment=False, repo=repo
    )
    example = example_ds[0]["image"].unsqueeze(0).numpy().astype(np.float32)
    extra = {p.name: p for p in (result.run_dir / "summary_table.csv", result.run_dir / "splits.csv") if p.is_file()}
    gates = params.registry.gates.get(exp.family)
    version = register_model(
        model,
        contract,
        run_id=result.run_id,
        input_example=example,
        family=exp.family,
        alias=alias,
        extra_artifacts=extra,
        primary_metric=gates.primary_metric if gates else None,
    )
    number = str(getattr(version, "version", version))
    # Registering a model trained on data that does not match its DVC record is allowed (people experiment on
    # modified data on purpose; refusing would block them), but never silent: the version carries
    # data_version_verified=false, this line says so, and promotion to champion refuses it (registry.promotion).
    tags = dict(getattr(version, "tags", None) or {})
    if tags.get("data_version_verified") == "false":
        print(
            f"warning: {exp.family} version {number} was trained on data {tags.get('data_version')} that is not the "
            f"version {tags.get('data_record', 'the DVC record')} records ({tags.get('data_version_recorded')}): "
            "tagged data_version_verified=false; it stays a candidate, promotion to champion refuses it",
            file=sys.stderr,
            flush=True,
        )
    return number
