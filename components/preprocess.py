"""Preprocess: MONAI chains of every source dataset into the cache on the data volume."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def preprocess(
    pipeline: str,
    experiments: list,
    data_version: str,
    workdir: str,
    profile: str,
    overrides: list,
    mlflow_uri: str,
    manifest: dsl.Output[dsl.Dataset],
) -> dict:
    """Preprocess the sources of ``experiments`` (cached by config hash); write the joint manifest; return counts.

    ``data_version`` (the validated md5) is part of the inputs so that Kubeflow's cache reuses this step only
    for the same data.
    """
    from medmlops.pipeline_steps import StepContext, preprocess_step

    manifest.metadata["data_version"] = data_version
    return preprocess_step(StepContext(workdir, profile, overrides, mlflow_uri), pipeline, experiments, manifest.path)
