"""MLflow tracking and model registration: where runs go, and how a model version is registered and loaded.

Everything here talks to whatever tracking URI :func:`configure` set (SQLite on one machine, an ``mlflow server``
on a cluster); nothing is configured at import. Facts about MLflow 3.17 this module relies on:

* The ``./mlruns`` file store is refused ("maintenance mode"): the default is SQLite under ``.medmlops/``.
* With a SQLite backend a new experiment's artifacts default to ``./mlruns/<id>`` relative to the *current*
  directory, so experiments are created with an explicit absolute ``file://`` location under
  ``registry.artifact_dir``.
* ``mlflow.pytorch.log_model`` defaults to ``serialization_format="pt2"`` (``torch.export``) off Databricks. An
  exported program is a graph with the example's batch size baked in, no ``eval()``/``forward_features`` and no
  hooks, which Captum/INFORMER need; we log with ``"pickle"`` (the model classes live in ``medmlops.models``).
* A model version's ``version`` is an ``int`` from the SQLite store and a ``str`` over REST; we always use ``str``.
* ``search_model_versions`` leaves ``aliases`` empty; ``get_registered_model(name).aliases`` holds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import mlflow.pytorch
import numpy as np
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature

from medmlops.config import RegistryConfig
from medmlops.errors import UserError
from medmlops.paths import state_path
from medmlops.registry.contract import ContractError, ModelContract

CONTRACT_FILE = "contract.json"
DEFAULT_DB = ".medmlops/mlflow.db"
# Registered-version tags written at registration (read by `registry list`, serving and monitoring).
VERSION_TAGS = ("experiment", "data_version", "git_commit")
# Provenance tags of a training run, copied onto the versions registered from it (see :func:`provenance_tags`).
PROVENANCE_TAGS = ("data_version", "data_version_verified", "data_version_recorded", "data_record", "git_dirty")
# The experiment-kind tag MLflow 3's UI reads to choose an experiment's page: "custom_model_development" opens the
# training view (runs, metrics, models) instead of asking, or inferring the GenAI one.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Pinned by the project's constraints; an explicit list skips MLflow's requirement inference, which imports the
# model in a subprocess and may query PyPI (no network here).
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "numpy"]
_REMOTE_SCHEMES = ("http", "https", "databricks", "databricks-uc")

log = logging.getLogger(__name__)


class TrackingConfigError(UserError, ValueError):
    """The tracking URI cannot be used (e.g. a ``./mlruns`` file store); the message names where it came from."""


class ModelNotFoundError(UserError, LookupError):
    """A registered model, alias, version or its contract is missing, invalid or inconsistent with the model."""


class RegistrationError(UserError, ValueError):
    """The model does not match its contract; nothing was registered."""


# ----------------------------------------------------------------------------------------------------------------------
# Tracking URI and experiments
# ----------------------------------------------------------------------------------------------------------------------


def resolve_tracking_uri(cfg: RegistryConfig, cwd: Path | None = None, uri: str | None = None) -> str:
    """The tracking URI to use: ``uri`` when given, else ``registry.tracking_uri``, else ``$MLFLOW_TRACKING_URI``,
    else SQLite at :data:`DEFAULT_DB` (under ``$MEDMLOPS_STATE_DIR`` when set).

    A relative SQLite path is made absolute against ``cwd`` (Kubeflow's subprocess runner and DVC stages change
    directory) and its folder is created.

    Raises:
        TrackingConfigError: the URI is a file store (a plain path or ``file:``), which MLflow 3.17 refuses.
    """
    cwd = Path(cwd or Path.cwd()).resolve()
    if uri:
        source = "the tracking URI given"
    elif cfg.tracking_uri:
        uri, source = cfg.tracking_uri, "params.yaml registry.tracking_uri"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri, source = os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI"
    else:
        uri, source = f"sqlite:///{state_path(DEFAULT_DB)}", "the default"
    scheme = urlparse(uri).scheme
    if scheme in ("", "file") or len(scheme) == 1:  # len 1: a Windows drive letter, still a path
        raise TrackingConfigError(
            f"{source} '{uri}' is a file store (./mlruns), which MLflow 3.17 refuses; "
            "use sqlite:///PATH/mlflow.db or an http(s):// tracking server"
        )
    if scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        if path and path != ":memory:":
            db = Path(path) if Path(path).is_absolute() else cwd / path
            db.parent.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{db}"
    return uri


def configure(cfg: RegistryConfig, cwd: Path | None = None, uri: str | None = None) -> str:
    """Point MLflow's tracking and registry at :func:`resolve_tracking_uri` and return the URI.

    Call from ``main()`` or an entry point, never at import. (Telemetry and MLflow's download progress bars are
    switched off by the entry points: :func:`medmlops.commandline.quiet_third_parties`.)
    """
    uri = resolve_tracking_uri(cfg, cwd, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def get_or_create_experiment(
    name: str,
    artifact_location: str | None = None,
    *,
    cfg: RegistryConfig | None = None,
    cwd: Path | None = None,
    kind: str | None = None,
) -> str:
    """The id of experiment ``name``, created if missing (and restored if it was deleted).

    Args:
        name: experiment name, e.g. ``f"{cfg.experiment_prefix}/ich-mtl"``.
        artifact_location: explicit artifact root for a new experiment. When omitted and the backend is a local
            database (SQLite), it is ``<cfg.artifact_dir>/<name>`` as an absolute ``file://`` URI; a tracking
            server chooses its own (``mlflow-artifacts:/``).
        cfg: supplies ``artifact_dir`` (defaults to ``RegistryConfig()``'s).
        cwd: resolves a relative ``artifact_dir``.
        kind: the experiment kind tag (:data:`EXPERIMENT_KIND_TAG`) to set when the experiment has none.
    """
    client = MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        if kind and EXPERIMENT_KIND_TAG not in (existing.tags or {}):  # a kind chosen in the UI is kept
            client.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, kind)
        return existing.experiment_id
    if artifact_location is None and urlparse(mlflow.get_tracking_uri()).scheme not in _REMOTE_SCHEMES:
        root = Path((cfg or RegistryConfig()).artifact_dir)
        root = root if root.is_absolute() else Path(cwd or Path.cwd()).resolve() / root
        folder = root / name.replace("/", "__")
        folder.mkdir(parents=True, exist_ok=True)
        artifact_location = folder.as_uri()
    return client.create_experiment(
        name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: kind} if kind else None
    )


def family_experiment_id(cfg: RegistryConfig, family: str, cwd: Path | None = None) -> str:
    """The id of the MLflow experiment that holds every run of ``family`` (``<experiment_prefix>-<family>``), on the
    tracking server the entry point configured (:func:`configure`). Tagged as a custom-model-development
    experiment, so MLflow's UI opens it on the training view."""
    return get_or_create_experiment(f"{cfg.experiment_prefix}-{family}", cfg=cfg, cwd=cwd, kind=EXPERIMENT_KIND)


# ----------------------------------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------------------------------


def git_commit(repo: Path | None = None) -> str:
    """The commit checked out at ``repo`` (or a parent), read from ``.git`` directly; ``"unknown"`` outside git.

    Reads the files instead of running ``git``: training images and Kubeflow pods often lack the binary.
    """
    start = Path(repo or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        dotgit = folder / ".git"
        if dotgit.exists():
            return _read_head(dotgit) or "unknown"
    return "unknown"


def _read_head(dotgit: Path) -> str | None:
    try:
        if dotgit.is_file():  # worktree or submodule: "gitdir: <path>"
            target = dotgit.read_text().strip().removeprefix("gitdir:").strip()
            dotgit = (dotgit.parent / target).resolve()
        common = dotgit
        if (dotgit / "commondir").is_file():  # worktrees keep refs in the main repository
            common = (dotgit / (dotgit / "commondir").read_text().strip()).resolve()
        head = (dotgit / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None  # detached HEAD holds the sha itself
        ref = head.removeprefix("ref:").strip()
        for base in (dotgit, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip() or None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                sha, _, name = line.partition(" ")
                if name.strip() == ref:
                    return sha
    except OSError:
        return None
    return None  # a fresh repository without commits


def data_version(repo: Path | None = None, dvc_file: str = "data.dvc") -> str:
    """The md5 DVC records for the first output of ``dvc_file`` (the profile's ``data.dvc_file``; ``"<md5>.dir"`` for
    a folder); else ``"unknown"``."""
    path = Path(repo or Path.cwd()) / dvc_file
    try:
        record = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        outs = record.get("outs") or []
        md5 = outs[0].get("md5") if outs and isinstance(outs[0], dict) else None
    except (OSError, yaml.YAMLError, AttributeError):
        return "unknown"
    return str(md5) if md5 else "unknown"


def data_record(params: Any) -> str:
    """The DVC record of ``params``' raw data: ``data.dvc_file`` (each profile has its own), else ``data.dvc``. The one
    place training, registration and the provenance checks choose it."""
    return str(getattr(params.data, "dvc_file", "") or "data.dvc")


def git_dirty(repo: Path | None = None) -> str:
    """``"true"`` when ``git status --porcelain`` lists anything at ``repo`` (a modified, staged or deleted tracked
    file, or an untracked one that .gitignore does not ignore: ignored folders such as ``.medmlops/`` and the DVC data
    never count), ``"false"`` when the tree is clean, ``"unknown"`` without git (training images often lack it)."""
    try:
        result = subprocess.run(
            ["git", "status", "--porcelain"], cwd=Path(repo or Path.cwd()), capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if result.returncode != 0:
        return "unknown"
    return "true" if result.stdout.strip() else "false"


@dataclasses.dataclass(frozen=True)
class DataProvenance:
    """Whether the raw data a run reads is the version its DVC record (or the pipeline) names.

    Attributes:
        version: the md5 of the data actually read (DVC's ``<md5>.dir`` of ``data_dir``); the recorded one when the
            workspace could not be hashed.
        recorded: the version the record (or the pipeline's validated ``expected``) names; ``"unknown"`` without one.
        verified: ``data_dir`` hashes to ``recorded``.
        record: the DVC record file (``data.dvc_file``).
        data_dir: the raw data folder the run reads (``data.raw_dir``).
        detail: why it is not verified and how to fix it ("" when verified).
    """

    version: str
    recorded: str
    verified: bool
    record: str
    data_dir: str
    detail: str = ""

    def tags(self) -> dict[str, str]:
        """The run (and version) tags: ``data_version`` is the data actually read, so a model trained on changed
        data is never labelled with the version its record names."""
        return {
            "data_version": self.version,
            "data_version_verified": "true" if self.verified else "false",
            "data_version_recorded": self.recorded,
            "data_record": self.record,
        }


def data_provenance(
    repo: Path | None, data_dir: str, record: str = "data.dvc", expected: str | None = None
) -> DataProvenance:
    """Hash ``data_dir`` as ``dvc add`` would and compare it with the version ``record`` names (or ``expected``: a
    pipeline's validated version). Never raises: whatever stops the hashing (no DVC repository, no folder, no dvc)
    leaves the data unverified, with the reason in ``detail``."""
    repo = Path(repo or Path.cwd())
    recorded = expected or data_version(repo, record)
    fix = f"record it with `medmlops data track` (and commit {record}) or restore the recorded data with " \
        f"`dvc checkout {record}`"  # fmt: skip
    try:
        from medmlops.data import versioning

        actual: str | None = versioning.workspace_hash(repo, data_dir)
        reason = ""
    except Exception as exc:  # noqa: BLE001 - not a DVC repository, no folder, dvc missing: unverified, never fatal
        actual, reason = None, " ".join(str(exc).split())[:200] or type(exc).__name__
    if actual is None:
        detail = f"{data_dir} could not be hashed ({reason})"
        return DataProvenance(recorded, recorded, False, record, data_dir, detail)
    if recorded == "unknown":
        detail = f"{data_dir} hashes to {actual} but {record} records no version; {fix}"
        return DataProvenance(actual, recorded, False, record, data_dir, detail)
    if actual != recorded:
        named = "the pipeline validated" if expected else f"{record} records"
        detail = f"{data_dir} hashes to {actual} but {named} {recorded}; {fix}"
        return DataProvenance(actual, recorded, False, record, data_dir, detail)
    return DataProvenance(actual, recorded, True, record, data_dir)


def provenance_tags(repo: Path | None, data_dir: str, record: str, expected: str | None = None) -> dict[str, str]:
    """Every provenance tag of a training run (:data:`PROVENANCE_TAGS`) plus ``git_commit``; an unverified data
    version is also said on stderr, loudly, where the run starts."""
    data = data_provenance(repo, data_dir, record, expected)
    if not data.verified:
        print(
            f"warning: training on data that does not match its DVC record: {data.detail}. The run and any version "
            "registered from it are tagged data_version_verified=false, and promotion to champion will refuse it.",
            file=sys.stderr,
            flush=True,
        )
    return {**data.tags(), "git_commit": git_commit(repo), "git_dirty": git_dirty(repo)}


def log_data_input(run_id: str, name: str, version: str, data_dir: Path, *, verified: bool) -> None:
    """Log the raw data as the run's training input (MLflow's Datasets, what ``mlflow.log_input`` logs for the active
    run; this run is open but not active): a metadata-only dataset named ``name`` whose digest is the DVC md5 and
    whose source is the raw folder (source type ``local``, as MLflow resolves a ``file://`` URI), so the run page
    shows which data it trained on."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = json.dumps({"uri": Path(data_dir).resolve().as_uri()})
    entity = Dataset(name=name, digest=version, source_type="local", source=source)
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, "training"), InputTag("data_version_verified", str(verified).lower())]
    MlflowClient().log_inputs(run_id, datasets=[DatasetInput(entity, tags)])


def version_description(contract: ModelContract, tags: dict[str, str], primary_metric: str | None = None) -> str:
    """The model version's description (Markdown, shown on its page in MLflow's UI), built from its contract and its
    run's provenance tags."""
    tasks = "; ".join(f"{t.name} ({t.kind}: {', '.join(t.classes)})" for t in contract.tasks)
    spec = contract.input
    window = f", window {list(spec.intensity_window)}" if spec.intensity_window else ""
    verified = tags.get("data_version_verified", "unknown")
    data = f"`{contract.data_version}`"
    if verified == "false":
        data += f" — NOT the version {tags.get('data_record', 'its DVC record')} records " \
            f"(`{tags.get('data_version_recorded', 'unknown')}`): not promotable to champion"  # fmt: skip
    elif verified == "true":
        data += f" (matches {tags.get('data_record', 'its DVC record')})"
    dirty = tags.get("git_dirty", "unknown")
    commit = f"`{contract.git_commit}`" + {"true": " + uncommitted changes", "false": " (clean)"}.get(dirty, "")
    lines = [
        f"**{contract.family}** from experiment `{contract.experiment}`",
        f"- tasks: {tasks}",
        f"- input: {spec.modality} {list(spec.shape)}{window}, formats {', '.join(spec.formats)}",
        f"- data version: {data}",
        f"- git commit: {commit}",
    ]
    if primary_metric:
        value = contract.metrics.get(primary_metric)
        shown = "missing" if value is None else f"{value:.3f}"
        sd = contract.metrics.get(primary_metric.removesuffix("_mean") + "_sd")
        shown += f" ± {sd:.3f}" if value is not None and sd is not None else ""
        lines.append(f"- {primary_metric}: {shown}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------------------------------


def register_model(
    model: torch.nn.Module,
    contract: ModelContract,
    *,
    run_id: str,
    input_example: np.ndarray,
    family: str | None = None,
    alias: str = "candidate",
    extra_artifacts: dict[str, Path] | None = None,
    primary_metric: str | None = None,
) -> ModelVersion:
    """Log ``model`` with its contract in run ``run_id``, register it as a new version of ``family``, set ``alias``.

    The contract and its consistency with the model are checked before anything is written. The version is
    registered with tags ``experiment``, ``data_version``, ``git_commit`` and the run's provenance tags
    (:data:`PROVENANCE_TAGS`: whether the data matched its DVC record, whether the git tree was dirty), and a
    description built from the contract (:func:`version_description`); the alias is set last, and a failure after
    the version was created deletes that version, so an alias never points at a half-made version.

    Args:
        model: the trained module; its forward returns a tensor (one task) or ``dict[str, Tensor]`` by task name.
        contract: validated here; ``created_at`` is filled in when empty.
        run_id: the training (or evaluation) run the model is logged in.
        input_example: one preprocessed batch, shape ``(B, *contract.input.shape)``.
        family: registered model name; defaults to (and must equal) ``contract.family``.
        alias: moved to the new version (``candidate``; promotion moves ``champion``).
        extra_artifacts: artifact folder name → local file or folder, logged next to the model
            (e.g. ``{"informer": Path("calibration.json")}`` → ``informer/calibration.json``).
        primary_metric: the metric the description shows (the family's promotion gate's ``primary_metric``).

    Raises:
        ContractError: the contract is invalid.
        RegistrationError: the model's outputs or the input example disagree with the contract.
    """
    contract.validate()
    family = family or contract.family
    if family != contract.family:
        raise RegistrationError(f"registered name '{family}' differs from the contract's family '{contract.family}'")
    if not alias:
        raise RegistrationError("alias must be a non-empty name")
    input_example = np.asarray(input_example)
    outputs = _outputs_as_numpy(model, contract, input_example)
    for name, path in (extra_artifacts or {}).items():
        if not Path(path).exists():
            raise RegistrationError(f"extra artifact '{name}': {path} does not exist")

    client = MlflowClient()
    run = client.get_run(run_id)
    experiment = contract.experiment or client.get_experiment(run.info.experiment_id).name
    contract = dataclasses.replace(
        contract,
        experiment=experiment,
        created_at=contract.created_at or datetime.now(UTC).isoformat(timespec="seconds"),
    )
    # One output per task, named by task: the pyfunc flavour cannot serve a dict output anyway (serving uses
    # mlflow.pytorch.load_model), but the signature documents the heads and is checked again at load time.
    signature = infer_signature(input_example, outputs)

    with _in_run(run_id), _quiet_pytorch_logging():
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=input_example,
            pip_requirements=PIP_REQUIREMENTS,
            serialization_format="pickle",
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONTRACT_FILE
        path.write_text(contract.to_json(), encoding="utf-8")
        # Next to MLmodel in the logged model's own artifact root, so `models:/NAME@ALIAS` downloads carry it.
        client.log_model_artifact(info.model_id, str(path))
    for name, local in (extra_artifacts or {}).items():
        if Path(local).is_dir():
            client.log_model_artifacts(info.model_id, str(local), artifact_path=name)
        else:
            client.log_model_artifact(info.model_id, str(local), artifact_path=name)

    provenance = {k: run.data.tags[k] for k in PROVENANCE_TAGS if run.data.tags.get(k)}
    tags = {**provenance, "experiment": contract.experiment, "data_version": contract.data_version,
            "git_commit": contract.git_commit}  # fmt: skip
    version: str | None = None
    try:
        registered = mlflow.register_model(info.model_uri, family, tags=tags)
        version = str(registered.version)
        client.update_model_version(family, version, description=version_description(contract, tags, primary_metric))
        client.set_registered_model_alias(family, alias, version)
        return client.get_model_version(family, version)
    except BaseException:
        version = version or _find_version(client, family, info.model_uri)
        if version is not None:
            with contextlib.suppress(MlflowException):
                client.delete_model_version(family, version)  # deleting a version also drops its aliases
        raise


def _outputs_as_numpy(model: torch.nn.Module, contract: ModelContract, example: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``model`` on the example and check shapes against the contract; outputs by task, in contract order."""
    expected = tuple(contract.input.shape)
    if example.ndim != len(expected) + 1 or tuple(example.shape[1:]) != expected:
        raise RegistrationError(
            f"input_example shape {list(example.shape)} does not match the contract's input.shape "
            f"{list(expected)} (plus a batch axis)"
        )
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.as_tensor(example, device=param.device if param is not None else None)
        with torch.no_grad():
            raw = model(x)
    finally:
        model.train(was_training)
    names = contract.task_names()
    if isinstance(raw, torch.Tensor):
        if len(names) != 1:
            raise RegistrationError(
                f"the model returns one tensor but the contract has {len(names)} tasks; return a dict keyed by task"
            )
        raw = {names[0]: raw}
    if not isinstance(raw, dict) or set(raw) != set(names):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise RegistrationError(f"the model's outputs {got} do not match the contract's tasks {names}")
    out = {}
    for task in contract.tasks:
        value = raw[task.name].detach().float().cpu().numpy()
        if value.ndim != 2 or value.shape[1] != task.n_logits:
            raise RegistrationError(
                f"output '{task.name}' has shape {list(value.shape)} but the contract's {task.kind} task has "
                f"{task.n_logits} logits (expected [batch, {task.n_logits}])"
            )
        out[task.name] = value
    return out


@contextlib.contextmanager
def _in_run(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the active run: reuse it if it already is, else resume it for the block."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    # start_run refuses a second top-level run; a different active run means the caller mixed runs up.
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        yield


@contextlib.contextmanager
def _quiet_pytorch_logging() -> Iterator[None]:
    """Silence two warnings that every registration would print, both expected here.

    ``mlflow.models.model`` warns that the serving input example fails to validate: the pyfunc wrapper expects a
    single tensor and our multi-task models return a dict (``validate_serving_input=False`` cannot be passed:
    ``mlflow.pytorch.log_model`` forwards unknown kwargs to ``torch.save``). ``mlflow.pytorch`` warns about pickle,
    which is the deliberate choice explained in the module docstring.
    """
    loggers = [logging.getLogger("mlflow.models.model"), logging.getLogger("mlflow.pytorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _find_version(client: MlflowClient, family: str, model_uri: str) -> str | None:
    with contextlib.suppress(MlflowException):
        for mv in client.search_model_versions(f"name='{family}'"):
            if mv.source == model_uri:
                return str(mv.version)
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def resolve_version(family: str, alias: str, client: MlflowClient | None = None) -> ModelVersion:
    """The model version ``family@alias`` (an all-digit ``alias`` names the version itself); ModelNotFoundError when
    the model, the alias or the version does not exist."""
    client = client or MlflowClient()
    try:
        client.get_registered_model(family)
    except MlflowException as exc:
        raise ModelNotFoundError(f"registered model '{family}' not found at {mlflow.get_registry_uri()}") from exc
    if str(alias).isdigit():
        try:
            return client.get_model_version(family, str(alias))
        except MlflowException as exc:
            raise ModelNotFoundError(f"registered model '{family}' has no version {alias}") from exc
    try:
        return client.get_model_version_by_alias(family, alias)
    except MlflowException as exc:
        raise ModelNotFoundError(f"registered model '{family}' has no version with alias '{alias}'") from exc


def load_contract(family: str, version: str | int) -> ModelContract:
    """The validated contract of ``family`` version ``version``.

    Raises:
        ModelNotFoundError: the version has no ``contract.json`` or it is invalid.
    """
    try:
        with tempfile.TemporaryDirectory(prefix="medmlops-contract-") as tmp:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{family}/{version}/{CONTRACT_FILE}", dst_path=tmp
            )
            text = Path(path).read_text(encoding="utf-8")
    except (MlflowException, OSError) as exc:
        raise ModelNotFoundError(f"'{family}' version {version} has no {CONTRACT_FILE} artifact") from exc
    try:
        return ModelContract.from_json(text)
    except ContractError as exc:
        raise ModelNotFoundError(f"'{family}' version {version}: {exc}") from exc


def load_model(
    family: str, alias: str = "champion", *, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ModelContract, str]:
    """Load ``models:/family@alias`` as a torch module in eval mode, with its contract and version.

    The version is resolved once and everything is read by version number, so an alias moved meanwhile cannot
    pair one version's weights with another's contract.

    Raises:
        ModelNotFoundError: model, alias or contract missing; contract invalid; the logged signature or input
            example disagrees with the contract; or the weights file is corrupt.
    """
    client = MlflowClient()
    version = str(resolve_version(family, alias, client).version)
    where = f"'{family}@{alias}' (version {version})"
    with tempfile.TemporaryDirectory(prefix="medmlops-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{family}/{version}", dst_path=tmp)
        except MlflowException as exc:
            raise ModelNotFoundError(f"{where}: its model artifacts cannot be downloaded ({exc.message})") from exc
        contract_path = Path(local) / CONTRACT_FILE
        if not contract_path.is_file():
            raise ModelNotFoundError(f"{where} has no {CONTRACT_FILE} next to its model")
        try:
            contract = ModelContract.from_json(contract_path.read_text(encoding="utf-8"))
        except ContractError as exc:
            raise ModelNotFoundError(f"{where}: {exc}") from exc
        _check_logged_model(Path(local), contract, where)
        try:
            module = mlflow.pytorch.load_model(local, map_location=device)
        except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file: torch, pickle and zip all raise
            reason = " ".join(str(exc).split()).split(". ")[0][:200] or type(exc).__name__  # its first sentence
            raise ModelNotFoundError(f"{where}: its model weights cannot be loaded ({reason})") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelNotFoundError(f"{where} did not load as a torch module (got {type(module).__name__})")
    return module.eval(), contract, version


def _check_logged_model(local: Path, contract: ModelContract, where: str) -> None:
    """Compare the MLmodel signature and input example with the contract's shape and tasks."""
    expected = list(contract.input.shape)
    try:
        logged = Model.load(str(local))
    except (MlflowException, OSError) as exc:
        raise ModelNotFoundError(f"{where}: MLmodel file unreadable ({exc})") from exc
    example = logged.load_input_example(str(local))
    if example is not None and list(np.asarray(example).shape[1:]) != expected:
        raise ModelNotFoundError(
            f"{where}: the logged input example has shape {list(np.asarray(example).shape)} but the contract's "
            f"input.shape is {expected}"
        )
    signature = logged.signature
    if signature is None:
        return
    inputs = signature.inputs.to_dict()
    shape = inputs[0].get("tensor-spec", {}).get("shape") if len(inputs) == 1 else None
    if shape is not None and list(shape[1:]) != expected:
        raise ModelNotFoundError(
            f"{where}: the model signature's input shape {list(shape)} does not match the contract's "
            f"input.shape {expected}"
        )
    outputs = signature.outputs.to_dict() if signature.outputs is not None else []
    names = [o.get("name") for o in outputs]
    if outputs and names != contract.task_names():
        raise ModelNotFoundError(
            f"{where}: the model signature's outputs {names} do not match the contract's tasks {contract.task_names()}"
        )


def log_dict_artifact(obj: Any, name: str, run_id: str | None = None) -> None:
    """Log ``obj`` as JSON artifact ``name`` in ``run_id`` (default: the active run)."""
    if run_id is None:
        mlflow.log_dict(obj, name)
    else:
        MlflowClient().log_text(run_id, json.dumps(obj, indent=2, default=str), name)


# ----------------------------------------------------------------------------------------------------------------------
# Production windows
# ----------------------------------------------------------------------------------------------------------------------

PRODUCTION_SUFFIX = "-production"
# Registered-version tags a production window writes: the latest window's run and its headline numbers.
PRODUCTION_VERSION_TAGS = ("production_last_run", "production_last_window_end", "production_drift_share")


def _window_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers of a drift summary (:class:`medmlops.monitoring.drift.DriftSummary` ``.to_dict()``) as MLflow
    metric names: drift, INFORMER flag rates per class, classification quality per class, and the estimated (CBPE)
    and realized performance of the version (per class and the gate metric). None and non-numbers are left out."""
    out: dict[str, Any] = {
        "drift_share": summary.get("drift_share"),
        "drift_detected": None if summary.get("detected") is None else float(bool(summary["detected"])),
        "drifted_columns": summary.get("n_drifted"),
        "compared_columns": summary.get("n_columns"),
        "records": summary.get("n_current"),
        "flag_alerts": len(summary.get("flag_alerts") or []),
    }
    for name, rate in (summary.get("flag_rate") or {}).items():
        out[f"flag_rate/{name}"] = rate
    for name, values in (summary.get("quality") or {}).items():
        for key, value in (values or {}).items():
            out[f"quality/{name}/{key}"] = value
    performance = summary.get("performance")
    for entry in performance if isinstance(performance, list) else []:
        if str(entry.get("version")) != str(summary.get("version")):
            continue
        out["labelled_records"] = entry.get("n_labelled")
        for name, values in (entry.get("classes") or {}).items():
            for kind in ("estimated", "realized"):
                for metric, value in ((values or {}).get(kind) or {}).items():
                    out[f"{kind}/{name}/{metric}"] = value
        gate = entry.get("gate") or {}
        if gate.get("metric"):
            for kind in ("estimated", "realized"):
                out[f"{kind}/gate/{gate['metric']}"] = gate.get(kind)
            out["gate_floor"] = gate.get("floor")
            if gate.get("below_floor") is not None:
                out["below_floor"] = float(bool(gate["below_floor"]))
    clean = {}
    for key, value in out.items():
        if isinstance(value, bool | int | float) and np.isfinite(float(value)):
            # MLflow metric keys: alphanumerics, _ - . space /; a class name may hold others (">=", ":").
            clean["".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)] = float(value)
    return clean


def _logged_model_id(client: MlflowClient, source: str | None) -> str | None:
    """The logged model a version was registered from, read from its source ``models:/<model_id>``: MLflow 3.17's
    SQL registry store takes ``model_id`` at ``create_model_version`` but keeps no column for it, so
    ``ModelVersion.model_id`` reads back None from it (measured; a tracking server over that store answers alike)."""
    if not source or not source.startswith("models:/"):
        return None
    candidate = source.removeprefix("models:/")
    if "/" in candidate or "@" in candidate or not candidate.startswith("m-"):
        return None
    try:
        return client.get_logged_model(candidate).model_id
    except MlflowException:
        return None


def log_production_window(
    cfg: RegistryConfig,
    family: str,
    version: str,
    summary: dict[str, Any],
    *,
    window_end: float,
    artifacts: list[Path] = (),  # type: ignore[assignment]
    cwd: Path | None = None,
) -> str:
    """Log one monitoring window of ``family`` ``version`` as a run in ``<experiment_prefix>-production``; its id.

    The run is tagged with the family and version (``medmlops.family``, ``medmlops.model_version``) and, where the
    registered version has an MLflow 3 logged model (``ModelVersion.model_id``), its metrics are linked to it
    (``log_metric(model_id=...)``) so the model's page lists them. Every metric is logged at step = the window's end
    in Unix seconds, so one version's windows line up as a time series. ``artifacts`` (the drift report's HTML and
    summary) go under ``drift/``. The registered version gets the tags :data:`PRODUCTION_VERSION_TAGS`, so the
    registry shows the latest window without opening the run. A version the registry does not know (a report over a
    stand-in reference) is still logged, without the link and the version tags (a warning says so).
    """
    client = MlflowClient()
    experiment = get_or_create_experiment(f"{cfg.experiment_prefix}{PRODUCTION_SUFFIX}", cfg=cfg, cwd=cwd)
    model_id: str | None = None
    registered = True
    try:
        registered_version = client.get_model_version(family, str(version))
        model_id = registered_version.model_id or _logged_model_id(client, registered_version.source)
    except MlflowException as exc:
        registered = False
        log.warning("%s version %s is not in the registry (%s); its window is logged without the link", family,
                    version, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)  # fmt: skip
    end = datetime.fromtimestamp(window_end, UTC)
    tags = {"medmlops.family": family, "medmlops.model_version": str(version), "medmlops.window_end": end.isoformat(),
            "mlflow.note.content": f"Production window of **{family}** version {version} ending {end:%Y-%m-%d %H:%M:%SZ}"}  # fmt: skip
    if model_id:
        tags["medmlops.model_id"] = model_id
    run = client.create_run(experiment, run_name=f"{family} v{version} {end:%Y-%m-%dT%H:%M:%SZ}", tags=tags)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        step, stamp = int(window_end), int(window_end * 1000)
        for key, value in sorted(_window_metrics(summary).items()):
            client.log_metric(run_id, key, value, timestamp=stamp, step=step, model_id=model_id)
        client.log_param(run_id, "model_version", str(version))
        for path in artifacts:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path), artifact_path="drift")
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
    if registered:
        share = summary.get("drift_share")
        share_text = f"{share:.4f}" if isinstance(share, int | float) else "n/a"
        for key, value in zip(PRODUCTION_VERSION_TAGS, (run_id, end.isoformat(), share_text), strict=True):
            client.set_model_version_tag(family, str(version), key, value)
    return run_id
