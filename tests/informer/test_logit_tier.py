"""The logit tier on hand-made logits whose scores, flags and score selection are known."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from medmlops.informer import logit_tier, scores
from medmlops.informer.logit_tier import LogitTier, logit_flags, logit_scores, select_score
from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec

LN2, LN3 = math.log(2), math.log(3)
H34 = 0.8112781244591328  # binary entropy of 1/4 (= of 3/4), bits
H13 = 0.9182958340544896  # binary entropy of 1/3, bits


def _contract(*tasks: TaskSpec) -> ModelContract:
    return ModelContract(
        family="toy", tasks=tasks, input=InputSpec("xray", (".png",), (3, 32, 32), None, None, 3),
        preprocessing={}, data_version="x", git_commit="y", metrics={},
    )  # fmt: skip


# Two sigmoid findings and a 3-class softmax head: C = 5.
MIXED = _contract(
    TaskSpec("findings", "multilabel", ("a", "b"), (0.5, 0.5)),
    TaskSpec("severity", "multiclass", ("x", "y", "z"), (0.5, 0.5, 0.5)),
)
LOGITS = np.array(
    [
        [0.0, LN3, 0.0, 0.0, 0.0],  # p = 1/2, 3/4; softmax 1/3 each
        [-LN3, 800.0, LN2, 0.0, 0.0],  # p = 1/4, ~1; softmax (1/2, 1/4, 1/4)
    ]
)


def test_scores_by_hand_for_sigmoid_logits_and_a_softmax_head():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # z = 800: exp(z) overflows unless energy is computed stably
        s = logit_scores(MIXED, LOGITS)
    assert set(s) == set(logit_tier.LOGIT_SCORES) and all(v.shape == (2, 5) for v in s.values())
    assert s["msr"] == pytest.approx(np.array([[0.5, 0.75, 2 / 3, 2 / 3, 2 / 3], [0.75, 1.0, 0.5, 0.75, 0.75]]))
    assert s["entropy"] == pytest.approx(np.array([[1.0, H34, H13, H13, H13], [H34, 0.0, 1.0, H34, H34]]), abs=1e-9)
    # Sigmoid z: -log(1 + e^z); softmax head: -logsumexp over its logits, the same value for each of its classes.
    assert s["energy"] == pytest.approx(
        np.array(
            [
                [-LN2, -math.log(4), -LN3, -LN3, -LN3],
                [-math.log(4 / 3), -800.0, -math.log(4), -math.log(4), -math.log(4)],
            ]
        )
    )
    # One record's (C,) logits are a batch of one.
    one = logit_scores(MIXED, LOGITS[1])
    assert one["energy"].shape == (1, 5) and one["energy"] == pytest.approx(s["energy"][1:])
    with pytest.raises(ValueError, match="5 output logits"):
        logit_scores(MIXED, np.zeros((2, 4)))


def test_energy_is_stable_at_extreme_logits_and_orders_like_the_literature():
    contract = _contract(TaskSpec("prognosis", "binary", ("good", "poor"), (0.5,)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        energy = scores.logit_energy(contract, np.array([[-800.0], [0.0], [800.0]]))[:, 0]
    assert energy == pytest.approx([0.0, -LN2, -800.0])
    assert scores.SCORE_DIRECTIONS["energy"] == "high"  # high energy = less confident: flagged above tau


def test_flags_with_known_taus_in_both_directions_and_none_never_flags():
    s = logit_scores(MIXED, LOGITS)
    low = {"logit_tier": {"score": "msr", "tau": [0.6, None, 0.7, 0.7, 0.7], "direction": ["low"] * 5}}
    # msr rows: [0.5, 0.75, 2/3, 2/3, 2/3], [0.75, 1, 0.5, 0.75, 0.75]; flagged below tau; class b never.
    assert logit_flags(low, s).tolist() == [[True, False, True, True, True], [False, False, True, False, False]]
    high = {"logit_tier": {"score": "energy", "tau": [-0.5, -1.0, None, -1.3, -1.4], "direction": ["high"] * 5,
                           "selection": {}}}  # fmt: skip
    # energy rows: [-0.69, -1.39, -1.10, -1.10, -1.10], [-0.29, -800, -1.39, -1.39, -1.39]; flagged above tau.
    assert logit_flags(high, s).tolist() == [[False, False, False, True, True], [True, False, False, False, True]]
    never = {"logit_tier": {"score": "entropy", "tau": [None] * 5, "direction": ["high"] * 5}}
    assert not logit_flags(never, s).any() and logit_flags(never, s).shape == (2, 5)


def test_missing_or_bad_section():
    s = logit_scores(MIXED, LOGITS)
    assert logit_flags({"schema": 1, "method": "ixg", "methods": {}}, s) is None  # calibrated before the tier
    assert logit_flags(None, s) is None and LogitTier.from_calibration({}) is None
    with pytest.raises(ValueError, match="unknown score"):
        logit_flags({"logit_tier": {"score": "tta", "tau": [None] * 5, "direction": ["high"] * 5}}, s)
    with pytest.raises(ValueError, match="direction"):
        logit_flags({"logit_tier": {"score": "msr", "tau": [0.6] * 5, "direction": ["up"] * 5}}, s)
    with pytest.raises(ValueError, match="calibrated for 3 classes"):
        logit_flags({"logit_tier": {"score": "msr", "tau": [0.6] * 3, "direction": ["low"] * 3}}, s)


BINARY = _contract(TaskSpec("prognosis", "binary", ("good", "poor"), (0.5,)))


def _selection_case(z: list[float], y: list[int], min_per_class: int = 0) -> tuple[str, dict]:
    logits = np.asarray(z)[:, None]
    targets = np.asarray(y, dtype=np.float64)[:, None]
    predictions = scores.logit_predictions(BINARY, scores.logit_probabilities(BINARY, logits))
    return select_score(logit_scores(BINARY, logits), targets, predictions, min_per_class)


def test_selection_keeps_msr_when_the_errors_sit_near_the_boundary():
    # The wrong predictions have the smallest |z|: MSR (and entropy, same ranking) put them last, a perfect
    # ranking; energy (monotone in z) puts them between the confident positives and the confident negatives.
    chosen, aurc = _selection_case([4, -4, 3, -3, 0.1, -0.2], [1, 0, 1, 0, 0, 1])
    assert chosen == "msr"
    # MSR order: 4 correct, then -0.2 and 0.1 wrong: risks 0,0,0,0,1/5,2/6 over coverages k/6.
    assert aurc["msr"] == pytest.approx(1000 * (1 / 5 + 2 / 6) / 6)
    assert aurc["entropy"] == pytest.approx(aurc["msr"])  # a tie: the earlier name wins
    # Energy order 4, 3, 0.1 (wrong), -0.2 (wrong), -3, -4: risks 0, 0, 1/3, 2/4, 2/5, 2/6.
    assert aurc["energy"] == pytest.approx(1000 * (1 / 3 + 2 / 4 + 2 / 5 + 2 / 6) / 6)


def test_selection_picks_energy_when_the_failures_are_confident_negatives():
    # Missed positives with large negative logits: MSR finds them most confident, energy least.
    chosen, aurc = _selection_case([4, 3, 2, -3.5, -4.5, -0.5], [1, 1, 1, 1, 1, 0])
    assert chosen == "energy"
    assert aurc["energy"] == pytest.approx(1000 * (1 / 5 + 2 / 6) / 6)
    # MSR order -4.5 (wrong), 4, -3.5 (wrong), 3, 2, -0.5: risks 1, 1/2, 2/3, 2/4, 2/5, 2/6.
    assert aurc["msr"] == pytest.approx(1000 * (1 + 1 / 2 + 2 / 3 + 2 / 4 + 2 / 5 + 2 / 6) / 6)
    # One negative among the validation cases: below informer.min_per_class = 2 nothing is ranked; MSR by default.
    chosen, aurc = _selection_case([4, 3, 2, -3.5, -4.5, -0.5], [1, 1, 1, 1, 1, 0], min_per_class=2)
    assert chosen == logit_tier.DEFAULT_SCORE == "msr" and set(aurc.values()) == {None}


def test_selection_averages_only_the_classes_with_enough_cases():
    contract = _contract(TaskSpec("findings", "multilabel", ("a", "b"), (0.5, 0.5)))
    # Class a: the energy case above (1 negative). Class b: the MSR case (3 positives, 3 negatives).
    logits = np.array([[4, 4], [3, -4], [2, 3], [-3.5, -3], [-4.5, 0.1], [-0.5, -0.2]])
    targets = np.array([[1, 1], [1, 0], [1, 1], [1, 0], [1, 0], [0, 1]], dtype=np.float64)
    predictions = scores.logit_predictions(contract, scores.logit_probabilities(contract, logits))
    s = logit_scores(contract, logits)
    chosen, aurc = select_score(s, targets, predictions)
    # The mean over both classes: energy (88.9 + 261.1) / 2, MSR (566.7 + 88.9) / 2, per class as above.
    assert (
        chosen == "energy" and aurc["energy"] == pytest.approx(175.0) and aurc["msr"] == pytest.approx(327.78, abs=0.01)
    )
    chosen, aurc = select_score(s, targets, predictions, min_per_class=2)  # class a left out
    assert chosen == "msr" and aurc["msr"] == pytest.approx(1000 * (1 / 5 + 2 / 6) / 6)


def test_fit_calibration_writes_the_tier_from_the_selected_baseline_fit():
    from medmlops.informer.calibrate import contract_summary, fit_calibration

    rng = np.random.default_rng(0)
    n = 60
    logits = rng.normal(0, 2, size=(n, 5))
    targets = np.concatenate([(rng.random((n, 2)) < 0.5), np.eye(3)[rng.integers(0, 3, n)]], axis=1).astype(float)
    targets[:5, 0] = np.nan  # unknown labels stay out of fits and selection
    probs = scores.logit_probabilities(MIXED, logits)
    outputs = {
        "logits": logits, "predictions": scores.logit_predictions(MIXED, probs),
        "msr": scores.max_response(probs), "entropy": scores.binary_entropy(probs),
        "d": {"ixg": rng.random((n, 5))}, "embedding": rng.normal(size=(n, 4)),
    }  # fmt: skip
    calibration = fit_calibration(outputs, targets, MIXED, methods=("ixg",), min_per_class=3)
    tier = calibration["logit_tier"]
    classes = MIXED.output_names()
    assert set(calibration["baselines"]) == {"msr", "entropy", "energy"}
    assert set(tier) == {"score", "tau", "direction", "selection"}
    assert set(tier["selection"]) == set(logit_tier.LOGIT_SCORES)
    assert tier["score"] in logit_tier.LOGIT_SCORES and len(tier["tau"]) == len(tier["direction"]) == len(classes)
    fit = calibration["baselines"][tier["score"]]
    assert tier["tau"] == [fit["tau"][c] for c in classes] and set(tier["direction"]) == {fit["direction"]}
    json.dumps(calibration, allow_nan=False)  # stored as strict JSON
    # At ingest, the tier from the logits alone flags exactly what the search flagged on the validation split.
    flags = logit_flags(calibration, logit_scores(MIXED, logits))
    known = np.isfinite(targets)
    assert [int(flags[known[:, j], j].sum()) for j in range(5)] == [fit["n_flagged"][c] for c in classes]
    assert flags.any()  # this seed fits at least one tau, so the check above is not vacuous
    # The contract carries the same section, so the tier reads from either.
    summary = contract_summary(calibration)
    assert summary["logit_tier"] == tier and "energy" in summary["baselines"]
    assert (logit_flags(summary, logit_scores(MIXED, logits)) == flags).all()
    # An older calibration (no section) still summarises, without the tier.
    older = {k: v for k, v in calibration.items() if k != "logit_tier"}
    assert "logit_tier" not in contract_summary(older) and logit_flags(older, logit_scores(MIXED, logits)) is None

    guarded = fit_calibration(outputs, targets, MIXED, methods=("ixg",), min_per_class=1000)
    assert guarded["logit_tier"]["score"] == "msr" and guarded["logit_tier"]["tau"] == [None] * 5
    assert set(guarded["logit_tier"]["selection"].values()) == {None}
