"""build_experiment_model and the weights store: a training build with train.pretrained starts from the store, a
rebuild (no train settings) never needs ImageNet files, 3D models and init_from experiments skip ImageNet."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from medmlops.config import ExperimentConfig, TrainConfig
from medmlops.errors import UserError
from medmlops.models.backbones import build_backbone
from medmlops.models.weights import MissingWeightsError, store_file
from medmlops.training.experiment import build_experiment_model
from medmlops.training.tasks import resolve_tasks

X = torch.rand(2, 3, 32, 32)
COVID = ExperimentConfig(
    family="covid-prognosis", dataset="covid", model="mdmt", backbone="shufflenet_v2_x0_5", tasks={"prognosis": 1.0}
)
FINDINGS = ExperimentConfig(
    family="cxr-findings", dataset="chexpert", model="densenet121_findings", tasks={"findings": 1.0},
    primary_task="findings",
)  # fmt: skip
ICH = ExperimentConfig(model="perez_cnn3d")


@pytest.fixture(autouse=True)
def _empty_caches(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def _tasks(exp: ExperimentConfig):
    return resolve_tasks(exp.dataset, list(exp.tasks))


def _saved(name: str, path, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    source = build_backbone(name).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(source.state_dict(), path)
    with torch.no_grad():
        return source(X)


def _features(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().forward_features(X)


@pytest.mark.parametrize("exp", [COVID, FINDINGS], ids=["mdmt-shufflenet", "densenet121_findings"])
def test_pretrained_training_builds_start_from_the_store(tmp_path, exp):
    name = exp.backbone or "densenet121"
    expected = _saved(name, store_file(name, tmp_path / "weights"))
    train = TrainConfig(pretrained=True, weights_dir=str(tmp_path / "weights"))
    assert torch.equal(_features(build_experiment_model(exp, _tasks(exp), train)), expected)


def test_a_relative_weights_dir_is_under_the_repo(tmp_path):
    expected = _saved("shufflenet_v2_x0_5", store_file("shufflenet_v2_x0_5", tmp_path / "repo" / "w"))
    model = build_experiment_model(
        COVID, _tasks(COVID), TrainConfig(pretrained=True, weights_dir="w"), tmp_path / "repo"
    )
    assert torch.equal(_features(model), expected)


def test_pretrained_off_or_a_rebuild_needs_no_file(tmp_path):
    for train in (TrainConfig(pretrained=False, weights_dir=str(tmp_path / "none")), None):
        build_experiment_model(COVID, _tasks(COVID), train)
    # Rebuilding to load a trained checkpoint (registration): no train settings, so even weights_path is not read.
    build_experiment_model(dataclasses.replace(COVID, weights_path=str(tmp_path / "gone.pth")), _tasks(COVID))


def test_a_missing_store_file_is_a_user_error_naming_it(tmp_path):
    train = TrainConfig(pretrained=True, weights_dir=str(tmp_path / "weights"))
    with pytest.raises(MissingWeightsError) as info:
        build_experiment_model(COVID, _tasks(COVID), train)
    assert isinstance(info.value, UserError)
    assert f"{tmp_path / 'weights' / 'shufflenet_v2_x0_5.pth'} does not exist" in str(info.value)
    assert "torchvision.models.shufflenet_v2_x0_5(weights='DEFAULT')" in str(info.value)


def test_the_experiments_weights_path_wins_over_the_store(tmp_path):
    _saved("shufflenet_v2_x0_5", store_file("shufflenet_v2_x0_5", tmp_path / "weights"), seed=1)
    mine = _saved("shufflenet_v2_x0_5", tmp_path / "mine.pth", seed=2)
    exp = dataclasses.replace(COVID, weights_path=str(tmp_path / "mine.pth"))
    for pretrained in (True, False):  # an explicit file is loaded whenever set (as before the store existed)
        train = TrainConfig(pretrained=pretrained, weights_dir=str(tmp_path / "weights"))
        assert torch.equal(_features(build_experiment_model(exp, _tasks(exp), train)), mine)


def test_init_from_experiments_read_no_imagenet_file(tmp_path, caplog):
    exp = dataclasses.replace(COVID, init_from=("covid-stl-severity",))
    with caplog.at_level(logging.INFO, logger="medmlops"):
        build_experiment_model(exp, _tasks(exp), TrainConfig(pretrained=True, weights_dir=str(tmp_path / "none")))
    assert "backbone comes from covid-stl-severity" in caplog.text


def test_3d_models_ignore_pretrained_with_a_logged_line_and_refuse_a_weights_path(tmp_path, caplog):
    train = TrainConfig(pretrained=True, weights_dir=str(tmp_path / "none"))
    with caplog.at_level(logging.INFO, logger="medmlops"):
        build_experiment_model(ICH, _tasks(ICH), train)
    assert "train.pretrained is ignored for model perez_cnn3d" in caplog.text
    with pytest.raises(UserError, match=r"weights_path .*w\.pth is set for model perez_cnn3d, which has no 2D"):
        build_experiment_model(dataclasses.replace(ICH, weights_path=str(tmp_path / "w.pth")), _tasks(ICH), train)
