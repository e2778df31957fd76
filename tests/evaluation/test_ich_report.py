"""The ICH report's Table 1: the tabular models see the same patients as the image models (``data.ich.exclude``),
and the section shows DNN, XGB and the SHAP importances."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medmlops.config import load_params
from medmlops.data import readers
from medmlops.errors import DataError
from medmlops.evaluation.ich_report import clinical_table, tabular_section

from ..conftest import REPO

N = 40
EXCLUDED = 7


def _project(tmp_path, exclude):
    """A project whose smoke data has a 40-patient clinical table; patient 7's label is unusable (2)."""
    params = load_params(
        REPO / "params.yaml",
        profile="smoke",
        overrides=[f"data.ich.exclude={exclude}", "evaluate.rf_trees=20", "evaluate.permutation_repeats=2"],
    )
    rng = np.random.default_rng(0)
    gcs = rng.integers(3, 16, N)
    age = rng.integers(30, 95, N)
    label = (gcs <= 8) | (age >= 80)
    table = pd.DataFrame({c: 0 for c in readers.ICH_CLINICAL_COLUMNS}, index=range(N))
    table["PatientID"], table["GCS"], table["Age"] = np.arange(1, N + 1), gcs, age
    table[readers.ICH_LABEL] = label.astype(int)
    table.loc[table["PatientID"] == EXCLUDED, readers.ICH_LABEL] = 2  # the kind of row a study excludes
    folder = tmp_path / params.data.raw_dir / "ich"
    folder.mkdir(parents=True)
    table.to_csv(folder / readers.ICH_TABLE, index=False)
    return params


def test_table_1_leaves_out_the_excluded_patients(tmp_path):
    params = _project(tmp_path, [EXCLUDED, 999])
    table = clinical_table(params, tmp_path)
    assert len(table) == N - 1 and EXCLUDED not in set(table["PatientID"])
    out = tmp_path / "report"
    out.mkdir()
    section = tabular_section(table, params, out)
    assert f"{N - 1} patients (excluded: {EXCLUDED}, 999)" in section
    table1 = pd.read_csv(out / "tabular_table1.csv", index_col=0)
    assert {"DNN (all)", "LR (gcs)", "LR (gcs_age)", "DTC (gcs_age)", "RF (all)", "XGB (all)"} <= set(table1.columns)
    importance = pd.read_csv(out / "tabular_importance.csv")
    assert set(importance.query("kind == 'shap'")["model"]) == {"dnn", "lr", "rf", "dtc", "xgb"}
    assert "SHAP" in section and (out / "tabular_importance.png").stat().st_size > 1000


def test_without_the_exclusion_the_unusable_row_is_refused(tmp_path):
    params = _project(tmp_path, [])
    table = clinical_table(params, tmp_path)
    assert len(table) == N
    with pytest.raises(DataError, match="must hold only 0 and 1"):
        tabular_section(table, params, tmp_path)


def test_no_clinical_table_means_no_section(tmp_path):
    params = load_params(REPO / "params.yaml", profile="smoke")
    assert clinical_table(params, tmp_path) is None
