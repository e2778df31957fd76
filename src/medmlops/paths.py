"""Where the platform writes its run-time state: one folder, ``.medmlops/`` in the working directory unless
``$MEDMLOPS_STATE_DIR`` names another.

The defaults that live there (the MLflow SQLite store, the monitoring database, serving's spool, training runs,
MLflow artifacts, the demo's workdir, the weights store, the local pipeline runner's files) all start with
``.medmlops/``; :func:`state_path` moves such a path into ``$MEDMLOPS_STATE_DIR``. On a developer machine nothing
changes. The container images set ``MEDMLOPS_STATE_DIR=/home/app/.medmlops`` (a writable emptyDir in the
Kubernetes pods), because their working directory ``/app`` is root-owned and the root filesystem read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_ENV = "MEDMLOPS_STATE_DIR"
DEFAULT_STATE_DIR = ".medmlops"


def state_dir() -> Path:
    """``$MEDMLOPS_STATE_DIR`` when set (non-empty), else ``.medmlops`` (relative: the working directory's)."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def state_path(path: str | Path) -> str:
    """``path`` with a leading ``.medmlops`` component replaced by :func:`state_dir`; any other path unchanged.

    >>> state_path("data/runs")
    'data/runs'
    """
    parts = Path(path).parts
    if not parts or parts[0] != DEFAULT_STATE_DIR or not os.environ.get(STATE_DIR_ENV):
        return str(path)
    return str(state_dir().joinpath(*parts[1:]))
