from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from medmlops.errors import DataError
from medmlops.training.splits import stratified_kfold_splits
from medmlops.training.tasks import ICH_TASKS, resolve_tasks
from tests.conftest import REPO


def test_ordinal_gcs_encoding_follows_the_paper():
    task = ICH_TASKS["gcs_ordinal"]
    assert task.out_features == 2
    encoded = task.encode(torch.tensor([0, 1, 2]))
    assert encoded.tolist() == [[0, 0], [1, 0], [1, 1]]


def test_ordinal_decoding_is_monotone_count_of_leading_bits():
    task = ICH_TASKS["gcs_ordinal"]
    probs = np.array([[0.9, 0.2], [0.2, 0.9], [0.8, 0.7], [0.1, 0.1]])
    assert task.predict(probs).tolist() == [1, 0, 2, 0]


def test_binary_prediction_threshold_and_masked_loss():
    task = ICH_TASKS["prognosis"]
    assert task.predict(np.array([[0.2], [0.5], [0.9]])).tolist() == [0, 1, 1]
    assert task.predict(np.array([[0.6]]), thresholds=0.7).tolist() == [0]
    logits = torch.tensor([[2.0], [-1.0], [5.0]])
    masked = task.loss(logits, torch.tensor([1, 0, -1]))  # the third row has no label
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:2], torch.tensor([[1.0], [0.0]]))
    assert torch.isclose(masked, expected)
    assert float(task.loss(logits, torch.tensor([-1, -1, -1]))) == 0.0


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown task 'gcs'"):
        resolve_tasks("ich", ["prognosis", "gcs"])


def test_splits_are_stratified_disjoint_and_cover_every_sample():
    rng = np.random.default_rng(0)
    labels = (rng.random(100) < 0.62).astype(int)
    ids = [f"p{i}" for i in range(100)]
    splits = stratified_kfold_splits(ids, labels, n_folds=5, val_fraction=0.1, seed=3)
    label_of = dict(zip(ids, labels, strict=True))
    tests = splits[splits.split == "test"]
    assert sorted(tests.sample_id) == sorted(ids)  # every sample is tested exactly once
    for fold, part in splits.groupby("fold"):
        sets = {s: set(part[part.split == s].sample_id) for s in ("train", "val", "test")}
        assert (
            not (sets["train"] & sets["val"])
            and not (sets["train"] & sets["test"])
            and not (sets["val"] & sets["test"])
        )
        assert len(sets["train"]) + len(sets["val"]) + len(sets["test"]) == 100
        assert 8 <= len(sets["val"]) <= 9  # 10 % of the 80 training samples
        share = np.mean([label_of[i] for i in sets["test"]])
        assert abs(share - labels.mean()) < 0.08, f"fold {fold} test share {share:.2f}"
    again = stratified_kfold_splits(ids, labels, n_folds=5, val_fraction=0.1, seed=3)
    assert again.equals(splits)


def test_too_few_samples_for_the_folds_is_a_clear_error():
    with pytest.raises(DataError, match="smallest class has 2 samples"):
        stratified_kfold_splits(list("abcdefg"), [0, 0, 1, 1, 1, 1, 1], n_folds=5, val_fraction=0.1, seed=0)


def test_task_mean_loss_is_the_mean_over_each_datasets_rows():
    """The per-task mean (``loss: task_mean``, Cobo et al. Eq. 1) on a mixed MDMT batch: each task's CE is averaged
    over its own dataset's rows only."""
    from medmlops.training.loop import multitask_loss
    from medmlops.training.tasks import COVID_TASKS

    prognosis_logits = torch.tensor([[2.0, -1.0], [0.5, 0.1], [0.0, 3.0], [1.0, 1.0]])
    severity_logits = torch.tensor(
        [[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 5.0]]
    )
    batch = {"prognosis": torch.tensor([0, -1, 1, -1]), "severity": torch.tensor([-1, 0, -1, 3])}  # rows 0,2 AIforCOVID
    total, parts = multitask_loss(
        {"prognosis": prognosis_logits, "severity": severity_logits},
        batch,
        COVID_TASKS,
        {"prognosis": 1.0, "severity": 1.0},
    )
    ce = torch.nn.functional.cross_entropy
    expected_prog = ce(prognosis_logits[[0, 2]], torch.tensor([0, 1]))
    expected_sev = ce(severity_logits[[1, 3]], torch.tensor([0, 3]))
    assert parts["prognosis"] == pytest.approx(float(expected_prog))
    assert parts["severity"] == pytest.approx(float(expected_sev))
    assert float(total) == pytest.approx(float(expected_prog + expected_sev))
    # Not the same as masking inside a batch-wide mean (which would halve each term here).
    assert float(total) != pytest.approx(float(expected_prog + expected_sev) / 2)


def test_eq2_indicator_sum_weighs_every_image_the_same_whichever_dataset():
    """Ruffini et al. Eq. 2: L = Σ_i Σ_t I(X_i, τ_t) L_t(X_i), here over |X|. In a batch of 2 AIforCOVID and 6 BRIXIA
    images every image's logits get the same gradient size; the per-task mean gives the minority's images 3× more."""
    from medmlops.training.loop import multitask_loss
    from medmlops.training.tasks import COVID_TASKS

    n = 8
    prognosis = torch.zeros(n, 2, requires_grad=True)
    severity = torch.zeros(n, 4, requires_grad=True)
    labels = {
        "prognosis": torch.tensor([0, 1, -1, -1, -1, -1, -1, -1]),  # rows 0-1: AIforCOVID
        "severity": torch.tensor([-1, -1, 0, 1, 2, 3, 0, 1]),  # rows 2-7: BRIXIA
    }
    weights = {"prognosis": 1.0, "severity": 1.0}

    def row_gradient(reduction: str) -> torch.Tensor:
        prognosis.grad, severity.grad = None, None
        total, _ = multitask_loss({"prognosis": prognosis, "severity": severity}, labels, COVID_TASKS, weights,
                                  reduction)  # fmt: skip
        total.backward()
        return (prognosis.grad.abs().sum(1) + severity.grad.abs().sum(1)).detach()

    eq2 = row_gradient("indicator_sum")
    per_task = row_gradient("task_mean")
    # At zero logits a row's CE gradient has L1 size |softmax - onehot|_1 = 2(1 - 1/K) per unit of weight: 1.0 for
    # the 2-class head, 1.5 for the 4-class one. Divided out, what is left is each row's weight in the loss.
    size = torch.tensor([1.0, 1.0] + [1.5] * 6)
    assert torch.allclose(eq2 / size, torch.full((n,), 1 / n))
    assert torch.allclose(per_task / size, torch.tensor([1 / 2] * 2 + [1 / 6] * 6))
    # And the value: the sum of the labelled rows' CE over the batch size.
    total, _ = multitask_loss({"prognosis": prognosis, "severity": severity}, labels, COVID_TASKS, weights,
                              "indicator_sum")  # fmt: skip
    assert float(total) == pytest.approx((2 * math.log(2) + 6 * math.log(4)) / n)
    with pytest.raises(ValueError, match="unknown loss reduction"):
        multitask_loss({"prognosis": prognosis}, labels, {"prognosis": COVID_TASKS["prognosis"]}, weights, "sum")


def test_each_papers_model_gets_its_papers_loss(params_file):
    from medmlops.config import load_params

    params = load_params(params_file)
    assert params.experiment("covid-mdmt").loss_reduction == "indicator_sum"  # Ruffini et al. Eq. 2
    assert params.experiment("ich-mt-ord").loss_reduction == "task_mean"  # Cobo et al. Eq. 1
    named = load_params(params_file, overrides=["experiments.covid-mdmt.loss=task_mean"])
    assert named.experiment("covid-mdmt").loss_reduction == "task_mean"


def test_multilabel_loss_masks_uncertain_labels():
    from medmlops.training.tasks import CHEXPERT_TASKS

    task = CHEXPERT_TASKS["findings"]
    logits = torch.tensor([[1.0, -1.0, 0.5, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([[1.0, float("nan"), 0.0, float("nan"), 1.0], [float("nan")] * 5])
    keep = ~torch.isnan(labels)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], labels[keep])
    assert float(task.loss(logits, labels)) == pytest.approx(float(expected))
    assert task.labelled(labels).tolist() == [True, False]
    assert task.predict(np.array([[0.6, 0.4, 0.5, 0.1, 0.9]])).tolist() == [[1, 0, 1, 0, 1]]


def test_multiclass_prediction_is_argmax():
    from medmlops.training.tasks import COVID_TASKS

    task = COVID_TASKS["severity"]
    assert task.out_features == 4
    assert task.predict(np.array([[0.1, 0.2, 0.6, 0.1], [0.7, 0.1, 0.1, 0.1]])).tolist() == [2, 0]


def _covid_frame(n_aif=60, n_brx=40, seed=0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    aif = pd.DataFrame({
        "sample_id": [f"aiforcovid:P{i}" for i in range(n_aif)], "dataset": "aiforcovid",
        "prognosis": rng.integers(0, 2, n_aif), "severity": -1, "hospital": rng.choice(list("ABCDEF"), n_aif),
    })  # fmt: skip
    brx = pd.DataFrame({
        "sample_id": [f"brixia:{i}" for i in range(n_brx)], "dataset": "brixia", "prognosis": -1,
        "severity": rng.integers(0, 4, n_brx), "hospital": "GE",
    })  # fmt: skip
    return pd.concat([aif, brx], ignore_index=True)


def test_covid_cv_is_stratified_by_class_and_centre_and_keeps_brixia_out_of_tau1_tests():
    from medmlops.training.splits import covid_splits

    frame = _covid_frame()
    splits = covid_splits(frame, n_folds=5, validation="cv", val_fraction=0.1, seed=0)
    aif_tests = splits[(splits.split == "test") & splits.sample_id.str.startswith("aiforcovid")]
    assert sorted(aif_tests.sample_id) == sorted(frame[frame.dataset == "aiforcovid"].sample_id)
    # BRIXIA: one fixed split shared by every fold.
    brx = splits[splits.sample_id.str.startswith("brixia")]
    per_fold = {f: tuple(sorted(map(tuple, g[["sample_id", "split"]].to_numpy()))) for f, g in brx.groupby("fold")}
    assert len(set(per_fold.values())) == 1 and len(per_fold) == 5
    # Class shares of each test fold stay close to the overall share.
    share = frame[frame.dataset == "aiforcovid"].prognosis.mean()
    label = dict(zip(frame.sample_id, frame.prognosis, strict=True))
    for _, group in aif_tests.groupby("fold"):
        assert abs(np.mean([label[i] for i in group.sample_id]) - share) < 0.2


def test_covid_loco_tests_one_hospital_per_fold():
    from medmlops.training.splits import covid_splits

    frame = _covid_frame()
    splits = covid_splits(frame, n_folds=5, validation="loco", val_fraction=0.1, seed=0)
    hospital = dict(zip(frame.sample_id, frame.hospital, strict=True))
    assert splits.fold.nunique() == frame[frame.dataset == "aiforcovid"].hospital.nunique()
    for fold, group in splits[splits.sample_id.str.startswith("aiforcovid")].groupby("fold"):
        test_centres = {hospital[i] for i in group[group.split == "test"].sample_id}
        train_centres = {hospital[i] for i in group[group.split != "test"].sample_id}
        assert len(test_centres) == 1 and not (test_centres & train_centres), fold


def test_chexpert_folds_never_split_a_patient():
    import pandas as pd

    from medmlops.data.readers import CHEXPERT_FINDINGS
    from medmlops.training.splits import grouped_splits

    rng = np.random.default_rng(1)
    patients = [f"patient{p:05d}" for p in rng.integers(0, 25, 80)]
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(80)], "patient_id": patients})
    for finding in CHEXPERT_FINDINGS:
        frame[finding] = rng.choice([0.0, 1.0, np.nan], 80)
    splits = grouped_splits(frame, n_folds=3, val_fraction=0.15, seed=0)
    patient = dict(zip(frame.sample_id, frame.patient_id, strict=True))
    for _, group in splits.groupby("fold"):
        owners = {s: {patient[i] for i in group[group.split == s].sample_id} for s in ("train", "val", "test")}
        assert (
            not (owners["train"] & owners["test"])
            and not (owners["train"] & owners["val"])
            and not (owners["val"] & owners["test"])
        )


def test_each_training_seed_gets_its_own_run_folder():
    from dataclasses import replace

    from medmlops.config import load_params
    from medmlops.training.experiment import DEFAULT_SEED, run_dir_for, variant_name

    params = load_params(REPO / "params.yaml", profile="smoke")
    assert params.seed == DEFAULT_SEED and variant_name(params, "cxr-findings") == "cxr-findings"
    # Another seed makes other splits: its run folder (splits.csv, checkpoints) must not be the default one's.
    other = replace(params, seed=DEFAULT_SEED + 1)
    assert variant_name(other, "cxr-findings") == f"cxr-findings-seed{DEFAULT_SEED + 1}"
    assert run_dir_for(other, "cxr-findings") != run_dir_for(params, "cxr-findings")


def test_the_chexpert_paper_cohort_splits_are_the_csvs():
    """Shu et al.: train on train.csv, thresholds on valid.csv, test on test.csv; without test.csv a patient-grouped
    part of train.csv is the test split (never valid.csv, never a patient in two splits)."""
    from medmlops.training.splits import official_splits

    frame = pd.DataFrame({
        "sample_id": [f"train-{i}" for i in range(20)] + ["valid-0", "valid-1", "test-0"],
        "patient_id": [f"p{i // 2}" for i in range(20)] + ["v0", "v1", "t0"],
        "split": ["train"] * 20 + ["valid"] * 2 + ["test"],
    })  # fmt: skip
    splits = official_splits(frame, val_fraction=0.1, seed=0)
    role = dict(zip(splits["sample_id"], splits["split"], strict=True))
    assert set(splits["fold"]) == {0} and len(role) == len(frame)
    assert [i for i, r in role.items() if r == "val"] == ["valid-0", "valid-1"]
    assert [i for i, r in role.items() if r == "test"] == ["test-0"]
    without_test = official_splits(frame[frame["split"] != "test"], val_fraction=0.1, seed=0)
    held = without_test[without_test["split"] == "test"]["sample_id"]
    assert len(held) >= 2 and all(i.startswith("train-") for i in held)
    patients = frame.set_index("sample_id")["patient_id"]
    assert not set(patients[held]) & set(patients[without_test[without_test["split"] == "train"]["sample_id"]])
    with pytest.raises(DataError, match="needs valid.csv"):
        official_splits(frame[frame["split"] == "train"], val_fraction=0.1, seed=0)
