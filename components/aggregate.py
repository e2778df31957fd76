"""Aggregate folds: mean ± SD, bootstrap CIs and curves, read back from MLflow (not ``dsl.Collected``)."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def aggregate(
    experiment: str,
    job_id: str,
    workdir: str,
    profile: str,
    overrides: list,
    mlflow_uri: str,
    metrics: dsl.Output[dsl.Metrics],
):
    """Aggregate the finished fold runs of the experiment run in MLflow (folds trained on any node) and close it."""
    from medmlops.pipeline_steps import StepContext, aggregate_step

    summary = aggregate_step(StepContext(workdir, profile, overrides, mlflow_uri), experiment, job_id)
    for name, value in summary.items():
        if value == value:
            metrics.log_metric(name, float(value))
