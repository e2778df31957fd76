"""Great Expectations suites for the four datasets: the clinical/metadata tables and the per-image statistics.

Each expectation carries a ``description`` in plain words; the report quotes it with the failing rows'
identifiers, so a failure reads "column 'GCS' must be an integer from 3 to 15: 2 of 120 rows (PatientID 17: 2.0)".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import great_expectations as gx
import numpy as np
import pandas as pd

from medmlops.config import InputGateConfig, Params, ValidationConfig
from medmlops.data.readers import (
    AIFORCOVID_PROGNOSIS,
    CHEXPERT_COLUMNS,
    CHEXPERT_OBSERVATIONS,
    ICH_CLINICAL_COLUMNS,
    parse_brixia_score,
)
from medmlops.validation.images import ct_value_rules

E = gx.expectations

# The model family each dataset trains: its training images must pass that family's serving input gate.
DATASET_FAMILY = {
    "ich": "ich-prognosis", "aiforcovid": "covid-prognosis", "brixia": "covid-prognosis", "chexpert": "cxr-findings",
}  # fmt: skip

ICH_BINARY = (
    "Label (poor_prognosis)", "Gender", "Smoker", "Alcohol", "HT", "DM", "Dyslipidemia", "MH_ICH", "MH_CVD",
    "MH_neuro", "MH_dementia", "MH_cancer", "MH_hematho", "MH_others", "Anticoagulant", "Antiaggregant",
    "Antihypertensive_drugs", "Calcium_antag", "Alpha_blockers", "PE_neuro", "Cause_head_trauma",
)  # fmt: skip
# Physiological bounds, wide on purpose: they catch unit mix-ups and typing errors, not unusual patients.
ICH_RANGES = {
    "Age": (0, 120), "GCS": (3, 15), "Systolic_AP": (40, 300), "Dyastolic_AP": (20, 200), "OxSat": (30, 100),
    "Tº": (25, 45), "HR": (20, 250), "RF": (4, 80), "Glucose": (20, 1500), "Creatinine": (0.1, 20), "Urea": (1, 500),
    "Sodium": (100, 180), "Potassium": (1.5, 9), "WBC": (0.1, 200), "Hgb": (3, 25), "Platelets": (1, 2000),
    "MCV": (50, 150), "RCDW": (5, 40), "CMHC": (20, 45), "MPV": (3, 20), "INR": (0.5, 15), "Fibrinogen": (20, 2000),
}  # fmt: skip
ICH_REQUIRED = ("PatientID", "Label (poor_prognosis)", "Gender")
# May be blank (unknown): that patient's GCS or age task is masked (readers.read_ich), but text is a defect.
ICH_OPTIONAL_NUMERIC = ("Age", "GCS")


@dataclass
class Suite:
    """A named expectation list over one DataFrame, with the column that identifies a row in messages."""

    name: str
    frame: pd.DataFrame
    id_column: str
    expectations: list = field(default_factory=list)

    def add(self, expectation) -> None:
        self.expectations.append(expectation)


def _numeric(frame: pd.DataFrame, columns) -> pd.DataFrame:
    out = frame.copy()
    for column in columns:
        if column in out:
            out[column] = pd.to_numeric(out[column], errors="coerce")
    return out


def _integer_flag(frame: pd.DataFrame, column: str) -> None:
    """Adds ``<column>__is_integer``: True where the value is a whole number (blank counts as True)."""
    values = frame[column]
    frame[f"{column}__is_integer"] = values.isna() | (np.floor(values) == values)


def _required(suite: Suite, columns, table_name: str) -> list[str]:
    present = []
    for column in columns:
        suite.add(E.ExpectColumnToExist(column=column, description=f"{table_name} must have the column '{column}'"))
        if column in suite.frame.columns:
            present.append(column)
    return present


def _not_null(suite: Suite, column: str, what: str = "a value") -> None:
    suite.add(
        E.ExpectColumnValuesToNotBeNull(column=column, description=f"column '{column}' must have {what} in every row")
    )


def _between(suite: Suite, column: str, lo: float, hi: float, mostly: float = 1.0) -> None:
    suite.add(
        E.ExpectColumnValuesToBeBetween(
            column=column, min_value=lo, max_value=hi, mostly=mostly,
            description=f"column '{column}' must be between {lo:g} and {hi:g}",
        )
    )  # fmt: skip


def _in_set(suite: Suite, column: str, values, mostly: float = 1.0) -> None:
    values = list(values)
    suite.add(
        E.ExpectColumnValuesToBeInSet(
            column=column, value_set=values, mostly=mostly,
            description=f"column '{column}' must be one of {', '.join(map(str, values))}",
        )
    )  # fmt: skip


def _unique(suite: Suite, column: str) -> None:
    suite.add(E.ExpectColumnValuesToBeUnique(column=column, description=f"column '{column}' must be unique"))


def _true(suite: Suite, column: str, description: str) -> None:
    suite.add(E.ExpectColumnValuesToBeInSet(column=column, value_set=[True], description=description))


# ----------------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------------


def ich_table_suite(table: pd.DataFrame, manifest: pd.DataFrame | None) -> list[Suite]:
    frame = _numeric(table, [c for c in ICH_CLINICAL_COLUMNS])
    frame["PatientID"] = frame.get("PatientID", np.nan)
    suite = Suite("ich.clinical_table", frame, "PatientID")
    present = _required(suite, ICH_CLINICAL_COLUMNS, "CLINICAL_DATA_ICH.csv")
    for column in ICH_REQUIRED:
        if column in present:
            _not_null(suite, column, "a numeric value")
    for column in ICH_OPTIONAL_NUMERIC:
        if column in present:
            raw = table[column]
            blank = raw.isna() | raw.astype(str).str.strip().eq("")
            frame[f"{column}__numeric_or_blank"] = blank | frame[column].notna()
            _true(
                suite,
                f"{column}__numeric_or_blank",
                f"column '{column}' must have a numeric value or be blank (unknown: that task is masked)",
            )
    if "PatientID" in present:
        _unique(suite, "PatientID")
    for column in ICH_BINARY:
        if column in present:
            _in_set(suite, column, [0, 1])
    for column, (lo, hi) in ICH_RANGES.items():
        if column in present:
            _between(suite, column, lo, hi)
    for column in ("GCS", "Age"):
        if column in present:
            _integer_flag(frame, column)
            _true(suite, f"{column}__is_integer", f"column '{column}' must hold whole numbers")
    suites = [suite]
    if manifest is not None:
        files = Suite("ich.files", manifest.assign(in_right_folder=_folder_agrees(manifest)), "image_path")
        _true(
            files,
            "in_right_folder",
            "each scan must sit in the folder of its label (GOOD_PROGNOSIS=0, POOR_PROGNOSIS=1)",
        )
        suites.append(files)
    return suites


def _folder_agrees(manifest: pd.DataFrame) -> pd.Series:
    return (manifest["folder_label"] == -1) | (manifest["folder_label"] == manifest["prognosis"])


def aiforcovid_table_suite(table: pd.DataFrame) -> list[Suite]:
    frame = _numeric(table, ["Age"])
    suite = Suite("aiforcovid.clinical_table", frame, "ImageFile")
    present = _required(suite, ("ImageFile", "Hospital", "Age", "Sex", "Prognosis"), "AIforCOVID table")
    for column in present:
        _not_null(suite, column)
    if "ImageFile" in present:
        _unique(suite, "ImageFile")
    if "Prognosis" in present:
        _in_set(suite, "Prognosis", AIFORCOVID_PROGNOSIS)
    if "Age" in present:
        _between(suite, "Age", 0, 120)
    if "Sex" in present:
        _in_set(suite, "Sex", ["M", "F"])
    return [suite]


def brixia_table_suite(table: pd.DataFrame) -> list[Suite]:
    frame = table.copy()
    suite = Suite("brixia.metadata", frame, "Filename")
    present = _required(
        suite, ("Filename", "BrixiaScore", "BrixiaScoreGlobal", "ConsensusTestset"), "metadata_global_v2.csv"
    )
    for column in present:
        _not_null(suite, column)
    if "Filename" in present:
        _unique(suite, "Filename")
    if "BrixiaScore" in present:
        # Leading zeros lost to a spreadsheet round-trip are repaired by the reader, so they are not a defect here.
        normalised = frame["BrixiaScore"].map(parse_brixia_score)
        frame["BrixiaScore__zones_0_3"] = normalised.map(lambda s: s is not None and all(c in "0123" for c in s))
        _true(suite, "BrixiaScore__zones_0_3", "column 'BrixiaScore' must be six zone digits, each 0-3")
        if "BrixiaScoreGlobal" in present:
            digit_sum = normalised.map(lambda s: sum(int(c) for c in s) if s else -1)
            given = pd.to_numeric(frame["BrixiaScoreGlobal"], errors="coerce")
            frame["BrixiaScoreGlobal__is_sum"] = digit_sum == given
            _true(
                suite,
                "BrixiaScoreGlobal__is_sum",
                "column 'BrixiaScoreGlobal' must equal the sum of the BrixiaScore digits",
            )
    if "ConsensusTestset" in present:
        frame["ConsensusTestset"] = pd.to_numeric(frame["ConsensusTestset"], errors="coerce")
        _in_set(suite, "ConsensusTestset", [0, 1])
    if "Sex" in frame:
        _in_set(suite, "Sex", ["M", "F"], mostly=0.99)
    return [suite]


def chexpert_table_suite(tables: dict[str, pd.DataFrame]) -> list[Suite]:
    suites = []
    for split, table in tables.items():
        frame = _numeric(table, ["Age", *CHEXPERT_OBSERVATIONS])
        suite = Suite(f"chexpert.{split}_csv", frame, "Path")
        present = _required(suite, CHEXPERT_COLUMNS, f"{split}.csv")
        if "Path" in present:
            _not_null(suite, "Path")
            _unique(suite, "Path")
            suite.add(
                E.ExpectColumnValuesToMatchRegex(
                    column="Path",
                    # Non-capturing groups: GX applies it with str.contains, which warns about capture groups.
                    regex=r"^CheXpert-v1\.0(?:-small)?/(?:train|valid|test)/patient\d+/study\d+/view\d+_(?:frontal|lateral)\.jpe?g$",
                    description="column 'Path' must follow CheXpert-v1.0-small/<split>/patientNNNNN/studyN/viewN_<frontal|lateral>.jpg",
                )
            )
        # U-Ignore etc. need the codes to mean what CheXpert says: 1 positive, 0 negative, -1 uncertain, blank.
        allowed = [0.0, 1.0] if split == "valid" else [-1.0, 0.0, 1.0]
        for column in CHEXPERT_OBSERVATIONS:
            if column in present:
                _in_set(suite, column, allowed)
        if "Frontal/Lateral" in present:
            _in_set(suite, "Frontal/Lateral", ["Frontal", "Lateral"])
        if "Age" in present:
            _between(suite, "Age", 0, 120)
        if "Sex" in present:
            _in_set(suite, "Sex", ["Male", "Female", "Unknown"])
        suites.append(suite)
    return suites


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------


def dataset_gate(dataset: str, params: Params | None) -> InputGateConfig:
    """The serving input gate of the family ``dataset`` trains (``params.serving.inputs``); without params, the
    permissive default gate (any modality, body part and view; monochrome, one sample, one frame)."""
    if params is None:
        return InputGateConfig()
    return params.serving.gate(DATASET_FAMILY.get(dataset, ""))


def image_suite(
    stats: pd.DataFrame,
    modality: str,
    cfg: ValidationConfig,
    dataset: str,
    gate: InputGateConfig | None = None,
) -> Suite:
    """Expectations over :func:`~medmlops.validation.images.image_stats`' table. ``gate``: the input gate of the
    family the dataset trains (:func:`dataset_gate`); X-ray DICOM headers outside it fail. None: the default gate."""
    frame = stats.copy()
    suite = Suite(f"{dataset}.images", frame, "image_path")
    _true(suite, "exists", "every referenced image file must exist")
    loaded = frame[frame["loads"] == True]  # noqa: E712 - pandas boolean mask
    suite.add(
        E.ExpectColumnValuesToBeInSet(
            column="loads", value_set=[True], row_condition='exists==True', condition_parser="pandas",
            description="every image must open with the dataset's reader",
        )
    )  # fmt: skip
    if modality == "xray" and "dicom" in frame.columns and frame["dicom"].eq(True).any():
        _gate_expectations(suite, gate if gate is not None else InputGateConfig(), DATASET_FAMILY.get(dataset, ""))
    if loaded.empty:
        return suite
    cond = {"row_condition": "loads==True", "condition_parser": "pandas"}
    expected_ndim = 3 if modality == "ct" else 2
    suite.add(
        E.ExpectColumnValuesToBeInSet(column="ndim", value_set=[expected_ndim], **cond,
                                      description=f"images must be {expected_ndim}D")
    )  # fmt: skip
    suite.add(
        E.ExpectColumnValuesToBeBetween(column="nonfinite", min_value=0, max_value=0, **cond,
                                        description="images must not contain NaN or Inf values")
    )  # fmt: skip
    suite.add(
        E.ExpectColumnValuesToBeBetween(column="std", min_value=cfg.min_image_std, **cond,
                                        description="images must not be constant")
    )  # fmt: skip
    if modality == "ct":
        for column, lo, hi, what in (
            ("dim0", cfg.ct_min_inplane, cfg.ct_max_inplane, "in-plane size (x)"),
            ("dim1", cfg.ct_min_inplane, cfg.ct_max_inplane, "in-plane size (y)"),
            ("dim2", cfg.ct_min_slices, cfg.ct_max_slices, "number of slices"),
        ):
            suite.add(
                E.ExpectColumnValuesToBeBetween(column=column, min_value=lo, max_value=hi, **cond,
                                                description=f"CT {what} must be between {lo} and {hi}")
            )  # fmt: skip
        lo, hi = cfg.ct_spacing_mm
        suite.add(
            E.ExpectColumnValuesToBeBetween(
                column="spacing_min", min_value=lo, **cond, description=f"voxel spacing must be at least {lo} mm"
            )
        )
        suite.add(
            E.ExpectColumnValuesToBeBetween(
                column="spacing_max", max_value=hi, **cond, description=f"voxel spacing must be at most {hi} mm"
            )
        )
        for column, lo, hi, description in ct_value_rules(cfg):
            where = cond
            if column == "p01" and "skull_stripped" in stats:
                # A skull-stripped volume (the authors' {id}_brain.nii.gz, SynthStrip) has the stripper's fill value
                # outside the brain (0 by default), not air: the air rule cannot hold there. The HU range still does.
                where = {**cond, "row_condition": "loads==True and skull_stripped==False"}
                description += (
                    " (skull-stripped {id}_brain volumes are exempt: their background is the stripper's fill)"
                )
            suite.add(
                E.ExpectColumnValuesToBeBetween(
                    column=column, min_value=lo, max_value=hi, **where, description=description
                )
            )
    else:
        for column, what in (("dim0", "rows"), ("dim1", "columns")):
            suite.add(
                E.ExpectColumnValuesToBeBetween(column=column, min_value=cfg.cxr_min_size, max_value=cfg.cxr_max_size,
                                                **cond, description=f"X-ray {what} must be between {cfg.cxr_min_size} and {cfg.cxr_max_size}")
            )  # fmt: skip
    return suite


def _gate_expectations(suite: Suite, gate: InputGateConfig, family: str) -> None:
    """DICOM header attributes against the family's input gate, on the rows read from DICOM (whether the pixels
    decoded or not): Modality, PhotometricInterpretation, SamplesPerPixel and NumberOfFrames always; BodyPartExamined
    and ViewPosition where the header has them."""
    where = f" for {family} (serving.inputs.{family})" if family else ""
    dicom = "dicom==True"
    for column, allowed, attribute, condition in (
        ("modality", gate.modalities, "Modality (0008,0060)", dicom),
        ("body_part", gate.body_parts, "BodyPartExamined (0018,0015)", f'{dicom} and body_part!=""'),
        ("view_position", gate.view_positions, "ViewPosition (0018,5101)", f'{dicom} and view_position!=""'),
        ("photometric", gate.photometric, "PhotometricInterpretation (0028,0004)", dicom),
    ):
        if not allowed:
            continue
        present = " where present" if "!=" in condition else ""
        suite.add(
            E.ExpectColumnValuesToBeInSet(
                column=column, value_set=[str(v).upper() for v in allowed], row_condition=condition,
                condition_parser="pandas",
                description=f"DICOM {attribute}{present} must be one of {', '.join(allowed)}{where}",
            )
        )  # fmt: skip
    suite.add(
        E.ExpectColumnValuesToBeInSet(
            column="samples_per_pixel", value_set=[float(gate.samples_per_pixel)], row_condition=dicom,
            condition_parser="pandas",
            description=f"DICOM SamplesPerPixel (0028,0002) must be {gate.samples_per_pixel}{where}",
        )
    )  # fmt: skip
    suite.add(
        E.ExpectColumnValuesToBeBetween(
            column="frames", min_value=1, max_value=gate.max_frames, row_condition=dicom, condition_parser="pandas",
            description=f"DICOM NumberOfFrames (0028,0008) must be at most {gate.max_frames}{where}",
        )
    )  # fmt: skip
