from __future__ import annotations

import pytest
import torch

from medmlops.models import build_model, list_models

TASKS = {"prognosis": 1, "gcs_ordinal": 2, "age_binary": 1}


@pytest.mark.parametrize("name", ["densenet121_3d", "perez_cnn3d"])
def test_uniform_surface_and_task_outputs(name):
    model = build_model(name, tasks=TASKS).eval()
    x = torch.rand(2, 1, 40, 40, 40)
    out = model(x)
    assert list(out) == list(TASKS) and {k: tuple(v.shape) for k, v in out.items()} == {
        k: (2, n) for k, n in TASKS.items()
    }
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)
    heads = model.forward_head(features)
    assert torch.allclose(heads["prognosis"], out["prognosis"])
    assert isinstance(model.saliency_layer, torch.nn.Conv3d)


def test_densenet_follows_the_paper_trunk():
    model = build_model("densenet121_3d", tasks={"prognosis": 1})
    assert model.num_features == 1024
    # No in-place ReLU anywhere: Captum's hooks need it (docs/library-notes.md).
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert model.saliency_layer.in_channels == 1024  # the last transition's convolution


def test_registry_lists_and_rejects():
    assert {"densenet121_3d", "perez_cnn3d"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", tasks={"prognosis": 1})


@pytest.mark.parametrize("profile", ["smoke", "demo", "paper"])
def test_every_experiment_accepts_its_profile_shape(params_file, profile):
    """Each experiment's model must take the profile's preprocessed shape (the Perez CNN needs ≥ 38 per axis)."""
    from medmlops.config import load_params
    from medmlops.training.tasks import resolve_tasks

    params = load_params(params_file, profile=profile)
    shape = params.preprocess.ich.spatial_size
    min_sizes = {}
    for name, exp in params.experiments.items():
        tasks = resolve_tasks(exp.dataset, list(exp.tasks))
        assert exp.primary_task in tasks, name
        if exp.model not in min_sizes:  # the minimum size depends on the architecture, not on the heads
            min_sizes[exp.model] = build_model(
                exp.model, tasks={t: d.out_features for t, d in tasks.items()}
            ).min_input_size
        assert min(shape) >= min_sizes[exp.model], f"{name} ({exp.model}) cannot take {shape} in profile {profile}"
    if profile == "smoke":  # cheap enough to run the real forward pass for the smallest model
        model = build_model("perez_cnn3d", tasks={"prognosis": 1}).eval()
        assert model(torch.zeros(1, 1, *shape))["prognosis"].shape == (1, 1)
