"""Shared fixtures: tiny simulated datasets (smoke sizes), generated once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOKE = {
    "ich": {"n": 12, "shape": (16, 64, 64)},
    "aiforcovid": {"n": 12, "shape": (64, 64)},
    "brixia": {"n": 12, "shape": (64, 64)},
    "chexpert": {"n": 12, "shape": (64, 64), "n_valid": 8},
}


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """``smoke_data("ich")``: that dataset at smoke size, generated once per session on first use.

    Shared between tests: copy before modifying (see ``smoke_copy``).
    """
    from medmlops.data.simulate import generate

    root = tmp_path_factory.mktemp("smoke")

    def get(dataset: str) -> Path:
        target = root / dataset
        if not target.exists():
            generate(dataset, target, seed=7, progress=False, **SMOKE[dataset])
        return target

    return get


@pytest.fixture
def smoke_copy(smoke_data, tmp_path):
    """A private, modifiable copy of one smoke dataset: ``smoke_copy("ich")``."""

    def copy(dataset: str) -> Path:
        target = tmp_path / dataset
        shutil.copytree(smoke_data(dataset), target)
        return target

    return copy


@pytest.fixture(scope="session")
def params_file() -> Path:
    return REPO / "params.yaml"
