"""Great Expectations validation: clean simulated data passes, and each planted defect is caught by name."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medmlops.cli import main
from medmlops.config import ValidationConfig, load_params
from medmlops.data import readers
from medmlops.validation import MODALITY, ValidationReport, run_suites, validate_dataset
from medmlops.validation import suites as S
from medmlops.validation.images import array_stats, ct_value_problems, ct_value_rules, dicom_header_columns, image_stats

from ..dicom_samples import chest_like


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


def test_ich_blank_gcs_or_age_passes_and_reports_the_masked_rows(smoke_copy, tmp_path, capsys):
    """A blank GCS or Age is an unknown value, not a defect: that task is masked for the patient (the reader puts
    -1), and the report says how many rows each task lost. Text where a number belongs still fails."""
    root = smoke_copy("ich")
    table = _ich_table(root)
    table["GCS"], table["Age"] = table["GCS"].astype(object), table["Age"].astype(object)
    table.loc[0, "GCS"] = None
    table.loc[1, "Age"] = None
    _save_ich_table(root, table)
    report_path = tmp_path / "ich.json"
    assert main(["data", "validate", "ich", str(root), "--report", str(report_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    masked = f"gcs_binary 1, gcs_ordinal 1, age_binary 1 of {len(table)} rows"
    assert "all passed" in out and masked in out, out
    saved = json.loads(report_path.read_text())
    assert saved["success"] is True and any(masked in note for note in saved["notes"])
    assert masked in report_path.with_suffix(".html").read_text()

    table.loc[2, "Age"] = "eighty"
    _save_ich_table(root, table)
    report = validate_dataset("ich", root, progress=False)
    assert not report.success and "'Age' must have a numeric value" in report.summary()


def test_ich_brain_files_are_found_and_checked(smoke_copy):
    """The authors' skull-stripped naming ``{id}_brain.nii.gz`` is a scan like any other: found in its folder and
    opened by the image checks (which still ask for HU with air outside the head: a stripped volume filled with air)."""
    root = smoke_copy("ich")
    scans = sorted((root / "POOR_PROGNOSIS").glob("*.nii.gz"))
    for scan in scans:
        scan.rename(scan.with_name(scan.name.replace(".nii.gz", "_brain.nii.gz")))
    report = validate_dataset("ich", root, progress=False)
    assert report.success, report.summary()
    assert report.images_checked == report.rows


def test_a_stripped_volume_needs_no_air_but_an_unstripped_one_does(smoke_copy):
    """SynthStrip fills everything outside the brain with 0 (water, in HU): an ``{id}_brain`` volume like that passes
    (the air rule is for whole heads); the same volume under the plain ``{id}`` name fails the air rule, and a
    stripped volume outside the HU range still fails the HU rule."""
    root = smoke_copy("ich")
    scan = sorted((root / "POOR_PROGNOSIS").glob("*.nii.gz"))[0]
    image = nib.load(scan)
    data = np.asarray(image.dataobj, dtype=np.float32)
    data[data < -500] = 0.0  # what a skull stripper leaves outside the brain
    stripped = scan.with_name(scan.name.replace(".nii.gz", "_brain.nii.gz"))
    nib.save(nib.Nifti1Image(data.astype(np.int16), image.affine), stripped)
    scan.unlink()
    report = validate_dataset("ich", root, progress=False)
    assert report.success, report.summary()

    stripped.rename(scan)  # the same voxels, not named as stripped: a head without air is suspicious
    report = validate_dataset("ich", root, progress=False)
    assert not report.success and "air around the head" in report.summary()

    scan.rename(stripped)
    nib.save(nib.Nifti1Image(np.full_like(data, 5000.0), image.affine), stripped)  # beyond any HU
    report = validate_dataset("ich", root, progress=False)
    assert not report.success and "Hounsfield units" in report.summary()


def test_cli_missing_folder_is_one_sentence(tmp_path, capsys):
    assert main(["data", "validate", "ich", str(tmp_path / "nope"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medmlops: error:") and "dataset folder not found" in err and "Traceback" not in err


# --- DICOM headers against the family's serving input gate ---------------------------------------------------------


@pytest.fixture(scope="module")
def gated_params(params_file):
    return load_params(params_file, profile="smoke")


def _image_report(dataset, root, params):
    """validate_dataset's image part, with the input gate of the family the dataset trains."""
    manifest = readers.read_manifest(dataset, root, params)
    stats = image_stats(manifest, MODALITY[dataset], progress=False)
    suite = S.image_suite(stats, MODALITY[dataset], ValidationConfig(), dataset, gate=S.dataset_gate(dataset, params))
    report = ValidationReport(dataset=dataset, root=str(root), images_checked=len(stats))
    run_suites([suite], report)
    return report, stats


@pytest.mark.parametrize("dataset", ["aiforcovid", "brixia", "chexpert"])
def test_simulated_images_pass_their_family_gate(smoke_data, gated_params, dataset):
    report, stats = _image_report(dataset, smoke_data(dataset), gated_params)
    assert report.success, report.summary()
    if dataset == "chexpert":  # JPEG: no header, nothing to check
        assert not stats["dicom"].any() and (stats["modality"] == "").all() and stats["frames"].isna().all()
        return
    is_dcm = stats["image_path"].str.endswith(".dcm")  # AIforCOVID: hospitals E-F send PNG
    assert is_dcm.any() and (stats["dicom"] == is_dcm).all()
    dicom, raster = stats[is_dcm], stats[~is_dcm]
    assert set(dicom["modality"]) <= {"CR", "DX"} and set(dicom["body_part"]) == {"CHEST"}
    assert set(dicom["view_position"]) <= {"PA", "AP"}
    assert set(dicom["photometric"]) <= {"MONOCHROME1", "MONOCHROME2"}
    assert (dicom["samples_per_pixel"] == 1).all() and (dicom["frames"] == 1).all()
    assert (raster["modality"] == "").all() and raster["frames"].isna().all()
    gate_rules = [e for e in S.image_suite(stats, "xray", ValidationConfig(), dataset,
                                           gate=S.dataset_gate(dataset, gated_params)).expectations
                  if "serving.inputs.covid-prognosis" in (e.description or "")]  # fmt: skip
    assert len(gate_rules) == 6


def _edit_dicom(path, **attributes):
    import pydicom

    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.reliability(
    "Bad input",
    "training DICOMs outside the family's serving input gate (modality, view, body part)",
    "each caught and named with the allowed values",
)
def test_dicom_outside_the_gate_fails_validation(smoke_copy, gated_params):
    root = smoke_copy("aiforcovid")
    mr, lateral, no_view, abdomen = sorted((root / "imgs").glob("*.dcm"))[:4]
    _edit_dicom(mr, Modality="MR")
    _edit_dicom(lateral, ViewPosition="LL")
    _edit_dicom(no_view, ViewPosition=None)  # absent: not checked
    _edit_dicom(abdomen, BodyPartExamined="ABDOMEN")
    report, _ = _image_report("aiforcovid", root, gated_params)
    text = report.summary()
    failures = {f.column: f for f in report.failures}
    assert set(failures) == {"modality", "view_position", "body_part"}, text
    assert "DICOM Modality (0008,0060) must be one of CR, DX for covid-prognosis" in text, text
    assert failures["modality"].unexpected == 1 and mr.name in text and "modality=MR" in text, text
    assert "DICOM ViewPosition (0018,5101) where present must be one of PA, AP" in text, text
    assert failures["view_position"].unexpected == 1 and lateral.name in text and no_view.name not in text, text
    assert "BodyPartExamined (0018,0015) where present must be one of CHEST" in text and abdomen.name in text, text


def test_dicom_frames_and_samples_outside_the_gate(tmp_path, gated_params):
    """An RGB or multi-frame DICOM among chest images: the header rules name the attribute even though the
    pixels do not load as a 2D grey image."""
    import shutil

    from ..dicom_samples import pydicom_test_file

    good = tmp_path / "good.dcm"
    good.write_bytes(chest_like("1.2.840.10008.1.2.1"))
    multi = tmp_path / "multi.dcm"
    shutil.copy(pydicom_test_file("SC_rgb_rle_2frame.dcm"), multi)
    manifest = pd.DataFrame({"sample_id": ["a", "b"], "image_path": [str(good), str(multi)]})
    stats = image_stats(manifest, "xray", progress=False)
    gate = gated_params.serving.gate("cxr-findings")
    report = ValidationReport(dataset="chexpert", root=str(tmp_path))
    run_suites([S.image_suite(stats, "xray", ValidationConfig(), "chexpert", gate=gate)], report)
    text = report.summary()
    assert "SamplesPerPixel (0028,0002) must be 1 for cxr-findings" in text and "multi.dcm" in text, text
    assert "NumberOfFrames (0028,0008) must be at most 1" in text, text
    assert "PhotometricInterpretation (0028,0004) must be one of MONOCHROME1, MONOCHROME2" in text, text
    assert "Modality (0008,0060) must be one of CR, DX" in text, text  # OT
    assert "good.dcm" not in text, text


def test_dicom_header_columns():
    columns = dicom_header_columns(chest_like("1.2.840.10008.1.2.4.90"), "x.dcm")
    assert columns == {
        "dicom": True, "modality": "CR", "body_part": "CHEST", "view_position": "PA", "photometric": "MONOCHROME2",
        "samples_per_pixel": 1.0, "frames": 1.0,
    }  # fmt: skip
    png = dicom_header_columns(b"\x89PNG\r\n\x1a\n" + bytes(200), "x.png")
    assert png["dicom"] is False and png["modality"] == "" and np.isnan(png["frames"])


def test_validate_dataset_applies_the_family_gate(smoke_copy, gated_params):
    root = smoke_copy("aiforcovid")
    _edit_dicom(sorted((root / "imgs").glob("*.dcm"))[0], Modality="MR")
    report = validate_dataset("aiforcovid", root, gated_params, progress=False)
    assert "DICOM Modality (0008,0060) must be one of CR, DX" in report.summary()


# --- the CT value rule, shared with serving ------------------------------------------------------------------------


def test_ct_value_rule_on_a_loaded_volume():
    cfg = ValidationConfig()
    rng = np.random.default_rng(0)
    head = rng.normal(40, 20, (32, 32, 16)).astype(np.float32)
    head[:4] = -1000.0  # air around the head
    assert ct_value_problems(array_stats(head, (0.5, 0.5, 5.0)), cfg) == []

    rescaled = (head - head.min()) / (head.max() - head.min())
    problems = ct_value_problems(array_stats(rescaled, (0.5, 0.5, 5.0)), cfg)
    assert problems == [ct_value_rules(cfg)[2][3]] and "air around the head" in problems[0]

    too_bright = head.copy()
    too_bright[0, 0, 0] = cfg.ct_hu_max + 1
    assert ct_value_problems(array_stats(too_bright, (1, 1, 1)), cfg) == [ct_value_rules(cfg)[1][3]]
    assert len(ct_value_problems({"vmin": np.nan}, cfg)) == 3  # nothing finite: every rule fails


def test_suite_uses_the_shared_ct_rules():
    stats = pd.DataFrame([{"image_path": "a", "exists": True, "loads": True, "ndim": 3, "vmin": 0.0}])
    suite = S.image_suite(stats, "ct", ValidationConfig(), "ich")
    descriptions = {e.description for e in suite.expectations}
    assert {d for _, _, _, d in ct_value_rules(ValidationConfig())} <= descriptions
