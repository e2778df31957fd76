"""The architectures, by name: ``build_model(name, **kwargs)`` (not the MLflow model registry: that is ``medmlops.registry``).

Every model has the same surface (timm's): ``forward_features(x)``, ``forward_head(features, pre_logits=False)``
and ``forward(x)``; multi-task models return ``dict[str, Tensor]`` keyed by task name, in the order of the
contract's tasks. Captum and INFORMER rely on this surface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ARCHITECTURES[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    _import_all()
    return sorted(_ARCHITECTURES)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    _import_all()
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown model '{name}' (expected one of: {', '.join(sorted(_ARCHITECTURES))})")
    return _ARCHITECTURES[name](**kwargs)


def _import_all() -> None:
    from medmlops.models import cxr, ich  # noqa: F401  (registers their factories)
