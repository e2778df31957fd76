from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from medmlops.models import build_model, list_models
from medmlops.models.cxr import FindingsDenseNet121, MdmtModel

MDMT_TASKS = {"prognosis": 2, "severity": 4}


@pytest.fixture(scope="module")
def mdmt_resnet18():
    torch.manual_seed(0)
    return MdmtModel("resnet18", tasks=MDMT_TASKS).eval()


@pytest.fixture(scope="module")
def findings_model():
    torch.manual_seed(0)
    return FindingsDenseNet121().eval()


def test_mdmt_outputs_one_logit_vector_per_task(mdmt_resnet18):
    with torch.no_grad():
        out = mdmt_resnet18(torch.rand(2, 3, 64, 64))
    assert list(out) == ["prognosis", "severity"]
    assert out["prognosis"].shape == (2, 2) and out["severity"].shape == (2, 4)


def test_mdmt_heads_are_f_128_32_k_mlps_with_dropout(mdmt_resnet18):
    for task, k in MDMT_TASKS.items():
        head = mdmt_resnet18.heads[task]
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(512, 128), (128, 32), (32, k)]
        assert [m.p for m in head.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
        assert sum(isinstance(m, nn.ReLU) for m in head.modules()) == 2


def test_mdmt_uniform_surface(mdmt_resnet18):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = mdmt_resnet18(x)
        features = mdmt_resnet18.forward_features(x)
        assert features.shape == (2, mdmt_resnet18.num_features) == (2, 512)
        assert torch.equal(mdmt_resnet18.forward_head(features, pre_logits=True), features)
        heads = mdmt_resnet18.forward_head(features)
    for task in MDMT_TASKS:
        assert torch.allclose(heads[task], out[task])
    assert mdmt_resnet18.saliency_layer is mdmt_resnet18.backbone.layer4
    assert not any(getattr(m, "inplace", False) for m in mdmt_resnet18.modules())


def test_mdmt_dropout_is_active_only_in_training():
    torch.manual_seed(0)
    model = MdmtModel("shufflenet_v2_x0_5", tasks={"prognosis": 2})
    features = torch.rand(4, model.num_features)
    model.train()
    assert not torch.allclose(model.forward_head(features)["prognosis"], model.forward_head(features)["prognosis"])
    model.eval()
    assert torch.equal(model.forward_head(features)["prognosis"], model.forward_head(features)["prognosis"])


def test_mdmt_through_the_registry_with_a_torchvision_backbone():
    assert {"mdmt", "densenet121_findings"} <= set(list_models())
    model = build_model("mdmt", backbone="googlenet", tasks={"prognosis": 2, "severity": 4}).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"prognosis": (2, 2), "severity": (2, 4)}
    assert model.saliency_layer is model.backbone.inception5b


def test_mdmt_registry_builds_resnet18_at_its_minimum_size():
    model = build_model("mdmt", backbone="resnet18", tasks={"prognosis": 2}).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, model.min_input_size, model.min_input_size))
    assert list(out) == ["prognosis"] and out["prognosis"].shape == (2, 2)


def test_mdmt_backbone_loads_local_weights(tmp_path):
    torch.manual_seed(3)
    donor = MdmtModel("resnet18").eval()
    path = tmp_path / "stl_backbone.pt"
    torch.save(donor.backbone.state_dict(), path)
    model = build_model("mdmt", backbone="resnet18", tasks=MDMT_TASKS, pretrained=True, weights_path=path).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), donor.forward_features(x))


def test_findings_outputs_five_logits_and_has_no_inplace_modules(findings_model):
    with torch.no_grad():
        out = findings_model(torch.rand(2, 3, 64, 64))
    assert list(out) == ["findings"] and out["findings"].shape == (2, 5)
    assert findings_model.num_features == 1024 and findings_model.classifier.in_features == 1024
    inplace = [name for name, m in findings_model.named_modules() if getattr(m, "inplace", False)]
    assert inplace == []
    # Not vacuous: timm builds this DenseNet's ReLUs (inside BatchNormAct2d) in place; they are now switched off.
    assert sum(isinstance(m, nn.ReLU) for m in findings_model.modules()) > 100


def test_findings_uniform_surface_and_registry(findings_model):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = findings_model.forward_features(x)
        assert features.shape == (2, 1024)
        assert torch.equal(findings_model.forward_head(features, pre_logits=True), features)
        assert torch.allclose(findings_model.forward_head(features)["findings"], findings_model(x)["findings"])
    # The registry builds the same family from a contract's tasks (the forward pass is covered above).
    model = build_model("densenet121_findings", tasks={"findings": 5})
    assert isinstance(model, FindingsDenseNet121) and model.tasks == {"findings": 5}
    assert model.classifier.out_features == 5
    with pytest.raises(ValueError, match="one multi-label head"):
        build_model("densenet121_findings", tasks={"a": 1, "b": 1})


def test_findings_supports_captum_grad_cam_and_input_x_gradient(findings_model):
    from captum.attr import InputXGradient, LayerGradCam

    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)

    def logits(inp: torch.Tensor) -> torch.Tensor:
        return findings_model(inp)["findings"]

    cam = LayerGradCam(logits, findings_model.saliency_layer).attribute(x, target=1)
    assert cam.shape == (2, 1, 2, 2) and torch.isfinite(cam).all() and cam.abs().sum() > 0
    saliency = InputXGradient(logits).attribute(x.clone().requires_grad_(), target=1)
    assert saliency.shape == x.shape and torch.isfinite(saliency).all() and saliency.abs().sum() > 0
    # Class-specific: another target gives another map (what INFORMER's distinctiveness relies on).
    other = InputXGradient(logits).attribute(x.clone().requires_grad_(), target=3)
    assert not torch.allclose(saliency, other)
