"""The logit tier on hand-made logits whose scores, flags, failure rankings and calibration section are known."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from medmlops.informer import csf, logit_tier, scores
from medmlops.informer.logit_tier import LogitTier, logit_flags, logit_scores
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
    # Max logit: |z| / 2 for a sigmoid logit (the symmetric pair (-z/2, z/2)); the head's max for a softmax head.
    assert s["maxlogit"] == pytest.approx(np.array([[0.0, LN3 / 2, 0.0, 0.0, 0.0], [LN3 / 2, 400.0, LN2, LN2, LN2]]))
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


def _aurc_case(z: list[float], y: list[int], min_per_class: int = 0, contract=BINARY) -> dict[str, float | None]:
    """AURC x 1000 (class-averaged) of each logit score as a CSF on hand-made logits and targets."""
    logits = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    targets = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    predictions = scores.logit_predictions(contract, scores.logit_probabilities(contract, logits))
    out = {}
    for name in logit_tier.LOGIT_SCORES:
        conf = csf.get(name).confidence({"logits": logits}, contract, None)
        values = csf.class_metric("aurc", conf, targets, predictions, min_per_class)
        out[name] = float(np.nanmean(values) * 1000) if np.isfinite(values).any() else None
    return out


def test_msr_ranks_errors_near_the_boundary_last_energy_does_not():
    # The wrong predictions have the smallest |z|: MSR (entropy, max logit: same ranking) put them last, a perfect
    # ranking; energy (monotone in z) puts them between the confident positives and the confident negatives.
    aurc = _aurc_case([4, -4, 3, -3, 0.1, -0.2], [1, 0, 1, 0, 0, 1])
    # MSR order: 4 correct, then -0.2 and 0.1 wrong: risks 0,0,0,0,1/5,2/6 over coverages k/6.
    assert aurc["msr"] == pytest.approx(1000 * (1 / 5 + 2 / 6) / 6)
    assert aurc["entropy"] == pytest.approx(aurc["msr"]) and aurc["maxlogit"] == pytest.approx(aurc["msr"])
    # Energy order 4, 3, 0.1 (wrong), -0.2 (wrong), -3, -4: risks 0, 0, 1/3, 2/4, 2/5, 2/6.
    assert aurc["energy"] == pytest.approx(1000 * (1 / 3 + 2 / 4 + 2 / 5 + 2 / 6) / 6)


def test_energy_ranks_confident_missed_positives_first():
    # Missed positives with large negative logits: MSR finds them most confident, energy least.
    aurc = _aurc_case([4, 3, 2, -3.5, -4.5, -0.5], [1, 1, 1, 1, 1, 0])
    assert aurc["energy"] == pytest.approx(1000 * (1 / 5 + 2 / 6) / 6)
    # MSR order -4.5 (wrong), 4, -3.5 (wrong), 3, 2, -0.5: risks 1, 1/2, 2/3, 2/4, 2/5, 2/6.
    assert aurc["msr"] == pytest.approx(1000 * (1 + 1 / 2 + 2 / 3 + 2 / 4 + 2 / 5 + 2 / 6) / 6)
    # One negative among the validation cases: below min_per_class = 2 the class is not ranked at all.
    assert set(_aurc_case([4, 3, 2, -3.5, -4.5, -0.5], [1, 1, 1, 1, 1, 0], min_per_class=2).values()) == {None}


def test_the_class_average_uses_only_the_classes_with_enough_cases():
    contract = _contract(TaskSpec("findings", "multilabel", ("a", "b"), (0.5, 0.5)))
    # Class a: the energy case above (1 negative). Class b: the MSR case (3 positives, 3 negatives).
    logits = [[4, 4], [3, -4], [2, 3], [-3.5, -3], [-4.5, 0.1], [-0.5, -0.2]]
    targets = [[1, 1], [1, 0], [1, 1], [1, 0], [1, 0], [0, 1]]
    aurc = _aurc_case(logits, targets, contract=contract)
    # The mean over both classes: energy (88.9 + 261.1) / 2, MSR (566.7 + 88.9) / 2, per class as above.
    assert aurc["energy"] == pytest.approx(175.0) and aurc["msr"] == pytest.approx(327.78, abs=0.01)
    aurc = _aurc_case(logits, targets, min_per_class=2, contract=contract)  # class a left out
    assert aurc["msr"] == pytest.approx(1000 * (1 / 5 + 2 / 6) / 6)


def test_fit_calibration_writes_the_tier_at_the_review_budget():
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
        "d": {"ixg": rng.random((n, 5))}, "cos": {"ixg": rng.random((n, 10))}, "embedding": rng.normal(size=(n, 4)),
    }  # fmt: skip
    names = ("msr", "maxlogit", "entropy", "energy")
    calibration = fit_calibration(outputs, targets, MIXED, methods=("ixg",), min_per_class=3, csf_names=names)
    tier = calibration["logit_tier"]
    classes = MIXED.output_names()
    assert set(calibration["baselines"]) == {"msr", "entropy", "energy"}  # the paper's protocol, kept beside
    assert set(tier) == {"score", "tau", "direction", "selection", "operating_point"}
    assert set(tier["selection"]) == set(logit_tier.LOGIT_SCORES)
    assert tier["score"] in logit_tier.LOGIT_SCORES and len(tier["tau"]) == len(tier["direction"]) == len(classes)
    json.dumps(calibration, allow_nan=False)  # stored as strict JSON
    # At ingest, the tier flags from the logits alone about the review budget (10 %) of each class's validation
    # predictions: the quantile τ flags the cases strictly below it.
    flags = logit_flags(calibration, logit_scores(MIXED, logits))
    assert calibration["csf"]["operating_point"]["review_budget"] == 0.1
    for j in range(5):
        assert 0 < flags[:, j].sum() <= int(0.1 * n) + 1
    # ... exactly the cases whose confidence (the CSF's orientation) is below the operating point's τ.
    confidence = csf.get(tier["score"]).confidence(outputs, MIXED, None)
    assert (flags == csf.flags(confidence, tier["operating_point"]["tau"])).all()
    # The contract carries the same sections (without the fitted states), so the tier reads from either.
    summary = contract_summary(calibration)
    assert summary["logit_tier"] == tier and "energy" in summary["baselines"] and "states" not in summary["csf"]
    assert (logit_flags(summary, logit_scores(MIXED, logits)) == flags).all()
    # An older calibration (no section) still summarises, without the tier.
    older = {k: v for k, v in calibration.items() if k not in ("logit_tier", "csf")}
    assert "logit_tier" not in contract_summary(older) and logit_flags(older, logit_scores(MIXED, logits)) is None

    # Too few cases to rank: MSR kept; a stated target risk the whole split meets flags nothing.
    guarded = fit_calibration(
        outputs, targets, MIXED, methods=("ixg",), min_per_class=1000, csf_names=names, review_budget=None,
        target_risk=1.0,
    )  # fmt: skip
    assert guarded["logit_tier"]["score"] == "msr" and guarded["logit_tier"]["tau"] == [None] * 5
    assert set(guarded["logit_tier"]["selection"].values()) == {None}
