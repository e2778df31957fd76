"""The steps of the Kubeflow pipelines, as plain functions (no kfp import here: ``components/`` wraps them).

Every step re-creates what it needs from ``params.yaml`` (+ profile and overrides) and the working directory, so a
step on any node of a cluster does exactly what the same step does on this machine. Steps meet in two places only:
the files under the data volume (preprocessing cache, run folders) and MLflow, where one *pipeline run* (found by
the Kubeflow job id) parents an *experiment run* per experiment, which parents a *fold run* per fold. Fan-in
(aggregating folds) reads MLflow, not Kubeflow's ``dsl.Collected``; promotion is decided by the registry's gates,
not by ``dsl.If``.

    validate_step   → data version check (DVC) + Great Expectations on every source dataset
    preprocess_step → MONAI preprocessing into the cache
    prepare_step    → splits + the experiment's MLflow run under the pipeline run; returns the folds
    train_fold_step → one fold (DDP over all GPUs of the node when ``nproc`` > 1), a nested MLflow run
    aggregate_step  → mean ± SD over folds from MLflow, bootstrap CIs, curves
    evaluate_step   → the report (tables, figures) logged under the pipeline run
    register_step   → ``FAMILY@candidate`` with its contract, then the promotion gates
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from medmlops.config import Params, load_params
from medmlops.errors import DataError, UserError, tracking_unreachable
from medmlops.paths import state_path

log = logging.getLogger(__name__)

# The experiments each pipeline trains by default (the papers' proposed models; each registers its family).
PIPELINE_EXPERIMENTS = {"ich": ("ich-mt-ord",), "covid": ("covid-mdmt",), "cxr": ("cxr-findings",)}
PIPELINE_FAMILY = {"ich": "ich-prognosis", "covid": "covid-prognosis", "cxr": "cxr-findings"}
# Tags that tie MLflow runs to a Kubeflow run.
JOB_TAG = "medmlops.pipeline_job"
KIND_TAG = "medmlops.run_kind"
_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
P = ParamSpec("P")
R = TypeVar("R")


def _names_tracking_outages(step: Callable[P, R]) -> Callable[P, R]:
    """A step that loses the MLflow tracking server raises one sentence naming it (TrackingUnavailableError, after
    MLflow's own retries) instead of a requests traceback; what it wrote to the data volume stays for the retry."""

    @functools.wraps(step)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return step(*args, **kwargs)
        except UserError:
            raise
        except Exception as exc:
            unreachable = tracking_unreachable(exc)
            if unreachable is None:
                raise
            raise unreachable from exc

    return wrapper


@dataclass(frozen=True)
class StepContext:
    """What every step gets from the pipeline's inputs: where the project is and which configuration to use."""

    workdir: str = "."
    profile: str = ""
    overrides: Sequence[str] = ()
    mlflow_uri: str = ""
    params_file: str = "params.yaml"

    def enter(self) -> Params:
        """chdir into the project, point MLflow at ``mlflow_uri`` (else the environment), load the params."""
        if not Path(self.workdir).is_dir():
            raise UserError(f"workdir {self.workdir}: not a directory (the project root inside the step's image)")
        os.chdir(self.workdir)
        params = load_params(self.params_file, profile=self.profile or None, overrides=list(self.overrides))
        from medmlops.commandline import quiet_third_parties
        from medmlops.registry import tracking

        quiet_third_parties()  # a step is an entry point of its own (a Kubeflow task's process)
        tracking.configure(params.registry, cwd=Path("."), uri=self.mlflow_uri or None)
        return params


def pipeline_sources(pipeline: str, experiments: Sequence[str], params: Params) -> list[str]:
    """The source datasets (``ich``, ``aiforcovid``, ...) the pipeline's experiments read, in a stable order."""
    from medmlops.training.experiment import experiment_sources

    if pipeline not in PIPELINE_EXPERIMENTS:
        raise UserError(f"unknown pipeline '{pipeline}' (choose from {', '.join(PIPELINE_EXPERIMENTS)})")
    sources: list[str] = []
    for name in experiments or PIPELINE_EXPERIMENTS[pipeline]:
        exp = params.experiment(name)
        if exp.family != PIPELINE_FAMILY[pipeline] and name not in PIPELINE_EXPERIMENTS[pipeline]:
            raise UserError(
                f"experiment {name} is family {exp.family}, not {PIPELINE_FAMILY[pipeline]} (pipeline {pipeline})"
            )
        for prerequisite in (*exp.init_from, name):
            for source in experiment_sources(params.experiment(prerequisite)):
                if source not in sources:
                    sources.append(source)
    return sources


# ---------------------------------------------------------------------------------------------------------------------
# Data: version and validation
# ---------------------------------------------------------------------------------------------------------------------


def resolve_data_version(data_rev: str, repo: Path = Path("."), dvc_file: str = "data.dvc") -> str:
    """The DVC md5 that ``data_rev`` names: an md5 itself (``<32 hex>.dir``), a git revision whose ``dvc_file`` (the
    profile's ``data.dvc_file``) records it (needs the git history, e.g. a local run), or empty for the ``dvc_file``
    in the working directory."""
    from medmlops.data import versioning

    if not data_rev:
        if not (repo / dvc_file).is_file():
            raise DataError(f"{repo / dvc_file}: not found; pass the data version (its md5) explicitly")
        return versioning.recorded_hash(repo, dvc_file)
    if _MD5.match(data_rev):
        return data_rev if data_rev.endswith(".dir") else f"{data_rev}.dir"
    shown = subprocess.run(["git", "show", f"{data_rev}:{dvc_file}"], cwd=repo, capture_output=True, text=True)
    if shown.returncode != 0:
        raise DataError(
            f"data version '{data_rev}' is neither a DVC md5 nor a git revision with {dvc_file} here "
            f"({' '.join(shown.stderr.split())[:200] or 'no git history'})"
        )
    import yaml

    return str(yaml.safe_load(shown.stdout)["outs"][0]["md5"])


def fetch_data(md5: str, remote: str, repo: Path = Path("."), data_dir: str = "data/raw") -> str:
    """Make ``data_dir`` hold DVC version ``md5``: keep it when it already does, else ``dvc pull`` it from ``remote``
    (a DVC remote URL or a local path). Returns how the data was obtained.

    Raises:
        DataError: the data differs and there is no remote, or the remote lacks that version.
    """
    from medmlops.data import versioning

    if (repo / data_dir).is_dir() and versioning.workspace_hash(repo, data_dir) == md5:
        return "already present"
    if not remote:
        actual = versioning.workspace_hash(repo, data_dir) if (repo / data_dir).is_dir() else "nothing"
        raise DataError(
            f"{data_dir} holds {actual}, not data version {md5}, and no data_remote was given to pull it from"
        )
    # A .dvc record of the wanted version (the one in git may record another); DVC reads the path relative to it.
    record = repo / state_path(".medmlops/pipeline-data.dvc")
    record.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    # `hash: md5` as DVC 3 writes it (without it DVC reads the record as a 2.x md5-dos2unix hash).
    out = {"md5": md5, "hash": "md5", "path": os.path.relpath(repo / data_dir, record.parent)}
    record.write_text(yaml.safe_dump({"outs": [out]}))
    versioning.dvc(repo, "remote", "add", "--local", "--force", "pipeline", remote, check=True)
    versioning.dvc(repo, "pull", "--force", "--remote", "pipeline", str(record.relative_to(repo)), check=True)
    actual = versioning.workspace_hash(repo, data_dir)
    if actual != md5:
        raise DataError(f"pulled {data_dir} from {remote} but it hashes to {actual}, not {md5}")
    return f"pulled from {remote}"


def validate_step(
    ctx: StepContext, pipeline: str, experiments: Sequence[str], data_rev: str, data_remote: str, report_html: str
) -> str:
    """Check the data is the requested DVC version (pulling it when a remote is given), validate every source dataset
    with Great Expectations, write one HTML report; return the data version (md5).

    Raises:
        DataError: wrong data version, or any dataset fails validation (the message names the datasets and checks).
    """
    from medmlops.validation import validate_dataset

    params = ctx.enter()
    repo = Path(".")
    md5 = resolve_data_version(data_rev, repo, params.data.dvc_file)
    how = fetch_data(md5, data_remote, repo, params.data.raw_dir)
    print(f"data version {md5}: {how}")
    sections, failed = [], []
    out_dir = Path(params.validation.reports_dir)
    for source in pipeline_sources(pipeline, experiments, params):
        report = validate_dataset(source, repo / params.data.raw_dir / source, params, progress=False)
        report.write(out_dir / f"{source}.html")
        report.write(out_dir / f"{source}.json")
        print(report.summary())
        sections.append(f"<h2>{source}</h2><pre>{_escape(report.summary())}</pre>")
        if not report.success:
            failed.append(source)
    _write_html(
        report_html,
        f"Data validation — {pipeline}",
        f"<p>data version <code>{md5}</code> ({how})</p>" + "".join(sections),
    )
    if failed:
        raise DataError(f"validation failed for {', '.join(failed)}; see {out_dir}/<dataset>.html")
    return md5


@_names_tracking_outages
def preprocess_step(ctx: StepContext, pipeline: str, experiments: Sequence[str], manifest_csv: str) -> dict[str, int]:
    """Preprocess every source dataset into the cache (reused when already there); return samples per dataset."""
    import pandas as pd

    from medmlops.data.preprocess import preprocess

    params = ctx.enter()
    counts, frames = {}, []
    for source in pipeline_sources(pipeline, experiments, params):
        manifest = pd.read_csv(preprocess(params, source, progress=False), dtype=str)
        counts[source] = len(manifest)
        frames.append(manifest.assign(dataset=source))
        print(f"{source}: {len(manifest)} samples preprocessed")
    Path(manifest_csv).parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_csv(manifest_csv, index=False)
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# MLflow runs of a pipeline run
# ---------------------------------------------------------------------------------------------------------------------


def _find_run(experiment_id: str, tags: dict[str, str]):
    from mlflow import MlflowClient

    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=where, order_by=["attributes.start_time ASC"], max_results=1
    )
    return runs[0] if runs else None


def pipeline_run(params: Params, pipeline: str, job_id: str, tags: dict[str, str] | None = None) -> str:
    """The MLflow run that parents everything one Kubeflow run logs (created by the first step that asks)."""
    from mlflow import MlflowClient

    from medmlops.registry import tracking

    if not job_id:
        raise UserError("a pipeline step needs the Kubeflow job id (dsl.PIPELINE_JOB_ID_PLACEHOLDER)")
    experiment_id = tracking.family_experiment_id(params.registry, PIPELINE_FAMILY[pipeline], Path("."))
    found = _find_run(experiment_id, {JOB_TAG: job_id, KIND_TAG: "pipeline"})
    if found is not None:
        return found.info.run_id
    all_tags = {JOB_TAG: job_id, KIND_TAG: "pipeline", "pipeline": pipeline, "profile": params.profile, **(tags or {})}
    run = MlflowClient().create_run(experiment_id, run_name=f"pipeline-{pipeline}-{job_id[:8]}", tags=all_tags)
    return run.info.run_id


def pipeline_summary(params: Params, pipeline: str, repo: Path) -> list[str]:
    """What the newest MLflow pipeline run of ``pipeline`` registered and promoted, one line each."""
    from mlflow import MlflowClient

    from medmlops.registry import tracking

    experiment_id = tracking.family_experiment_id(params.registry, PIPELINE_FAMILY[pipeline], repo)
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'pipeline' and tags.pipeline = '{pipeline}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    if not runs:
        return ["no MLflow pipeline run found"]
    tags = runs[0].data.tags
    lines = [f"MLflow pipeline run {runs[0].info.run_id} (data version {tags.get('data_version', '?')})"]
    for key, version in sorted(tags.items()):
        if key.startswith("registered."):
            family = key.split(".", 1)[1]
            promoted = tags.get(f"promoted.{family}") == "true"
            lines.append(
                f"registered {family} version {version} as @candidate"
                + ("; promoted to @champion" if promoted else "; not promoted (gates)")
            )
    return lines


def experiment_run(params: Params, experiment: str, job_id: str) -> str:
    """The experiment run ``prepare_step`` created for ``experiment`` in Kubeflow run ``job_id``."""
    from medmlops.registry import tracking

    exp = params.experiment(experiment)
    found = _find_run(
        tracking.family_experiment_id(params.registry, exp.family, Path(".")),
        {JOB_TAG: job_id, KIND_TAG: "experiment", "experiment": experiment},
    )
    if found is None:
        raise UserError(
            f"no MLflow run for experiment {experiment} in pipeline job {job_id}: did its prepare step run?"
        )
    return found.info.run_id


@_names_tracking_outages
def prepare_step(
    ctx: StepContext,
    pipeline: str,
    experiment: str,
    job_id: str,
    data_version: str,
    image: str,
    upstream: dict[str, str],
    splits_csv: str,
) -> list[int]:
    """Splits for ``experiment`` and its MLflow run under the pipeline run (which gets the data version, the image and
    the upstream steps' reports); return the folds to train."""
    from mlflow import MlflowClient

    from medmlops.training.experiment import plan_experiment, start_experiment_run

    params = ctx.enter()
    plan = plan_experiment(experiment, params, progress=False)
    tags = {"data_version": data_version, "image": image}
    parent = pipeline_run(params, pipeline, job_id, tags)
    client = MlflowClient()
    for name, path in upstream.items():
        if path and Path(path).is_file():
            client.log_artifact(parent, path, artifact_path=f"steps/{name}")
    existing = _find_run(
        client.get_run(parent).info.experiment_id, {JOB_TAG: job_id, KIND_TAG: "experiment", "experiment": experiment}
    )
    if existing is None:  # a retried prepare step reuses its run
        start_experiment_run(
            plan, params, parent_run_id=parent,
            tags={JOB_TAG: job_id, KIND_TAG: "experiment", "data_version": data_version, "image": image, "pipeline": pipeline},
        )  # fmt: skip
    Path(splits_csv).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plan.splits_path, splits_csv)
    return list(plan.folds)


# ---------------------------------------------------------------------------------------------------------------------
# Training a fold (on one node; DDP over its GPUs)
# ---------------------------------------------------------------------------------------------------------------------


@_names_tracking_outages
def train_fold_step(ctx: StepContext, experiment: str, fold: int, job_id: str, nproc: int = 1) -> dict[str, float]:
    """Train and test one fold as a nested MLflow run of the experiment run; return its test metrics.

    ``nproc`` > 1 restarts this step under torchrun with that many ranks (one per GPU of the node): DDP, rank 0
    logging; 0 means every GPU visible to the step (one process without a GPU). Experiments initialised from others (covid-ft, covid-mdmt) first train the same fold of those
    (nested runs tagged ``prerequisite``) unless their checkpoints are already on the data volume.
    """
    import torch

    from medmlops.training import distributed as ddp

    threads = int(os.environ.get("MEDMLOPS_FOLD_THREADS") or 0)
    if threads > 0:  # set by a local run whose folds share this machine's cores (pipelines/run.py, fold_threads)
        torch.set_num_threads(threads)
    if nproc <= 0:  # all the GPUs this node gives the step (the pod's accelerator limit), else one CPU process
        nproc = max(1, torch.cuda.device_count())
    if nproc > 1 and not ddp.is_distributed() and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        argv = ["medmlops.cli", "pipeline", "step", "train-fold", experiment, "--fold", str(fold), "--job-id", job_id,
                "--workdir", str(Path(ctx.workdir).resolve()), "--params", ctx.params_file]  # fmt: skip
        argv += ["--profile", ctx.profile] if ctx.profile else []
        for override in ctx.overrides:
            argv += ["--set", override]
        env = {"MLFLOW_TRACKING_URI": ctx.mlflow_uri} if ctx.mlflow_uri else {}
        ddp.launch(argv, nproc=nproc, env=env)
        return _fold_metrics(ctx, experiment, fold)
    ddp.setup_from_env()
    try:
        return _train_fold(ctx, experiment, fold, job_id)
    finally:
        ddp.cleanup()


def _train_fold(ctx: StepContext, experiment: str, fold: int, job_id: str) -> dict[str, float]:
    from medmlops.training import distributed as ddp
    from medmlops.training.experiment import plan_experiment, train_experiment_fold, train_prerequisites

    params = ctx.enter()
    main = ddp.is_main()
    run_id = ddp.broadcast_object(experiment_run(params, experiment, job_id) if main else None)
    train_prerequisites(experiment, params, fold, run_id, progress=main,
                        plan=lambda name, p: _plan_in_order(plan_experiment, name, p))  # fmt: skip
    plan = _plan_in_order(plan_experiment, experiment, params)
    return train_experiment_fold(plan, params, fold, run_id, progress=main)


def _plan_in_order(plan_experiment, name: str, params: Params):
    """Rank 0 writes the splits and resolved params; the other ranks read them after it (no torn files)."""
    from medmlops.training import distributed as ddp

    plan = plan_experiment(name, params, progress=False) if ddp.is_main() else None
    ddp.barrier()
    return plan if plan is not None else plan_experiment(name, params, progress=False)


def _fold_metrics(ctx: StepContext, experiment: str, fold: int) -> dict[str, float]:
    from medmlops.training.experiment import run_dir_for

    params = ctx.enter()
    record = run_dir_for(params, experiment) / f"fold-{fold}" / "fold_metrics.json"
    if not record.is_file():
        raise UserError(f"{record}: the distributed fold run finished without writing its metrics")
    return json.loads(record.read_text())["metrics"]


# ---------------------------------------------------------------------------------------------------------------------
# Fan-in, report, registration
# ---------------------------------------------------------------------------------------------------------------------


@_names_tracking_outages
def aggregate_step(ctx: StepContext, experiment: str, job_id: str) -> dict[str, float]:
    """Aggregate the experiment's folds from MLflow (they may have trained on other nodes); return mean ± SD."""
    from medmlops.training.experiment import aggregate_experiment, plan_experiment

    params = ctx.enter()
    plan = plan_experiment(experiment, params, progress=False)
    result = aggregate_experiment(plan, params, experiment_run(params, experiment, job_id))
    return {k: float(v) for k, v in result.summary.items()}


@_names_tracking_outages
def evaluate_step(ctx: StepContext, pipeline: str, experiments: Sequence[str], job_id: str, report_html: str) -> str:
    """The cross-experiment report (tables, box plots, bootstrap CIs; tabular models and saliency maps for ICH),
    logged under the pipeline run; its index.html is copied to ``report_html``. Returns the report folder."""
    from medmlops.evaluation.ich_report import evaluate_experiments

    params = ctx.enter()
    names = list(experiments or PIPELINE_EXPERIMENTS[pipeline])
    if pipeline != "ich":  # saliency maps and tabular models of this report are the ICH paper's (3D, clinical table)
        params = load_params(
            ctx.params_file, profile=ctx.profile or None, overrides=[*ctx.overrides, "evaluate.saliency_cases=0"]
        )
    parent = pipeline_run(params, pipeline, job_id)
    out = Path("reports") / "pipelines" / pipeline / job_id
    index = evaluate_experiments(names, params, out_dir=out, progress=False, parent_run_id=parent)
    index = Path(index)
    html_file = index if index.suffix == ".html" else index / "index.html"
    Path(report_html).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(html_file, report_html)
    return str(out)


@_names_tracking_outages
def register_step(ctx: StepContext, pipeline: str, experiment: str, job_id: str) -> dict[str, str]:
    """Register the aggregated experiment as ``FAMILY@candidate`` (contract with the data version); return the family
    and the version ("" when the experiment is not registered). Calibration and promotion are the next steps."""
    from mlflow import MlflowClient

    from medmlops.registry.register import register_experiment
    from medmlops.training.experiment import load_experiment_result, plan_experiment

    params = ctx.enter()
    exp = params.experiment(experiment)
    if not exp.register:
        return {"family": exp.family, "version": "", "message": f"{experiment} is not registered (register: false)"}
    plan = plan_experiment(experiment, params, progress=False)
    run_id = experiment_run(params, experiment, job_id)
    result = load_experiment_result(plan, run_id)
    version = register_experiment(result, params)
    MlflowClient().set_tag(pipeline_run(params, pipeline, job_id), f"registered.{exp.family}", version)
    message = f"registered {exp.family} version {version} as @candidate"
    print(message)
    return {"family": exp.family, "version": version, "message": message}


@_names_tracking_outages
def calibrate_step(ctx: StepContext, pipeline: str, family: str, version: str, job_id: str, report_html: str) -> dict:
    """INFORMER calibration of the registered candidate on its validation split, before any promotion (serving and
    monitoring of a champion always find its thresholds); params ``informer:`` settings. Returns validation metrics
    (mean F1 before / after flag-and-swap); a family with one output logit, or no registered version, is skipped."""
    from mlflow import MlflowClient

    from medmlops.informer.calibrate import calibrate_version
    from medmlops.registry.tracking import load_contract

    params = ctx.enter()
    if not version:
        _write_html(report_html, f"INFORMER calibration — {family}", "<p>Nothing was registered.</p>")
        return {}
    classes = load_contract(family, version).output_names()
    if len(classes) < 2:
        _write_html(report_html, f"INFORMER calibration — {family} v{version}",
                    "<p>One output logit: INFORMER needs at least two class maps. Not calibrated.</p>")  # fmt: skip
        return {}
    cfg = params.informer
    calibration = calibrate_version(
        params, family, version, methods=tuple(cfg.methods), direction=cfg.direction, tta_samples=cfg.tta_samples,
        step=cfg.step, progress=False,
    )  # fmt: skip
    rows = []
    for method, fit in {**calibration["methods"], **calibration["baselines"]}.items():
        for cls in classes:
            tau = fit["tau"][cls]
            rows.append(f"<tr><td>{_escape(method)}</td><td>{_escape(cls)}</td><td>{'-' if tau is None else f'{tau:.3f}'}"
                        f"</td><td>{fit['f1_before'][cls]:.3f}</td><td>{fit['f1_after'][cls]:.3f}</td></tr>")  # fmt: skip
    _write_html(
        report_html, f"INFORMER calibration — {family} v{version}",
        f"<p>{calibration['n_validation']} validation images; flag direction {calibration['direction']}; monitoring "
        f"uses {calibration['method']}.</p><table border=1 cellpadding=3><tr><th>score</th><th>class</th><th>tau</th>"
        f"<th>val F1 before</th><th>val F1 after flag-and-swap</th></tr>{''.join(rows)}</table>",
    )  # fmt: skip
    method = calibration["methods"][calibration["method"]]
    metrics = {
        "val_f1_before_mean": float(sum(method["f1_before"].values()) / len(classes)),
        "val_f1_after_mean": float(sum(method["f1_after"].values()) / len(classes)),
        "classes_with_threshold": float(sum(t is not None for t in method["tau"].values())),
    }
    client = MlflowClient()
    parent = pipeline_run(params, pipeline, job_id)
    client.set_tag(parent, f"calibrated.{family}", version)
    client.log_artifact(parent, report_html, artifact_path=f"steps/informer-{family}")
    return metrics


@_names_tracking_outages
def promote_step(ctx: StepContext, pipeline: str, family: str, version: str, job_id: str) -> dict[str, str]:
    """The promotion gates of params.yaml on the calibrated candidate; tags and closes the pipeline run."""
    from mlflow import MlflowClient

    from medmlops import registry

    params = ctx.enter()
    if not version:
        outcome = {"promoted": "false", "message": f"{family}: nothing registered, nothing to promote"}
    elif (gates := params.registry.gates.get(family)) is None:
        outcome = {"promoted": "false", "message": f"params.yaml has no registry.gates.{family}: left as candidate"}
    else:
        promoted = registry.promote(family, gates)
        outcome = {"promoted": str(promoted.promoted).lower(), "message": promoted.message}
    print(outcome["message"])
    client = MlflowClient()
    parent = pipeline_run(params, pipeline, job_id)
    if version:
        client.set_tag(parent, f"promoted.{family}", outcome["promoted"])
    client.set_terminated(parent, status="FINISHED")
    return {"family": family, "version": version, **outcome}


# ---------------------------------------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def _write_html(path: str, title: str, body: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_escape(title)}</title></head>"
        f"<body style='font-family:sans-serif'><h1>{_escape(title)}</h1>{body}</body></html>"
    )
