"""Promote: the gates of ``params.yaml`` decide whether the calibrated candidate becomes champion."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def promote(
    pipeline: str,
    job_id: str,
    workdir: str,
    profile: str,
    overrides: list,
    mlflow_uri: str,
    model: dsl.Input[dsl.Model],
    calibration: dsl.Input[dsl.Metrics],
) -> str:
    """Run the core's promotion gates on the registered version (``calibration`` orders this after calibration) and
    close the MLflow pipeline run; return the gates' message. Never cached."""
    import json

    from medmlops.pipeline_steps import StepContext, promote_step

    with open(model.path) as f:
        pointer = json.load(f)
    ctx = StepContext(workdir, profile, overrides, mlflow_uri)
    return promote_step(ctx, pipeline, pointer["family"], pointer["version"], job_id)["message"]
