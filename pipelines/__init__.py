"""Kubeflow pipelines: ``ich``, ``covid`` and ``cxr`` (one module each), compiled to ``pipelines/compiled/*.yaml``."""

PIPELINES = ("ich", "covid", "cxr")
