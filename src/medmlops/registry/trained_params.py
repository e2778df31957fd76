"""The resolved params a registered version was trained with, for the commands that act on that version.

A training run logs its resolved params (``params.yaml``, every profile and ``--set`` applied) as an artifact; a
version registered from the run carries them. ``informer calibrate|evaluate`` rebuild the version's splits and
preprocessing, so they must use the params that defined the model and its data, not whatever ``params.yaml`` and
``--set`` say today: otherwise ``medmlops informer calibrate cxr-findings`` after ``medmlops train cxr-findings --set
train.n_folds=3`` would rebuild other splits. :func:`version_params` takes from the version every section that
defines the model and its data (:data:`TRAINED`) and keeps the command's own knobs (``informer``, ``registry``,
``demo``, ...) and where things are on this machine (:data:`MACHINE_KEYS`) from the current params.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medmlops.config import ConfigError, Params, params_from_dict

log = logging.getLogger(__name__)

PARAMS_ARTIFACT = "params.yaml"
# What defines a model and its data: the splits (seed, train.n_folds/val_fraction/validation), the data and its
# preprocessing, the training recipe and the experiment (tasks, model). Taken from the version.
TRAINED = ("seed", "profile", "data", "preprocess", "train", "experiments")
# Inside those sections, where things are and how fast this machine runs them: kept from the current params.
MACHINE_KEYS = ("preprocess.out_dir", "train.runs_dir", "train.device", "train.num_workers", "train.amp")


@dataclass(frozen=True)
class VersionParams:
    """``params`` for acting on one registered version.

    Attributes:
        params: the current params with the version's :data:`TRAINED` sections.
        source: where the version's params came from (its run's ``params.yaml`` artifact, or only its ``seed`` param
            for a run logged before the artifact existed, or nowhere).
        differs: ``(key, the version's value, the current value)`` for every key the version changed.
    """

    params: Params
    source: str
    differs: list[tuple[str, Any, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "differs": {k: {"version": v, "now": n} for k, v, n in self.differs}}

    def summary(self, family: str, version: str) -> str:
        """One line for the console: which params came from the version."""
        if not self.differs:
            return f"{family} v{version}: the model and data params ({', '.join(TRAINED)}) are the version's, from " \
                f"{self.source}; they equal the current params"  # fmt: skip
        shown = ", ".join(f"{k}={_show(v)} (params now: {_show(n)})" for k, v, n in self.differs[:8])
        more = f" and {len(self.differs) - 8} more" if len(self.differs) > 8 else ""
        return (
            f"{family} v{version}: using the version's training params from {self.source}: {shown}{more}; "
            "informer.*, registry.* and the other command settings come from params.yaml/--set"
        )


def trained_params(run_id: str) -> dict[str, Any] | None:
    """The resolved params run ``run_id`` logged (its ``params.yaml`` artifact); None when it has none."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="medmlops-params-") as tmp:
        try:
            path = download_artifacts(run_id=run_id, artifact_path=PARAMS_ARTIFACT, dst_path=tmp)
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (MlflowException, OSError, yaml.YAMLError):
            return None
    return raw if isinstance(raw, dict) else None


def version_params(params: Params, family: str, version: str) -> VersionParams:
    """``params`` with the :data:`TRAINED` sections of the run ``family`` version ``version`` was registered from.

    A run logged before the ``params.yaml`` artifact existed contributes its ``seed`` param only (the seed makes the
    splits). Params the current code no longer knows are dropped; params it added since keep their current value.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(client.get_model_version(family, str(version)).run_id)
    experiment = run.data.tags.get("experiment")
    raw = trained_params(run.info.run_id)
    if raw is not None:
        source = f"its run {run.info.run_id}'s {PARAMS_ARTIFACT}"
    else:
        seed = run.data.params.get("seed")
        if seed is None or not str(seed).lstrip("-").isdigit():
            return VersionParams(params, "nowhere (its run logged no params)")
        raw, source = {"seed": int(seed)}, f"its run {run.info.run_id}'s seed param"
    try:
        merged = merge_trained(params, raw)
    except ConfigError as exc:  # the schema changed incompatibly since: keep what the code understands now
        log.warning("%s v%s: its training params do not fit the current params (%s); using the current ones",
                    family, version, exc)  # fmt: skip
        return VersionParams(params, f"nowhere ({source} no longer fits the params' schema)")
    return VersionParams(merged, source, differences(merged, params, experiment))


def merge_trained(params: Params, trained: dict[str, Any]) -> Params:
    """``params`` with ``trained``'s :data:`TRAINED` sections laid over it, :data:`MACHINE_KEYS` kept."""
    now = params.to_dict()
    merged = dict(now)
    hints = typing.get_type_hints(Params)
    for section in TRAINED:
        if section in trained:
            merged[section] = _overlay(hints[section], now.get(section), trained[section])
    for key in MACHINE_KEYS:
        section, name = key.split(".")
        if isinstance(merged.get(section), dict) and name in now[section]:
            merged[section] = {**merged[section], name: now[section][name]}
    return params_from_dict(merged, profile=str(merged["profile"]), source="the version's training params")


def differences(version: Params, now: Params, experiment: str | None = None) -> list[tuple[str, Any, Any]]:
    """The keys of :data:`TRAINED` (only ``experiments.<experiment>`` of the experiments, when named) whose values
    differ, as ``(key, version's, now)``."""
    a, b = _flat(version.to_dict()), _flat(now.to_dict())
    out = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] not in TRAINED or key in MACHINE_KEYS:
            continue
        if experiment and key.startswith("experiments.") and not key.startswith(f"experiments.{experiment}."):
            continue
        if a.get(key) != b.get(key):
            out.append((key, a.get(key), b.get(key)))
    return out


def _overlay(tp: Any, now: Any, then: Any) -> Any:
    """``then`` over ``now`` following the schema: dataclass sections merge field by field (unknown fields dropped),
    mappings of dataclasses (``experiments``) entry by entry; any other value is ``then``'s."""
    if dataclasses.is_dataclass(tp) and isinstance(then, dict):
        fields = typing.get_type_hints(tp)
        base = dict(now) if isinstance(now, dict) else {}
        for key, value in then.items():
            if key in fields:
                base[key] = _overlay(fields[key], base.get(key), value)
        return base
    args = typing.get_args(tp)
    if (
        typing.get_origin(tp) is dict
        and len(args) == 2
        and dataclasses.is_dataclass(args[1])
        and isinstance(then, dict)
    ):
        base = dict(now) if isinstance(now, dict) else {}
        for key, value in then.items():
            base[key] = _overlay(args[1], base.get(key), value)
        return base
    return then


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
