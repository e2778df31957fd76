"""Validate data: the DVC data version (pulled from the remote when given) and Great Expectations on every source."""

from kfp import dsl

from components._image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def validate_data(
    pipeline: str,
    experiments: list,
    data_rev: str,
    data_remote: str,
    workdir: str,
    profile: str,
    overrides: list,
    mlflow_uri: str,
    report: dsl.Output[dsl.HTML],
) -> str:
    """Check the data is DVC version ``data_rev`` (md5, git rev, or empty for data.dvc), validate it; return the md5.

    Fails the run, naming the datasets and checks, when the version differs or validation fails.
    """
    from medmlops.pipeline_steps import StepContext, validate_step

    ctx = StepContext(workdir, profile, overrides, mlflow_uri)
    return validate_step(ctx, pipeline, experiments, data_rev, data_remote, report.path)
