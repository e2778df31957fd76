"""ICH reader: a missing GCS or Age masks only that task; the authors' ``{id}_brain.nii.gz`` files are read, and
the stand-in skull stripping is skipped for them (files written by nibabel)."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medmlops.data import preprocess as prep
from medmlops.data import readers
from medmlops.data.ct_transforms import SKULL_STRIPPED, SkullStripd, ct_transforms
from medmlops.errors import DataError

ROWS = [
    {"PatientID": 1, "Label (poor_prognosis)": 0, "Age": 45, "GCS": 15},
    {"PatientID": 2, "Label (poor_prognosis)": 1, "Age": 85, "GCS": None},  # no GCS
    {"PatientID": 3, "Label (poor_prognosis)": 1, "Age": None, "GCS": 7},  # no Age
    {"PatientID": 4, "Label (poor_prognosis)": 0, "Age": 60, "GCS": 11},
]


def _head(shape=(24, 24, 8)) -> np.ndarray:
    """A head phantom in HU: air, a closed skull ring (1000 HU), brain (35 HU) inside it."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    r = np.hypot(x - shape[0] / 2 + 0.5, y - shape[1] / 2 + 0.5)
    vol = np.full(shape, -1000, np.int16)
    vol[r < 10] = 1000
    vol[r < 8] = 35
    return vol


def _write(root, rows, names=None):
    """The clinical table and one NIfTI per patient; ``names`` maps a patient to its file names (default ``{id}``)."""
    table = pd.DataFrame([{c: r.get(c, 0) for c in readers.ICH_CLINICAL_COLUMNS} for r in rows])
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / readers.ICH_TABLE, index=False)
    for r in rows:
        folder = root / readers.ICH_FOLDERS[r["Label (poor_prognosis)"]]
        folder.mkdir(exist_ok=True)
        for name in (names or {}).get(r["PatientID"], [f"{r['PatientID']}.nii.gz"]):
            nib.save(nib.Nifti1Image(_head(), np.eye(4)), folder / name)


# --- missing GCS / Age -------------------------------------------------------------------------------------------


def test_missing_gcs_or_age_masks_only_that_task(tmp_path):
    _write(tmp_path, ROWS)
    manifest = readers.read_ich(tmp_path)
    assert manifest["prognosis"].tolist() == [0, 1, 1, 0]
    assert manifest["gcs_binary"].tolist() == [0, -1, 1, 0]
    assert manifest["gcs_ordinal"].tolist() == [0, -1, 2, 1]
    assert manifest["age_binary"].tolist() == [0, 1, -1, 0]  # patient 2 keeps its age task (it used to lose it)
    assert readers.ich_masked_labels(manifest) == {"gcs_binary": 1, "gcs_ordinal": 1, "age_binary": 1}


def test_check_manifest_accepts_masked_tasks_and_logs_the_counts(tmp_path, caplog):
    _write(tmp_path, ROWS)
    manifest = prep._standardise(readers.read_ich(tmp_path), "ich")
    with caplog.at_level(logging.WARNING, logger="medmlops.data.preprocess"):
        prep.check_manifest(manifest, "ich", tmp_path)
    assert "gcs_binary 1, gcs_ordinal 1, age_binary 1 of 4" in caplog.text
    items = prep.items_from_manifest(manifest, "ich")
    assert [i["gcs_ordinal"] for i in items] == [0, -1, 2, 1] and [i["age_binary"] for i in items] == [0, 1, -1, 0]


def test_a_missing_prognosis_is_still_an_error(tmp_path):
    rows = [*ROWS[:3], {**ROWS[3], "Label (poor_prognosis)": None}]
    _write(tmp_path, rows[:3])
    table = pd.DataFrame([{c: r.get(c, 0) for c in readers.ICH_CLINICAL_COLUMNS} for r in rows])
    table.to_csv(tmp_path / readers.ICH_TABLE, index=False)
    manifest = prep._standardise(readers.read_ich(tmp_path), "ich")
    manifest["image_exists"] = True
    with pytest.raises(DataError, match="label 'prognosis' missing or invalid in the table for sample 4"):
        prep.check_manifest(manifest, "ich", tmp_path)


# --- {id}_brain.nii.gz -------------------------------------------------------------------------------------------


def test_brain_files_are_read_and_win_over_the_unstripped_one(tmp_path):
    names = {
        1: ["1_brain.nii.gz"],  # only the stripped file
        2: ["2.nii.gz", "2_brain.nii.gz"],  # both: the stripped one is used
        3: ["3.nii"],  # uncompressed, unstripped
        4: ["4_brain.nii"],  # uncompressed, stripped
    }
    _write(tmp_path, ROWS, names)
    manifest = readers.read_ich(tmp_path)
    assert manifest["image_exists"].all()
    files = [p.rsplit("/", 1)[1] for p in manifest["image_path"]]
    assert files == ["1_brain.nii.gz", "2_brain.nii.gz", "3.nii", "4_brain.nii"]
    assert manifest["skull_stripped"].tolist() == [True, True, False, True]
    assert manifest["folder_label"].tolist() == [0, 1, 1, 0]
    # The loader reads what nibabel wrote.
    from medmlops.data.io import load_ct

    assert load_ct(manifest["image_path"].iloc[0]).array.shape == (24, 24, 8)


def test_skull_strip_is_skipped_for_stripped_items_only():
    vol = torch.as_tensor(_head(), dtype=torch.float32)[None]
    stripped = SkullStripd(keys="image")({"image": vol.clone(), SKULL_STRIPPED: True})
    assert SKULL_STRIPPED not in stripped, "the flag must not reach the batches"
    assert torch.equal(stripped["image"], vol)
    unstripped = SkullStripd(keys="image")({"image": vol.clone()})
    assert float(unstripped["image"].max()) < 1000  # the stand-in removed the skull ring


def test_preprocessing_keeps_the_flag_through_the_manifest_and_skips_the_stand_in(tmp_path):
    """The cached manifest carries ``skull_stripped``; the items built from it run the chain without the stand-in
    (the skull ring of the phantom survives as windowed 1.0), the others with it (no voxel at 1.0 is left)."""
    _write(tmp_path, ROWS[:2], {1: ["1_brain.nii.gz"], 2: ["2.nii.gz"]})
    manifest = prep._standardise(readers.read_ich(tmp_path), "ich")
    written = tmp_path / "manifest.csv"
    manifest[["sample_id", "image_path", *prep.LABEL_COLUMNS["ich"], "skull_stripped"]].to_csv(written, index=False)
    items = prep.items_from_manifest(pd.read_csv(written, dtype={"sample_id": str}), "ich")
    assert items[0][SKULL_STRIPPED] is True and SKULL_STRIPPED not in items[1]
    chain = ct_transforms((24, 24, 8), orientation="RAS")
    out = []
    for item in items:
        d = dict(item)
        for t in chain:
            d = t(d)
        assert SKULL_STRIPPED not in d
        out.append(d["image"])
    assert float(out[0].max()) == 1.0  # bone kept (windowed to 1): the stand-in did not run
    assert float(out[1].max()) < 1.0  # bone removed: the stand-in ran
