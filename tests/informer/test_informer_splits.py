"""Which images INFORMER calibrates and tests on (:func:`medmlops.informer.calibrate.informer_splits`): the
registered fold's validation and test split by default; for a CheXpert model of the paper cohort
(``data.chexpert.cohort: paper``) CheXpert's official valid.csv for tau and test.csv when the user has it, with the
fold's test split (and a note saying so) when not; never an image the model trained on."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medmlops.config import load_params
from medmlops.data import preprocess as prep
from medmlops.data import readers
from medmlops.errors import DataError
from medmlops.informer import calibrate
from medmlops.informer.calibrate import CalibrationError, informer_splits
from medmlops.registry.contract import InputSpec, ModelContract, TaskSpec
from medmlops.training.splits import experiment_splits
from medmlops.training.tasks import TaskDef
from tests.conftest import REPO

CLASSES = readers.CHEXPERT_FINDINGS
CONTRACT = ModelContract(
    family="cxr-findings", tasks=(TaskSpec("findings", "multilabel", CLASSES, (0.5,) * 5),),
    input=InputSpec("xray", (".png",), (3, 64, 64), None, None, 3), preprocessing={}, data_version="x",
    git_commit="y", metrics={}, experiment="cxr-findings",
)  # fmt: skip


def _table(base, split, rows):
    """``rows``: (patient, view, {finding: code}); the csv and a small JPEG per row."""
    records = []
    for patient, view, labels in rows:
        rel = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study1/view1_{view.lower()}.jpg"
        record = dict.fromkeys(readers.CHEXPERT_COLUMNS, None)
        record.update({"Path": rel, "Frontal/Lateral": view, **labels})
        records.append(record)
        (base.parent / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(patient).integers(0, 255, (72, 64), dtype=np.uint8)
        Image.fromarray(pixels).save(base.parent / rel)
    pd.DataFrame(records, columns=readers.CHEXPERT_COLUMNS).to_csv(base / f"{split}.csv", index=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A CheXpert release under data/raw-smoke (train: 6 patients of whom 4 are in the paper cohort; valid: 3
    images, 2 in the cohort; test: 2 images, 1 in the cohort) and a registered fold 0 trained on train.csv."""
    base = tmp_path / "data" / "raw-smoke" / "chexpert" / "CheXpert-v1.0-small"
    base.mkdir(parents=True)
    _table(base, "train", [(k, "Frontal", {"Edema": 1.0} if k % 2 else {"Cardiomegaly": 1.0}) for k in range(1, 5)]
           + [(5, "Frontal", {"Edema": -1.0}), (6, "Frontal", {})])  # fmt: skip
    _table(base, "valid", [(64541, "Frontal", {"Cardiomegaly": 1.0}), (64542, "Frontal", {"Edema": 1.0,
           "Atelectasis": 0.0}), (64543, "Frontal", {"Edema": 0.0})])  # fmt: skip
    _table(base, "test", [(64741, "Frontal", {"Consolidation": 1.0}), (64741, "Lateral", {"Consolidation": 1.0})])

    def plan_for(params):
        cohort = params.data.chexpert.cohort
        manifest = prep._standardise(readers.read_chexpert(base.parent, cohort=cohort), "chexpert")
        items = {i["sample_id"]: i for i in prep.items_from_manifest(manifest, "chexpert")}
        if cohort == "paper":  # as plan_experiment makes them: CheXpert's csvs as the splits
            splits = experiment_splits(manifest, "chexpert", params.train, params.seed, official=True)
        else:
            ids = sorted(items)
            splits = pd.DataFrame({"sample_id": ids, "fold": 0, "split": ["train"] * (len(ids) - 2) + ["val", "test"]})
        tasks = {"findings": TaskDef("findings", "findings", "multilabel", CLASSES)}
        return SimpleNamespace(exp=SimpleNamespace(dataset="chexpert"), tasks=tasks, splits=splits, items=items)

    plans = {}

    def version_plan(params, family, version, repo, progress):
        if params.data.chexpert.cohort not in plans:  # made once, as a registered version's plan is
            plans[params.data.chexpert.cohort] = plan_for(params)
        return CONTRACT, plans[params.data.chexpert.cohort], 0

    monkeypatch.setattr(calibrate, "_version_plan", version_plan)
    return SimpleNamespace(root=tmp_path, base=base, plans=plans)


def _params(cohort: str):
    return load_params(REPO / "params.yaml", profile="smoke", overrides=[f"data.chexpert.cohort={cohort}"])


def test_the_paper_cohort_calibrates_on_valid_csv_and_tests_on_test_csv(project):
    split, test = informer_splits(_params("paper"), "cxr-findings", "1", repo=project.root)
    assert split.source == "valid.csv" and test.source == "test.csv" and not split.note and not test.note
    assert [i.split(":")[2] for i in split.ids] == ["patient64541", "patient64542"]  # no finding positive: out
    np.testing.assert_array_equal(split.labels["findings"], [[0, 1, 0, 0, 0], [0, 0, 0, 1, 0]])  # blank = 0
    assert [i.split(":")[2] for i in test.ids] == ["patient64741"]  # the lateral view: out
    assert split.selection["valid"][-1] == ["at least one of the five findings positive", 2]
    assert split.selection["train"][-1][1] == 4 and test.selection == split.selection  # the console's counts
    assert tuple(split.stack().shape) == (2, 3, 64, 64)  # preprocessed as in training
    # The model's splits are the csvs: it trained on train.csv alone, its thresholds came from valid.csv (the same
    # images as tau, as in the paper) and its test split is test.csv.
    splits = project.plans["paper"].splits
    role = dict(zip(splits["sample_id"], splits["split"], strict=True))
    assert all(":train:" in i for i, r in role.items() if r == "train")
    assert {i for i, r in role.items() if r == "val"} == set(split.ids)
    assert {i for i, r in role.items() if r == "test"} == set(test.ids)


def test_without_test_csv_the_fold_test_split_is_used_and_said(project):
    (project.base / "test.csv").unlink()
    split, test = informer_splits(_params("paper"), "cxr-findings", "1", repo=project.root)
    assert split.source == "valid.csv" and test.source == "fold 0 test split" and len(test) == 1
    assert "test.csv (CheXpert's official test labels) not found: tested on fold 0's test split" in test.note


def test_the_paper_cohort_needs_valid_csv(project):
    (project.base / "valid.csv").unlink()
    # Rebuilding the version's splits already needs it (its val split is valid.csv); so does tau.
    with pytest.raises(DataError, match=r"the CheXpert paper cohort needs valid\.csv beside train\.csv"):
        informer_splits(_params("paper"), "cxr-findings", "1", repo=project.root)
    # A version whose plan was made while valid.csv was there (the plan is cached, as a registered version's is).
    project.plans["paper"] = SimpleNamespace(
        exp=SimpleNamespace(dataset="chexpert"), tasks={}, items={},
        splits=pd.DataFrame({"sample_id": ["x"], "fold": [0], "split": ["train"]}),
    )  # fmt: skip
    with pytest.raises(CalibrationError, match=r"valid\.csv: not found; the paper cohort .* tunes tau on"):
        informer_splits(_params("paper"), "cxr-findings", "1", repo=project.root)


def test_an_image_the_model_trained_on_is_never_calibrated_on(project):
    params = _params("paper")
    calibrate._version_plan(params, "cxr-findings", "1", project.root, False)  # make the plan, then leak into it
    plan = project.plans["paper"]
    leaked = "CheXpert-v1.0-small:valid:patient64542:study1:view1_frontal.jpg"
    plan.splits = pd.concat([plan.splits, pd.DataFrame({"sample_id": [leaked], "fold": [0], "split": ["train"]})])
    with pytest.raises(CalibrationError, match=r"1 images of valid\.csv were in fold 0's training data"):
        informer_splits(params, "cxr-findings", "1", repo=project.root)


def test_cohort_all_keeps_the_fold_splits(project):
    split, test = informer_splits(_params("all"), "cxr-findings", "1", repo=project.root)
    assert (split.source, test.source) == ("fold 0 val split", "fold 0 test split")
    assert split.selection == {} and len(split) == len(test) == 1
