"""The shape all three pipelines share, and their cluster configuration (kfp-kubernetes), both from params.yaml.

    validate_data → preprocess → for each experiment (dsl.ParallelFor):
        make_splits → for each fold (dsl.ParallelFor, one GPU node each): train_fold
                    → aggregate (from MLflow) → evaluate → register (candidate) → calibrate (INFORMER τ)
                    → promote (the core's gates)

Shaped around kfp 2.16's local runner, which runs the same pipelines on one machine (docs/library-notes.md):
the root holds a ParallelFor (so the local runner takes its DAG orchestrator), every fan-out sits in its own
sub-pipeline, no task-output *parameter* enters a loop body (the local runner swaps it for the loop item; artifacts
and pipeline inputs pass intact), each step finds its MLflow runs by the Kubeflow job id, and nothing depends on
``dsl.Collected`` or ``dsl.If``.
"""

from pathlib import Path

from kfp import dsl, kubernetes

from components import BASE_IMAGE
from components.aggregate import aggregate
from components.calibrate import calibrate
from components.evaluate import evaluate
from components.make_splits import make_splits
from components.preprocess import preprocess
from components.promote import promote
from components.register import register
from components.train_fold import train_fold
from components.validate_data import validate_data
from medmlops.config import ResourcesConfig, load_params
from medmlops.pipeline_steps import PIPELINE_EXPERIMENTS

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
KF = PARAMS.kubeflow


def _cluster(task: dsl.PipelineTask, resources: ResourcesConfig, image) -> dsl.PipelineTask:
    """Image, requests/limits, the data volume and the MLflow/S3 secrets (never literals) of one task."""
    task.set_container_image(image)
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    if resources.accelerator_type and resources.accelerator_count:
        task.set_accelerator_type(resources.accelerator_type).set_accelerator_limit(resources.accelerator_count)
    for key, value in resources.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for tol in resources.tolerations:
        kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value or None, effect=tol.effect)
    kubernetes.mount_pvc(task, pvc_name=KF.data_pvc, mount_path=KF.data_mount)
    kubernetes.use_secret_as_env(
        task, secret_name=KF.mlflow_secret, secret_key_to_env={"tracking-uri": "MLFLOW_TRACKING_URI"}
    )
    kubernetes.use_secret_as_env(
        task, secret_name=KF.s3_secret,
        secret_key_to_env={k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL")},
    )  # fmt: skip
    return task


def _step(task: dsl.PipelineTask, image, *, cache: bool = False) -> dsl.PipelineTask:
    task.set_caching_options(cache)
    return _cluster(task, KF.step, image)


@dsl.pipeline(name="train-folds", description="Train every fold in parallel, one (GPU) node per fold.")
def train_folds(
    folds: list, experiment: str, nproc: int, workdir: str, profile: str, overrides: list, mlflow_uri: str, image: str
):
    with dsl.ParallelFor(folds, parallelism=KF.fold_parallelism) as fold:
        task = train_fold(
            experiment=experiment, fold=fold, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, nproc=nproc, workdir=workdir,
            profile=profile, overrides=overrides, mlflow_uri=mlflow_uri,
        )  # fmt: skip
        task.set_caching_options(False)  # a retried run resumes from the fold's last checkpoint on the volume instead
        task.set_retry(num_retries=2, backoff_duration="60s")  # preempted GPU nodes
        _cluster(task, KF.train, image)


@dsl.pipeline(name="experiment", description="Splits → folds → aggregate → evaluate → register, for one experiment.")
def experiment_dag(
    pipeline: str, experiment: str, nproc: int, workdir: str, profile: str, overrides: list, mlflow_uri: str,
    image: str, validation_report: dsl.Input[dsl.HTML], manifest: dsl.Input[dsl.Dataset],
):  # fmt: skip
    ctx = {"workdir": workdir, "profile": profile, "overrides": overrides, "mlflow_uri": mlflow_uri}
    job = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    splits = _step(make_splits(pipeline=pipeline, experiment=experiment, job_id=job, image=image,
                               validation_report=validation_report, manifest=manifest, **ctx), image)  # fmt: skip
    folds = train_folds(folds=splits.outputs["Output"], experiment=experiment, nproc=nproc, image=image, **ctx)
    folds.set_display_name("train folds")
    aggregated = _step(aggregate(experiment=experiment, job_id=job, **ctx), image).after(folds)
    report = _step(
        evaluate(pipeline=pipeline, experiment=experiment, job_id=job, aggregated=aggregated.outputs["metrics"], **ctx),
        image,
    )
    registered = _step(
        register(pipeline=pipeline, experiment=experiment, job_id=job, report=report.outputs["report"], **ctx), image
    )
    calibrated = _step(calibrate(pipeline=pipeline, job_id=job, model=registered.outputs["model"], **ctx), image)
    _step(promote(pipeline=pipeline, job_id=job, model=registered.outputs["model"],
                  calibration=calibrated.outputs["metrics"], **ctx), image)  # fmt: skip


def build(name: str):
    """The ``name`` pipeline (``ich``, ``covid`` or ``cxr``) with its defaults from params.yaml."""
    defaults = list(PIPELINE_EXPERIMENTS[name])

    @dsl.pipeline(
        name=f"medmlops-{name}",
        description=f"medmlops {name}: validate → preprocess → splits → folds (GPU) → aggregate → evaluate → register → calibrate → promote.",
    )
    def pipeline(
        profile: str = PARAMS.profile,
        experiments: list = defaults,  # noqa: B006 - kfp reads the default from the signature; never mutated
        data_rev: str = "",
        data_remote: str = "",
        mlflow_uri: str = "",
        image: str = BASE_IMAGE,
        workdir: str = KF.workdir,
        overrides: list = list(KF.overrides),  # noqa: B006 - as experiments
        nproc: int = 0,
    ):
        """Inputs: profile; experiments (default the paper's proposed model); data version (``data_rev``: DVC md5 or
        git rev, empty for data.dvc; ``data_remote``: DVC remote to pull it from); MLflow URI (empty: the Secret);
        image (tag); workdir and overrides (cluster defaults); nproc (processes per fold: 0 = every GPU the
        train step gets from params kubeflow.train.accelerator_count, DDP when > 1)."""
        ctx = {"workdir": workdir, "profile": profile, "overrides": overrides, "mlflow_uri": mlflow_uri}
        checked = _step(validate_data(pipeline=name, experiments=experiments, data_rev=data_rev,
                                      data_remote=data_remote, **ctx), image, cache=True)  # fmt: skip
        prepared = _step(preprocess(pipeline=name, experiments=experiments, data_version=checked.outputs["Output"], **ctx),
                         image, cache=True)  # fmt: skip
        with dsl.ParallelFor(experiments) as experiment:
            experiment_dag(
                pipeline=name, experiment=experiment, nproc=nproc, image=image,
                validation_report=checked.outputs["report"], manifest=prepared.outputs["manifest"], **ctx,
            )  # fmt: skip

    pipeline.__name__ = f"{name}_pipeline"
    return pipeline
