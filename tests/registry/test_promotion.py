"""Promotion gates, rollback and listing on SQLite, and the whole path against a real ``mlflow server``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medmlops.config import GatesConfig
from medmlops.registry import ModelNotFoundError, PromotionError, list_versions, load_model, promote, rollback
from medmlops.registry.promotion import HISTORY_TAG
from tests.registry.conftest import aliases, example_batch

GATES = GatesConfig(
    primary_metric="prognosis_auc_mean",
    min_metrics={"prognosis_auc_mean": 0.60, "prognosis_balanced_accuracy_mean": 0.55},
    max_regression=0.02,
)
GOOD = {"prognosis_auc_mean": 0.80, "prognosis_balanced_accuracy_mean": 0.70}


def test_candidate_below_a_floor_is_not_promoted(sqlite_registry):
    sqlite_registry.register("ich-prognosis", {"prognosis_auc_mean": 0.52, "prognosis_balanced_accuracy_mean": 0.70})
    result = promote("ich-prognosis", GATES)
    assert not result.promoted and result.version == "1" and result.previous_champion is None
    assert result.failed == ["prognosis_auc_mean 0.520 < floor 0.600"]
    assert "prognosis_auc_mean 0.520 < floor 0.600" in result.message
    assert "champion" not in aliases(sqlite_registry.client, "ich-prognosis")


def test_missing_metric_fails_its_gate(sqlite_registry):
    sqlite_registry.register("ich-prognosis", {"prognosis_auc_mean": 0.9})
    result = promote("ich-prognosis", GATES)
    assert not result.promoted
    assert result.failed == ["prognosis_balanced_accuracy_mean missing (floor 0.550)"]


def test_run_metrics_complete_the_contract(sqlite_registry):
    sqlite_registry.register(
        "ich-prognosis", {"prognosis_auc_mean": 0.9}, run_metrics={"prognosis_balanced_accuracy_mean": 0.61}
    )
    assert promote("ich-prognosis", GATES).promoted


def test_promote_regress_rollback(sqlite_registry):
    client = sqlite_registry.client
    sqlite_registry.register("ich-prognosis", GOOD)
    first = promote("ich-prognosis", GATES)
    assert first.promoted and first.version == "1" and first.previous_champion is None and first.failed == []
    assert aliases(client, "ich-prognosis") == {"candidate": "1", "champion": "1"}
    assert not promote("ich-prognosis", GATES).promoted  # already champion: nothing moves, nothing recorded

    # 0.77 passes every floor but falls more than max_regression (0.02) below the champion's 0.80.
    sqlite_registry.register("ich-prognosis", {**GOOD, "prognosis_auc_mean": 0.77})
    refused = promote("ich-prognosis", GATES)
    assert not refused.promoted and refused.version == "2" and refused.previous_champion == "1"
    assert refused.failed == ["prognosis_auc_mean 0.770 < champion version 1 0.800 - max_regression 0.020"]
    assert aliases(client, "ich-prognosis") == {"candidate": "2", "champion": "1"}

    sqlite_registry.register("ich-prognosis", {**GOOD, "prognosis_auc_mean": 0.79})  # within tolerance
    second = promote("ich-prognosis", GATES)
    assert second.promoted and second.version == "3" and second.previous_champion == "1"
    assert aliases(client, "ich-prognosis")["champion"] == "3"
    assert json.loads(client.get_registered_model("ich-prognosis").tags[HISTORY_TAG]) == ["1"]
    assert "promoted_at" in client.get_model_version("ich-prognosis", "3").tags

    back = rollback("ich-prognosis")
    assert back.promoted and back.version == "1" and back.previous_champion == "3"
    assert aliases(client, "ich-prognosis")["champion"] == "1"
    _, contract, version = load_model("ich-prognosis")
    assert version == "1" and contract.metrics == GOOD

    with pytest.raises(PromotionError, match="no previous champion to roll back to"):
        rollback("ich-prognosis")

    rows = list_versions("ich-prognosis")
    assert [r["version"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["aliases"] == ["champion"] and rows[2]["aliases"] == ["candidate"]
    assert rows[1]["metrics"]["prognosis_auc_mean"] == 0.77
    assert rows[0]["tags"]["git_commit"] == "feedface" and rows[0]["created"].endswith("+00:00")


def test_rollback_without_history_is_a_clear_error(sqlite_registry):
    sqlite_registry.register("ich-prognosis", GOOD)
    with pytest.raises(PromotionError, match="'ich-prognosis' has no previous champion"):
        rollback("ich-prognosis")
    with pytest.raises(ModelNotFoundError, match="registered model 'other' not found"):
        rollback("other")
    with pytest.raises(ModelNotFoundError, match="no version with alias 'nightly'"):
        promote("ich-prognosis", GATES, alias="nightly")


def test_register_load_promote_over_http(server_registry, unique_family, tmp_path):
    """The same path against a real tracking server: REST registry, proxied artifacts (mlflow-artifacts:/)."""
    family = unique_family("ich-prognosis")
    assert server_registry.uri.startswith("http://127.0.0.1:")
    torch.manual_seed(0)
    first = server_registry.register(family, GOOD)
    assert str(first.version) == "1"
    model, contract, version = load_model(family, "candidate")
    assert version == "1" and contract.output_names() == ["prognosis/poor", "gcs/>=moderate", "gcs/>=severe"]
    x = torch.from_numpy(example_batch(1))
    with torch.no_grad():
        assert model(x)["gcs"].shape == (2, 2)

    assert promote(family, GATES).promoted
    server_registry.register(family, {**GOOD, "prognosis_auc_mean": 0.70})
    refused = promote(family, GATES)
    assert not refused.promoted and "prognosis_auc_mean 0.700 < champion version 1 0.800" in refused.message
    server_registry.register(family, {**GOOD, "prognosis_auc_mean": 0.85})
    assert promote(family, GATES).promoted
    assert rollback(family).version == "1"
    champion, _, version = load_model(family)
    assert version == "1"
    with torch.no_grad():
        np.testing.assert_allclose(champion(x)["prognosis"].numpy(), model(x)["prognosis"].numpy())
    assert [r["aliases"] for r in list_versions(family)] == [["champion"], [], ["candidate"]]
