from __future__ import annotations

import pytest
import torch

from medmlops.models.backbones import BACKBONES, average_state_dicts, build_backbone, feature_layer

# The four biggest (by parameters and CPU time) are marked slow but still run in CI.
SLOW = {"densenet161", "densenet201", "resnet101", "wide_resnet50_2"}
EXPECTED_DIMS = {
    "densenet121": 1024, "densenet161": 2208, "densenet169": 1664, "densenet201": 1920,
    "efficientnet_b0": 1280, "efficientnet_b1_pruned": 1280, "efficientnet_es": 1280, "efficientnet_es_pruned": 1280,
    "efficientnet_lite0": 1280, "googlenet": 1024, "mobilenet_v2": 1280,
    "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "wide_resnet50_2": 2048,
    "shufflenet_v2_x0_5": 1024, "shufflenet_v2_x1_0": 1024,
}  # fmt: skip


def test_the_papers_18_backbones_are_registered():
    assert len(BACKBONES) == 18 and set(BACKBONES) == set(EXPECTED_DIMS)
    # timm wherever it has the architecture; torchvision only for the two families timm lacks.
    assert {k for k, (lib, _) in BACKBONES.items() if lib == "torchvision"} == {
        "googlenet", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
    }  # fmt: skip


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(EXPECTED_DIMS)]
)
def test_backbone_returns_pooled_features(name):
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    assert backbone.num_features == EXPECTED_DIMS[name]
    captured = {}
    handle = feature_layer(backbone).register_forward_hook(lambda m, i, o: captured.setdefault("map", o))
    with torch.no_grad():
        features = backbone(torch.rand(2, 3, 64, 64))
    handle.remove()
    assert features.shape == (2, EXPECTED_DIMS[name]) and torch.isfinite(features).all()
    # The Grad-CAM layer's output is the map that is pooled into the features.
    assert captured["map"].ndim == 4 and captured["map"].shape[1] == EXPECTED_DIMS[name]


def test_torchvision_backbone_takes_other_channel_counts():
    backbone = build_backbone("shufflenet_v2_x0_5", in_chans=1).eval()
    with torch.no_grad():
        assert backbone(torch.rand(2, 1, 64, 64)).shape == (2, 1024)


def test_pretrained_without_weights_anywhere_is_refused(tmp_path):
    # Nothing is downloaded: no weights_path, an empty store and empty caches (tests/models/conftest.py) → one sentence.
    with pytest.raises(FileNotFoundError, match=r"no ImageNet weights for backbone 'resnet18'.*resnet18\.pth does not"):
        build_backbone("resnet18", pretrained=True, weights_dir=tmp_path)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'.*resnet18"):
        build_backbone("resnet19")


@pytest.mark.parametrize("name", ["resnet18", "shufflenet_v2_x0_5"])
def test_weights_path_round_trip(tmp_path, name):
    torch.manual_seed(1)
    source = build_backbone(name).eval()
    state = source.state_dict()
    # A real checkpoint carries its ImageNet classifier: it must be ignored, not rejected.
    state["fc.weight"] = torch.zeros(1000, source.num_features)  # both libraries name this classifier `fc`
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    torch.manual_seed(2)
    fresh = build_backbone(name)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(x), source(x))
    loaded = build_backbone(name, pretrained=True, weights_path=str(path)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_weights_file_missing_a_key_names_the_file_and_key(tmp_path):
    state = build_backbone("resnet18").state_dict()
    del state["layer2.0.conv1.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"partial\.pt lacks backbone key 'layer2\.0\.conv1\.weight'"):
        build_backbone("resnet18", weights_path=path)


def test_weights_file_for_another_architecture_is_named(tmp_path):
    path = tmp_path / "r34.pt"
    torch.save(build_backbone("resnet34").state_dict(), path)
    with pytest.raises(ValueError, match=r"r34\.pt has key 'layer1\.2\.conv1\.weight'"):
        build_backbone("resnet18", weights_path=path)


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights_path .*nope\.pt does not exist"):
        build_backbone("resnet18", pretrained=True, weights_path=tmp_path / "nope.pt")


def test_average_state_dicts_means_floats_and_keeps_integers_of_the_first():
    a = {"w": torch.tensor([1.0, 3.0]), "bn.num_batches_tracked": torch.tensor(10)}
    b = {"w": torch.tensor([3.0, 7.0]), "bn.num_batches_tracked": torch.tensor(99)}
    avg = average_state_dicts(a, b)
    assert torch.equal(avg["w"], torch.tensor([2.0, 5.0]))
    assert avg["bn.num_batches_tracked"].item() == 10 and avg["bn.num_batches_tracked"].dtype == torch.int64
    avg["bn.num_batches_tracked"] += 1
    assert a["bn.num_batches_tracked"].item() == 10  # a fresh tensor, not an alias of a's


def test_average_of_two_backbones_loads_into_a_third():
    torch.manual_seed(0)
    a, b = build_backbone("resnet18"), build_backbone("resnet18")
    avg = average_state_dicts(a.state_dict(), b.state_dict())
    key = "layer1.0.conv1.weight"
    assert torch.allclose(avg[key], (a.state_dict()[key] + b.state_dict()[key]) / 2)
    build_backbone("resnet18").load_state_dict(avg, strict=True)


def test_average_state_dicts_rejects_different_architectures():
    with pytest.raises(ValueError, match="key 'extra' is only in the second"):
        average_state_dicts({"w": torch.zeros(1)}, {"w": torch.zeros(1), "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="'w' has shape"):
        average_state_dicts({"w": torch.zeros(1)}, {"w": torch.zeros(2)})
