"""Tests for the synthetic ICH head-CT simulator (format, determinism, learnable signal, shifts)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medmlops.data.simulate.ich import ICH_CLINICAL_COLUMNS, ICH_SHIFTS, generate_ich

SMALL = (16, 48, 48)  # (slices, rows, cols)
LABEL = "Label (poor_prognosis)"

# The literal header of the real CLINICAL_DATA_ICH.csv (quirks included: "Tº" with U+00BA, "Dyastolic_AP").
EXPECTED_COLUMNS = [
    "PatientID", "Label (poor_prognosis)", "Gender", "Age", "Smoker", "Alcohol", "HT", "DM", "Dyslipidemia",
    "MH_ICH", "MH_CVD", "MH_neuro", "MH_dementia", "MH_cancer", "MH_hematho", "MH_others", "Anticoagulant",
    "Antiaggregant", "Antihypertensive_drugs", "Calcium_antag", "Alpha_blockers", "GCS", "Systolic_AP",
    "Dyastolic_AP", "OxSat", "T\u00ba", "HR", "RF", "PE_neuro", "Glucose", "Creatinine", "Urea", "Sodium",
    "Potassium", "WBC", "Hgb", "Platelets", "MCV", "RCDW", "CMHC", "MPV", "INR", "Fibrinogen",
    "Cause_head_trauma",
]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _path(root: Path, pid: int, label: int) -> Path:
    return root / ("POOR_PROGNOSIS" if label else "GOOD_PROGNOSIS") / f"{pid}.nii.gz"


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(path)
    return np.asarray(img.dataobj).astype(np.float32), img


def _volumes(root: Path) -> list[tuple[np.ndarray, nib.Nifti1Image]]:
    csv = pd.read_csv(root / "CLINICAL_DATA_ICH.csv")
    return [_load(_path(root, pid, lab)) for pid, lab in zip(csv["PatientID"], csv[LABEL], strict=True)]


def _intracranial(a: np.ndarray) -> np.ndarray:
    """Inside the skull from the image alone: fill the bone ring slice by slice, then erode off partial volume."""
    bone = a > 300
    ic = np.zeros_like(bone)
    for k in range(a.shape[2]):
        ic[:, :, k] = ndimage.binary_fill_holes(bone[:, :, k]) & ~bone[:, :, k]
    return ndimage.binary_erosion(ic, structure=np.ones((3, 3, 1), dtype=bool))


def _features(a: np.ndarray, img: nib.Nifti1Image) -> tuple[float, float]:
    """(acute blood mL, CSF mL) inside the skull after an in-plane median filter (suppresses noise)."""
    voxel_ml = float(np.prod(img.header.get_zooms())) / 1000.0
    ic = _intracranial(a)
    f = ndimage.median_filter(a, size=(3, 3, 1))
    blood = float(((f >= 50) & (f <= 90) & ic).sum()) * voxel_ml
    csf = float(((f >= -5) & (f <= 15) & ic).sum()) * voxel_ml
    return blood, csf


def _hf_noise(a: np.ndarray, ic: np.ndarray) -> float:
    """Median |in-plane Laplacian| inside the brain: a robust high-frequency (noise) measure."""
    lap = sum(ndimage.correlate1d(a, [1.0, -2.0, 1.0], axis=ax) for ax in (0, 1))
    return float(np.median(np.abs(lap[ic])))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# fixtures (generated once per module; everything is tiny)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("ich_cohort")
    truth = generate_ich(root, n=96, seed=0, shape=SMALL, progress=False)
    return root, truth


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, tuple[Path, pd.DataFrame]]:
    out: dict[str | None, tuple[Path, pd.DataFrame]] = {}
    for shift in (None, *ICH_SHIFTS):
        root = tmp_path_factory.mktemp(f"ich_{shift}")
        out[shift] = (root, generate_ich(root, n=40, seed=3, shape=SMALL, shift=shift, progress=False))
    return out


# ---------------------------------------------------------------------------------------------------------------
# 1. layout and CSV
# ---------------------------------------------------------------------------------------------------------------
def test_public_constants() -> None:
    assert list(ICH_CLINICAL_COLUMNS) == EXPECTED_COLUMNS
    assert len(ICH_CLINICAL_COLUMNS) == 44
    assert ICH_SHIFTS == ("scanner", "intensity", "noise", "population", "corruption")


def test_layout_and_csv(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, truth = cohort
    raw = (root / "CLINICAL_DATA_ICH.csv").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r\n" not in raw
    assert raw.decode("utf-8").splitlines()[0] == ",".join(EXPECTED_COLUMNS)

    csv = pd.read_csv(root / "CLINICAL_DATA_ICH.csv")
    assert list(csv.columns) == EXPECTED_COLUMNS
    assert csv["PatientID"].tolist() == list(range(1, 97))
    for col in ("PatientID", LABEL, "Age", "GCS", "Gender"):
        assert csv[col].notna().all(), col
        assert pd.api.types.is_integer_dtype(csv[col]), col
    assert csv["Age"].between(18, 99).all() and csv["GCS"].between(3, 15).all()
    binary = [c for c in EXPECTED_COLUMNS[4:21] if c != "GCS"] + [LABEL, "Gender", "PE_neuro", "Cause_head_trauma"]
    for col in binary:
        assert set(csv[col].unique()) <= {0, 1}, col
    ranges = {"Systolic_AP": (90, 230), "Dyastolic_AP": (40, 130), "OxSat": (80, 100), "T\u00ba": (35, 40),
              "Glucose": (60, 400), "Sodium": (125, 155), "INR": (0.8, 4.0), "Platelets": (50, 500)}  # fmt: skip
    for col, (lo, hi) in ranges.items():
        assert csv[col].dropna().between(lo, hi).all(), col
    # Correlated, not independent noise: anticoagulated patients have a higher INR.
    assert csv.loc[csv.Anticoagulant == 1, "INR"].mean() > csv.loc[csv.Anticoagulant == 0, "INR"].mean() + 0.5

    # Files sit in the folder of their label and nowhere else; the latents agree with the CSV.
    all_files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.nii.gz"))
    expected = sorted(
        _path(root, p, lab).relative_to(root).as_posix() for p, lab in zip(csv.PatientID, csv[LABEL], strict=True)
    )
    assert all_files == expected
    assert truth["label"].tolist() == csv[LABEL].tolist() and truth["gcs"].tolist() == csv["GCS"].tolist()
    for col in ("PatientID", "label", "age", "gcs", "vendor", "burden_ml", "n_hematomas", "ivh",
                "posterior_fossa", "midline_shift_mm", "ventricle_volume_ml"):  # fmt: skip
        assert col in truth.columns, col

    dx, dy, dz = 220 / 48, 220 / 48, 150 / 16
    for pid in (1, 2, 3):
        a, img = _load(_path(root, pid, int(csv.loc[csv.PatientID == pid, LABEL].iloc[0])))
        assert img.get_data_dtype() == np.int16
        assert a.shape == (48, 48, 16)  # (cols, rows, slices)
        # The header stores the affine as float32, hence the tolerance.
        np.testing.assert_allclose(img.affine[:3, :3], np.diag([dx, dy, dz]), rtol=1e-6, atol=0)
        centre = img.affine @ np.array([23.5, 23.5, 7.5, 1.0])  # the volume centre sits at the origin
        np.testing.assert_allclose(centre[:3], 0.0, atol=1e-4)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert img.header.get_xyzt_units()[0] == "mm"
        assert img.header["descrip"].item() in (b"GE MEDICAL SYSTEMS", b"Philips")
        assert not np.isnan(a).any()
        assert a.min() >= -1024 and a.max() <= 3071
        assert a.max() > 700  # bone
        ic = _intracranial(a)
        assert 20 <= np.median(a[ic]) <= 45  # brain parenchyma


# ---------------------------------------------------------------------------------------------------------------
# 2. determinism
# ---------------------------------------------------------------------------------------------------------------
def test_byte_identical(tmp_path: Path) -> None:
    kwargs = {"n": 6, "shape": (8, 24, 24), "progress": False}
    t1 = generate_ich(tmp_path / "a", seed=5, **kwargs)
    t2 = generate_ich(tmp_path / "b", seed=5, **kwargs)
    generate_ich(tmp_path / "c", seed=6, **kwargs)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 7 and a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
    pd.testing.assert_frame_equal(t1, t2)
    assert a["CLINICAL_DATA_ICH.csv"] != c["CLINICAL_DATA_ICH.csv"]
    images_a = sorted(v for k, v in a.items() if k.endswith(".nii.gz"))
    images_c = sorted(v for k, v in c.items() if k.endswith(".nii.gz"))
    assert not set(images_a) & set(images_c)
    # A patient's latents do not depend on n (per-patient generators, not one shared stream).
    t_small = generate_ich(tmp_path / "d", seed=5, n=3, shape=(8, 24, 24), progress=False)
    pd.testing.assert_frame_equal(t_small, t1.iloc[:3])


def test_regenerating_into_same_dir_removes_stale_scans(tmp_path: Path) -> None:
    generate_ich(tmp_path, n=8, seed=1, shape=(8, 16, 16), progress=False)
    generate_ich(tmp_path, n=4, seed=2, shape=(8, 16, 16), progress=False)
    names = sorted(p.name for p in tmp_path.rglob("*.nii.gz"))
    assert names == ["1.nii.gz", "2.nii.gz", "3.nii.gz", "4.nii.gz"]


# ---------------------------------------------------------------------------------------------------------------
# 3-4. learnable signal and class balance
# ---------------------------------------------------------------------------------------------------------------
def test_learnable_signal(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, truth = cohort
    csv = pd.read_csv(root / "CLINICAL_DATA_ICH.csv")
    feats = np.array([_features(a, img) for a, img in _volumes(root)])
    blood, csf = feats[:, 0], feats[:, 1]
    y = csv[LABEL].to_numpy()

    x = np.column_stack([np.log1p(blood), csf])
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression())
    auc = roc_auc_score(y, cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1])
    assert auc > 0.70, f"image-feature prognosis AUC = {auc:.3f}"

    rho_age = stats.spearmanr(csf, csv["Age"]).statistic
    assert rho_age > 0.3, f"Spearman(CSF volume, age) = {rho_age:.3f}"
    rho_gcs = stats.spearmanr(blood, csv["GCS"]).statistic
    assert rho_gcs < -0.3, f"Spearman(blood volume, GCS) = {rho_gcs:.3f}"
    # The image blood volume tracks the latent burden (not just something correlated with it).
    rho_burden = stats.spearmanr(blood, truth["burden_ml"]).statistic
    assert rho_burden > 0.8, f"Spearman(image blood, latent burden) = {rho_burden:.3f}"


def test_class_balance(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, truth = cohort
    share = pd.read_csv(root / "CLINICAL_DATA_ICH.csv")[LABEL].mean()
    assert 0.45 <= share <= 0.78, f"poor share = {share:.3f}"
    # Calibrated expectation, less noisy than the realised share.
    assert 0.55 <= truth["p_poor"].mean() <= 0.70
    gcs = truth["gcs"]
    assert (gcs >= 13).mean() > 0.3 and (gcs <= 8).mean() > 0.05


# ---------------------------------------------------------------------------------------------------------------
# 5. shifts
# ---------------------------------------------------------------------------------------------------------------
def test_intensity_shift(shifted: dict) -> None:
    base, moved = _volumes(shifted[None][0]), _volumes(shifted["intensity"][0])
    deltas = []
    for (a, _), (b, _) in zip(base, moved, strict=True):
        ic = _intracranial(a)
        deltas.append(np.median(b[ic]) - np.median(a[ic]))
    assert np.median(deltas) > 8, f"median parenchyma shift = {np.median(deltas):.1f} HU"
    assert (shifted["intensity"][1]["hu_gain"] > 1).all()


def test_noise_shift(shifted: dict) -> None:
    base, moved = _volumes(shifted[None][0]), _volumes(shifted["noise"][0])
    ratios = []
    for (a, _), (b, _) in zip(base, moved, strict=True):
        ic = _intracranial(a)
        ratios.append(_hf_noise(b, ic) / _hf_noise(a, ic))
    assert np.median(ratios) > 1.8 and min(ratios) > 1.3, f"noise ratios {np.round(ratios, 2)}"
    # Latents and clinical table unchanged: only the acquisition moved.
    pd.testing.assert_frame_equal(
        pd.read_csv(shifted[None][0] / "CLINICAL_DATA_ICH.csv"),
        pd.read_csv(shifted["noise"][0] / "CLINICAL_DATA_ICH.csv"),
    )


def test_scanner_shift(shifted: dict) -> None:
    base, moved = _volumes(shifted[None][0]), _volumes(shifted["scanner"][0])
    assert {img.header["descrip"].item() for _, img in base} == {b"GE MEDICAL SYSTEMS", b"Philips"}
    assert {img.header["descrip"].item() for _, img in moved} == {b"SIEMENS"}
    base_pad = {float(a[0, 0, 0]) for a, _ in base}
    new_pad = {float(a[0, 0, 0]) for a, _ in moved}
    assert base_pad <= {-1024.0, -1000.0} and new_pad.isdisjoint(base_pad)
    ratios = [
        _hf_noise(b, _intracranial(a)) / _hf_noise(a, _intracranial(a))
        for (a, _), (b, _) in zip(base, moved, strict=True)
    ]
    assert np.median(ratios) > 1.2, f"noise ratios {np.round(ratios, 2)}"
    assert set(shifted["scanner"][1]["vendor"]) == {"SIEMENS"}


def test_population_shift(shifted: dict) -> None:
    (base_root, base), (pop_root, pop) = shifted[None], shifted["population"]
    base_csv, pop_csv = (
        pd.read_csv(base_root / "CLINICAL_DATA_ICH.csv"),
        pd.read_csv(pop_root / "CLINICAL_DATA_ICH.csv"),
    )
    assert pop_csv["Age"].mean() > base_csv["Age"].mean() + 5
    assert pop_csv[LABEL].mean() > base_csv[LABEL].mean()
    assert pop["burden_ml"].median() > base["burden_ml"].median()
    assert pop["gcs"].mean() < base["gcs"].mean()
    assert pop["p_poor"].mean() > base["p_poor"].mean() + 0.1


def test_corruption_shift(shifted: dict) -> None:
    base, moved = _volumes(shifted[None][0]), _volumes(shifted["corruption"][0])
    worse = []
    for (a, _), (b, _) in zip(base, moved, strict=True):
        ic = _intracranial(a)  # same anatomy: the clean scan's mask applies to the corrupted one
        implausible = lambda v, m=ic: float(((v[m] < -30) | (v[m] > 110)).mean())  # noqa: E731
        worse.append(implausible(b) - implausible(a))
    assert np.mean(np.array(worse) > 0.002) >= 0.9, f"artefact fraction increase {np.round(worse, 4)}"
    assert (shifted["corruption"][1]["artefact"].str.startswith("streak")).all()
    for a, img in moved:  # still a valid NIfTI with HU-range int16 data
        assert img.get_data_dtype() == np.int16 and a.min() >= -1024


# ---------------------------------------------------------------------------------------------------------------
# 6. bad arguments
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"shift": "weather"}, "shift"),
        ({"n": 1}, "n"),
        ({"shape": (7, 32, 32)}, "shape"),
        ({"shape": (16, 32)}, "shape"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, name: str) -> None:
    args = {"n": 2, "shape": (8, 16, 16), "progress": False, **kwargs}
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        generate_ich(tmp_path, **args)
    assert not list(tmp_path.rglob("*.nii.gz"))
