"""INFORMER's numbers on hand-made inputs whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmlops.informer import scores
from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec


def _contract(*tasks: TaskSpec) -> ModelContract:
    return ModelContract(
        family="toy", tasks=tasks, input=InputSpec("xray", (".png",), (3, 32, 32), None, None, 3),
        preprocessing={}, data_version="x", git_commit="y", metrics={},
    )  # fmt: skip


def test_distinctiveness_identical_orthogonal_and_opposite_maps():
    e = torch.eye(3)
    identical = torch.ones(1, 3, 4)
    assert np.allclose(scores.distinctiveness(identical), 0.0)
    orthogonal = e[None]  # three orthogonal maps: cos 0 → each d = C - 1
    assert np.allclose(scores.distinctiveness(orthogonal), 2.0)
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # cos -1 → d = 2 for C = 2
    assert np.allclose(scores.distinctiveness(opposite), 2.0)
    # Mixed: maps 0 and 1 identical, map 2 orthogonal to both → d = [1, 1, 2].
    mixed = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 5.0]]])
    assert np.allclose(scores.distinctiveness(mixed), [[1.0, 1.0, 2.0]])


def test_distinctiveness_is_scale_invariant_and_zero_maps_are_safe():
    maps = torch.randn(2, 4, 3, 8, 8)
    assert np.allclose(scores.distinctiveness(maps), scores.distinctiveness(7.5 * maps))
    maps[0, 1] = 0
    d = scores.distinctiveness(maps)
    assert np.isfinite(d).all()


def test_fit_threshold_flags_exactly_the_wrong_low_distinctiveness_cases():
    y_true = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    y_pred = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 0])  # rows 3 and 7 wrong
    d = np.array([1.5, 1.4, 1.6, 0.2, 1.3, 1.2, 1.7, 0.3, 1.1, 1.0])  # the wrong ones are least distinctive
    fit = scores.fit_flag_threshold(d, y_true, y_pred, "low")
    assert fit.f1_after == pytest.approx(1.0)
    assert 0.3 < fit.tau <= 1.0 + 1e-9 and fit.n_flagged == 2
    assert fit.f1_before == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))


def test_fit_threshold_keeps_no_flag_when_flagging_only_hurts():
    y_true = np.array([1, 0, 1, 0, 1, 0])
    y_pred = y_true.copy()  # already perfect
    fit = scores.fit_flag_threshold(np.linspace(0, 1, 6), y_true, y_pred, "low")
    assert fit.tau is None and fit.n_flagged == 0 and fit.f1_after == fit.f1_before == 1.0


def test_fit_threshold_direction_high_and_unknown_targets():
    y_true = np.array([1, 0, 1, np.nan, 0, 1])
    y_pred = np.array([1, 1, 1, 0, 0, 1])  # row 1 wrong; row 3 unknown (left out)
    entropy = np.array([0.1, 0.95, 0.2, 0.99, 0.3, 0.1])
    fit = scores.fit_flag_threshold(entropy, y_true, y_pred, "high")
    assert fit.f1_after == pytest.approx(1.0) and fit.n_flagged == 1
    flags = scores.flag(entropy, fit.tau, "high")
    assert flags[1] and not flags[[0, 2, 4, 5]].any()


def test_swap_and_flag():
    pred = np.array([0, 1, 1, 0])
    flags = scores.flag(np.array([0.1, 0.9, 0.2, 0.8]), 0.5, "low")
    assert scores.swap(pred, flags).tolist() == [1, 1, 0, 0]
    assert not scores.flag(np.array([0.1]), None, "low").any()
    with pytest.raises(ValueError, match="direction"):
        scores.flag(np.array([0.1]), 0.5, "sideways")


def test_entropy_and_max_response():
    p = np.array([0.0, 0.5, 1.0, 0.25])
    assert scores.binary_entropy(p) == pytest.approx([0.0, 1.0, 0.0, 0.8112781], abs=1e-6)
    assert scores.max_response(p).tolist() == [1.0, 0.5, 1.0, 0.75]


def test_per_logit_views_of_every_task_kind():
    contract = _contract(
        TaskSpec("prognosis", "binary", ("good", "poor"), (0.5,)),
        TaskSpec("gcs", "ordinal", ("mild", "moderate", "severe"), (0.5, 0.5)),
        TaskSpec("severity", "multiclass", ("a", "b", "c"), (0.5, 0.5, 0.5)),
    )
    assert contract.output_names() == ["prognosis/poor", "gcs/>=moderate", "gcs/>=severe", "severity/a",
                                       "severity/b", "severity/c"]  # fmt: skip
    logits = np.array([[2.0, -1.0, 3.0, 0.0, 1.0, 0.5]])
    probs = scores.logit_probabilities(contract, logits)
    assert probs[0, 0] == pytest.approx(1 / (1 + np.exp(-2)))
    assert probs[0, 3:].sum() == pytest.approx(1.0)  # softmax within the multiclass head
    pred = scores.logit_predictions(contract, probs)
    # ordinal: the first bit is negative, so the second (positive) one does not count (monotone decoding)
    assert pred.tolist() == [[1, 0, 0, 0, 1, 0]]
    targets = scores.logit_targets(contract, {"prognosis": np.array([0]), "gcs": np.array([2]),
                                              "severity": np.array([-1])})  # fmt: skip
    assert targets[0, :3].tolist() == [0, 1, 1]
    assert np.isnan(targets[0, 3:]).all()


def test_failure_detection_metrics():
    errors = np.array([0, 0, 1, 0, 1], dtype=float)
    perfect = np.array([5, 4, 1, 3, 2], dtype=float)  # errors get the lowest confidence
    assert scores.eaurc(perfect, errors) == pytest.approx(0.0, abs=1e-12)
    worst = -perfect
    assert scores.aurc(worst, errors) > scores.aurc(perfect, errors)
    # Hand-computed for the perfect ranking: selective risks 0, 0, 0, 1/4, 2/5 at coverages 1/5 .. 1.
    assert scores.aurc(perfect, errors) == pytest.approx((0 + 0 + 0 + 1 / 4 + 2 / 5) / 5)
    # AUGRC: generalised risks (accepted errors / N) 0, 0, 0, 1/5, 2/5, joined by straight lines from (0, 0).
    assert scores.augrc(perfect, errors) == pytest.approx((1 / 5) * ((0 + 1 / 5) / 2 + (1 / 5 + 2 / 5) / 2))
    # Ties are accepted together: one confidence for all → the error rate at full coverage.
    assert scores.aurc(np.ones(5), errors) == pytest.approx(2 / 5)


def test_fit_threshold_refuses_classes_with_too_few_validation_cases():
    """The guard of informer.min_per_class: with 2 positives the paper's search would fit a tau (it can swap one
    lucky prediction); below the minimum no tau is fitted and the class is never flagged."""
    y_true = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    y_pred = np.array([1, 0, 0, 0, 0, 0, 0, 0])  # row 1 wrong
    d = np.array([1.5, 0.1, 1.4, 1.3, 1.2, 1.1, 1.0, 0.9])
    assert scores.fit_flag_threshold(d, y_true, y_pred, "low").tau is not None  # the paper's search alone
    fit = scores.fit_flag_threshold(d, y_true, y_pred, "low", min_per_class=5)
    assert fit.tau is None and fit.too_few and fit.n_flagged == 0 and fit.f1_after == fit.f1_before
    assert not scores.fit_flag_threshold(d, y_true, y_pred, "low", min_per_class=2).too_few  # 2 of each: fitted
