"""The local ImageNet weights store (medmlops.models.weights): store files, the libraries' caches, clear errors."""

from __future__ import annotations

import pytest
import torch

from medmlops.errors import UserError
from medmlops.models import build_model
from medmlops.models.backbones import BACKBONES, build_backbone
from medmlops.models.weights import (
    HAS_SAFETENSORS,
    MissingWeightsError,
    WeightsError,
    cache_files,
    find_weights,
    imagenet_backbone,
    make_command,
    store_file,
)

X = torch.rand(2, 3, 32, 32)  # every backbone runs at 32 px (1x1 in its last stage): fast


def _save_fresh(name: str, path, seed: int = 1) -> torch.nn.Module:
    """A freshly built backbone (stand-in for ImageNet weights) saved as a library would: with its classifier."""
    torch.manual_seed(seed)
    source = build_backbone(name).eval()
    state = source.state_dict()
    classifier = "classifier" if name.startswith("densenet") else "fc"
    state[f"{classifier}.weight"] = torch.zeros(1000, source.num_features)
    state[f"{classifier}.bias"] = torch.zeros(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return source


def _features(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def test_store_files_are_named_by_the_library_names():
    assert store_file("resnet18", "w").as_posix() == "w/resnet18.pth"
    assert store_file("mobilenet_v2", "w").as_posix() == "w/mobilenetv2_100.pth"  # timm's name, not the paper's
    assert store_file("googlenet", "w", ".safetensors").as_posix() == "w/googlenet.safetensors"
    assert set(BACKBONES) >= {"densenet121", "googlenet"}


@pytest.mark.parametrize("name", ["densenet121", "shufflenet_v2_x0_5"])  # timm and torchvision
def test_a_store_file_gives_the_same_features_as_the_model_it_was_saved_from(tmp_path, name):
    source = _save_fresh(name, store_file(name, tmp_path))
    torch.manual_seed(2)
    loaded = build_backbone(name, pretrained=True, weights_dir=tmp_path)
    assert torch.equal(_features(loaded), _features(source))


@pytest.mark.skipif(not HAS_SAFETENSORS, reason="safetensors is not installed")
def test_a_safetensors_store_file_is_read(tmp_path):
    source = _save_fresh("resnet18", store_file("resnet18", tmp_path, ".safetensors"))
    assert find_weights("resnet18", tmp_path).origin == "weights_dir"
    assert torch.equal(_features(build_backbone("resnet18", pretrained=True, weights_dir=tmp_path)), _features(source))


def test_two_files_for_one_backbone_are_refused(tmp_path):
    if not HAS_SAFETENSORS:
        pytest.skip("safetensors is not installed")
    _save_fresh("resnet18", store_file("resnet18", tmp_path))
    _save_fresh("resnet18", store_file("resnet18", tmp_path, ".safetensors"))
    with pytest.raises(WeightsError, match=r"resnet18\.pth and .*resnet18\.safetensors are both .*keep one"):
        build_backbone("resnet18", pretrained=True, weights_dir=tmp_path)


def test_a_missing_file_is_one_sentence_naming_it_and_how_to_make_it(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        build_backbone("densenet121", pretrained=True, weights_dir=tmp_path / "store")
    message = str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, FileNotFoundError)
    assert f"{tmp_path / 'store' / 'densenet121.pth'} does not exist" in message
    assert "timm.create_model('densenet121', pretrained=True).state_dict(), 'densenet121.pth')" in message
    assert "\n" not in message and message.count(". ") == 0


def test_the_one_liner_for_a_torchvision_backbone_uses_torchvision():
    command = make_command("googlenet")
    assert "torchvision.models.googlenet(weights='DEFAULT').state_dict(), 'googlenet.pth'" in command


def test_the_torchvision_cache_is_found_under_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    (origin, path), *_ = cache_files("shufflenet_v2_x0_5")
    # torch.hub.load_state_dict_from_url's layout: $TORCH_HOME/hub/checkpoints/<file name of the weights URL>
    assert origin == "torchvision cache"
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / "shufflenetv2_x0.5-f707e7126e.pth"
    source = _save_fresh("shufflenet_v2_x0_5", path)
    found = find_weights("shufflenet_v2_x0_5", tmp_path / "empty-store")
    assert (found.path, found.origin) == (path, "torchvision cache")
    loaded = build_backbone("shufflenet_v2_x0_5", pretrained=True, weights_dir=tmp_path / "empty-store")
    assert torch.equal(_features(loaded), _features(source))


def test_the_timm_hugging_face_cache_is_found_without_network(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import timm

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id  # timm/resnet18.a1_in1k
    repo = tmp_path / "hf" / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    filename = "model.safetensors" if HAS_SAFETENSORS else "pytorch_model.bin"
    source = _save_fresh("resnet18", repo / "snapshots" / "0123abcd" / filename)
    found = find_weights("resnet18", tmp_path / "empty-store")
    assert found.origin == f"timm cache (Hugging Face hub {hub_id})" and found.path.name == filename
    assert torch.equal(
        _features(build_backbone("resnet18", pretrained=True, weights_dir=tmp_path / "e")), _features(source)
    )


def test_the_store_wins_over_the_cache_and_an_explicit_file_wins_over_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    (_, cached), *_ = cache_files("shufflenet_v2_x0_5")
    _save_fresh("shufflenet_v2_x0_5", cached, seed=1)
    in_store = _save_fresh("shufflenet_v2_x0_5", store_file("shufflenet_v2_x0_5", tmp_path / "store"), seed=2)
    explicit = _save_fresh("shufflenet_v2_x0_5", tmp_path / "mine.pt", seed=3)
    assert find_weights("shufflenet_v2_x0_5", tmp_path / "store").origin == "weights_dir"
    kwargs = {"pretrained": True, "weights_dir": tmp_path / "store"}
    assert torch.equal(_features(build_backbone("shufflenet_v2_x0_5", **kwargs)), _features(in_store))
    mine = build_backbone("shufflenet_v2_x0_5", weights_path=tmp_path / "mine.pt", **kwargs)
    assert torch.equal(_features(mine), _features(explicit))


def test_another_architectures_file_is_refused_with_a_clear_error(tmp_path):
    _save_fresh("resnet18", store_file("densenet121", tmp_path))  # resnet18's weights under densenet121's name
    with pytest.raises(WeightsError) as info:
        build_backbone("densenet121", pretrained=True, weights_dir=tmp_path)
    message = str(info.value)
    assert "does not fit backbone 'densenet121'" in message and "another architecture" in message
    assert "timm.create_model('densenet121', pretrained=True)" in message


def test_the_other_librarys_key_names_are_refused_not_loaded_in_part(tmp_path):
    import torchvision

    # torchvision's MobileNetV2 names its layers features.N…; timm's mobilenetv2_100 has conv_stem, blocks…
    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), store_file("mobilenet_v2", tmp_path))
    with pytest.raises(WeightsError, match=r"does not fit backbone 'mobilenet_v2'.*'conv_stem\.weight'.*'features\."):
        build_backbone("mobilenet_v2", pretrained=True, weights_dir=tmp_path)


def test_torchvision_densenet_key_names_load_into_timms_densenet(tmp_path):
    import torchvision

    torch.manual_seed(3)
    tv = torchvision.models.densenet121(weights=None).eval()
    # torchvision's published checkpoint keeps the legacy names ("norm.1.weight") that torchvision renames on load.
    legacy = {
        k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.") if "denselayer" in k else k: v
        for k, v in tv.state_dict().items()
    }
    torch.save(legacy, store_file("densenet121", tmp_path))
    loaded = build_backbone("densenet121", pretrained=True, weights_dir=tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(X), torch.flatten(torch.nn.functional.adaptive_avg_pool2d(
            torch.relu(tv.features(X)), 1), 1), atol=1e-5)  # fmt: skip


def test_a_file_without_a_state_dict_is_named(tmp_path):
    path = store_file("resnet18", tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"resnet18\.pth cannot be read as a state dict"):
        build_backbone("resnet18", pretrained=True, weights_dir=tmp_path)


def test_models_pass_the_store_through(tmp_path):
    source = _save_fresh("densenet121", store_file("densenet121", tmp_path))
    model = build_model("densenet121_findings", tasks={"findings": 5}, pretrained=True, weights_dir=tmp_path)
    with torch.no_grad():
        assert torch.equal(model.eval().forward_features(X), _features(source))
    with pytest.raises(MissingWeightsError, match=r"none/shufflenet_v2_x0_5\.pth does not exist"):
        build_model("mdmt", backbone="shufflenet_v2_x0_5", pretrained=True, weights_dir=tmp_path / "none")


def test_a_file_without_batchnorm_counters_loads(tmp_path):
    path = store_file("resnet18", tmp_path)
    source = _save_fresh("resnet18", path)
    torch.save({k: v for k, v in torch.load(path).items() if not k.endswith("num_batches_tracked")}, path)
    assert torch.equal(_features(build_backbone("resnet18", pretrained=True, weights_dir=tmp_path)), _features(source))


def test_which_models_have_imagenet_backbones():
    assert imagenet_backbone("densenet121_findings") == "densenet121"
    assert imagenet_backbone("mdmt", "googlenet") == "googlenet" and imagenet_backbone("mdmt") == "densenet121"
    assert imagenet_backbone("densenet121_3d") is None and imagenet_backbone("perez_cnn3d") is None


def test_torchvisions_cached_resnet_file_serves_timms_resnet(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    torch.manual_seed(4)
    tv = torchvision.models.resnet18(weights=None).eval()
    # timm's resnet18.tv_in1k tag points at torchvision's own file, which torchvision.models.resnet18(weights=...)
    # leaves in $TORCH_HOME/hub/checkpoints; the two libraries share ResNet key names.
    path = tmp_path / "torch-home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    found = find_weights("resnet18", tmp_path / "empty-store")
    assert (found.path, found.origin) == (path, "torch hub cache")
    tv.fc = torch.nn.Identity()
    loaded = build_backbone("resnet18", pretrained=True, weights_dir=tmp_path / "empty-store")
    assert torch.allclose(_features(loaded), _features(tv), atol=1e-5)
