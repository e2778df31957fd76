"""Kubeflow components: one file per pipeline step, each a typed signature, a docstring and one call into
``medmlops.pipeline_steps``. They run in the project's image (``params.yaml`` ``images:``; no package install at
run time, ``install_kfp_package=False``), so a cluster runs exactly the code the tests ran.

Every component takes the same four context inputs: ``workdir`` (the project root on the node), ``profile``,
``overrides`` (``key=value`` params overrides) and ``mlflow_uri`` (empty: ``MLFLOW_TRACKING_URI`` from the
environment, which the cluster sets from a Kubernetes Secret).
"""

from components._image import BASE_IMAGE

__all__ = ["BASE_IMAGE"]
