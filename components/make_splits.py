"""Make splits: the experiment's CV splits and its MLflow run under the pipeline run."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def make_splits(
    pipeline: str,
    experiment: str,
    job_id: str,
    image: str,
    workdir: str,
    profile: str,
    overrides: list,
    mlflow_uri: str,
    validation_report: dsl.Input[dsl.HTML],
    manifest: dsl.Input[dsl.Dataset],
    splits: dsl.Output[dsl.Dataset],
) -> list:
    """Save the splits (same data + params + seed → same splits), open the experiment's MLflow run nested under the
    pipeline run of ``job_id`` (which records the data version, the image and the upstream reports); return the folds.

    The data version arrives as ``manifest`` metadata: kfp 2.16's local runner replaces task-output parameters
    passed into a ``dsl.ParallelFor`` body by the loop item, artifacts pass intact.
    """
    from medmlops.pipeline_steps import StepContext, prepare_step

    ctx = StepContext(workdir, profile, overrides, mlflow_uri)
    upstream = {"validation": validation_report.path, "preprocess": manifest.path}
    data_version = str(manifest.metadata.get("data_version", ""))
    return prepare_step(ctx, pipeline, experiment, job_id, data_version, image, upstream, splits.path)
