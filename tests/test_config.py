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
