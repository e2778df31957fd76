from __future__ import annotations

import numpy as np
import pytest
import torch

from medmlops.errors import DataError
from medmlops.training.splits import stratified_kfold_splits
from medmlops.training.tasks import ICH_TASKS, resolve_tasks


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
        assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
        assert len(sets["train"]) + len(sets["val"]) + len(sets["test"]) == 100
        assert 8 <= len(sets["val"]) <= 9  # 10 % of the 80 training samples
        share = np.mean([label_of[i] for i in sets["test"]])
        assert abs(share - labels.mean()) < 0.08, f"fold {fold} test share {share:.2f}"
    again = stratified_kfold_splits(ids, labels, n_folds=5, val_fraction=0.1, seed=3)
    assert again.equals(splits)


def test_too_few_samples_for_the_folds_is_a_clear_error():
    with pytest.raises(DataError, match="smallest class has 2 samples"):
        stratified_kfold_splits(list("abcdefg"), [0, 0, 1, 1, 1, 1, 1], n_folds=5, val_fraction=0.1, seed=0)


def test_indicator_function_loss_is_the_mean_over_each_datasets_rows():
    """MDMT (Ruffini et al.): a mixed batch; each task's CE is averaged over its own dataset's rows only."""
    from medmlops.training.loop import multitask_loss
    from medmlops.training.tasks import COVID_TASKS

    prognosis_logits = torch.tensor([[2.0, -1.0], [0.5, 0.1], [0.0, 3.0], [1.0, 1.0]])
    severity_logits = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    batch = {"prognosis": torch.tensor([0, -1, 1, -1]), "severity": torch.tensor([-1, 0, -1, 3])}  # rows 0,2 AIforCOVID
    total, parts = multitask_loss(
        {"prognosis": prognosis_logits, "severity": severity_logits}, batch, COVID_TASKS, {"prognosis": 1.0, "severity": 1.0}
    )
    ce = torch.nn.functional.cross_entropy
    expected_prog = ce(prognosis_logits[[0, 2]], torch.tensor([0, 1]))
    expected_sev = ce(severity_logits[[1, 3]], torch.tensor([0, 3]))
    assert parts["prognosis"] == pytest.approx(float(expected_prog))
    assert parts["severity"] == pytest.approx(float(expected_sev))
    assert float(total) == pytest.approx(float(expected_prog + expected_sev))
    # Not the same as masking inside a batch-wide mean (which would halve each term here).
    assert float(total) != pytest.approx(float(expected_prog + expected_sev) / 2)


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
