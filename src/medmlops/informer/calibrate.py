"""Fit INFORMER's per-class thresholds for a registered model version and store them with the version.

The calibration uses the validation split of the fold whose weights were registered (the split the model never
trained on and the prediction thresholds were chosen on), or, for a CheXpert model trained on the paper cohort
(``data.chexpert.cohort: paper``), CheXpert's official valid.csv as in Shu et al. (:func:`informer_splits`). The
images are read one batch at a time, so memory does not grow with the split. It stores, with the model version:

* ``informer/calibration.json``: per saliency method and per class the threshold τ_c and flag direction; the
  baselines' (MSR, entropy, energy, TTA) thresholds from the same grid search; the logit tier (the logit score
  monitoring flags by at ingest, see :mod:`medmlops.informer.logit_tier`); the embedding PCA; validation F1
  before and after flag-and-swap;
* ``informer/reference.csv``: the per-image features of the calibration and test split (the drift reports'
  reference; see :func:`reference_features`);
* ``contract.json`` rewritten with its ``informer`` field filled (method, direction, τ, baselines' τ, the logit
  tier), so everything that reads the contract sees the calibration.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmlops.config import Params
from medmlops.errors import UserError
from medmlops.informer import csf, logit_tier, scores
from medmlops.informer.outputs import batched_outputs, feature_frame
from medmlops.informer.probability import performance_section
from medmlops.interpret.saliency import METHODS, LogitsModel
from medmlops.registry.contract import ModelContract
from medmlops.registry.trained_params import version_params as trained_version_params

log = logging.getLogger(__name__)

CALIBRATION_FILE = "informer/calibration.json"
REFERENCE_FILE = "informer/reference.csv"
SCHEMA = 1
N_PCS = 5  # principal components of the embedding the drift reports compare (emb.pc1..5)


class CalibrationError(UserError, ValueError):
    """The calibration cannot be computed or read; the message says why."""


# ---------------------------------------------------------------------------------------------------------------
# Data of a registered version: its fold's validation / test split, preprocessed exactly as in training
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class SplitImages:
    """One split's images, read from the preprocessing cache one batch at a time (never stacked whole: a CheXpert
    split at 320 px is tens of GB), with its labels by task and its sample ids.

    ``source`` says which images these are (``fold 3 val split``, ``valid.csv``); ``note`` why they are not the
    ones the cohort asks for (empty when they are); ``selection`` the images left after each of the paper cohort's
    exclusions, per CheXpert csv (:func:`medmlops.data.readers.chexpert_selection`; empty for other cohorts)."""

    dataset: Any  # indexable: dataset[k]["image"] is image k, preprocessed as in training
    labels: dict[str, np.ndarray]
    ids: list[str]
    source: str
    note: str = ""
    selection: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The images, ``batch_size`` at a time, as float32 tensors: only the batch being yielded is held."""
        for start in range(0, len(self.ids), batch_size):
            stop = min(start + batch_size, len(self.ids))
            yield torch.stack(
                [torch.as_tensor(self.dataset[k]["image"], dtype=torch.float32) for k in range(start, stop)]
            )

    def stack(self) -> torch.Tensor:
        """Every image in one tensor: for small splits only (tests); calibration and evaluation stream."""
        return torch.cat(list(self.batches(64)))

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "n": len(self), "note": self.note, "selection": self.selection}


def _version_plan(params: Params, family: str, version: str, repo: Path, progress: bool):
    """(contract, experiment plan, fold) of the fold whose weights ``version`` carries (its run's best_fold tag)."""
    from mlflow import MlflowClient

    from medmlops.registry.tracking import load_contract
    from medmlops.training.experiment import plan_experiment

    contract = load_contract(family, version)
    client = MlflowClient()
    mv = client.get_model_version(family, str(version))
    run = client.get_run(mv.run_id)
    if "best_fold" not in run.data.tags:
        raise CalibrationError(f"{family} version {version}: its run {mv.run_id} has no best_fold tag")
    fold = int(run.data.tags["best_fold"])
    return contract, plan_experiment(contract.experiment, params, repo=repo, progress=progress), fold


def _split_images(
    params: Params, contract: ModelContract, plan, items: list[dict], source: str, *, family: str, version: str,
    repo: Path,
) -> SplitImages:  # fmt: skip
    from medmlops.data import preprocess as prep
    from medmlops.training.experiment import experiment_sources

    dataset = prep.make_dataset(params, experiment_sources(plan.exp)[0], items, augment=False, repo=repo)
    shape = tuple(np.shape(dataset[0]["image"]))  # one image read to check the shape
    if shape != tuple(contract.input.shape):
        raise CalibrationError(
            f"{family} version {version} takes images of shape {list(contract.input.shape)} but the "
            f"'{params.profile}' profile preprocesses to {list(shape)}: use the profile it was trained with"
        )
    labels = {}
    for task in plan.tasks.values():
        if task.kind == "multilabel":
            labels[task.name] = np.stack([np.asarray(item[task.name], dtype=np.float64) for item in items])
        else:
            labels[task.name] = np.asarray([item[task.column] for item in items], dtype=np.float64)
    return SplitImages(dataset, labels, [str(item["sample_id"]) for item in items], source)


def _fold_split(params, contract, plan, fold: int, split: str, *, family: str, version: str, repo: Path):
    part = plan.splits[(plan.splits["fold"] == fold) & (plan.splits["split"] == split)]
    ids = [i for i in part["sample_id"].tolist() if i in plan.items]
    if not ids:
        raise CalibrationError(f"{family} version {version}: fold {fold} has no {split} images in this project")
    return _split_images(params, contract, plan, [plan.items[i] for i in ids], f"fold {fold} {split} split",
                         family=family, version=version, repo=repo)  # fmt: skip


def informer_splits(
    params: Params, family: str, version: str, *, repo: Path = Path("."), progress: bool = False
) -> tuple[SplitImages, SplitImages]:
    """(calibration split, test split) of version ``version`` of ``family``. ``params`` must be the version's
    (:func:`medmlops.registry.trained_params.version_params`, which the callers resolve once): its seed, data,
    preprocessing and folds made those splits, whatever the current params say.

    * By default, the validation and test split of the fold whose weights the version carries (the split the model
      never trained on and its prediction thresholds were chosen on, and the fold's held-out test split).
    * A CheXpert model trained on the paper cohort (``data.chexpert.cohort: paper``, Shu et al.): τ on CheXpert's
      official ``valid.csv``, the test set its official ``test.csv`` when the user put one beside train.csv, else
      the fold's test split (``note`` says so). The paper cohort's training split is train.csv alone (its val split
      is valid.csv, its test split test.csv: ``training.splits.official_splits``); checked here all the same.
    """
    contract, plan, fold = _version_plan(params, family, version, repo, progress)
    where = {"family": family, "version": version, "repo": repo}
    if plan.exp.dataset != "chexpert" or params.data.chexpert.cohort != "paper":
        return _fold_split(params, contract, plan, fold, "val", **where), _fold_split(
            params, contract, plan, fold, "test", **where
        )
    from medmlops.data import preprocess as prep
    from medmlops.data.readers import CHEXPERT_SPLITS, chexpert_base, read_chexpert

    root = repo / params.data.raw_dir / "chexpert"
    csv_dir = chexpert_base(root)[0]
    cfg = params.data.chexpert
    manifest = read_chexpert(root, policy=cfg.uncertainty_policy, cohort="paper", splits=CHEXPERT_SPLITS)
    selection = {split: [list(step) for step in steps] for split, steps in manifest.attrs["selection"].items()}
    # The paper cohort's val split is valid.csv by design (the Youden thresholds are chosen there, as in the paper, and
    # τ is tuned there too); no valid.csv or test.csv image may be in the training split.
    trained = plan.splits[(plan.splits["fold"] == fold) & (plan.splits["split"] == "train")]
    trained = set(trained["sample_id"].astype(str))

    def official(split: str) -> SplitImages | None:
        if split not in selection:
            return None
        rows = prep._standardise(manifest[manifest["split"] == split].reset_index(drop=True), "chexpert")
        if not len(rows):
            raise CalibrationError(f"{csv_dir / split}.csv: no image is left after the paper cohort's exclusions "
                                   "(frontal, no uncertain label, one of the five findings positive)")  # fmt: skip
        prep.check_manifest(rows, "chexpert", root)
        seen = sorted(trained & set(rows["sample_id"].astype(str)))
        if seen:
            raise CalibrationError(f"{family} version {version}: {len(seen)} images of {split}.csv were in fold "
                                   f"{fold}'s training data (e.g. {seen[0]}); retrain with data.chexpert.cohort paper")  # fmt: skip
        items = prep.items_from_manifest(rows, "chexpert")
        images = _split_images(params, contract, plan, items, f"{split}.csv", **where)
        images.selection = selection
        return images

    calibration = official("valid")
    if calibration is None:
        raise CalibrationError(f"{csv_dir / 'valid.csv'}: not found; the paper cohort (data.chexpert.cohort: paper) "
                               "tunes tau on CheXpert's valid.csv: put it beside train.csv or set the cohort to all")  # fmt: skip
    test = official("test")
    if test is None:
        test = _fold_split(params, contract, plan, fold, "test", **where)
        test.selection = selection
        test.note = (f"{csv_dir / 'test.csv'} (CheXpert's official test labels) not found: tested on fold {fold}'s "
                     "test split (train.csv patients the model never trained on) instead")  # fmt: skip
        log.warning("%s v%s: %s", family, version, test.note)
    return calibration, test


def version_split(
    params: Params, family: str, version: str, split: str, *, repo: Path = Path("."), progress: bool = False
) -> tuple[torch.Tensor, dict[str, np.ndarray], list[str]]:
    """The images ``(N, *shape)`` stacked in memory, labels by task and sample ids of ``split`` (val | test) of the
    fold whose weights version ``version`` of ``family`` carries: for small splits (tests, the OOD check).
    Calibration and evaluation stream their splits (:func:`informer_splits`)."""
    contract, plan, fold = _version_plan(params, family, version, repo, progress)
    images = _fold_split(params, contract, plan, fold, split, family=family, version=version, repo=repo)
    return images.stack(), images.labels, images.ids


# ---------------------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------------------


def baseline_scores(outputs: dict[str, Any], contract: ModelContract | None = None) -> dict[str, np.ndarray]:
    """The baselines' per-class uncertainty scores: MSR, predictive entropy, with the ``contract`` the free energy
    (it needs the heads' layout; computed as the logit tier computes it at ingest) and (when computed) TTA's std."""
    out = {"msr": outputs["msr"], "entropy": outputs["entropy"]}
    if contract is not None:
        out["energy"] = scores.logit_energy(contract, outputs["logits"])
    if "tta" in outputs:
        out["tta"] = outputs["tta"]
    return out


def fit_scores(
    score: np.ndarray,
    targets: np.ndarray,
    predictions: np.ndarray,
    classes: list[str],
    direction: str,
    step: float,
    min_per_class: int = 0,
) -> dict[str, Any]:
    """Per class the grid-searched τ (None = never flag) with validation F1 before and after flag-and-swap;
    ``too_few`` lists the classes left unfitted for having fewer than ``min_per_class`` positives or negatives."""
    fits = {c: scores.fit_flag_threshold(score[:, j], targets[:, j], predictions[:, j], direction, step, min_per_class)
            for j, c in enumerate(classes)}  # fmt: skip
    return {
        "direction": direction,
        "tau": {c: f.tau for c, f in fits.items()},
        "f1_before": {c: f.f1_before for c, f in fits.items()},
        "f1_after": {c: f.f1_after for c, f in fits.items()},
        "n_flagged": {c: f.n_flagged for c, f in fits.items()},
        "too_few": [c for c, f in fits.items() if f.too_few],
    }


def fit_calibration(
    outputs: dict[str, Any],
    targets: np.ndarray,
    contract: ModelContract,
    *,
    methods: tuple[str, ...],
    direction: str = "low",
    step: float = 0.001,
    n_pcs: int = N_PCS,
    min_per_class: int = 0,
    csf_names: tuple[str, ...] | None = None,
    pinned: str | None = None,
    review_budget: float | None = 0.1,
    target_risk: float | None = None,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """The calibration dict from validation outputs (:func:`~medmlops.informer.outputs.batched_outputs`) and
    per-logit targets.

    * ``methods`` / ``baselines``: the paper's protocol, per class the flag-and-swap τ of INFORMER's ``d_c`` and of
      each baseline; classes with fewer than ``min_per_class`` validation positives or negatives get no τ (see
      scores.fit_flag_threshold).
    * ``csf``: the confidence scoring functions ``csf_names`` (:mod:`medmlops.informer.csf`; default every one the
      outputs allow) ranked by AUGRC on this split, the selected one (or ``pinned``), the fitted CSFs' states
      refitted on the whole split, and the selected CSF's operating point (``review_budget`` or ``target_risk``).
    * ``logit_tier``: the best logit-only CSF (the selected one when it is logit-only) with its own operating
      point, in the tier's raw-score convention (:mod:`medmlops.informer.logit_tier`).
    """
    classes = contract.output_names()
    predictions = outputs["predictions"]
    fitted = {
        m: fit_scores(outputs["d"][m], targets, predictions, classes, direction, step, min_per_class) for m in methods
    }
    candidates = baseline_scores(outputs, contract)
    baselines = {
        name: fit_scores(score, targets, predictions, classes, scores.SCORE_DIRECTIONS[name], step, min_per_class)
        for name, score in candidates.items()
    }
    names = csf_names or tuple(csf.default_names(methods, "tta" in outputs))
    names = tuple(dict.fromkeys([*names, *(f"informer_{m}" for m in methods)]))
    fixed = {f"informer_{m}": {"direction": direction} for m in methods}
    ranking, confidences = csf.rank(
        outputs, contract, targets, predictions, names, method=methods[0], min_per_class=min_per_class, folds=folds,
        seed=seed, pinned=pinned, fixed=fixed,
    )  # fmt: skip
    point = {"review_budget": review_budget, "target_risk": target_risk, "min_per_class": min_per_class}
    states = {name: state for name, state in fixed.items() if name in ranking.augrc}
    for name in ranking.augrc:
        model = csf.get(name, methods[0])
        if model.fitted:
            states[name] = model.fit(outputs, contract, targets, predictions)
    deployed = csf.get(ranking.selected, methods[0])
    # The deployed τ come from the deployed (refitted) state's own calibration-split confidences; for a fitted CSF
    # these are in-sample, so its coverage on new data is checked in `informer evaluate` (selective_point).
    confidence = deployed.confidence(outputs, contract, states.get(ranking.selected))
    section = {
        "method": methods[0], "candidates": list(ranking.augrc), "augrc": ranking.augrc, "se": ranking.se,
        "unavailable": ranking.unavailable, "selected": ranking.selected, "reason": ranking.reason,
        "pinned": pinned is not None, "states": states, "needs": deployed.needs,
        "operating_point": csf.operating_point(confidence, targets, predictions, **point),
    }  # fmt: skip
    tier_name = csf.choose(ranking, allowed=logit_tier.LOGIT_SCORES)
    tier_point = csf.operating_point(confidences[tier_name], targets, predictions, **point)
    tier = logit_tier.tier_section(tier_name, tier_point, {n: ranking.augrc.get(n) for n in logit_tier.LOGIT_SCORES})
    emb = outputs["embedding"]
    mean = emb.mean(axis=0)
    k = int(min(n_pcs, emb.shape[0] - 1, emb.shape[1]))
    components = np.linalg.svd(emb - mean, full_matrices=False)[2][:k] if k > 0 else np.zeros((0, emb.shape[1]))
    return {
        "schema": SCHEMA, "family": contract.family, "method": methods[0], "direction": direction, "step": step,
        "classes": classes, "methods": fitted, "baselines": baselines, "csf": section, logit_tier.SECTION: tier,
        "pca": {"mean": mean.tolist(), "components": components.tolist()},
        "n_validation": int(len(targets)), "min_per_class": int(min_per_class),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip


def contract_summary(calibration: dict[str, Any]) -> dict[str, Any]:
    """What the model contract carries: the primary method's τ and direction, the baselines' τ, the logit tier,
    the deployed CSF (its ranking and operating point, without fitted states) and the performance-estimation
    section (each as the calibration stores it; absent from calibrations made before they existed)."""
    method = calibration["method"]
    tier = {logit_tier.SECTION: calibration[logit_tier.SECTION]} if logit_tier.SECTION in calibration else {}
    # The deployed CSF without its fitted states (those stay in the calibration artifact the analyser loads).
    deployed = {"csf": {k: v for k, v in calibration["csf"].items() if k != "states"}} if "csf" in calibration else {}
    performance = {"performance": calibration["performance"]} if "performance" in calibration else {}
    return {
        "method": method, "direction": calibration["direction"], "tau": calibration["methods"][method]["tau"],
        "methods": {m: {"direction": f["direction"], "tau": f["tau"]} for m, f in calibration["methods"].items()},
        "baselines": {b: {"direction": f["direction"], "tau": f["tau"]} for b, f in calibration["baselines"].items()},
        "n_validation": calibration["n_validation"], "created_at": calibration["created_at"],
        "artifact": CALIBRATION_FILE, **tier, **deployed, **performance,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Registry I/O
# ---------------------------------------------------------------------------------------------------------------


def store_calibration(family: str, version: str, calibration: dict[str, Any], reference: pd.DataFrame) -> None:
    """Log the calibration and reference features with the model version and fill the contract's ``informer``."""
    from mlflow import MlflowClient

    from medmlops.registry.tracking import CONTRACT_FILE, load_contract

    client = MlflowClient()
    mv = client.get_model_version(family, str(version))
    # The SQLite registry leaves ``model_id`` empty; the source is the logged model's ``models:/m-...`` URI.
    model_id = getattr(mv, "model_id", None) or (
        mv.source.removeprefix("models:/") if str(mv.source).startswith("models:/m-") else None
    )
    if not model_id:
        raise CalibrationError(f"{family} version {version} has no logged model to store the calibration with")
    contract = replace(load_contract(family, version), informer=contract_summary(calibration)).validate()
    with tempfile.TemporaryDirectory(prefix="medmlops-informer-") as tmp:
        folder = Path(tmp) / "informer"
        folder.mkdir()
        (folder / "calibration.json").write_text(json.dumps(calibration, indent=1, allow_nan=False))
        reference.to_csv(folder / "reference.csv", index=False)
        client.log_model_artifacts(model_id, str(folder), artifact_path="informer")
        path = Path(tmp) / CONTRACT_FILE
        path.write_text(contract.to_json(), encoding="utf-8")
        client.log_model_artifact(model_id, str(path))
    client.set_model_version_tag(family, str(version), "informer_method", calibration["method"])
    client.set_model_version_tag(family, str(version), "informer_calibrated_at", calibration["created_at"])


def _download(family: str, version: str, name: str) -> Path | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    tmp = tempfile.mkdtemp(prefix="medmlops-informer-")
    try:
        return Path(
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{family}/{version}/{name}", dst_path=tmp)
        )
    except (MlflowException, OSError):
        return None


def load_calibration(family: str, version: str, contract: ModelContract | None = None) -> dict[str, Any] | None:
    """The stored calibration of a version, or None when it was never calibrated."""
    if contract is not None and not contract.informer:
        return None  # calibrating fills the contract's informer field: no field, no calibration
    path = _download(family, str(version), CALIBRATION_FILE)
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{family} version {version}: {CALIBRATION_FILE} is not valid JSON ({exc})") from exc
    if data.get("schema") != SCHEMA:
        raise CalibrationError(f"{family} version {version}: calibration schema {data.get('schema')!r} is unknown")
    return data


def load_reference(family: str, version: str) -> pd.DataFrame:
    """The reference (validation) features of a calibrated version: the drift reports' baseline."""
    path = _download(family, str(version), REFERENCE_FILE)
    if path is None or not path.is_file():
        raise CalibrationError(
            f"{family} version {version} has no reference features: run `medmlops informer calibrate {family} "
            f"--version {version}` first"
        )
    return pd.read_csv(path)


def reference_features(
    model: LogitsModel,
    contract: ModelContract,
    calibration: dict[str, Any],
    val_outputs: dict[str, Any],
    val_targets: np.ndarray,
    test: SplitImages,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """The drift reports' reference: per-image features of the calibration split and the ``test`` split (the
    held-out images of the registered fold, or the paper cohort's valid.csv and test set; the thresholds are fitted
    on the calibration split only). A fold's validation split alone is 10 % of the training fold, too few rows for
    Evidently's tests; the test split is the same unseen, i.i.d. distribution. ``split`` is ``val`` or ``test``."""
    method = calibration["method"]
    frames = []
    test_outputs = batched_outputs(model, contract, test, methods=(method,), tta_samples=0, progress=progress,
                                   desc=f"reference {contract.family} {test.source}")  # fmt: skip
    for outputs, targets, split in ((val_outputs, val_targets, "val"),
                                    (test_outputs, scores.logit_targets(contract, test.labels), "test")):  # fmt: skip
        frame = feature_frame(outputs, contract.output_names(), calibration, method)
        for j, cls in enumerate(contract.output_names()):
            frame[f"label:{cls}"] = targets[:, j]
        frame["split"] = split
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------


def informer_model(family: str, alias: str) -> tuple[str, ModelContract, LogitsModel]:
    """``family@alias`` (or a version number) as (version, contract, eval-mode logits model); a model with one
    output logit is refused: INFORMER compares the maps of at least two classes."""
    from medmlops.registry.tracking import load_model, resolve_version

    version = str(resolve_version(family, alias).version)
    model, contract, _ = load_model(family, version)
    if len(contract.output_names()) < 2:
        raise CalibrationError(f"{family} has one output logit; INFORMER compares the maps of at least two classes")
    return version, contract, LogitsModel(model, contract.task_names()).eval()


def calibrate_version(
    params: Params,
    family: str,
    alias: str = "candidate",
    *,
    methods: tuple[str, ...] = ("ixg", "lrp"),
    direction: str = "low",
    tta_samples: int = 8,
    step: float = 0.001,
    repo: Path = Path("."),
    progress: bool = True,
    store: bool = True,
) -> dict[str, Any]:
    """Calibrate ``family@alias`` (or a version number) on its validation split and store the result with it."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise CalibrationError(f"unknown saliency method '{unknown[0]}' (expected one of: {', '.join(METHODS)})")
    if direction not in scores.DIRECTIONS:
        raise CalibrationError(f"direction must be low or high, got '{direction}'")
    version, contract, logits_model = informer_model(family, alias)
    # The model's splits, data and preprocessing are the version's; informer.* and registry.* the current params'.
    trained = trained_version_params(params, family, version)
    params = trained.params
    split, test = informer_splits(params, family, version, repo=repo, progress=progress)
    targets = scores.logit_targets(contract, split.labels)
    outputs = batched_outputs(
        logits_model, contract, split, methods=methods, tta_samples=tta_samples, progress=progress,
        desc=f"calibrate {family} v{version}",
    )  # fmt: skip
    cfg = params.informer
    minimum = cfg.min_per_class
    calibration = fit_calibration(
        outputs, targets, contract, methods=methods, direction=direction, step=step, min_per_class=minimum,
        csf_names=tuple(cfg.csfs), pinned=None if cfg.csf == "auto" else cfg.csf, review_budget=cfg.review_budget,
        target_risk=cfg.target_risk, folds=cfg.cv_folds, seed=params.seed,
    )  # fmt: skip
    calibration.update(version=version, experiment=contract.experiment, tta_samples=tta_samples,
                       validation_ids=split.ids, splits={"calibration": split.describe(), "test": test.describe()},
                       trained_params=trained.describe(), trained_params_summary=trained.summary(family, version))  # fmt: skip
    # Performance estimation without labels (CBPE) in monitoring: calibrated probabilities and the gate floor.
    calibration["performance"] = performance_section(
        params.registry.gates, contract, outputs["logits"], targets, min_per_class=minimum
    )
    reference = reference_features(logits_model, contract, calibration, outputs, targets, test, progress=progress)
    calibration["n_reference"] = int(len(reference))
    if store:
        store_calibration(family, version, calibration, reference)
    method = calibration["method"]
    fit = calibration["methods"][method]
    if fit["too_few"]:
        log.warning(
            "%s v%s: %s never flagged: fewer than %d positives or negatives among its %d validation images "
            "(informer.min_per_class)", family, version, ", ".join(fit["too_few"]), minimum, len(split),
        )  # fmt: skip
    log.info(
        "%s v%s calibrated on %d images of the %s (%s, direction %s): tau %s",
        family, version, len(split), split.source, method, direction, fit["tau"],
    )  # fmt: skip
    return calibration
