"""Readers for the four public datasets into manifests: one row per sample, paths resolved, labels normalised.

Every manifest has ``sample_id`` (str), ``image_path`` (absolute str) and ``image_exists`` (bool), plus the
dataset's labels under stable names. The readers cope with the real releases' quirks (column spellings,
encodings, separators, lost leading zeros, uncertainty codes); they do not judge plausibility — that is
:mod:`medmlops.validation`'s job, which runs on the same manifests.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medmlops.config import CHEXPERT_COHORTS  # all; paper: Shu et al.'s cohort (chexpert_selection)
from medmlops.errors import DataError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------------
# ICH (Perez et al. / Cobo et al.): NIfTI under GOOD_PROGNOSIS / POOR_PROGNOSIS + CLINICAL_DATA_ICH.csv
# ----------------------------------------------------------------------------------------------------------------------

ICH_TABLE = "CLINICAL_DATA_ICH.csv"
ICH_FOLDERS = {0: "GOOD_PROGNOSIS", 1: "POOR_PROGNOSIS"}
ICH_ID = "PatientID"
ICH_LABEL = "Label (poor_prognosis)"
ICH_CLINICAL_COLUMNS = (
    "PatientID", "Label (poor_prognosis)", "Gender", "Age", "Smoker", "Alcohol", "HT", "DM", "Dyslipidemia",
    "MH_ICH", "MH_CVD", "MH_neuro", "MH_dementia", "MH_cancer", "MH_hematho", "MH_others", "Anticoagulant",
    "Antiaggregant", "Antihypertensive_drugs", "Calcium_antag", "Alpha_blockers", "GCS", "Systolic_AP",
    "Dyastolic_AP", "OxSat", "Tº", "HR", "RF", "PE_neuro", "Glucose", "Creatinine", "Urea", "Sodium", "Potassium",
    "WBC", "Hgb", "Platelets", "MCV", "RCDW", "CMHC", "MPV", "INR", "Fibrinogen", "Cause_head_trauma",
)  # fmt: skip
# Spellings seen for the same columns: the real table writes 'Tº' (U+00BA), which becomes 'TÂº' when a
# UTF-8 file is read as Latin-1 and 'T°' after well-meaning edits; 'Dyastolic_AP' is the release's typo.
_ICH_ALIASES = {
    "TÂº": "Tº", "T°": "Tº", "TÂ°": "Tº", "T": "Tº", "Temperature": "Tº",
    "Diastolic_AP": "Dyastolic_AP", "Patient": "PatientID", "Label": "Label (poor_prognosis)",
}  # fmt: skip

# Paper (Cobo et al., Sec. 2): binary GCS 3-8 -> 1; ordinal 13-15 -> 0, 9-12 -> 1, 3-8 -> 2; age >= 80 -> 1.
GCS_BINARY_MAX = 8
AGE_BINARY_MIN = 80


def gcs_binary(gcs: np.ndarray | pd.Series) -> np.ndarray:
    return (np.asarray(gcs) <= GCS_BINARY_MAX).astype(np.int64)


def gcs_ordinal(gcs: np.ndarray | pd.Series) -> np.ndarray:
    gcs = np.asarray(gcs)
    return np.where(gcs >= 13, 0, np.where(gcs >= 9, 1, 2)).astype(np.int64)


def age_binary(age: np.ndarray | pd.Series) -> np.ndarray:
    return (np.asarray(age) >= AGE_BINARY_MIN).astype(np.int64)


# The auxiliary tasks and the clinical column each is derived from. A patient without that value keeps the
# prognosis task and gets -1 for these (the loss and the metrics leave -1 rows out, training.tasks); the prognosis
# label itself is required (preprocess.check_manifest names a missing one).
ICH_AUXILIARY_SOURCE = {"gcs_binary": "GCS", "gcs_ordinal": "GCS", "age_binary": "Age"}
# Skull-stripped volumes as the authors name them (SynthStrip output): ``{id}_brain.nii.gz``. When both ``{id}.nii.gz``
# and ``{id}_brain.nii.gz`` exist, the stripped one is used (it is what the paper trained on, and better than our
# intensity stand-in) and preprocessing skips the stand-in skull stripping for it (manifest ``skull_stripped``).
ICH_STRIPPED_SUFFIX = "_brain"
_ICH_FILE = re.compile(r"(\d+)(_brain)?\.nii(\.gz)?")


def ich_masked_labels(manifest: pd.DataFrame) -> dict[str, int]:
    """``{task: rows whose label is -1}`` for the auxiliary ICH tasks of a :func:`read_ich` manifest: the patients
    without the GCS or Age value that task is derived from, left out of that task's loss and metrics."""
    return {task: int((manifest[task] < 0).sum()) for task in ICH_AUXILIARY_SOURCE if task in manifest}


def read_ich_table(path: str | Path) -> pd.DataFrame:
    """Read CLINICAL_DATA_ICH.csv with canonical column names (UTF-8, falling back to Latin-1)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: clinical table not found")
    try:
        try:
            table = pd.read_csv(path, sep=None, engine="python", encoding="utf-8-sig")
        except UnicodeDecodeError:
            table = pd.read_csv(path, sep=None, engine="python", encoding="latin-1")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be parsed as CSV ({exc})") from exc
    table.columns = [_ICH_ALIASES.get(str(c).strip(), str(c).strip()) for c in table.columns]
    return table


def read_ich(root: str | Path, exclude: Sequence[int] = ()) -> pd.DataFrame:
    """Manifest of the ICH dataset.

    Columns: ``sample_id``, ``patient_id``, ``image_path``, ``image_exists``, ``folder_label`` (from the folder the
    file was found in, or -1), ``skull_stripped`` (the file is ``{id}_brain.nii[.gz]``), ``prognosis`` (0 good /
    1 poor, from the table), ``gcs``, ``age``, ``gcs_binary``, ``gcs_ordinal``, ``age_binary``, and the clinical
    columns under their canonical names.

    A blank GCS gives -1 for ``gcs_binary`` and ``gcs_ordinal``, a blank Age -1 for ``age_binary`` (that task is
    masked for the patient, the others keep it; :func:`ich_masked_labels` counts them). Images are
    ``{id}.nii[.gz]`` or the authors' skull-stripped ``{id}_brain.nii[.gz]``; where a patient has both, the
    stripped one is used.

    Args:
        root: the folder holding ``GOOD_PROGNOSIS/``, ``POOR_PROGNOSIS/`` and ``CLINICAL_DATA_ICH.csv``.
        exclude: patient ids to drop (the authors' code drops 213).
    """
    root = Path(root).resolve()
    table = read_ich_table(root / ICH_TABLE)
    for column in (ICH_ID, ICH_LABEL, "GCS", "Age"):
        if column not in table.columns:
            raise DataError(f"{root / ICH_TABLE}: required column '{column}' is missing")
    ids = pd.to_numeric(table[ICH_ID], errors="coerce")
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise DataError(f"{root / ICH_TABLE}: column '{ICH_ID}' has a non-numeric value at row {row + 2}")
    table[ICH_ID] = ids.astype(np.int64)
    table = table[~table[ICH_ID].isin(list(exclude))].reset_index(drop=True)

    found: dict[int, tuple[Path, int, bool]] = {}
    for label, folder in ICH_FOLDERS.items():
        directory = root / folder
        if not directory.is_dir():
            continue
        for file in sorted(directory.iterdir()):
            match = _ICH_FILE.fullmatch(file.name)
            if match:
                pid, stripped = int(match.group(1)), match.group(2) is not None
                if pid in found and found[pid][2] and not stripped:
                    continue  # {id}_brain wins over {id}, whichever the directory lists first
                found[pid] = (file, label, stripped)

    rows = []
    for _, rec in table.iterrows():
        pid = int(rec[ICH_ID])
        path, folder_label, stripped = found.get(pid, (None, -1, False))
        if path is None:  # where it should be, so error messages point at the expected location
            label = rec[ICH_LABEL]
            folder = ICH_FOLDERS.get(int(label), "GOOD_PROGNOSIS") if pd.notna(label) else "GOOD_PROGNOSIS"
            path = root / folder / f"{pid}.nii.gz"
        rows.append((str(pid), pid, str(path), path.is_file(), folder_label, stripped))
    columns = ["sample_id", "patient_id", "image_path", "image_exists", "folder_label", "skull_stripped"]
    manifest = pd.DataFrame(rows, columns=columns)
    manifest["prognosis"] = pd.to_numeric(table[ICH_LABEL], errors="coerce")
    manifest["gcs"] = pd.to_numeric(table["GCS"], errors="coerce")
    manifest["age"] = pd.to_numeric(table["Age"], errors="coerce")
    # Each auxiliary task is masked on its own: a patient without GCS keeps age_binary, and the reverse.
    has_gcs, has_age = manifest["gcs"].notna(), manifest["age"].notna()
    manifest["gcs_binary"] = np.where(has_gcs, gcs_binary(manifest["gcs"].fillna(15)), -1)
    manifest["gcs_ordinal"] = np.where(has_gcs, gcs_ordinal(manifest["gcs"].fillna(15)), -1)
    manifest["age_binary"] = np.where(has_age, age_binary(manifest["age"].fillna(0)), -1)
    clinical = table.drop(columns=[c for c in (ICH_ID, ICH_LABEL, "GCS", "Age") if c in table.columns])
    return pd.concat([manifest, clinical.reset_index(drop=True)], axis=1)


# ----------------------------------------------------------------------------------------------------------------------
# AIforCOVID (Soda et al.): clinical table (CSV or XLSX) + imgs/{ImageFile}.(dcm|png|jpg)
# ----------------------------------------------------------------------------------------------------------------------

AIFORCOVID_TABLES = ("AIforCOVID.csv", "AIforCOVID.xlsx", "AIforCOVID_clinical.csv")
AIFORCOVID_PROGNOSIS = {"MILD": 0, "SEVERE": 1}
HOSPITALS = ("A", "B", "C", "D", "E", "F")


def read_aiforcovid_table(root: Path) -> tuple[pd.DataFrame, Path]:
    for name in AIFORCOVID_TABLES:
        path = root / name
        if path.is_file():
            try:
                table = pd.read_excel(path) if path.suffix == ".xlsx" else pd.read_csv(path, encoding="utf-8-sig")
            except Exception as exc:
                raise DataError(f"{path}: cannot be parsed ({type(exc).__name__}: {exc})") from exc
            table.columns = [str(c).strip() for c in table.columns]
            return table, path
    raise DataError(f"{root}: no clinical table found (expected one of: {', '.join(AIFORCOVID_TABLES)})")


def read_aiforcovid(root: str | Path) -> pd.DataFrame:
    """Manifest of AIforCOVID: ``sample_id``, ``image_path``, ``image_exists``, ``hospital``, ``prognosis``
    (0 MILD / 1 SEVERE), ``age``, ``sex``, ``dataset`` = "aiforcovid"."""
    root = Path(root).resolve()
    table, path = read_aiforcovid_table(root)
    for column in ("ImageFile", "Hospital", "Prognosis"):
        if column not in table.columns:
            raise DataError(f"{path}: required column '{column}' is missing")
    images = root / "imgs"
    rows = []
    for image_file in table["ImageFile"].astype(str):
        stem = image_file.strip()
        candidates = [images / stem] if Path(stem).suffix.lower() in (".dcm", ".png", ".jpg", ".jpeg") else []
        candidates += [images / f"{stem}{ext}" for ext in (".dcm", ".png", ".jpg", ".jpeg")]
        hit = next((c for c in candidates if c.is_file()), candidates[0])
        rows.append((Path(stem).stem if candidates[0].suffix else stem, str(hit), hit.is_file()))
    manifest = pd.DataFrame(rows, columns=["sample_id", "image_path", "image_exists"])
    manifest["hospital"] = table["Hospital"].astype(str).str.strip()
    manifest["prognosis"] = table["Prognosis"].astype(str).str.strip().str.upper().map(AIFORCOVID_PROGNOSIS)
    manifest["age"] = pd.to_numeric(table.get("Age"), errors="coerce") if "Age" in table else np.nan
    manifest["sex"] = table["Sex"].astype(str).str.strip() if "Sex" in table else ""
    manifest["dataset"] = "aiforcovid"
    return manifest


# ----------------------------------------------------------------------------------------------------------------------
# BRIXIA (Signoroni et al.): metadata_global_v2.csv (';') + dicom_clean/{Filename}
# ----------------------------------------------------------------------------------------------------------------------

BRIXIA_TABLE = "metadata_global_v2.csv"
BRIXIA_ZONES = ("A", "B", "C", "D", "E", "F")
# Ruffini et al. (Sec. 3): global score binned into 4 severity classes. Their public code uses other bins;
# we follow the paper.
BRIXIA_CLASS_EDGES = (5, 9, 14)


def brixia_global_class(score: np.ndarray | pd.Series | int) -> np.ndarray:
    """Global Brixia score (0-18) → severity class: <5 → 0, 5-8 → 1, 9-13 → 2, ≥14 → 3."""
    return np.digitize(np.asarray(score), BRIXIA_CLASS_EDGES).astype(np.int64)


def parse_brixia_score(value: object) -> str | None:
    """Normalise a BrixiaScore to its 6-digit string; restores leading zeros lost to numeric parsing."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if re.fullmatch(r"\d+\.0+", text):  # read as float somewhere along the way
        text = text.split(".")[0]
    if not re.fullmatch(r"\d{1,6}", text):
        return None
    return text.zfill(6)


def read_brixia(root: str | Path) -> pd.DataFrame:
    """Manifest of BRIXIA: ``sample_id``, ``image_path``, ``image_exists``, ``brixia_score`` (6-char str or None),
    ``zone_A`` … ``zone_F``, ``brixia_global``, ``severity`` (4 classes), ``manufacturer``, ``consensus_test``,
    ``dataset`` = "brixia". Rows with an unparseable score get ``severity`` = -1 (validation reports them)."""
    root = Path(root).resolve()
    path = root / BRIXIA_TABLE
    if not path.is_file():
        raise DataError(f"{path}: metadata table not found")
    try:
        table = pd.read_csv(path, sep=";", dtype={"BrixiaScore": str}, encoding="utf-8-sig")
    except Exception as exc:
        raise DataError(f"{path}: cannot be parsed as ';'-separated CSV ({type(exc).__name__}: {exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    for column in ("Filename", "BrixiaScore"):
        if column not in table.columns:
            raise DataError(f"{path}: required column '{column}' is missing (is the file ';'-separated?)")
    image_dirs = [root / "dicom_clean", root / "dicom", root]
    rows = []
    for filename in table["Filename"].astype(str):
        name = filename.strip()
        hit = next((d / name for d in image_dirs if (d / name).is_file()), image_dirs[0] / name)
        rows.append((Path(name).stem, str(hit), hit.is_file()))
    manifest = pd.DataFrame(rows, columns=["sample_id", "image_path", "image_exists"])
    scores = table["BrixiaScore"].map(parse_brixia_score)
    manifest["brixia_score"] = scores
    digits = np.array([[int(ch) for ch in s] if s else [-1] * 6 for s in scores], dtype=np.int64).reshape(-1, 6)
    for i, zone in enumerate(BRIXIA_ZONES):
        manifest[f"zone_{zone}"] = digits[:, i]
    valid = scores.notna().to_numpy() & (digits <= 3).all(axis=1) & (digits >= 0).all(axis=1)
    manifest["brixia_global"] = np.where(valid, digits.sum(axis=1), -1)
    manifest["severity"] = np.where(valid, brixia_global_class(digits.sum(axis=1)), -1)
    manifest["manufacturer"] = table["Manufacturer"].astype(str) if "Manufacturer" in table else ""
    manifest["consensus_test"] = (
        pd.to_numeric(table["ConsensusTestset"], errors="coerce").fillna(0).astype(int)
        if "ConsensusTestset" in table
        else 0
    )
    manifest["dataset"] = "brixia"
    return manifest


# ----------------------------------------------------------------------------------------------------------------------
# CheXpert (Irvin et al.): CheXpert-v1.0-small/{train,valid}.csv, Path relative to the folder above it
# ----------------------------------------------------------------------------------------------------------------------

CHEXPERT_DIR = "CheXpert-v1.0-small"
CHEXPERT_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHEXPERT_COLUMNS = (
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip
CHEXPERT_OBSERVATIONS = CHEXPERT_COLUMNS[5:]
UNCERTAINTY_POLICIES = ("ignore", "ones", "zeros")


def apply_uncertainty_policy(values: pd.Series | np.ndarray, policy: str) -> np.ndarray:
    """CheXpert labels → training targets. Blank (not mentioned) → 0; uncertain (-1) → NaN (U-Ignore: masked out
    of the loss), 1 (U-Ones) or 0 (U-Zeros), as in Irvin et al. (2019)."""
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(f"unknown uncertainty policy '{policy}' (expected one of: {', '.join(UNCERTAINTY_POLICIES)})")
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    out = np.where(np.isnan(v), 0.0, v)
    uncertain = v == -1
    out[uncertain] = {"ignore": np.nan, "ones": 1.0, "zeros": 0.0}[policy]
    return out


CHEXPERT_SPLITS = ("train", "valid", "test")  # test.csv: CheXpert's official test labels, when the user has them
# The csvs a cohort's training manifest holds. "all" mixes train.csv and valid.csv into patient-grouped folds. "paper"
# keeps each csv in its own role (training.splits.official_splits): Shu et al. train on train.csv, choose the Youden
# thresholds on valid.csv (where INFORMER's τ is tuned too) and test on test.csv; no image of valid.csv or test.csv
# can land in the training split.
COHORT_SPLITS = {"all": ("train", "valid"), "paper": ("train", "valid", "test")}


def chexpert_base(root: str | Path) -> tuple[Path, Path]:
    """Return (folder holding train.csv, folder the ``Path`` column is relative to)."""
    root = Path(root).resolve()
    if (root / CHEXPERT_DIR / "train.csv").is_file():
        return root / CHEXPERT_DIR, root
    if (root / "train.csv").is_file():
        return root, root.parent
    raise DataError(f"{root}: no {CHEXPERT_DIR}/train.csv found")


def read_chexpert_tables(root: str | Path, splits: Sequence[str] = ("train", "valid")) -> dict[str, pd.DataFrame]:
    """The tables of ``splits`` found under ``root`` (train.csv must exist; valid.csv and test.csv may not)."""
    csv_dir, _ = chexpert_base(root)
    tables = {}
    for split in splits:
        path = csv_dir / f"{split}.csv"
        if not path.is_file():
            if split == "train":
                raise DataError(f"{path}: not found")
            continue
        try:
            tables[split] = pd.read_csv(path, encoding="utf-8-sig")
        except Exception as exc:
            raise DataError(f"{path}: cannot be parsed as CSV ({type(exc).__name__}: {exc})") from exc
        tables[split].columns = [str(c).strip() for c in tables[split].columns]
    return tables


def chexpert_selection(frame: pd.DataFrame, cohort: str, frontal_only: bool) -> tuple[pd.DataFrame, list[tuple]]:
    """Apply a cohort's exclusions to one split's rows (with ``view`` and ``raw_<finding>`` columns); return the
    kept rows and ``(step, images left)`` after each exclusion.

    ``paper`` (Shu et al., Sec. 3): frontal images only; images with an uncertain (-1) label in any of the five
    findings excluded; a blank (not mentioned) finding is negative; images with none of the five findings positive
    excluded. The paper says "patients without any of these five pathologies"; we exclude *images*: CheXpert's
    labels are per study, the paper's counts (90,839 / 128 / 284) are image counts, and a patient-level rule would
    keep a patient's all-negative images (with no finding "for the prevalence") because another of their studies
    is positive.
    """
    steps = [("rows", len(frame))]
    if frontal_only or cohort == "paper":
        frame = frame[frame["view"] == "Frontal"]
        steps.append(("frontal", len(frame)))
    if cohort == "paper":
        raw = frame[[f"raw_{f}" for f in CHEXPERT_FINDINGS]].to_numpy(dtype=np.float64)
        certain = ~(raw == -1).any(axis=1)
        frame, raw = frame[certain], raw[certain]
        steps.append(("no uncertain (-1) label in the five findings", len(frame)))
        frame = frame[(raw == 1).any(axis=1)]
        steps.append(("at least one of the five findings positive", len(frame)))
    return frame.reset_index(drop=True), steps


def read_chexpert(
    root: str | Path,
    policy: str = "ignore",
    frontal_only: bool = True,
    cohort: str = "all",
    splits: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Manifest of CheXpert: ``sample_id``, ``image_path``, ``image_exists``, ``split`` (train/valid/test),
    ``patient_id`` (for patient-level splits), ``view``, the five competition findings as float targets after
    ``policy`` (NaN = masked), their raw codes under ``raw_<finding>``, and ``dataset`` = "chexpert".

    ``cohort`` picks the images (:func:`chexpert_selection`); ``splits`` the tables read (default: the cohort's
    training splits, :data:`COHORT_SPLITS`; a split whose csv is absent is skipped). The images left after each
    exclusion are in ``manifest.attrs["selection"]``: ``{split: [(step, n), ...]}``."""
    if cohort not in CHEXPERT_COHORTS:
        raise DataError(f"unknown CheXpert cohort '{cohort}': set data.chexpert.cohort to all or paper")
    csv_dir, base = chexpert_base(root)
    frames, selection = [], {}
    for split, table in read_chexpert_tables(root, splits or COHORT_SPLITS[cohort]).items():
        missing = [c for c in ("Path", *CHEXPERT_FINDINGS) if c not in table.columns]
        if missing:
            raise DataError(f"{csv_dir / split}.csv: required column '{missing[0]}' is missing")
        frame = pd.DataFrame({"sample_id": table["Path"].astype(str).str.replace("/", ":", regex=False)})
        paths = [_chexpert_image(base, csv_dir, p) for p in table["Path"].astype(str)]
        frame["image_path"] = [str(p) for p in paths]
        frame["image_exists"] = [p.is_file() for p in paths]
        frame["split"] = split
        frame["patient_id"] = table["Path"].astype(str).str.extract(r"(patient\d+)", expand=False).fillna("")
        if "Frontal/Lateral" in table.columns:
            frame["view"] = table["Frontal/Lateral"].astype(str)
        elif split == "test":  # the released test labels may lack the column; the file name says it (view1_frontal)
            frame["view"] = np.where(table["Path"].astype(str).str.contains("_lateral"), "Lateral", "Frontal")
        else:
            raise DataError(f"{csv_dir / split}.csv: required column 'Frontal/Lateral' is missing")
        for finding in CHEXPERT_FINDINGS:
            frame[f"raw_{finding}"] = pd.to_numeric(table[finding], errors="coerce")
            frame[finding] = apply_uncertainty_policy(table[finding], policy)
        frame, selection[split] = chexpert_selection(frame, cohort, frontal_only)
        frames.append(frame)
    manifest = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    manifest["dataset"] = "chexpert"
    manifest.attrs["selection"] = selection
    return manifest


def _chexpert_image(base: Path, csv_dir: Path, path: str) -> Path:
    """``Path`` is relative to the folder above CheXpert-v1.0-small; a test.csv may hold paths relative to the
    folder of the csv itself (``test/patient.../view1_frontal.jpg``): take that one when only it exists."""
    first = base / path
    if first.is_file() or path.startswith(CHEXPERT_DIR):
        return first
    second = csv_dir / path
    return second if second.is_file() else first


def selection_lines(selection: dict[str, list[tuple]]) -> list[str]:
    """One line per split: the images left after each exclusion, e.g. ``valid.csv: 234 rows → 202 frontal → ...``."""
    return [f"{split}.csv: " + " → ".join(f"{n:,} {step}" for step, n in steps) for split, steps in selection.items()]


READERS = {"ich": read_ich, "aiforcovid": read_aiforcovid, "brixia": read_brixia, "chexpert": read_chexpert}


def read_manifest(dataset: str, root: str | Path, params=None) -> pd.DataFrame:
    """Read ``dataset`` from ``root`` with the reader options of ``params`` (if given)."""
    if dataset not in READERS:
        raise DataError(f"unknown dataset '{dataset}' (expected one of: {', '.join(READERS)})")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if params is None:
        return READERS[dataset](root)
    if dataset == "ich":
        return read_ich(root, exclude=params.data.ich.exclude)
    if dataset == "chexpert":
        cfg = params.data.chexpert
        manifest = read_chexpert(root, policy=cfg.uncertainty_policy, frontal_only=cfg.frontal_only, cohort=cfg.cohort)
        import logging

        for line in selection_lines(manifest.attrs["selection"]):
            logging.getLogger(__name__).info("CheXpert cohort %s: %s", cfg.cohort, line)
        return manifest
    return READERS[dataset](root)
