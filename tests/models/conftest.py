"""Every model test sees empty library caches: a developer's own timm/torchvision downloads must not decide a test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _empty_weight_caches(tmp_path_factory, monkeypatch):
    import huggingface_hub.constants

    root = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root / "hf"))
    return root
