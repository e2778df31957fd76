"""Evaluate: the report of the paper's tables and figures for the experiment, under the pipeline run."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    pipeline: str,
    experiment: str,
    job_id: str,
    workdir: str,
    profile: str,
    overrides: list,
    mlflow_uri: str,
    aggregated: dsl.Input[dsl.Metrics],
    report: dsl.Output[dsl.HTML],
) -> str:
    """Write the evaluation report (tables, box plots, bootstrap CIs; saliency and tabular models for ICH), log it
    to MLflow under the pipeline run, and return its folder. ``aggregated`` orders it after the aggregation."""
    from medmlops.pipeline_steps import StepContext, evaluate_step

    ctx = StepContext(workdir, profile, overrides, mlflow_uri)
    return evaluate_step(ctx, pipeline, [experiment], job_id, report.path)
