"""Great Expectations validation: clean simulated data passes, and each planted defect is caught by name."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medmlops.cli import main
from medmlops.validation import validate_dataset


@pytest.mark.parametrize("dataset", ["ich", "aiforcovid", "brixia", "chexpert"])
def test_clean_simulated_data_raises_no_alarm(smoke_data, dataset):
    report = validate_dataset(dataset, smoke_data(dataset), progress=False)
    assert report.success, report.summary()
    assert report.rows > 0 and report.images_checked > 0 and report.expectations >= 10


# --- planted defects ---------------------------------------------------------------------------------------------


def _ich_table(root):
    return pd.read_csv(root / "CLINICAL_DATA_ICH.csv")


def _save_ich_table(root, table):
    table.to_csv(root / "CLINICAL_DATA_ICH.csv", index=False)


def _first_scan(root):
    return sorted((root / "POOR_PROGNOSIS").glob("*.nii.gz"))[0]


def _replace_scan(path, array, affine=None):
    ref = nib.load(str(path))
    nib.save(nib.Nifti1Image(array, ref.affine if affine is None else affine), str(path))


def plant_missing_column(root):
    _save_ich_table(root, _ich_table(root).drop(columns=["GCS"]))
    return ["'GCS'"]


def plant_gcs_out_of_range(root):
    table = _ich_table(root)
    table.loc[2, "GCS"] = 17
    _save_ich_table(root, table)
    return ["'GCS' must be between 3 and 15", f"PatientID {table.loc[2, 'PatientID']}: 17"]


def plant_absurd_age(root):
    table = _ich_table(root)
    table.loc[0, "Age"] = 150
    _save_ich_table(root, table)
    return ["'Age' must be between 0 and 120", "150"]


def plant_non_numeric_gcs(root):
    table = _ich_table(root)
    table["GCS"] = table["GCS"].astype(object)
    table.loc[1, "GCS"] = "fifteen"
    _save_ich_table(root, table)
    return ["'GCS' must have a numeric value", f"PatientID {table.loc[1, 'PatientID']}"]


def plant_duplicate_id(root):
    table = _ich_table(root)
    table.loc[3, "PatientID"] = table.loc[4, "PatientID"]
    _save_ich_table(root, table)
    return ["'PatientID' must be unique"]


def plant_bad_label(root):
    table = _ich_table(root)
    table.loc[0, "Label (poor_prognosis)"] = 2
    _save_ich_table(root, table)
    return ["'Label (poor_prognosis)' must be one of 0, 1"]


def plant_missing_scan(root):
    scan = _first_scan(root)
    scan.unlink()
    return ["every referenced image file must exist", scan.name]


def plant_truncated_gzip(root):
    scan = _first_scan(root)
    scan.write_bytes(scan.read_bytes()[:200])
    return ["every image must open", scan.name]


def plant_nan_voxels(root):
    scan = _first_scan(root)
    arr = np.asarray(nib.load(str(scan)).dataobj, dtype=np.float32)
    arr[2, 2, 2] = np.nan
    _replace_scan(scan, arr)
    return ["NaN or Inf", scan.name]


def plant_2d_scan(root):
    scan = _first_scan(root)
    arr = np.asarray(nib.load(str(scan)).dataobj)[..., 0]
    _replace_scan(scan, arr)
    return ["images must be 3D", scan.name]


def plant_constant_volume(root):
    scan = _first_scan(root)
    arr = np.full(nib.load(str(scan)).shape, 30, dtype=np.int16)
    _replace_scan(scan, arr)
    return ["must not be constant", scan.name]


def plant_not_hounsfield(root):
    scan = _first_scan(root)
    arr = np.asarray(nib.load(str(scan)).dataobj, dtype=np.float32)
    arr = (arr - arr.min()) / (arr.max() - arr.min())  # someone's "preprocessed" copy
    _replace_scan(scan, arr)
    return ["air around the head", scan.name]


def plant_wrong_folder(root):
    scan = _first_scan(root)
    scan.rename(root / "GOOD_PROGNOSIS" / scan.name)
    return ["folder of its label", scan.name]


def plant_absurd_spacing(root):
    scan = _first_scan(root)
    arr = np.asarray(nib.load(str(scan)).dataobj)
    _replace_scan(scan, arr, affine=np.diag([0.5, 0.5, 50.0, 1.0]))
    return ["voxel spacing must be at most", scan.name]


ICH_DEFECTS = [
    plant_missing_column, plant_gcs_out_of_range, plant_absurd_age, plant_non_numeric_gcs, plant_duplicate_id,
    plant_bad_label, plant_missing_scan, plant_truncated_gzip, plant_nan_voxels, plant_2d_scan, plant_constant_volume,
    plant_not_hounsfield, plant_wrong_folder, plant_absurd_spacing,
]  # fmt: skip


@pytest.mark.parametrize("plant", ICH_DEFECTS, ids=lambda f: f.__name__.removeprefix("plant_"))
@pytest.mark.reliability(
    "Bad input",
    "defects planted in the ICH dataset, through `data validate`",
    "each defect caught and named",
)
def test_ich_defects_are_caught_and_named(smoke_copy, plant):
    root = smoke_copy("ich")
    expected = plant(root)
    report = validate_dataset("ich", root, progress=False)
    assert not report.success, f"{plant.__name__} was not caught"
    text = report.summary()
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in:\n{text}"


@pytest.mark.reliability(
    "Bad input",
    "defects planted in the BrixIA dataset, through `data validate`",
    "each defect caught and named",
)
def test_brixia_defects(smoke_copy):
    root = smoke_copy("brixia")
    table = pd.read_csv(root / "metadata_global_v2.csv", sep=";", dtype={"BrixiaScore": str})
    bad_digit, bad_sum = table.loc[0, "Filename"], table.loc[1, "Filename"]
    table.loc[0, "BrixiaScore"] = "004000"
    table.loc[1, "BrixiaScoreGlobal"] = int(table.loc[1, "BrixiaScoreGlobal"]) + 1
    table.loc[2, "BrixiaScore"] = str(int(table.loc[2, "BrixiaScore"]))  # lost leading zeros: repaired, not a defect
    table.to_csv(root / "metadata_global_v2.csv", sep=";", index=False)
    report = validate_dataset("brixia", root, progress=False)
    text = report.summary()
    assert "six zone digits, each 0-3" in text and bad_digit in text, text
    assert "sum of the BrixiaScore digits" in text and bad_sum in text, text
    assert len(report.failures) == 2, text


@pytest.mark.reliability(
    "Bad input",
    "defects planted in the CheXpert dataset, through `data validate`",
    "each defect caught and named",
)
def test_chexpert_defects(smoke_copy):
    root = smoke_copy("chexpert")
    csv = root / "CheXpert-v1.0-small" / "train.csv"
    table = pd.read_csv(csv)
    table.loc[0, "Edema"] = 2.0
    victim = table.loc[1, "Path"]
    (root / victim).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    table.to_csv(csv, index=False)
    report = validate_dataset("chexpert", root, progress=False)
    text = report.summary()
    assert "'Edema' must be one of -1.0, 0.0, 1.0" in text and table.loc[0, "Path"] in text, text
    assert "every image must open" in text and victim.split("/")[-3] in text, text


@pytest.mark.reliability(
    "Bad input",
    "defects planted in the AIforCOVID dataset, through `data validate`",
    "each defect caught and named",
)
def test_aiforcovid_defects(smoke_copy):
    root = smoke_copy("aiforcovid")
    table = pd.read_csv(root / "AIforCOVID.csv")
    table.loc[0, "Prognosis"] = "MODERATE"
    table.to_csv(root / "AIforCOVID.csv", index=False)
    image = sorted((root / "imgs").iterdir())[0]
    image.write_bytes(gzip.compress(b"garbage"))
    report = validate_dataset("aiforcovid", root, progress=False)
    text = report.summary()
    assert "'Prognosis' must be one of MILD, SEVERE" in text and str(table.loc[0, "ImageFile"]) in text, text
    assert "every image must open" in text and image.name in text, text


def test_cli_exit_codes_and_reports(smoke_copy, tmp_path, capsys):
    root = smoke_copy("ich")
    report_path = tmp_path / "reports" / "ich.json"
    assert main(["data", "validate", "ich", str(root), "--report", str(report_path), "--quiet"]) == 0
    assert json.loads(report_path.read_text())["success"] is True
    assert report_path.with_suffix(".html").read_text().count("PASSED") == 1

    plant_gcs_out_of_range(root)
    assert main(["data", "validate", "ich", str(root), "--report", str(report_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "'GCS' must be between 3 and 15" in out
    saved = json.loads(report_path.read_text())
    assert saved["success"] is False and saved["failures"][0]["column"] == "GCS"
    assert "FAILED" in report_path.with_suffix(".html").read_text()


def test_cli_missing_folder_is_one_sentence(tmp_path, capsys):
    assert main(["data", "validate", "ich", str(tmp_path / "nope"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medmlops: error:") and "dataset folder not found" in err and "Traceback" not in err
