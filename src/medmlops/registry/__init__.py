"""MLflow tracking, model registration with its contract, promotion gates and rollback.

* :mod:`~medmlops.registry.contract`: ``ModelContract`` (+ ``TaskSpec``, ``InputSpec``), the JSON document that
  travels with every registered version; serving and monitoring read shapes, names and thresholds from it.
* :mod:`~medmlops.registry.tracking`: ``configure`` (SQLite under ``.medmlops/`` unless
  ``registry.tracking_uri`` or ``$MLFLOW_TRACKING_URI`` says otherwise), experiments, provenance
  (``git_commit``, ``data_version``), ``register_model`` (alias ``candidate``) and ``load_model``.
* :mod:`~medmlops.registry.promotion`: ``promote`` (gates from ``params.yaml`` ``registry.gates``; moves
  ``champion``), ``rollback`` and ``list_versions``.

Names are re-exported lazily: importing the contract alone (serving, monitoring) does not import MLflow or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "contract": ("ContractError", "InputGate", "InputSpec", "ModelContract", "TaskSpec", "SCHEMA_VERSION"),
    "tracking": (
        "CONTRACT_FILE",
        "ModelNotFoundError",
        "RegistrationError",
        "TrackingConfigError",
        "configure",
        "data_version",
        "get_or_create_experiment",
        "git_commit",
        "load_contract",
        "load_model",
        "log_dict_artifact",
        "register_model",
        "resolve_tracking_uri",
        "resolve_version",
    ),
    "promotion": ("PromotionError", "PromotionResult", "list_versions", "promote", "rollback"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "CONTRACT_FILE",
    "SCHEMA_VERSION",
    "ContractError",
    "InputGate",
    "InputSpec",
    "ModelContract",
    "ModelNotFoundError",
    "PromotionError",
    "PromotionResult",
    "RegistrationError",
    "TaskSpec",
    "TrackingConfigError",
    "configure",
    "data_version",
    "get_or_create_experiment",
    "git_commit",
    "list_versions",
    "load_contract",
    "load_model",
    "log_dict_artifact",
    "promote",
    "register_model",
    "resolve_tracking_uri",
    "resolve_version",
    "rollback",
]

if TYPE_CHECKING:
    from medmlops.registry.contract import SCHEMA_VERSION, ContractError, InputGate, InputSpec, ModelContract, TaskSpec
    from medmlops.registry.promotion import PromotionError, PromotionResult, list_versions, promote, rollback
    from medmlops.registry.tracking import (
        CONTRACT_FILE,
        ModelNotFoundError,
        RegistrationError,
        TrackingConfigError,
        configure,
        data_version,
        get_or_create_experiment,
        git_commit,
        load_contract,
        load_model,
        log_dict_artifact,
        register_model,
        resolve_tracking_uri,
        resolve_version,
    )


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'medmlops.registry' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"medmlops.registry.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
