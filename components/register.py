"""Register: ``FAMILY@candidate`` with its contract, then the promotion gates of ``params.yaml``."""

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
    """Register the best fold's model with its contract (data version, metrics, thresholds) as a candidate and let
    the core's gates decide promotion to champion; return the gates' message. Never cached."""
    import json

    from medmlops.pipeline_steps import StepContext, register_step

    out = register_step(StepContext(workdir, profile, overrides, mlflow_uri), pipeline, experiment, job_id)
    out["model_uri"] = f"models:/{out['family']}/{out['version']}" if out["version"] else ""
    with open(model.path, "w") as f:  # a pointer to the registered version (the weights live in MLflow)
        json.dump(out, f)
    model.metadata.update(out)
    return out["message"]
