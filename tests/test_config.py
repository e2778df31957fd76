from __future__ import annotations

import dataclasses

import pytest
import yaml

from medmlops.config import PROFILES, ConfigError, load_params, params_from_dict, save_resolved


def test_repo_params_load_for_every_profile(params_file):
    for profile in PROFILES:
        params = load_params(params_file, profile=profile)
        assert params.profile == profile
    smoke, demo, paper = (load_params(params_file, profile=p) for p in ("smoke", "demo", "paper"))
    # Profiles are overrides: smoke shrinks, paper restores the paper's sizes, the rest is shared.
    assert smoke.data.ich.n < demo.data.ich.n < paper.data.ich.n
    assert paper.data.ich.n == 261 and paper.data.ich.exclude == (213,)
    assert smoke.validation == demo.validation


def test_unknown_key_is_rejected_with_its_dotted_path():
    with pytest.raises(ConfigError, match=r"unknown key 'data\.ich\.shpe'"):
        params_from_dict({"data": {"ich": {"shpe": [1, 2, 3]}}})
    with pytest.raises(ConfigError, match=r"unknown key 'trian'"):
        params_from_dict({"trian": {}})


def test_unknown_key_inside_a_profile_is_rejected():
    with pytest.raises(ConfigError, match=r"unknown key 'data\.brixia\.size'"):
        params_from_dict({"profiles": {"smoke": {"data": {"brixia": {"size": 3}}}}}, profile="smoke")


def test_unknown_profile_is_rejected():
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        params_from_dict({}, profile="fast")
    with pytest.raises(ConfigError, match="profiles.fast"):
        params_from_dict({"profiles": {"fast": {}}})


def test_types_are_checked_and_tuples_built():
    params = params_from_dict({"data": {"ich": {"shape": [8, 16, 16], "exclude": [213]}}})
    assert params.data.ich.shape == (8, 16, 16) and params.data.ich.exclude == (213,)
    with pytest.raises(ConfigError, match=r"'data\.ich\.n' must be an integer"):
        params_from_dict({"data": {"ich": {"n": "many"}}})
    with pytest.raises(ConfigError, match=r"'data\.ich\.shape' must have 3 items"):
        params_from_dict({"data": {"ich": {"shape": [8, 16]}}})
    with pytest.raises(ConfigError, match=r"'data\.chexpert\.frontal_only' must be true or false"):
        params_from_dict({"data": {"chexpert": {"frontal_only": "yes"}}})


def test_overrides_apply_after_the_profile():
    raw = {"data": {"ich": {"n": 100}}, "profiles": {"smoke": {"data": {"ich": {"n": 10}}}}}
    assert params_from_dict(raw, profile="smoke").data.ich.n == 10
    assert params_from_dict(raw, profile="smoke", overrides=["data.ich.n=3"]).data.ich.n == 3
    with pytest.raises(ConfigError, match="key=value"):
        params_from_dict(raw, overrides=["data.ich.n"])
    with pytest.raises(ConfigError, match=r"unknown key 'data\.ich\.m'"):
        params_from_dict(raw, overrides=["data.ich.m=3"])


def test_params_are_frozen_and_round_trip(tmp_path):
    params = params_from_dict({}, profile="smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 1  # type: ignore[misc]
    path = save_resolved(params, tmp_path / "resolved.yaml")
    again = params_from_dict(yaml.safe_load(path.read_text()))
    assert again == params


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_an_empty_mapping_in_a_profile_clears_the_base_mapping(params_file):
    smoke, demo = load_params(params_file, profile="smoke"), load_params(params_file, profile="demo")
    assert demo.registry.gates["ich-prognosis"].min_metrics  # real floors by default
    assert smoke.registry.gates["ich-prognosis"].min_metrics == {}
    assert smoke.registry.gates["ich-prognosis"].max_regression == demo.registry.gates["ich-prognosis"].max_regression


def test_every_backbone_named_in_params_exists(params_file):
    from medmlops.models.backbones import BACKBONES

    for profile in PROFILES:
        params = load_params(params_file, profile=profile)
        named = set(params.covid_protocol.backbones) | {e.backbone for e in params.experiments.values() if e.backbone}
        assert named <= set(BACKBONES), f"{profile}: unknown backbones {named - set(BACKBONES)}"
        assert set(params.covid_protocol.validations) <= {"cv", "loco"}
    assert len(load_params(params_file, profile="paper").covid_protocol.backbones) == 18  # the paper's list


def test_experiment_init_sources_exist(params_file):
    params = load_params(params_file)
    for name, exp in params.experiments.items():
        for source in exp.init_from:
            assert source in params.experiments, f"{name}: init_from {source} is not an experiment"
            assert params.experiments[source].family == exp.family


@pytest.mark.parametrize("key", ["demo.pipelines=[ich, ihc]", "demo.overrides.ihc=[train.epochs=1]"])
def test_demo_refuses_a_pipeline_name_it_does_not_know(key, params_file, tmp_path):
    """A typo in demo.pipelines or demo.overrides is an error before anything starts, not a silently ignored key."""
    from medmlops.demo import run_demo
    from medmlops.errors import UserError

    params = load_params(params_file, profile="smoke", overrides=[key])
    with pytest.raises(UserError, match=r"demo\.(pipelines|overrides) names 'ihc', not a pipeline"):
        run_demo(params, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing generated, nothing started


# ---- training settings per family and experiment (each paper's own) ----

# (experiment, key, the paper's value): Cobo et al. (ICH), Ruffini et al. (MDMT), Shu et al. (INFORMER's classifier).
PAPER_TRAINING = [
    ("ich-mt-ord", "optimizer", "adamw"),  # "AdamW optimizer (learning rate of 0.001, weight decay of 0.0001)"
    ("ich-mt-ord", "lr", 1e-3),
    ("ich-mt-ord", "weight_decay", 1e-4),
    ("ich-mt-ord", "batch_size", 8),  # "a batch size of 8, three steps of gradient accumulation"
    ("ich-mt-ord", "accumulation_steps", 3),
    ("ich-mt-ord", "patience", 20),  # "early stopping with a patience of 20 epochs"
    ("ich-mt-ord", "aug_prob", 0.5),  # "with a probability of 0.5"
    ("ich-mt-ord", "n_folds", 10),  # "10 fold cross-validation"
    ("ich-baseline", "n_folds", 10),
    ("covid-mdmt", "optimizer", "adam"),  # "Adam optimizer, with an initial learning rate of 0.001, momentum of 0.9,
    ("covid-mdmt", "lr", 1e-3),  #  and weight decay of 0.0001"
    ("covid-mdmt", "betas", (0.9, 0.999)),
    ("covid-mdmt", "weight_decay", 1e-4),
    ("covid-mdmt", "warmup_epochs", 40),  # "a 40-epoch warm-up period"
    ("covid-mdmt", "epochs", 300),  # "limited to a maximum of 300 epochs"
    ("covid-mdmt", "patience", 40),  # "early stopping after 40 epochs"
    ("covid-mdmt", "batch_size", 128),  # "a batch size of 128"
    ("covid-mdmt", "accumulation_steps", 1),
    ("covid-mdmt", "n_folds", 5),  # "5-fold stratified cross-validation"
    ("covid-mdmt", "pretrained", True),  # "pre-trained on the ImageNet dataset"
    ("covid-stl-severity", "pretrained", True),
    ("covid-stl-prognosis", "batch_size", 128),
    ("cxr-findings", "optimizer", "adam"),
    ("cxr-findings", "lr", 1e-4),  # "Learning rate at 0.0001"
    ("cxr-findings", "batch_size", 16),  # "Batch size is 16"
    ("cxr-findings", "epochs", 3),  # "trained for three epochs"
    ("cxr-findings", "pretrained", True),  # "pre-trained on ImageNet"
]


@pytest.mark.parametrize(("experiment", "key", "value"), PAPER_TRAINING, ids=lambda v: str(v))
def test_the_paper_profile_gives_each_experiment_its_papers_training_settings(params_file, experiment, key, value):
    train = load_params(params_file, profile="paper").train_for(experiment)
    assert getattr(train, key) == value


def test_the_paper_profile_gives_each_paper_its_shapes_and_protocol(params_file):
    paper = load_params(params_file, profile="paper")
    assert paper.preprocess.ich.spatial_size == (301, 301, 40)
    assert paper.preprocess.covid.size == 256 and paper.preprocess.chexpert.size == 320
    assert len(paper.covid_protocol.backbones) == 18 and set(paper.covid_protocol.validations) == {"cv", "loco"}
    assert paper.informer.step == 0.001 and paper.informer.n_bootstrap == 30


def test_demo_and_smoke_train_every_experiment_with_the_train_block(params_file):
    for profile in ("smoke", "demo"):
        params = load_params(params_file, profile=profile)
        for name in params.experiments:
            assert params.train_for(name) == params.train, (profile, name)


RAW = {
    "train": {"epochs": 10, "lr": 0.01, "families": {"fam": {"epochs": 20, "optimizer": "adam"}}},
    "experiments": {
        "a": {"family": "fam", "train": {"epochs": 30}},
        "b": {"family": "fam"},
        "c": {"family": "other"},
    },
}


def test_training_layers_experiment_over_family_over_train():
    params = params_from_dict(RAW)
    assert params.train_for("a").epochs == 30 and params.train_for("a").optimizer == "adam"
    assert params.train_for("b").epochs == 20 and params.train_for("b").lr == 0.01
    assert params.train_for("c").epochs == 10 and params.train_for("c").optimizer == "adamw"
    assert params.train_sources("a")["epochs"] == "experiments.a.train"
    assert params.train_sources("b")["optimizer"] == "train.families.fam"
    assert params.train_sources("c")["epochs"] == "train"
    assert params.for_experiment("b").train.epochs == 20
    assert params.for_experiment("b").for_experiment("b") == params.for_experiment("b")


def test_a_command_line_train_key_is_the_last_word_for_every_experiment():
    params = params_from_dict(RAW, overrides=["train.epochs=2"])
    assert {params.train_for(n).epochs for n in "abc"} == {2}
    assert params.train_for("a").optimizer == "adam"  # other keys of the layers stay
    specific = params_from_dict(RAW, overrides=["train.epochs=2", "experiments.a.train.epochs=5"])
    assert specific.train_for("a").epochs == 5 and specific.train_for("b").epochs == 2
    family = params_from_dict(RAW, overrides=["train.families.fam.epochs=7"])
    assert family.train_for("b").epochs == 7 and family.train_for("a").epochs == 30
    assert params_from_dict(RAW).with_train(epochs=4).train_for("a").epochs == 4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.families.fam.epoch=3", r"unknown key 'train\.families\.fam\.epoch'; did you mean 'epochs'"),
        ("experiments.a.train.lr=fast", r"'experiments\.a\.train\.lr' must be a number"),
        ("train.families.fam.optimizer=sgd", r"unknown optimizer 'sgd'.*experiment a"),
        ("experiments.b.train.batch_size=0", r"train\.batch_size must be at least 1 for experiment b"),
        ("experiments.b.loss=mean", r"unknown loss 'mean'"),
        ("train.families.fam=3", r"'train\.families\.fam' must be a mapping"),
    ],
)
def test_bad_training_layers_are_named_at_load_time(override, message):
    with pytest.raises(ConfigError, match=message):
        params_from_dict(RAW, overrides=[override])


def test_config_show_names_where_each_training_setting_comes_from(params_file, capsys):
    from medmlops.cli import main

    assert (
        main(["config", "show", "--params", str(params_file), "--profile", "paper", "--experiment", "covid-mdmt"]) == 0
    )
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["train"]["batch_size"] == 128 and shown["train"]["optimizer"] == "adam"
    assert shown["experiments"]["covid-mdmt"]["loss"] == "indicator_sum"
    assert shown["preprocess"]["covid"]["size"] == 256
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
    assert lines["warmup_epochs"].endswith("# train.families.covid-prognosis")
    assert "#" not in lines["val_fraction"]  # from train: itself, no comment
    assert main(["config", "show", "--params", str(params_file), "--experiment", "covid-mdtm"]) == 1
    assert "did you mean 'covid-mdmt'" in capsys.readouterr().err
