"""The model contract: JSON round trip, logit names, and one clear ContractError per invalid field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from medmlops.errors import UserError
from medmlops.registry.contract import ContractError, InputGate, ModelContract, TaskSpec
from tests.registry.conftest import make_contract


def _with_task(contract: ModelContract, index: int, **changes) -> ModelContract:
    tasks = list(contract.tasks)
    tasks[index] = dataclasses.replace(tasks[index], **changes)
    return dataclasses.replace(contract, tasks=tuple(tasks))


def _with_input(contract: ModelContract, **changes) -> ModelContract:
    return dataclasses.replace(contract, input=dataclasses.replace(contract.input, **changes))


def test_round_trip_preserves_every_field():
    contract = dataclasses.replace(
        make_contract(),
        informer={"tau": {"poor": 0.31}, "direction": "low", "saliency": "input_x_gradient"},
        experiment="ich-mtl",
        created_at="2026-01-02T03:04:05+00:00",
    )
    text = contract.to_json()
    back = ModelContract.from_json(text)
    assert back == contract
    assert isinstance(back.tasks[1].thresholds, tuple) and back.input.shape == (1, 16, 16)
    assert json.loads(text)["tasks"][1]["classes"] == ["mild", "moderate", "severe"]


def test_the_input_gate_round_trips_and_older_contracts_without_it_still_load():
    gate = InputGate(modalities=("CR", "DX"), body_parts=("CHEST",), view_positions=("PA", "AP"),
                     limits={"cxr_min_size": 32, "cxr_max_size": 8192},
                     ood={"action": "warn", "percentile": 99.0, "threshold": 3.5})  # fmt: skip
    contract = dataclasses.replace(make_contract(), input_gate=gate)
    back = ModelContract.from_json(contract.to_json())
    assert back == contract and back.input_gate.view_positions == ("PA", "AP")
    older = json.loads(make_contract().to_json())
    del older["input_gate"]
    assert ModelContract.from_dict(older).input_gate is None


@pytest.mark.parametrize(
    ("gate", "field"),
    [
        (InputGate(modalities=("CR", "")), "input_gate.modalities"),
        (InputGate(max_pixels=0), "input_gate.max_pixels"),
        (InputGate(samples_per_pixel=True), "input_gate.samples_per_pixel"),
        (InputGate(ood={"action": "drop"}), "input_gate.ood.action"),
    ],
)
def test_an_invalid_input_gate_is_named(gate, field):
    with pytest.raises(ContractError, match=field.replace(".", r"\.")):
        dataclasses.replace(make_contract(), input_gate=gate).validate()
    raw = json.loads(make_contract().to_json())
    raw["input_gate"] = {"modalities": ["CR"], "colour": "grey"}
    with pytest.raises(ContractError, match="unknown key 'input_gate.colour'"):
        ModelContract.from_dict(raw)


def test_ct_contract_round_trips_with_spacing_and_window():
    ct = _with_input(
        make_contract(),
        modality="ct",
        formats=("nii", "nii.gz"),
        shape=(1, 16, 32, 32),
        spacing_mm=(5.0, 1.0, 1.0),
        intensity_window=(15.0, 100.0),
    )
    assert ModelContract.from_json(ct.to_json()) == ct.validate()


def test_output_names_follow_task_order_and_encoding():
    contract = dataclasses.replace(
        make_contract(),
        tasks=(
            *make_contract().tasks,
            TaskSpec("findings", "multilabel", ("edema", "effusion", "atelectasis"), (0.5, 0.3, 0.7)),
        ),
    )
    assert contract.output_names() == [
        "prognosis/poor",
        "gcs/>=moderate",
        "gcs/>=severe",
        "findings/edema",
        "findings/effusion",
        "findings/atelectasis",
    ]
    assert contract.task("gcs").n_logits == 2
    with pytest.raises(ContractError, match="no task 'age'"):
        contract.task("age")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: dataclasses.replace(c, tasks=()), "tasks is empty"),
        (lambda c: dataclasses.replace(c, family=""), "family"),
        (lambda c: _with_task(c, 0, kind="regression"), "tasks[0].kind 'regression'"),
        (lambda c: _with_task(c, 0, classes=("poor",)), "tasks[0].classes"),
        (lambda c: _with_task(c, 1, thresholds=(0.5,)), "tasks[1].thresholds has 1 values"),
        (lambda c: _with_task(c, 0, thresholds=(0.5, 0.5)), "tasks[0].thresholds has 2 values"),
        (lambda c: _with_task(c, 0, thresholds=(float("nan"),)), "tasks[0].thresholds must be finite"),
        (lambda c: _with_task(c, 0, thresholds=(1.5,)), "tasks[0].thresholds must be finite"),
        (lambda c: _with_task(c, 1, name="prognosis"), "tasks[1].name 'prognosis' is used by two tasks"),
        (lambda c: _with_task(c, 1, classes=("a", "a", "b")), "tasks[1].classes has duplicate"),
        (lambda c: _with_input(c, modality="mri"), "input.modality 'mri'"),
        (lambda c: _with_input(c, shape=(1, 0, 16)), "input.shape [1, 0, 16]"),
        (lambda c: _with_input(c, shape=(1, 16, 16, 16)), "input.shape [1, 16, 16, 16] must have 3 dimensions"),
        (lambda c: _with_input(c, channels=3), "input.channels 3"),
        (lambda c: _with_input(c, formats=()), "input.formats"),
        (lambda c: _with_input(c, spacing_mm=(1.0,)), "input.spacing_mm"),
        (lambda c: _with_input(c, intensity_window=(100.0, 15.0)), "input.intensity_window"),
        (lambda c: dataclasses.replace(c, metrics={"auc": float("inf")}), "metrics.auc"),
        (lambda c: dataclasses.replace(c, schema_version=2), "schema_version 2"),
        (lambda c: dataclasses.replace(c, preprocessing={"f": object()}), "JSON cannot store"),
    ],
)
@pytest.mark.reliability(
    "Bad input",
    "model contracts with invalid fields",
    "refused, naming the field",
)
def test_invalid_field_is_named(mutate, field):
    with pytest.raises(ContractError) as info:
        mutate(make_contract()).validate()
    assert field in str(info.value)
    assert isinstance(info.value, UserError)


def test_multilabel_threshold_count_must_match_classes():
    bad = dataclasses.replace(make_contract(), tasks=(TaskSpec("findings", "multilabel", ("a", "b", "c"), (0.5, 0.5)),))
    with pytest.raises(ContractError, match=r"tasks\[0\].thresholds has 2 values .* 3 output logits"):
        bad.validate()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(colour="red"), "unknown key 'colour'"),
        (lambda d: d.pop("input"), "missing key 'input'"),
        (lambda d: d["tasks"][0].pop("thresholds"), "missing key 'tasks[0].thresholds'"),
        (lambda d: d["input"].update(shape="1x16x16"), "input.shape must be a list"),
        (lambda d: d["tasks"][0].update(kind="ranking"), "tasks[0].kind 'ranking'"),
    ],
)
def test_from_json_names_the_bad_key(edit, message):
    data = make_contract().to_dict()
    edit(data)
    with pytest.raises(ContractError) as info:
        ModelContract.from_json(json.dumps(data))
    assert message in str(info.value)


def test_not_json_is_a_contract_error():
    with pytest.raises(ContractError, match="not valid JSON"):
        ModelContract.from_json("{tasks: [")


def test_to_json_is_strict_json():
    assert "NaN" not in make_contract(metrics={"auc": 0.7}).to_json()
    with pytest.raises(ValueError):
        make_contract(metrics={"auc": float("nan")}).to_json()
