"""A registered version's training params laid over the current ones (``registry.trained_params``): which sections
come from the version, which stay the command's, and what the console is told."""

from __future__ import annotations

from medmlops.config import load_params
from medmlops.registry.trained_params import MACHINE_KEYS, differences, merge_trained


def test_the_model_and_data_sections_come_from_the_version_the_command_knobs_do_not(params_file):
    trained = load_params(
        params_file, profile="smoke", overrides=["train.n_folds=3", "train.epochs=1", "seed=7", "train.device=cpu"]
    ).to_dict()
    trained["train"]["a_knob_removed_since"] = 1  # the code changed since the training: dropped, not an error
    now = load_params(params_file, profile="demo", overrides=["informer.tta_samples=0", "train.device=cuda"])
    merged = merge_trained(now, trained)
    assert merged.profile == "smoke" and merged.seed == 7
    assert merged.train.n_folds == 3 and merged.train.epochs == 1
    assert merged.data == load_params(params_file, profile="smoke").data  # the smoke data folder and sizes
    assert merged.preprocess.chexpert.size == load_params(params_file, profile="smoke").preprocess.chexpert.size
    assert merged.experiments == load_params(params_file, profile="smoke").experiments
    # The command's own settings and this machine's: from the current params.
    assert merged.informer == now.informer and merged.registry == now.registry and merged.demo == now.demo
    assert merged.train.device == "cuda" and {"train.device", "train.runs_dir"} <= set(MACHINE_KEYS)

    changed = dict((key, (then, current)) for key, then, current in differences(merged, now, "cxr-findings"))
    assert changed["train.n_folds"] == (3, now.train.n_folds) and changed["seed"] == (7, now.seed)
    assert changed["profile"] == ("smoke", "demo")
    assert "train.device" not in changed and not any(k.startswith("informer.") for k in changed)
    assert not any(k.startswith("experiments.") and not k.startswith("experiments.cxr-findings.") for k in changed)
