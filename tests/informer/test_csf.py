"""Confidence scoring functions on hand-made inputs, the ranking's selection with planted scores, cross-fitting and
the operating point."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medmlops.informer import csf, scores
from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec


def _contract(*tasks: TaskSpec) -> ModelContract:
    return ModelContract(
        family="toy", tasks=tasks, input=InputSpec("xray", (".png",), (3, 32, 32), None, None, 3),
        preprocessing={}, data_version="x", git_commit="y", metrics={},
    )  # fmt: skip


FINDINGS = _contract(TaskSpec("findings", "multilabel", ("a", "b", "c"), (0.5, 0.5, 0.5)))
HEAD = _contract(TaskSpec("severity", "multiclass", ("x", "y", "z"), (0.5, 0.5, 0.5)))


def _world(n: int = 400, seed: int = 0, contract: ModelContract = FINDINGS):
    """Calibrated sigmoid findings: targets drawn from the model's own probabilities, so MSR is informative."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, 3))
    targets = (rng.random((n, 3)) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    predictions = scores.logit_predictions(contract, scores.logit_probabilities(contract, logits))
    maps = rng.normal(size=(n, 3, 16))
    outputs = {
        "logits": logits, "predictions": predictions, "embedding": rng.normal(size=(n, 8)),
        "d": {"ixg": scores.distinctiveness(maps)}, "cos": {"ixg": scores.pairwise_distances(maps)},
        "tta": rng.random((n, 3)),
    }  # fmt: skip
    return outputs, targets, predictions, rng


def test_unfitted_csfs_by_hand():
    logits = np.array([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]])
    out = {"logits": logits, "tta": np.array([[0.1, 0.2, 0.0], [0.3, 0.0, 0.05]]), "d": {"ixg": np.ones((2, 3))}}
    p = 1 / (1 + np.exp(-logits))
    assert csf.get("msr").confidence(out, FINDINGS, None) == pytest.approx(np.maximum(p, 1 - p))
    assert csf.get("maxlogit").confidence(out, FINDINGS, None) == pytest.approx(np.abs(logits) / 2)
    assert csf.get("entropy").confidence(out, FINDINGS, None) == pytest.approx(-scores.binary_entropy(p))
    assert csf.get("energy").confidence(out, FINDINGS, None) == pytest.approx(np.log1p(np.exp(logits)))
    assert csf.get("tta").confidence(out, FINDINGS, None) == pytest.approx(-out["tta"])
    assert csf.get("informer_ixg").confidence(out, FINDINGS, None) == pytest.approx(np.ones((2, 3)))
    assert csf.get("informer_ixg").confidence(out, FINDINGS, {"direction": "high"}) == pytest.approx(-np.ones((2, 3)))
    # A softmax head: max logit and energy are the head's, the same for each of its classes.
    head = np.array([[1.0, 2.0, 0.0]])
    assert csf.get("maxlogit").confidence({"logits": head}, HEAD, None) == pytest.approx(np.array([[2.0, 2.0, 2.0]]))
    lse = np.log(np.exp(head).sum())
    assert csf.get("energy").confidence({"logits": head}, HEAD, None) == pytest.approx(np.array([[lse] * 3]))
    with pytest.raises(csf.CSFUnavailable, match="tta needs"):
        csf.get("tta").confidence({"logits": logits}, FINDINGS, None)
    with pytest.raises(csf.CSFUnavailable, match="lrp saliency"):
        csf.get("informer_lrp").confidence(out, FINDINGS, None)
    with pytest.raises(csf.CSFUnavailable, match="unknown confidence scoring function 'softmax'"):
        csf.get("softmax")


def test_mahalanobis_by_hand_from_a_known_state_and_its_fit():
    # Identity projection and precision: the confidence is minus the squared distance to the predicted side's mean.
    state = {"mean": [0.0, 0.0], "components": [[1.0, 0.0], [0.0, 1.0]], "precision": [[1.0, 0.0], [0.0, 1.0]],
             "class_means": [[[0.0, 0.0], [4.0, 0.0]]]}  # fmt: skip
    out = {"embedding": np.array([[1.0, 1.0], [3.0, 0.0]]), "predictions": np.array([[0], [1]])}
    assert csf.get("mahalanobis").confidence(out, _binary(), state) == pytest.approx(np.array([[-2.0], [-1.0]]))
    # Fitted: the side means are those of the known targets in the principal-component space.
    rng = np.random.default_rng(1)
    emb = np.r_[rng.normal(0, 1, (40, 3)), rng.normal(5, 1, (40, 3))]
    targets = np.r_[np.zeros(40), np.ones(40)][:, None]
    fit = csf.get("mahalanobis").fit({"embedding": emb}, _binary(), targets, targets.astype(int))
    z = (emb - np.asarray(fit["mean"])) @ np.asarray(fit["components"]).T
    assert np.asarray(fit["class_means"])[0, 1] == pytest.approx(z[40:].mean(axis=0))
    json.dumps(fit, allow_nan=False)
    # An image near the other side's mean than the one it is predicted as is less confident.
    out = {"embedding": np.array([[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]]), "predictions": np.array([[1], [0]])}
    right, wrong = csf.get("mahalanobis").confidence(out, _binary(), fit)[:, 0]
    assert right > wrong


def _binary() -> ModelContract:
    return _contract(TaskSpec("prognosis", "binary", ("good", "poor"), (0.5,)))


def test_selection_keeps_msr_against_planted_random_scores():
    outputs, targets, predictions, _ = _world()
    names = csf.default_names(["ixg"], tta=True)  # d, cos, tta and the embedding are pure noise in this world
    ranking, _ = csf.rank(outputs, FINDINGS, targets, predictions, names, n_bootstrap=50, folds=3)
    assert ranking.selected == "msr", ranking
    for noise in ("tta", "informer_ixg", "mahalanobis"):
        assert ranking.augrc[noise] > ranking.augrc["msr"]
    assert set(ranking.augrc) >= set(names) and not ranking.unavailable


def test_selection_picks_a_planted_oracle():
    outputs, targets, predictions, rng = _world(seed=3)
    errors = (predictions != targets).astype(np.float64)
    outputs["d"]["ixg"] = 1.0 - errors + rng.normal(0, 0.05, errors.shape)  # low d exactly on the failures
    ranking, _ = csf.rank(outputs, FINDINGS, targets, predictions, ["msr", "informer_ixg"], n_bootstrap=50)
    assert ranking.selected == "informer_ixg" and ranking.augrc["informer_ixg"] < 0.5 * ranking.augrc["msr"]
    # A pin overrides the ranking; a pin that cannot be computed is one clear error.
    pinned, _ = csf.rank(outputs, FINDINGS, targets, predictions, ["msr", "informer_ixg"], pinned="msr", n_bootstrap=0)
    assert pinned.selected == "msr" and pinned.reason.startswith("pinned")
    with pytest.raises(csf.CSFUnavailable, match="pins 'informer_lrp'"):
        csf.rank(outputs, FINDINGS, targets, predictions, ["msr", "informer_lrp"], pinned="informer_lrp")


def test_informer_learned_uses_the_pairwise_distances_the_ablation_lacks():
    # The failures are written into the pair (a, b)'s map distance only: the learned combiner must find them there;
    # its ablation (logit scores alone) cannot.
    outputs, targets, predictions, rng = _world(n=300, seed=5)
    errors = (predictions != targets).astype(np.float64)
    outputs["cos"]["ixg"][:, 0] = errors.max(axis=1) + rng.normal(0, 0.05, len(errors))
    ranking, _ = csf.rank(
        outputs, FINDINGS, targets, predictions, ["msr", "informer_learned", "logit_learned"], n_bootstrap=30, folds=3
    )
    assert ranking.augrc["informer_learned"] < 0.8 * ranking.augrc["logit_learned"], ranking.augrc
    state = csf.get("informer_learned").fit(outputs, FINDINGS, targets, predictions)
    assert state["classifier"] in state["cv_augrc"] and state["method"] == "ixg"
    json.dumps(state, allow_nan=False)  # the fitted model travels base64-pickled inside the JSON calibration


def test_fitted_csfs_need_errors_to_learn_from():
    outputs, targets, predictions, _ = _world(n=40)
    with pytest.raises(csf.CSFUnavailable, match="at least 5 wrong"):
        csf.get("logit_learned").fit(outputs, FINDINGS, predictions.astype(float), predictions)  # no errors at all
    ranking, _ = csf.rank(
        outputs, FINDINGS, predictions.astype(float), predictions, ["msr", "logit_learned"], n_bootstrap=0
    )
    assert "logit_learned" in ranking.unavailable and ranking.selected == "msr"


def test_cross_fitting_scores_every_image_with_a_fit_that_did_not_see_it():
    outputs, targets, predictions, _ = _world(n=50)
    seen: list[set[int]] = []

    def spy_fit(out, contract, t, p):
        seen.append({int(i) for i in out["row"]})
        return {"rows": sorted(seen[-1])}

    def spy_confidence(out, contract, state):
        assert not {int(i) for i in out["row"]} & set(state["rows"]), "an image was scored by a fit that saw it"
        return np.zeros((len(out["row"]), 3))

    outputs["row"] = np.arange(50)
    spy = csf.CSF("spy", "Spy", "logits", spy_confidence, spy_fit)
    confidence = csf.cross_fitted(spy, outputs, FINDINGS, targets, predictions, folds=5)
    assert len(seen) == 5 and confidence.shape == (50, 3) and np.isfinite(confidence).all()
    assert set().union(*seen) == set(range(50))


def test_disjointness_check_names_the_overlap():
    csf.check_disjoint(["a", "b"], ["c"])
    with pytest.raises(csf.CSFUnavailable, match="fitted on 1 images of the test split"):
        csf.check_disjoint(["a", "b"], ["b", "c"])


def test_operating_point_by_budget_and_by_target_risk():
    confidence = np.array([[0.1], [0.2], [0.3], [0.4], [0.5], [0.6], [0.7], [0.8], [0.9], [1.0]])
    targets = np.array([[0], [0], [1], [1], [1], [1], [1], [1], [1], [1]], dtype=np.float64)
    predictions = np.ones((10, 1), dtype=int)  # the two least confident are wrong
    point = csf.operating_point(confidence, targets, predictions, review_budget=0.2)
    assert point["tau"][0] == pytest.approx(0.28)  # the 20 % quantile: flags 0.1 and 0.2
    assert csf.flags(confidence, point["tau"]).sum() == 2 and point["coverage"] == [0.8] and point["risk"] == [0.0]
    point = csf.operating_point(confidence, targets, predictions, target_risk=0.15)
    # Accepting down to 0.2 gives 1/9 = 0.11 <= 0.15; down to 0.1 gives 2/10: τ = 0.2, coverage 0.9.
    assert point["tau"] == [0.2] and point["coverage"] == [0.9] and point["risk"][0] == pytest.approx(1 / 9)
    assert csf.operating_point(confidence, targets, predictions, target_risk=0.5)["tau"] == [None]  # already met
    with pytest.raises(ValueError, match="exactly one"):
        csf.operating_point(confidence, targets, predictions)
    on_new = csf.selective_point(confidence, targets, predictions, [0.5])
    assert on_new == {"coverage": [0.6], "risk": [0.0]}


def test_a_challenger_must_clear_the_bound_corrected_for_every_challenger_tried():
    augrc = {"msr": 100.0, "informer_learned": 80.0, **{f"c{k}": 120.0 for k in range(8)}}  # 9 challengers
    z = csf.required_margin(1.0, 9)
    assert z == pytest.approx(2.54, abs=0.01)  # one-sided 5 % / 9
    # 20 below MSR with a paired SE of 10: 2 SE, inside the corrected bound (25.4): the winner's curse, MSR kept.
    assert csf.choose(csf.Ranking(augrc, {"informer_learned": 10.0}, {}, "msr", "")) == "msr"
    # The same gap with a SE of 5 clears it (12.7): deployed.
    assert csf.choose(csf.Ranking(augrc, {"informer_learned": 5.0}, {}, "msr", "")) == "informer_learned"
    # With a single challenger the bound is the plain one-sided 5 % (1.64 SE).
    one = {"msr": 100.0, "informer_learned": 80.0}
    assert csf.choose(csf.Ranking(one, {"informer_learned": 11.0}, {}, "msr", "")) == "informer_learned"
    assert csf.choose(csf.Ranking(one, {"informer_learned": 13.0}, {}, "msr", "")) == "msr"
