"""Readers cope with the real releases' quirks; files are written by hand here so each quirk is explicit."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medmlops.data import readers
from medmlops.data.io import load_ct, load_ct_bytes, load_xray, load_xray_bytes
from medmlops.errors import DataError


def _write_ich(root, rows, encoding="utf-8", temp_column="Tº", folders=None):
    columns = list(readers.ICH_CLINICAL_COLUMNS)
    columns[columns.index("Tº")] = temp_column
    table = pd.DataFrame([[r.get(c, 0) for c in readers.ICH_CLINICAL_COLUMNS] for r in rows], columns=columns)
    root.mkdir(parents=True, exist_ok=True)
    table.to_csv(root / "CLINICAL_DATA_ICH.csv", index=False, encoding=encoding)
    for r in rows:
        folder = (folders or {}).get(r["PatientID"], readers.ICH_FOLDERS[r["Label (poor_prognosis)"]])
        (root / folder).mkdir(exist_ok=True)
        nib.save(
            nib.Nifti1Image(np.full((8, 8, 8), -1000, np.int16), np.eye(4)), root / folder / f"{r['PatientID']}.nii.gz"
        )


ICH_ROWS = [
    {"PatientID": 1, "Label (poor_prognosis)": 0, "Age": 45, "GCS": 15, "Tº": 36.6},
    {"PatientID": 2, "Label (poor_prognosis)": 1, "Age": 85, "GCS": 7, "Tº": 37.1},
    {"PatientID": 213, "Label (poor_prognosis)": 1, "Age": 70, "GCS": 10, "Tº": 38.0},
]


@pytest.mark.parametrize(
    ("encoding", "temp_column"), [("utf-8", "Tº"), ("latin-1", "Tº"), ("utf-8", "T°"), ("utf-8-sig", "Tº")]
)
def test_ich_temperature_column_spellings_and_encodings(tmp_path, encoding, temp_column):
    _write_ich(tmp_path, ICH_ROWS, encoding=encoding, temp_column=temp_column)
    manifest = readers.read_ich(tmp_path)
    assert "Tº" in manifest.columns and manifest["Tº"].tolist() == [36.6, 37.1, 38.0]


def test_ich_manifest_labels_and_derived_targets(tmp_path):
    _write_ich(tmp_path, ICH_ROWS)
    manifest = readers.read_ich(tmp_path, exclude=[213])
    assert manifest["patient_id"].tolist() == [1, 2]
    assert manifest["prognosis"].tolist() == [0, 1]
    assert manifest["image_exists"].all()
    assert manifest["image_path"].iloc[1].endswith("POOR_PROGNOSIS/2.nii.gz")
    assert manifest["gcs_binary"].tolist() == [0, 1]
    assert manifest["gcs_ordinal"].tolist() == [0, 2]
    assert manifest["age_binary"].tolist() == [0, 1]


def test_gcs_and_age_encodings_follow_the_paper():
    gcs = np.arange(3, 16)
    assert readers.gcs_binary(gcs).tolist() == [1] * 6 + [0] * 7  # 3-8 → 1
    assert readers.gcs_ordinal(gcs).tolist() == [2] * 6 + [1] * 4 + [0] * 3  # 3-8 → 2, 9-12 → 1, 13-15 → 0
    assert readers.age_binary([79, 80, 81]).tolist() == [0, 1, 1]


def test_ich_diastolic_alias_and_missing_files(tmp_path):
    _write_ich(tmp_path, ICH_ROWS[:2])
    table = pd.read_csv(tmp_path / "CLINICAL_DATA_ICH.csv").rename(columns={"Dyastolic_AP": "Diastolic_AP"})
    table.to_csv(tmp_path / "CLINICAL_DATA_ICH.csv", index=False)
    (tmp_path / "POOR_PROGNOSIS" / "2.nii.gz").unlink()
    manifest = readers.read_ich(tmp_path)
    assert "Dyastolic_AP" in manifest.columns
    assert manifest["image_exists"].tolist() == [True, False]
    assert manifest["image_path"].iloc[1].endswith("POOR_PROGNOSIS/2.nii.gz")


def test_ich_wrong_folder_is_recorded(tmp_path):
    _write_ich(tmp_path, ICH_ROWS[:2], folders={2: "GOOD_PROGNOSIS"})
    manifest = readers.read_ich(tmp_path)
    assert manifest["folder_label"].tolist() == [0, 0] and manifest["prognosis"].tolist() == [0, 1]


def test_ich_missing_required_column_names_it(tmp_path):
    _write_ich(tmp_path, ICH_ROWS[:2])
    pd.read_csv(tmp_path / "CLINICAL_DATA_ICH.csv").drop(columns=["GCS"]).to_csv(
        tmp_path / "CLINICAL_DATA_ICH.csv", index=False
    )
    with pytest.raises(DataError, match="'GCS'"):
        readers.read_ich(tmp_path)


def test_brixia_lost_leading_zeros_and_semicolons(tmp_path):
    (tmp_path / "dicom_clean").mkdir()
    pd.DataFrame(
        {
            "Filename": ["1.dcm", "2.dcm", "3.dcm"],
            "BrixiaScore": [1200, "000000", "332211"],
            "BrixiaScoreGlobal": [3, 0, 12],
        }
    ).to_csv(tmp_path / "metadata_global_v2.csv", sep=";", index=False)
    manifest = readers.read_brixia(tmp_path)
    assert manifest["brixia_score"].tolist() == ["001200", "000000", "332211"]
    assert manifest["zone_C"].tolist() == [1, 0, 2] and manifest["zone_F"].tolist() == [0, 0, 1]
    assert manifest["brixia_global"].tolist() == [3, 0, 12]
    assert manifest["severity"].tolist() == [0, 0, 2]


def test_brixia_severity_bins_follow_the_paper():
    # Ruffini et al.: < 5, 5-8, 9-13, >= 14
    assert readers.brixia_global_class(np.arange(19)).tolist() == [0] * 5 + [1] * 4 + [2] * 5 + [3] * 5


def test_brixia_comma_separated_file_is_refused_by_name(tmp_path):
    pd.DataFrame({"Filename": ["1.dcm"], "BrixiaScore": ["000000"]}).to_csv(
        tmp_path / "metadata_global_v2.csv", index=False
    )
    with pytest.raises(DataError, match=r"'Filename' is missing \(is the file ';'-separated\?\)"):
        readers.read_brixia(tmp_path)


def _write_chexpert(root):
    base = root / "CheXpert-v1.0-small"
    rows = []
    for i, (view, edema) in enumerate([("Frontal", 1.0), ("Frontal", -1.0), ("Frontal", None), ("Lateral", 0.0)]):
        kind = view.lower()
        rel = f"CheXpert-v1.0-small/train/patient{i + 1:05d}/study1/view1_{kind}.jpg"
        row = dict.fromkeys(readers.CHEXPERT_COLUMNS, None)
        row.update({"Path": rel, "Frontal/Lateral": view, "Edema": edema, "Cardiomegaly": 0.0})
        rows.append(row)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    base.mkdir(exist_ok=True)
    pd.DataFrame(rows, columns=readers.CHEXPERT_COLUMNS).to_csv(base / "train.csv", index=False)
    return base


@pytest.mark.parametrize(
    ("policy", "expected"), [("ignore", [1.0, np.nan, 0.0]), ("ones", [1.0, 1.0, 0.0]), ("zeros", [1.0, 0.0, 0.0])]
)
def test_chexpert_uncertainty_policies(tmp_path, policy, expected):
    _write_chexpert(tmp_path)
    manifest = readers.read_chexpert(tmp_path, policy=policy)
    assert len(manifest) == 3  # the lateral view is dropped
    np.testing.assert_array_equal(manifest["Edema"].to_numpy(), np.array(expected))
    assert manifest["raw_Edema"].isna().tolist() == [False, False, True]
    assert manifest["patient_id"].tolist() == ["patient00001", "patient00002", "patient00003"]
    assert manifest["image_exists"].all()


def test_chexpert_root_can_be_the_inner_folder(tmp_path):
    base = _write_chexpert(tmp_path)
    assert len(readers.read_chexpert(base, frontal_only=False)) == 4
    with pytest.raises(ValueError, match="unknown uncertainty policy"):
        readers.apply_uncertainty_policy([1, 0], "maybe")


def _dicom_bytes(pixels: np.ndarray, photometric: str) -> bytes:
    import io

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, "1.2.3.4"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_monochrome1_is_inverted_to_display_polarity():
    pixels = np.zeros((40, 40), np.uint16)
    pixels[:, :20] = 4000  # bright left half on disk
    mono2 = load_xray_bytes(_dicom_bytes(pixels, "MONOCHROME2"), "a.dcm")
    mono1 = load_xray_bytes(_dicom_bytes(pixels, "MONOCHROME1"), "b.dcm")
    assert mono2.array[:, :20].mean() > mono2.array[:, 20:].mean()
    assert mono1.array[:, :20].mean() < mono1.array[:, 20:].mean()
    assert mono1.photometric == "MONOCHROME1" and mono1.bits == 12


def test_png_16bit_and_jpeg(tmp_path):
    from PIL import Image

    arr = (np.arange(64 * 64).reshape(64, 64) * 10).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray((arr // 200).astype(np.uint8)).save(tmp_path / "b.jpg", quality=95)
    png, jpg = load_xray(tmp_path / "a.png"), load_xray(tmp_path / "b.jpg")
    assert png.bits == 16 and png.array.max() == arr.max()
    assert jpg.bits == 8 and jpg.array.shape == (64, 64)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "cannot be read as an image"),
        (b"DICM" * 50, "cannot be read"),
    ],
)
@pytest.mark.reliability(
    "Bad input",
    "corrupt X-ray files given to the readers",
    "the error names the file",
)
def test_corrupt_xrays_name_the_file(payload, message):
    with pytest.raises(DataError, match=message):
        load_xray_bytes(payload, "upload.png")


def test_ct_loading_errors_name_the_file(tmp_path):
    good = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.diag([0.5, 0.5, 5, 1]))
    nib.save(good, tmp_path / "ok.nii.gz")
    volume = load_ct(tmp_path / "ok.nii.gz")
    assert volume.array.shape == (8, 8, 4) and volume.spacing == (0.5, 0.5, 5.0)
    data = (tmp_path / "ok.nii.gz").read_bytes()
    assert load_ct_bytes(data).array.shape == (8, 8, 4)
    assert load_ct_bytes(gzip.decompress(data)).array.shape == (8, 8, 4)
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.nii.gz: cannot be read as NIfTI"):
        load_ct(tmp_path / "cut.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), tmp_path / "flat.nii.gz")
    with pytest.raises(DataError, match="flat.nii.gz: expected a 3D volume, got 2D"):
        load_ct(tmp_path / "flat.nii.gz")
    nan = np.zeros((8, 8, 4), np.float32)
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(DataError, match="nan.nii.gz: contains 1 NaN/Inf voxels"):
        load_ct(tmp_path / "nan.nii.gz")
    with pytest.raises(DataError, match="expected a NIfTI file"):
        load_ct(_touch(tmp_path / "scan.png"))


def _touch(path):
    path.write_bytes(b"x")
    return path


# ----------------------------------------------------------------------------------------------------------------------
# CheXpert: the INFORMER paper's cohort (Shu et al.)
# ----------------------------------------------------------------------------------------------------------------------


def _chexpert_table(root, split, rows, *, columns=readers.CHEXPERT_COLUMNS, relative_to_csv=False):
    """``rows``: (patient, view, {finding: code}); writes the csv and an (empty) image file per row."""
    base = root / "CheXpert-v1.0-small"
    records = []
    for patient, view, labels in rows:
        rel = f"{split}/patient{patient:05d}/study1/view1_{view.lower()}.jpg"
        path = rel if relative_to_csv else f"CheXpert-v1.0-small/{rel}"
        record = dict.fromkeys(readers.CHEXPERT_COLUMNS, None)
        record.update({"Path": path, "Frontal/Lateral": view, **labels})
        records.append(record)
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"")
    pd.DataFrame(records, columns=readers.CHEXPERT_COLUMNS)[list(columns)].to_csv(base / f"{split}.csv", index=False)


def _paper_dataset(root, *, with_test=True):
    _chexpert_table(root, "train", [
        (1, "Frontal", {"Edema": 1.0}),                                   # kept
        (1, "Lateral", {"Edema": 1.0}),                                   # lateral
        (2, "Frontal", {"Edema": 1.0, "Atelectasis": -1.0}),              # uncertain in another finding
        (3, "Frontal", {"Cardiomegaly": 0.0}),                            # none positive (blank = negative)
        (4, "Frontal", {"Pleural Effusion": 1.0, "Consolidation": 0.0}),  # kept; blanks negative
        (5, "Frontal", {"Pneumonia": 1.0}),                               # positive only outside the five: out
    ])  # fmt: skip
    _chexpert_table(root, "valid", [(64541, "Frontal", {"Cardiomegaly": 1.0}), (64542, "Frontal", {})])
    if with_test:  # the released test labels: paths relative to the csv's folder, no Frontal/Lateral column
        _chexpert_table(root, "test", [(64741, "Frontal", {"Consolidation": 1.0}), (64742, "Lateral", {"Edema": 1.0})],
                        columns=[c for c in readers.CHEXPERT_COLUMNS if c != "Frontal/Lateral"],
                        relative_to_csv=True)  # fmt: skip


def test_chexpert_paper_cohort_exclusions_and_counts(tmp_path):
    _paper_dataset(tmp_path)
    manifest = readers.read_chexpert(tmp_path, cohort="paper")
    # The training manifest holds each csv in its own split (training.splits.official_splits keeps their roles:
    # train.csv trains, valid.csv chooses the thresholds, test.csv tests).
    assert manifest.groupby("split").size().to_dict() == {"train": 2, "valid": 1, "test": 1}
    train = manifest[manifest["split"] == "train"]
    assert train["patient_id"].tolist() == ["patient00001", "patient00004"]
    assert train[list(readers.CHEXPERT_FINDINGS)].to_numpy().tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    assert manifest.attrs["selection"]["train"] == [
        ("rows", 6), ("frontal", 5), ("no uncertain (-1) label in the five findings", 4),
        ("at least one of the five findings positive", 2),
    ]  # fmt: skip
    line = readers.selection_lines(manifest.attrs["selection"])[0]
    assert line == "train.csv: 6 rows → 5 frontal → 4 no uncertain (-1) label in the five findings → 2 at least " \
        "one of the five findings positive"  # fmt: skip

    every = readers.read_chexpert(tmp_path, cohort="paper", splits=readers.CHEXPERT_SPLITS)
    assert every.groupby("split").size().to_dict() == {"train": 2, "valid": 1, "test": 1}
    test = every[every["split"] == "test"].iloc[0]
    assert test["image_exists"] and test["image_path"].endswith(
        "CheXpert-v1.0-small/test/patient64741/study1/view1_frontal.jpg"
    )
    assert every.attrs["selection"]["test"][:2] == [("rows", 2), ("frontal", 1)]  # the view from the file name


def test_chexpert_cohort_all_is_todays_manifest_and_unknown_cohorts_are_refused(tmp_path):
    _paper_dataset(tmp_path)
    manifest = readers.read_chexpert(tmp_path)  # cohort all: train + valid, frontal, uncertain masked
    assert manifest.groupby("split").size().to_dict() == {"train": 5, "valid": 2}
    assert np.isnan(manifest.loc[manifest["patient_id"] == "patient00002", "Atelectasis"]).all()
    assert "test" not in set(manifest["split"])  # test.csv is read only where asked (the paper cohort's evaluation)
    with pytest.raises(DataError, match="set data.chexpert.cohort to all or paper"):
        readers.read_chexpert(tmp_path, cohort="papers")


def test_chexpert_cohort_is_checked_in_params():
    from medmlops.config import ChexpertData, ConfigError, load_params
    from tests.conftest import REPO

    assert load_params(REPO / "params.yaml").data.chexpert.cohort == "all"
    assert load_params(REPO / "params.yaml", profile="paper").data.chexpert.cohort == "paper"
    with pytest.raises(ConfigError, match="cohort must be all or paper"):
        ChexpertData(cohort="paper-ish")
    with pytest.raises(ConfigError, match="frontal images only"):
        ChexpertData(cohort="paper", frontal_only=False)
