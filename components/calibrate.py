"""Calibrate: INFORMER's per-class flag thresholds for the registered candidate, before promotion."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def calibrate(
    pipeline: str,
    job_id: str,
    workdir: str,
    profile: str,
    overrides: list,
    mlflow_uri: str,
    model: dsl.Input[dsl.Model],
    report: dsl.Output[dsl.HTML],
    metrics: dsl.Output[dsl.Metrics],
):
    """Fit tau per class on the version's validation split (saliency methods, direction, TTA from params
    ``informer:``) and store it with the version; write the thresholds table and log validation F1."""
    import json

    from medmlops.pipeline_steps import StepContext, calibrate_step

    with open(model.path) as f:
        pointer = json.load(f)
    ctx = StepContext(workdir, profile, overrides, mlflow_uri)
    values = calibrate_step(ctx, pipeline, pointer["family"], pointer["version"], job_id, report.path)
    for name, value in values.items():
        metrics.log_metric(name, value)
