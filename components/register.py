"""Register: ``FAMILY@candidate`` with its model contract (calibration and promotion follow)."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register(
    pipeline: str,
    experiment: str,
    job_id: str,
    workdir: str,
    profile: str,
    overrides: list,
    mlflow_uri: str,
    report: dsl.Input[dsl.HTML],
    model: dsl.Output[dsl.Model],
) -> str:
    """Register the best fold's model with its contract (data version, metrics, thresholds) as a candidate; the
    ``model`` artifact points at the version (the weights live in MLflow). Returns the version ("" if none)."""
    import json

    from medmlops.pipeline_steps import StepContext, register_step

    out = register_step(StepContext(workdir, profile, overrides, mlflow_uri), pipeline, experiment, job_id)
    out["model_uri"] = f"models:/{out['family']}/{out['version']}" if out["version"] else ""
    with open(model.path, "w") as f:
        json.dump(out, f)
    model.metadata.update(out)
    return out["version"]
