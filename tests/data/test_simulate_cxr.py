"""Tests of the synthetic chest X-ray simulators (AIforCOVID, BRIXIA, CheXpert).

Small datasets (≤ 160 images at 64 × 64) generated once per module; the whole file runs in well under a minute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from scipy import ndimage
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medmlops.data.simulate._chest_common import CXR_SHIFTS
from medmlops.data.simulate.aiforcovid import generate_aiforcovid
from medmlops.data.simulate.brixia import generate_brixia
from medmlops.data.simulate.chexpert import generate_chexpert

AIFORCOVID_COLUMNS = [
    "ImageFile", "Hospital", "Age", "Sex", "Positivity at admission", "Temp_C", "DaysFever", "Cough",
    "DifficultyInBreathing", "WBC", "RBC", "CRP", "Fibrinogen", "Glucose", "PCT", "LDH", "INR", "D_dimer",
    "Ox_percentage", "PaO2", "SaO2", "PaCO2", "pH", "CardiovascularDisease", "IschemicHeartDisease",
    "AtrialFibrillation", "HeartFailure", "Ictus", "HighBloodPressure", "Diabetes", "Dementia", "BPCO", "Cancer",
    "Chronic Kidney disease", "RespiratoryFailure", "Obesity", "Position", "Prognosis", "Death",
]  # fmt: skip
BRIXIA_COLUMNS = [
    "Filename", "StudyId", "Subject", "Sex", "AgeAtStudyDateFiveYear", "StudyDate", "BrixiaScore",
    "BrixiaScoreGlobal", "ConsensusTestset", "Modality", "Manufacturer", "ManufacturerModelName",
    "PhotometricInterpretation",
]  # fmt: skip
CHEXPERT_COLUMNS = [
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
]  # fmt: skip
FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
CHEX = "CheXpert-v1.0-small"
SHAPE = (64, 64)
GENERATORS = {"aiforcovid": generate_aiforcovid, "brixia": generate_brixia, "chexpert": generate_chexpert}


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def load_display(path: Path) -> np.ndarray:
    """Image in [0, 1], display polarity (air dark): MONOCHROME1 inverted, scaled by the stored bit depth."""
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float64) / ((1 << int(ds.BitsStored)) - 1)
        return 1.0 - a if ds.PhotometricInterpretation == "MONOCHROME1" else a
    with Image.open(path) as im:
        a = np.asarray(im, dtype=np.float64)
        # 16-bit PNGs may hold 12-bit data (hospital E): scale by the image's own range.
        return a / 255.0 if im.mode == "L" else a / max(a.max(), 1.0)


def features16(a: np.ndarray, k: int = 16) -> np.ndarray:
    r, c = a.shape
    b = a[: r // k * k, : c // k * k].reshape(k, r // k, k, c // k).mean(axis=(1, 3))
    return ((b - b.mean()) / (b.std() + 1e-9)).ravel()


def cv_auc(x: np.ndarray, y: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    proba = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, proba))


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def afc_image(root: Path, image_file: str) -> Path:
    hits = list((root / "imgs").glob(f"{image_file}.*"))
    assert len(hits) == 1, f"{image_file}: expected exactly one image file, found {hits}"
    return hits[0]


def dataset_images(name: str, root: Path) -> list[Path]:
    if name == "aiforcovid":
        table = pd.read_csv(root / "AIforCOVID.csv")
        return [afc_image(root, f) for f in table["ImageFile"]]
    if name == "brixia":
        table = pd.read_csv(root / "metadata_global_v2.csv", sep=";", dtype={"BrixiaScore": str})
        return [root / "dicom_clean" / f for f in table["Filename"]]
    table = pd.read_csv(root / CHEX / "train.csv")
    return [root / p for p in table["Path"]]


def hf_energy(a: np.ndarray) -> float:
    """Robust high-frequency (noise) level: median |image - 3x3 median| ignores the sparse anatomical edges."""
    return float(np.median(np.abs(a - ndimage.median_filter(a, 3))))


# ----------------------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def afc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("aiforcovid")
    return root, generate_aiforcovid(root, n=80, seed=3, shape=SHAPE, progress=False)


@pytest.fixture(scope="module")
def brixia(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("brixia")
    return root, generate_brixia(root, n=60, seed=3, shape=SHAPE, progress=False)


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("chexpert")
    return root, generate_chexpert(root, n=160, seed=3, shape=SHAPE, progress=False)


# ----------------------------------------------------------------------------------------------------------------------
# 1. layouts, columns, formats
# ----------------------------------------------------------------------------------------------------------------------


def test_aiforcovid_layout(afc: tuple[Path, pd.DataFrame]) -> None:
    root, latents = afc
    raw = (root / "AIforCOVID.csv").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r\n" not in raw
    table = pd.read_csv(root / "AIforCOVID.csv")
    assert list(table.columns) == AIFORCOVID_COLUMNS
    assert len(table) == len(latents) == 80
    assert set(table["Hospital"]) == set("ABCDEF")
    assert table["Hospital"].value_counts().nunique() > 1, "centre sizes should be unequal"
    assert table["ImageFile"].str.fullmatch(r"P_[A-F]_\d+").all() and table["ImageFile"].is_unique
    assert (table["ImageFile"].str[2] == table["Hospital"]).all()
    for col in ("ImageFile", "Hospital", "Prognosis", "Age", "Sex"):
        assert table[col].notna().all(), col
    assert table["Age"].between(20, 100).all()
    assert set(table["Sex"]) <= {"M", "F"} and set(table["Position"]) <= {"AP", "PA"}
    assert set(table["Prognosis"]) == {"MILD", "SEVERE"}
    assert 0.3 < (table["Prognosis"] == "SEVERE").mean() < 0.7
    assert (table.loc[table["Death"] == 1, "Prognosis"] == "SEVERE").all(), "deaths only among SEVERE"
    for col in ("Cough", "Diabetes", "Obesity", "Chronic Kidney disease", "Positivity at admission"):
        assert set(table[col].unique()) <= {0, 1}, col
    sev = table["Prognosis"] == "SEVERE"
    assert table.loc[sev, "CRP"].median() > table.loc[~sev, "CRP"].median()
    assert table.loc[sev, "PaO2"].median() < table.loc[~sev, "PaO2"].median()
    # AP films are more common in sicker patients.
    assert (table.loc[sev, "Position"] == "AP").mean() > (table.loc[~sev, "Position"] == "AP").mean()

    for image_file, hospital in zip(table["ImageFile"], table["Hospital"], strict=True):
        path = afc_image(root, image_file)
        assert path.suffix == (".png" if hospital in "EF" else ".dcm")
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
            assert ds.pixel_array.shape == SHAPE and int(ds.BitsStored) in (12, 16)
            assert int(ds.pixel_array.max()) <= (1 << int(ds.BitsStored)) - 1
            expected = "MONOCHROME1" if hospital in "BD" else "MONOCHROME2"
            assert ds.PhotometricInterpretation == expected
        else:
            with Image.open(path) as im:
                assert im.mode.startswith("I;16") and im.size == SHAPE[::-1]


def _raw_regions(path: Path) -> tuple[float, float]:
    """(upper lung fields, sub-diaphragmatic soft tissue) means of the STORED pixels, scaled to [0, 1]."""
    ds = pydicom.dcmread(path)
    a = ds.pixel_array.astype(np.float64) / ((1 << int(ds.BitsStored)) - 1)
    r, c = a.shape
    lung = np.r_[a[int(0.25 * r) : int(0.45 * r), int(0.2 * c) : int(0.38 * c)].ravel(),
                 a[int(0.25 * r) : int(0.45 * r), int(0.62 * c) : int(0.8 * c)].ravel()]  # fmt: skip
    abdomen = a[int(0.84 * r) : int(0.92 * r), int(0.3 * c) : int(0.45 * c)]
    return float(lung.mean()), float(abdomen.mean())


def test_dicom_polarity_matches_photometric(afc: tuple[Path, pd.DataFrame], brixia: tuple[Path, pd.DataFrame]) -> None:
    paths = list((afc[0] / "imgs").glob("*.dcm")) + list((brixia[0] / "dicom_clean").glob("*.dcm"))
    lungs: dict[str, list[float]] = {"MONOCHROME1": [], "MONOCHROME2": []}
    for path in paths:
        photometric = pydicom.dcmread(path, stop_before_pixels=True).PhotometricInterpretation
        lung, abdomen = _raw_regions(path)
        lungs[photometric].append(lung)
        # Aerated lung is darker than soft tissue on display: stored HIGHER under MONOCHROME1, LOWER under 2.
        if photometric == "MONOCHROME1":
            assert lung > abdomen, f"{path.name}: MONOCHROME1 but lung {lung:.2f} <= soft tissue {abdomen:.2f}"
        else:
            assert lung < abdomen, f"{path.name}: MONOCHROME2 but lung {lung:.2f} >= soft tissue {abdomen:.2f}"
    m1, m2 = np.mean(lungs["MONOCHROME1"]), np.mean(lungs["MONOCHROME2"])
    assert m1 > 0.6 > 0.4 > m2, f"mean stored lung field: MONOCHROME1 {m1:.2f} (want high), MONOCHROME2 {m2:.2f}"


def test_brixia_layout(brixia: tuple[Path, pd.DataFrame]) -> None:
    root, latents = brixia
    path = root / "metadata_global_v2.csv"
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header.split(";") == BRIXIA_COLUMNS and "," not in header
    table = pd.read_csv(path, sep=";", dtype={"BrixiaScore": str})
    assert list(table.columns) == BRIXIA_COLUMNS and len(table) == 60
    scores = table["BrixiaScore"]
    assert scores.str.fullmatch(r"[0-3]{6}").all()
    assert scores.str.startswith("0").any(), "some scores must keep a leading zero"
    assert (scores.map(lambda s: sum(int(ch) for ch in s)) == table["BrixiaScoreGlobal"]).all()
    assert (scores == latents["BrixiaScore"]).all()
    assert table["Filename"].str.fullmatch(r"\d{10}\.dcm").all() and table["Filename"].is_unique
    assert table["StudyDate"].astype(str).str.fullmatch(r"2020\d{4}").all()
    assert (table["AgeAtStudyDateFiveYear"] % 5 == 0).all()
    assert set(table["ConsensusTestset"]) <= {0, 1}
    assert set(table["Modality"]) <= {"CR", "DX"} and table["Manufacturer"].nunique() >= 3
    assert 4.0 < table["BrixiaScoreGlobal"].mean() < 11.0
    zones = np.array([[int(ch) for ch in s] for s in scores])
    assert zones[:, [2, 5]].mean() > zones[:, [0, 3]].mean(), "lower zones should be more involved than upper"
    for _, row in table.iterrows():
        ds = pydicom.dcmread(root / "dicom_clean" / row["Filename"])
        assert ds.PhotometricInterpretation == row["PhotometricInterpretation"]
        assert ds.Manufacturer == row["Manufacturer"] and ds.Modality == row["Modality"]
        assert ds.pixel_array.shape == SHAPE


def test_chexpert_layout(chexpert: tuple[Path, pd.DataFrame]) -> None:
    root, latents = chexpert
    train = pd.read_csv(root / CHEX / "train.csv")
    valid = pd.read_csv(root / CHEX / "valid.csv")
    for table in (train, valid):
        assert list(table.columns) == CHEXPERT_COLUMNS
        assert table["Path"].str.startswith(f"{CHEX}/").all()
        assert set(table["Sex"]) <= {"Male", "Female"} and set(table["Frontal/Lateral"]) <= {"Frontal", "Lateral"}
        frontal = table["Frontal/Lateral"] == "Frontal"
        assert table.loc[frontal, "AP/PA"].isin(["AP", "PA"]).all() and table.loc[~frontal, "AP/PA"].isna().all()
        assert (table["Path"].str.endswith("_frontal.jpg") == frontal).all()
        for rel in table["Path"]:
            with Image.open(root / rel) as im:
                assert im.format == "JPEG" and im.mode == "L" and im.size == SHAPE[::-1]
    assert (train["Frontal/Lateral"] == "Frontal").sum() == 160
    assert 0.05 < (train["Frontal/Lateral"] == "Lateral").sum() / 160 < 0.3
    assert (valid["Frontal/Lateral"] == "Frontal").sum() == max(8, 160 // 6)
    assert train["Path"].str.match(rf"{CHEX}/train/patient\d{{5}}/study\d+/view\d_(frontal|lateral)\.jpg").all()
    train_patients = train["Path"].str.extract(r"patient(\d+)")[0].astype(int)
    valid_patients = valid["Path"].str.extract(r"patient(\d+)")[0].astype(int)
    assert train_patients.min() == 1 and valid_patients.min() == 64541 > train_patients.max()
    observations = CHEXPERT_COLUMNS[5:]
    train_values = set(np.unique(train[observations].to_numpy(dtype=float)[~train[observations].isna().to_numpy()]))
    assert train_values == {-1.0, 0.0, 1.0} and train[observations].isna().any().any()
    assert valid[observations].notna().all().all()
    assert set(np.unique(valid[observations].to_numpy(dtype=float))) <= {0.0, 1.0}
    assert len(latents) == len(train) + len(valid)
    # Edema ↔ cardiomegaly ↔ effusion are correlated in the latent truth.
    lat = latents[latents["view"] == "Frontal"]
    cm = lat["true_Cardiomegaly"] == 1
    assert lat.loc[cm, "true_Edema"].mean() > lat.loc[~cm, "true_Edema"].mean()
    assert lat.loc[cm, "ctr"].min() > 0.5 > lat.loc[~cm & (lat["ap_pa"] == "PA"), "ctr"].max()


# ----------------------------------------------------------------------------------------------------------------------
# 2. determinism
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GENERATORS))
def test_byte_identical_regeneration(name: str, tmp_path: Path) -> None:
    gen = GENERATORS[name]
    a = gen(tmp_path / "a", n=6, seed=11, shape=(48, 40), progress=False)
    b = gen(tmp_path / "b", n=6, seed=11, shape=(48, 40), progress=False)
    c = gen(tmp_path / "c", n=6, seed=12, shape=(48, 40), progress=False)
    files_a, files_b, files_c = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b"), tree_bytes(tmp_path / "c")
    assert files_a.keys() == files_b.keys() and len(files_a) >= 7
    changed = [k for k in files_a if files_a[k] != files_b[k]]
    assert not changed, f"{name}: regenerated files differ: {changed[:5]}"
    pd.testing.assert_frame_equal(a, b)
    common = files_a.keys() & files_c.keys()
    assert files_a.keys() != files_c.keys() or any(files_a[k] != files_c[k] for k in common)
    image_bytes_a = sorted(v for k, v in files_a.items() if not k.endswith(".csv"))
    image_bytes_c = sorted(v for k, v in files_c.items() if not k.endswith(".csv"))
    assert image_bytes_a != image_bytes_c, f"{name}: a different seed must give different images"
    assert not c.equals(a)


# ----------------------------------------------------------------------------------------------------------------------
# 3. learnable signal from the images alone
# ----------------------------------------------------------------------------------------------------------------------


def test_aiforcovid_prognosis_learnable(afc: tuple[Path, pd.DataFrame]) -> None:
    root, _ = afc
    table = pd.read_csv(root / "AIforCOVID.csv")
    x = np.array([features16(load_display(afc_image(root, f))) for f in table["ImageFile"]])
    y = (table["Prognosis"] == "SEVERE").to_numpy().astype(int)
    auc = cv_auc(x, y)
    assert auc > 0.65, f"AIforCOVID prognosis CV AUC from 16x16 images = {auc:.3f} (want > 0.65)"


def test_brixia_score_learnable(brixia: tuple[Path, pd.DataFrame]) -> None:
    root, _ = brixia
    table = pd.read_csv(root / "metadata_global_v2.csv", sep=";", dtype={"BrixiaScore": str})
    images = [load_display(root / "dicom_clean" / f) for f in table["Filename"]]
    # Hand-made opacity feature: lung fields relative to the mediastinum (opacities whiten the lungs).
    opacity = [
        np.median(np.r_[a[16:44, 10:27].ravel(), a[16:44, 37:54].ravel()]) - np.median(a[16:38, 29:35]) for a in images
    ]
    rho_feature = spearmanr(opacity, table["BrixiaScoreGlobal"]).statistic
    x = np.array([features16(a) for a in images])
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 3, 12)), x, table["BrixiaScoreGlobal"],
                             cv=KFold(5, shuffle=True, random_state=0))  # fmt: skip
    rho_ridge = spearmanr(pred, table["BrixiaScoreGlobal"]).statistic
    assert rho_ridge > 0.5, f"Spearman(CV ridge on 16x16, BrixiaScoreGlobal) = {rho_ridge:.3f} (want > 0.5)"
    assert rho_feature > 0.3, f"Spearman(lung-mediastinum opacity, BrixiaScoreGlobal) = {rho_feature:.3f}"


def test_chexpert_findings_learnable(chexpert: tuple[Path, pd.DataFrame]) -> None:
    root, _ = chexpert
    train = pd.read_csv(root / CHEX / "train.csv")
    train = train[train["Frontal/Lateral"] == "Frontal"]
    x = np.array([features16(load_display(root / p)) for p in train["Path"]])
    aucs = {f: cv_auc(x, (train[f] == 1.0).to_numpy().astype(int)) for f in FINDINGS}
    report = ", ".join(f"{f}={v:.3f}" for f, v in aucs.items())
    assert aucs["Cardiomegaly"] > 0.65, f"CheXpert CV AUCs: {report}"
    assert aucs["Pleural Effusion"] > 0.65, f"CheXpert CV AUCs: {report}"
    assert np.mean(list(aucs.values())) > 0.6, f"CheXpert CV AUCs: {report} (mean {np.mean(list(aucs.values())):.3f})"


# ----------------------------------------------------------------------------------------------------------------------
# 4. shifts move what they claim
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory):
    """(dataset, shift) → (root, latents, images) for the unshifted and every shifted variant, same seed."""
    cache: dict[tuple[str, str | None], tuple[Path, pd.DataFrame, list[np.ndarray]]] = {}

    def get(name: str, shift: str | None):
        if (name, shift) not in cache:
            root = tmp_path_factory.mktemp(f"{name}-{shift}")
            latents = GENERATORS[name](root, n=12, seed=5, shape=SHAPE, shift=shift, progress=False)
            cache[(name, shift)] = (root, latents, [load_display(p) for p in dataset_images(name, root)])
        return cache[(name, shift)]

    return get


@pytest.mark.parametrize("name", list(GENERATORS))
@pytest.mark.parametrize("shift", CXR_SHIFTS)
def test_shift_moves_distribution(name: str, shift: str, shifted) -> None:
    root0, lat0, img0 = shifted(name, None)
    root1, lat1, img1 = shifted(name, shift)
    assert (lat1["shift"] == shift).all() and (lat0["shift"] == "none").all()
    assert len(img0) == len(img1)
    if shift == "intensity":
        m0, m1 = np.mean([a.mean() for a in img0]), np.mean([a.mean() for a in img1])
        assert m1 - m0 > 0.05, f"{name}: mean pixel {m0:.3f} → {m1:.3f}"
    elif shift == "noise":
        h0, h1 = np.mean([hf_energy(a) for a in img0]), np.mean([hf_energy(a) for a in img1])
        assert h1 > 1.8 * h0, f"{name}: high-frequency energy {h0:.4f} → {h1:.4f}"
    elif shift == "scanner":
        stats0 = np.array([[a.mean(), a.std(), (a > 0.99).mean()] for a in img0])
        stats1 = np.array([[a.mean(), a.std(), (a > 0.99).mean()] for a in img1])
        diff = np.abs(stats1.mean(0) - stats0.mean(0))
        assert diff.max() > 0.04, f"{name}: image statistics barely moved: {diff}"
        if name == "aiforcovid":
            table = pd.read_csv(root1 / "AIforCOVID.csv")
            assert set(table["Hospital"]) == {"G"}
            new = {pydicom.dcmread(p, stop_before_pixels=True).Manufacturer for p in (root1 / "imgs").glob("*.dcm")}
            assert new == {"Siemens Healthineers"} and "Siemens Healthineers" not in set(lat0["manufacturer"])
        elif name == "brixia":
            table = pd.read_csv(root1 / "metadata_global_v2.csv", sep=";")
            assert set(table["Manufacturer"]).isdisjoint(set(lat0["manufacturer"]))
        else:
            assert set(lat1["scanner"]).isdisjoint(set(lat0["scanner"]))
    elif shift == "population":
        if name == "aiforcovid":
            assert lat1["severity"].mean() > lat0["severity"].mean() + 0.5
            assert lat1["prognosis"].mean() >= lat0["prognosis"].mean()
            assert lat1["opacity_mean"].mean() > lat0["opacity_mean"].mean()
        elif name == "brixia":
            t0 = pd.read_csv(root0 / "metadata_global_v2.csv", sep=";")
            t1 = pd.read_csv(root1 / "metadata_global_v2.csv", sep=";")
            assert t1["BrixiaScoreGlobal"].mean() > t0["BrixiaScoreGlobal"].mean() + 1.0
        else:
            assert lat1["n_findings"].mean() > lat0["n_findings"].mean()
    elif shift == "corruption":
        s0, s1 = np.mean([(a > 0.99).mean() for a in img0]), np.mean([(a > 0.99).mean() for a in img1])
        assert s1 > s0 + 0.005, f"{name}: saturated fraction {s0:.4f} → {s1:.4f}"
        assert (lat1["artefacts"].str.len() > 0).all() and (lat0["artefacts"] == "").all()


# ----------------------------------------------------------------------------------------------------------------------
# 5. bad arguments
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(GENERATORS))
@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"shift": "blur"}, "shift"),
        ({"n": 3}, "n"),
        ({"shape": (31, 64)}, "shape"),
        ({"shape": (64, 16)}, "shape"),
        ({"shape": (64,)}, "shape"),
    ],
)
def test_bad_arguments(name: str, kwargs: dict, argument: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        GENERATORS[name](tmp_path, progress=False, **{"n": 8, "shape": SHAPE, **kwargs})
    assert not any(tmp_path.iterdir()), "nothing should be written for invalid arguments"
