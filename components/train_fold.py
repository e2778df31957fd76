"""Train one fold: on one (GPU) node, DDP over all its GPUs when ``nproc`` > 1."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_fold(
    experiment: str,
    fold: int,
    job_id: str,
    nproc: int,
    workdir: str,
    profile: str,
    overrides: list,
    mlflow_uri: str,
    metrics: dsl.Output[dsl.Metrics],
):
    """Train, validate (early stopping, best checkpoint) and test fold ``fold`` as a nested MLflow run of the
    experiment run; resumes from the fold's last checkpoint on the data volume if the step is retried."""
    from medmlops.pipeline_steps import StepContext, train_fold_step

    values = train_fold_step(StepContext(workdir, profile, overrides, mlflow_uri), experiment, fold, job_id, nproc)
    for name, value in values.items():
        if value == value:  # NaN (a metric undefined on this fold) is not a valid Metrics value
            metrics.log_metric(f"test_{name}", float(value))
