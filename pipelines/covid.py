"""The ``covid`` pipeline (default experiment: see ``medmlops.pipeline_steps.PIPELINE_EXPERIMENTS``)."""

from pipelines._build import build

pipeline = build("covid")
