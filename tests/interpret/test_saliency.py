"""One saliency module for both consumers: INFORMER's batched class maps equal Captum's per-class attributions (the
issue's contract), for 2D and 3D models; the ICH report's guided maps are Captum's on the one head asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from medmlops.informer.scores import distinctiveness
from medmlops.interpret.saliency import (
    GUIDED_METHODS,
    METHODS,
    LogitsModel,
    captum_class_saliency,
    class_saliency,
    lrp_ready,
    saliency,
)
from medmlops.models.cxr import FindingsDenseNet121
from medmlops.models.ich import densenet121_3d


@pytest.fixture(scope="module")
def cxr_model() -> LogitsModel:
    torch.manual_seed(0)
    return LogitsModel(FindingsDenseNet121(num_classes=5), ["findings"]).eval()


@pytest.fixture(scope="module")
def ich_model() -> LogitsModel:
    torch.manual_seed(1)
    # The ICH multi-task model: prognosis (1 logit), ordinal GCS (2 logits), age (1 logit) = 4 classes.
    model = densenet121_3d({"prognosis": 1, "gcs_ordinal": 2, "age_binary": 1})
    return LogitsModel(model, ["prognosis", "gcs_ordinal", "age_binary"]).eval()


@pytest.mark.parametrize("method", METHODS)
def test_batched_maps_equal_captum_per_class_2d(cxr_model, method):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    batched = class_saliency(cxr_model, x, method)
    reference = captum_class_saliency(cxr_model, x, method)
    channels = 1 if method == "gradcam" else 3
    assert batched.shape == (2, 5, channels, 32, 32)
    assert float(reference.abs().max()) > 0, "an all-zero map would make the comparison meaningless"
    torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-6 * float(reference.abs().max()))
    # Different classes have different maps (otherwise distinctiveness is 0 everywhere).
    assert not torch.allclose(batched[:, 0], batched[:, 1])


@pytest.mark.parametrize("method", ["ixg", "lrp", "gradcam"])
def test_batched_maps_equal_captum_per_class_3d(ich_model, method):
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(4))
    batched = class_saliency(ich_model, x, method)
    reference = captum_class_saliency(ich_model, x, method)
    assert batched.shape[:2] == (1, 4) and batched.shape[-3:] == (32, 32, 32)
    torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-6 * float(reference.abs().max()))


def test_ixg_returns_the_same_forward_logits(cxr_model):
    x = torch.rand(3, 3, 32, 32)
    maps, logits = class_saliency(cxr_model, x, "ixg", return_logits=True)
    with torch.no_grad():
        torch.testing.assert_close(logits, cxr_model(x))
    assert maps.shape == (3, 5, 3, 32, 32)


def test_lrp_relevance_is_roughly_conserved(cxr_model):
    """LRP-epsilon: the relevance summed over the input approximates the explained logit (biases absorb some)."""
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    maps, logits = class_saliency(cxr_model, x, "lrp"), cxr_model(x).detach()
    total = maps.flatten(2).sum(-1)
    r = np.corrcoef(total.flatten().numpy(), logits.flatten().numpy())[0, 1]
    assert r > 0.8, f"relevance sums do not track the logits (r = {r:.2f})"


def test_lrp_ready_keeps_the_forward_pass(cxr_model):
    import copy

    x = torch.rand(2, 3, 32, 32)
    model = copy.deepcopy(cxr_model)
    with torch.no_grad():
        before = model(x)
        after = lrp_ready(model)(x)
    torch.testing.assert_close(before, after)


def test_distinctiveness_of_real_maps_is_in_range(cxr_model):
    x = torch.rand(2, 3, 32, 32)
    d = distinctiveness(class_saliency(cxr_model, x, "ixg"))
    assert d.shape == (2, 5)
    assert np.all(d >= 0) and np.all(d <= 2 * 4)


def test_unknown_method_is_named(cxr_model):
    with pytest.raises(ValueError, match="unknown saliency method 'shap'"):
        class_saliency(cxr_model, torch.rand(1, 3, 32, 32), "shap")


# ---------------------------------------------------------------------------------------------------------------
# One head, one target: the ICH report's figures
# ---------------------------------------------------------------------------------------------------------------


class _Head(nn.Module):
    """The reference wrapper, written out: the model's ``head`` logits only."""

    def __init__(self, model: nn.Module, head: str) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.head]


@pytest.mark.parametrize("method", GUIDED_METHODS)
def test_head_saliency_is_captums_on_that_head_alone(method):
    from captum.attr import GuidedBackprop, GuidedGradCam

    torch.manual_seed(2)
    model = densenet121_3d({"prognosis": 1, "gcs_ordinal": 2}).train()
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(6))
    maps = saliency(model, x, "prognosis", method)
    assert model.training, "the model goes back to the mode it came in"
    model.eval()
    head = _Head(model, "prognosis")
    if method == "guided_backprop":
        reference = GuidedBackprop(head).attribute(x.clone().requires_grad_(True), target=0)
    else:
        reference = GuidedGradCam(head, model.saliency_layer).attribute(
            x.clone().requires_grad_(True), target=0, interpolate_mode="trilinear"
        )
    reference = reference.detach().numpy()
    assert maps.shape == x.shape and np.abs(reference).max() > 0
    np.testing.assert_allclose(maps, reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())
    other = saliency(model, x, "gcs_ordinal", method, target=1)
    assert not np.allclose(maps, other), "another head's logit gives another map"


def test_head_saliency_names_an_unknown_method(ich_model):
    with pytest.raises(ValueError, match="unknown saliency method 'shap'"):
        saliency(ich_model.model, torch.rand(1, 1, 32, 32, 32), "prognosis", "shap")
