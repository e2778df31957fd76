"""Evidently drift reports over the monitoring service's per-prediction features (``medmlops monitor report``).

The monitoring store keeps, per prediction, a flat row of numbers: image statistics (``img.*``), probabilities
(``p.<class>``), INFORMER distinctiveness (``d.<class>``) and flags (``flag.<class>``, 0/1), entropy
(``entropy.<class>``), principal components of the embedding (``emb.pc*``), and ground truth when it arrives
(``label:<class>``, NaN when unknown). The same feature columns, computed on the validation split at calibration,
are the reference frame. :func:`drift_report` compares a window of production rows with it.

Decisions:

* Columns compared: the numeric columns present in both frames, less identity and time columns
  (:data:`IGNORED_COLUMNS`) and ``label:*``. Evidently picks each column's test (K-S for numbers, Z-test for 0/1
  flags up to 1000 reference rows; Wasserstein / Jensen-Shannon above), and its verdicts are used as they are:
  the drifted columns are those whose ``ValueDrift`` test failed, the share is ``DriftedColumnsCount``'s.
* Missing values: NaN and ±inf are missing. Rows are not dropped: Evidently leaves missing values out column by
  column, so one unprocessed feature does not discard a record's other features. A column with fewer than
  ``min_rows`` finite values in the window, or none in the reference, is left out of the comparison and named in
  ``skipped_columns`` (with a warning); only when no column is left is it an error.
* Classification quality (when ``label:<class>`` columns hold values): Evidently 0.7's ``ClassificationPreset``
  evaluates one binary or multiclass task over every row of a dataset; it fails on a missing target (a NaN label
  breaks its pydantic model) and on a window with one label value (KeyError). Multi-label outputs are therefore one
  binary ``ClassificationPreset`` per class, over that class's labelled rows, with the class's probability at 0.5
  (or ``thresholds[class]``); a class whose labelled rows hold one label value only is skipped with a warning. The
  per-class sections are put into the drift snapshot under a titled group each, so one HTML, one JSON snapshot and
  one workspace run hold the whole report.
* Size. Evidently 0.7's ``save_html`` inlines its 3.5 MB JS bundle and 0.13 MB icon font into every report, and,
  because it wraps the widgets in one group, keeps every details graph (the per-column distributions) twice: in
  its widget and in the page's graph map. :func:`write_html` loads the bundle and font from ``evidently-js/``
  beside the reports (copied once per folder; the monitoring service serves them next to the report) and keeps
  the map's copy only; the snapshot drops each metric result's own copy of its widgets (the report's widgets hold
  them; Evidently's UI backports results without them). Measured on a 50-record window with labels (19 columns,
  three quality sections): HTML 4.70 MB -> 0.61 MB (+ 3.6 MB once per folder), snapshot JSON and its workspace
  copy 1.25 MB -> 0.66 MB; the page draws the same (tests/monitoring/test_drift_outputs.py, in Chromium).
* The workspace project gets a dashboard (:data:`DASHBOARD_PANELS`: drift share, per-feature drift, ROC AUC and F1
  per labelled class) when it lacks those panels, so ``evidently ui`` opens on it populated.
* ``report_command`` with params.yaml's registry logs the window to MLflow against its model version
  (:func:`medmlops.registry.tracking.log_production_window`).
* Alerts are a WARNING log line (drift detected; a class's INFORMER flag rate at or above its threshold) plus the
  summary, which the monitoring service exposes as Prometheus gauges. Drift is a finding, not a failure.

Measured with the frames of ``tests/monitoring/test_drift.py`` (19 columns, the 16 continuous ones shifted, the 3 flags not;
reference 200 records; 5 seeds per cell; default K-S / Z-tests at p < 0.05, drift share threshold 0.5): a 1 SD
shift is detected within 10 records (5/5 seeds at 10), a 0.5 SD shift within 50 (0/5 at 20, 2/5 at 30, 4/5 at
40, 5/5 at 50); unshifted windows of 20, 50 and 200 records never alarmed (largest drift share 0.21).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmlops.errors import DataError

log = logging.getLogger(__name__)

IGNORED_COLUMNS = frozenset({"request_id", "family", "version", "created_at", "processed_at", "flagged"})
LABEL_PREFIX = "label:"
FLAG_PREFIX = "flag."
PROBABILITY_PREFIX = "p."
MIN_ROWS = 20
_TOP_COLUMNS_LOGGED = 5
_QUALITY_METRICS = {"Accuracy": "accuracy", "Precision": "precision", "Recall": "recall", "F1Score": "f1",
                    "RocAuc": "roc_auc"}  # fmt: skip


class DriftError(DataError):
    """A drift report cannot be made from the frames given; the message names the frame or column."""


@dataclass
class DriftSummary:
    """What one drift report found; ``to_dict()`` is what the monitoring store keeps."""

    family: str
    version: str | None
    drift_share: float
    n_drifted: int
    n_columns: int
    drifted_columns: list[str]
    detected: bool
    flag_rate: dict[str, float]
    flag_alerts: list[str]
    n_current: int
    n_reference: int
    html_path: Path
    json_path: Path
    created_at: float
    drift_share_threshold: float = 0.5
    flag_rate_threshold: float = 0.2
    skipped_columns: list[str] = field(default_factory=list)
    quality: dict[str, dict[str, float | None]] = field(default_factory=dict)
    summary_path: Path | None = None
    workspace_project_id: str | None = None
    snapshot_id: str | None = None
    # Estimated (CBPE) and realized performance of the window per version (medmlops.monitoring.performance), or
    # {"error": why} when the version's contract could not be had; None when not asked for.
    performance: list[dict[str, Any]] | dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: paths as strings, NaN as None."""
        return {key: _plain(value) for key, value in dataclasses.asdict(self).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- columns --------------------------------------------------------------------------------------------------------


def _is_feature(name: Any) -> bool:
    return isinstance(name, str) and name not in IGNORED_COLUMNS and not name.startswith(LABEL_PREFIX)


def _is_number(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)


def _numbers(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``columns`` as float64 with ±inf turned into NaN (missing)."""
    return frame[columns].astype("float64").replace([np.inf, -np.inf], np.nan).reset_index(drop=True)


def _common_feature_columns(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    return [
        name
        for name in current.columns
        if _is_feature(name) and name in reference.columns and _is_number(current[name]) and _is_number(reference[name])
    ]


def _listing(names: Any, limit: int = 8) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def flag_rates(current: pd.DataFrame) -> dict[str, float]:
    """Per class, the share of the window's records INFORMER flagged (``flag.<class>`` means; missing left out)."""
    rates: dict[str, float] = {}
    for name in current.columns:
        if not (isinstance(name, str) and name.startswith(FLAG_PREFIX)) or not _is_number(current[name]):
            continue
        values = current[name].astype("float64").replace([np.inf, -np.inf], np.nan).dropna()
        if len(values):
            rates[name[len(FLAG_PREFIX) :]] = float(values.mean())
    return rates


# -- Evidently --------------------------------------------------------------------------------------------------------


def _metric_type(config: Mapping[str, Any]) -> str:
    return str(config.get("type", "")).rsplit(":", 1)[-1]


def _drift_strength(method: str, score: float, threshold: float) -> float:
    """How far past its threshold a column's test is: p-value tests drift below it, distances above it."""
    if "p_value" in method:
        return threshold / max(score, 1e-300)
    return score / threshold if threshold else score


def display_names(columns: list[str]) -> dict[str, str]:
    """Column → the human name Evidently shows (:func:`medmlops.monitoring.features.human_name`); a name two columns
    would share (one class name in two tasks) keeps its column in brackets."""
    from medmlops.monitoring.features import human_name

    names = {column: human_name(column) for column in columns}
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {column: name if counts[name] == 1 and name not in columns else f"{name} ({column})"
            for column, name in names.items()}  # fmt: skip


def _read_drift(snapshot: Any) -> tuple[int, float, list[str]]:
    """Evidently's drifted-column count and share, and the drifted columns, strongest first."""
    results = snapshot.dict()
    count = share = None
    scores: dict[str, tuple[str, float, float]] = {}
    for metric in results["metrics"]:
        config = metric.get("config", {})
        kind = _metric_type(config)
        if kind == "DriftedColumnsCount":
            count, share = metric["value"]["count"], metric["value"]["share"]
        elif kind == "ValueDrift":
            scores[config["column"]] = (str(config.get("method")), float(metric["value"]), float(config["threshold"]))
    if count is None or share is None:
        raise RuntimeError("Evidently's DataDriftPreset returned no DriftedColumnsCount result")
    drifted = [
        test["metric_config"]["params"]["column"]
        for test in results["tests"]
        if _metric_type(test["metric_config"]["params"]) == "ValueDrift" and test["status"] == "FAIL"
    ]
    drifted.sort(key=lambda name: -_drift_strength(*scores[name]) if name in scores else 0.0)
    return int(count), float(share), drifted


def _quality_report(
    current: pd.DataFrame, reference: pd.DataFrame, name: str, threshold: float, created: dt.datetime
) -> tuple[Any | None, dict[str, float | None]]:
    """One class's binary classification quality over its labelled rows; (None, info) when it cannot be made."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.presets import ClassificationPreset

    target, probability = f"{LABEL_PREFIX}{name}", f"{PROBABILITY_PREFIX}{name}"

    def labelled(frame: pd.DataFrame, which: str) -> pd.DataFrame | None:
        if target not in frame.columns or probability not in frame.columns:
            return None
        try:
            rows = frame[[target, probability]].astype("float64").replace([np.inf, -np.inf], np.nan).dropna()
        except (TypeError, ValueError) as exc:
            raise DriftError(f"columns '{target}' and '{probability}' of the {which} frame must be numbers") from exc
        bad = sorted(set(rows[target].unique()) - {0.0, 1.0})
        if bad:
            raise DriftError(f"column '{target}' of the {which} frame must hold 0, 1 or nothing, not {bad[0]:g}")
        rows[target] = rows[target].astype("int64")
        return rows.reset_index(drop=True)

    rows = labelled(current, "current")
    if rows is None or rows.empty:
        return None, {}
    info: dict[str, float | None] = {"n_labelled": float(len(rows)), "threshold": threshold}
    if rows[target].nunique() < 2:
        log.warning(
            "classification quality of %s skipped: its %d labelled records all have label %d",
            name, len(rows), int(rows[target].iloc[0]),
        )  # fmt: skip
        return None, info
    reference_rows = labelled(reference, "reference")
    if reference_rows is not None and reference_rows[target].nunique() < 2:
        reference_rows = None
    task = BinaryClassification(name=name, target=target, prediction_probas=probability, pos_label=1)
    definition = DataDefinition(numerical_columns=[probability], classification=[task])
    snapshot = Report([ClassificationPreset(classification_name=name, probas_threshold=threshold)]).run(
        Dataset.from_pandas(rows, data_definition=definition),
        None if reference_rows is None else Dataset.from_pandas(reference_rows, data_definition=definition),
        timestamp=created,
    )
    for metric in snapshot.dict()["metrics"]:
        key = _QUALITY_METRICS.get(_metric_type(metric.get("config", {})))
        if key is not None and key not in info and isinstance(metric["value"], int | float):
            info[key] = float(metric["value"])
    return snapshot, info


def _merge(drift: Any, drift_title: str, sections: list[tuple[str, Any]]) -> Any:
    """One snapshot: the drift report and each class's quality report, every part under a titled group."""
    from evidently.core.report import Snapshot
    from evidently.core.serialization import SnapshotModel
    from evidently.legacy.renderers.html_widgets import group_widget

    model = drift.to_snapshot_model()
    metric_results = dict(model.metric_results)
    top_level = list(model.top_level_metrics)
    widgets = [group_widget(title=drift_title, widgets=list(model.widgets))]
    for title, snapshot in sections:
        part = snapshot.to_snapshot_model()
        metric_results.update(part.metric_results)
        top_level.extend(part.top_level_metrics)
        widgets.append(group_widget(title=title, widgets=list(part.widgets)))
    # Each metric's result carries its own copy of the widgets the report's widgets already hold (the per-column
    # distribution plots: half the snapshot). Rendering a loaded snapshot reads the report's widgets only, and
    # Evidently's UI backports results with ignore_widget=True (evidently.ui.backport), so the copies are dropped.
    metric_results = {key: result.copy(update={"widget": None}) for key, result in metric_results.items()}
    merged = SnapshotModel(
        report=model.report, name=model.name, timestamp=model.timestamp, metadata=model.metadata, tags=model.tags,
        metric_results=metric_results, top_level_metrics=top_level, widgets=widgets,
        tests_widgets=model.tests_widgets,
    )  # fmt: skip
    return Snapshot.load_model(merged)


def _add_to_workspace(workspace: Path, project_name: str, snapshot: Any, run_name: str) -> tuple[str, str]:
    """Add the snapshot to the local workspace's project of that name (created when missing); (project, run) ids."""
    from evidently.ui.workspace import Workspace

    workspace.mkdir(parents=True, exist_ok=True)
    ws = Workspace.create(str(workspace))
    found = ws.search_project(project_name)
    project = found[0] if found else ws.create_project(project_name, description="medmlops drift reports")
    ensure_dashboard(project)
    ref = ws.add_run(project.id, snapshot, name=run_name)
    return str(project.id), str(ref.id)


LIB_DIR = "evidently-js"  # beside the reports: Evidently's JS bundle and icon font, shared by every report there
_LIB_FILES = ("index.js", "material-ui-icons.woff2")


def _lib_name(source: str) -> str:
    import evidently

    return f"evidently.{evidently.__version__}.js" if source == "index.js" else source


def lib_files() -> dict[str, Path]:
    """The files a report's HTML loads from :data:`LIB_DIR`, by the name it loads them as: Evidently's JS bundle
    (``evidently.<version>.js``) and its icon font."""
    from evidently.legacy.utils.dashboard import STATIC_PATH

    return {_lib_name(name): Path(STATIC_PATH) / name for name in _LIB_FILES}


def _share_lib(out_dir: Path) -> None:
    """Copy Evidently's bundle and font into ``out_dir/evidently-js`` once (again only when Evidently changed)."""
    import shutil

    folder = out_dir / LIB_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in lib_files().items():
        target = folder / name
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            partial = folder / f".{name}.{os.getpid()}.partial"  # two reports at once each copy, one wins
            shutil.copyfile(source, partial)
            partial.replace(target)


def _without_nested_graphs(widget: dict[str, Any]) -> dict[str, Any]:
    children = [_without_nested_graphs(child) for child in widget.get("widgets") or []]
    return {**widget, "additionalGraphs": [], "widgets": children}


class _Dashboard:
    """What Evidently's HTML template calls ``.dict()`` on: the widgets without their nested copies of the details
    graphs (the page reads those from the ``additional_graphs`` map beside it)."""

    def __init__(self, info: Any) -> None:
        self.info = info

    def dict(self) -> dict[str, Any]:
        data = self.info.dict()
        data["widgets"] = [_without_nested_graphs(widget) for widget in data["widgets"]]
        return data


def write_html(snapshot: Any, path: Path, *, self_contained: bool = False) -> None:
    """The report as one HTML page, as ``Snapshot.save_html`` renders it, minus two costs of Evidently 0.7's page.

    * The JS bundle (3.5 MB) and icon font (0.13 MB base64) are inlined into every page; here they are loaded from
      ``evidently-js/`` beside the page (:func:`_share_lib` copies them once per folder) unless ``self_contained``.
    * ``get_html_str`` wraps the widgets in one group, so ``dashboard_info_to_json``'s removal of each top-level
      widget's ``additionalGraphs`` removes nothing and every details graph (the per-column distributions) is in the
      page twice: in its widget and in the ``additional_graphs`` map the page reads. Only the map's copy is kept.
    """
    from evidently.core.metric_types import DetailsInfo
    from evidently.legacy.model.dashboard import DashboardInfo
    from evidently.legacy.model.widget import AdditionalGraphInfo, BaseWidgetInfo
    from evidently.legacy.renderers.html_widgets import group_widget
    from evidently.legacy.utils.dashboard import TemplateParams, file_html_template

    model = snapshot.to_snapshot_model()
    widgets = [group_widget(title="", widgets=list(model.widgets)), *model.tests_widgets]
    details = [
        DetailsInfo(title="", info=graph.params if isinstance(graph, AdditionalGraphInfo) else graph, id=graph.id)
        for widget in widgets
        for graph in widget.get_additional_graphs()
    ]
    graphs = {str(d.id): d.info.dict() if isinstance(d.info, BaseWidgetInfo) else d.info for d in details}
    shared = not self_contained
    lib = lib_files()
    params = TemplateParams(
        dashboard_id="metric_" + os.urandom(16).hex(),
        dashboard_info=_Dashboard(DashboardInfo(name="Report", widgets=widgets)),  # type: ignore[arg-type]
        additional_graphs=graphs,
        embed_font=not shared,
        embed_lib=not shared,
        font_file=f"{LIB_DIR}/material-ui-icons.woff2" if shared else None,
        include_js_files=[f"{LIB_DIR}/{name}" for name in lib if name.endswith(".js")] if shared else [],
    )
    if shared:
        _share_lib(path.parent)
    path.write_text(file_html_template(params), encoding="utf-8")


# The project dashboard `evidently ui` opens on: (title, plot, [(metric, labels, legend)], size). Every metric is one
# the drift snapshot holds; a classification-quality series exists once labelled records reach a report.
DASHBOARD_PANELS: tuple[tuple[str, str, list[tuple[str, dict[str, str], str]], str], ...] = (
    ("Share of drifted features", "counter", [("DriftedColumnsCount", {"value_type": "share"}, "share")], "half"),
    ("Drifted features", "counter", [("DriftedColumnsCount", {"value_type": "count"}, "count")], "half"),
    ("Drift share over time", "line", [("DriftedColumnsCount", {"value_type": "share"}, "drift share")], "full"),
    ("Per-feature drift (test score per column)", "line", [("ValueDrift", {}, "{{column}}")], "full"),
    ("Classification quality (labelled records): ROC AUC", "line", [("RocAuc", {}, "ROC AUC {{classification_name}}")], "half"),
    ("Classification quality (labelled records): F1", "line", [("F1Score", {}, "F1 {{classification_name}}")], "half"),
)  # fmt: skip
DASHBOARD_TAB = "Drift"


def ensure_dashboard(project: Any) -> list[str]:
    """Give the workspace project the panels of :data:`DASHBOARD_PANELS` it lacks (by title); their titles."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel

    have = {panel.title for panel in project.dashboard.model().panels}
    added = []
    for title, plot, series, size in DASHBOARD_PANELS:
        if title in have:
            continue
        values = [PanelMetric(metric=metric, metric_labels=labels, legend=legend) for metric, labels, legend in series]
        if plot == "counter":
            panel = counter_panel(title=title, values=values, size=size, aggregation="last")
        else:
            panel = line_plot_panel(title=title, values=values, size=size)
        project.dashboard.add_panel(panel, tab=DASHBOARD_TAB)
        added.append(title)
    return added


def _free_stem(out_dir: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when a report of that second is already there."""
    candidate, n = stem, 1
    while (out_dir / f"{candidate}.html").exists() or (out_dir / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


# -- the report -------------------------------------------------------------------------------------------------------


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    family: str,
    version: str | None = None,
    out_dir: Path,
    drift_share_threshold: float = 0.5,
    flag_rate_threshold: float = 0.2,
    workspace: Path | None = None,
    project_name: str | None = None,
    min_rows: int = MIN_ROWS,
    thresholds: Mapping[str, float] | None = None,
    performance: list[dict[str, Any]] | dict[str, Any] | None = None,
    self_contained_html: bool = False,
) -> DriftSummary:
    """Compare a window of production features with the reference frame; write HTML, JSON snapshot and summary.

    Args:
        reference: the model version's features on its validation split (one row per image).
        current: the window of production rows (``Store.results_frame``), with ``label:<class>`` when known.
        family: registered model name; names the files and the workspace project.
        version: model version, recorded in the report.
        out_dir: where ``drift-<family>-<UTC time>.html``, ``.json`` (``Snapshot.loads`` reads it) and
            ``.summary.json`` go, with ``evidently-js/`` (the bundle the HTML loads); created when missing.
        drift_share_threshold: drift is detected when at least this share of the columns drifted.
        flag_rate_threshold: a class whose INFORMER flag rate in the window reaches this raises a flag alert.
        workspace: an Evidently local workspace (``evidently ui --workspace DIR``) to add the snapshot to.
        project_name: the workspace project (default: ``family``); reused when one of that name exists.
        min_rows: the fewest records (and finite values per column) the window must have.
        thresholds: per-class probability thresholds for the quality section (default 0.5).
        performance: the window's estimated and realized performance
            (:func:`medmlops.monitoring.performance.window_performance`), kept in the summary as it is.
        self_contained_html: inline Evidently's JS bundle and font into the HTML (4 MB more per report) instead of
            loading them from ``evidently-js/`` beside it (:func:`write_html`).

    Raises:
        DriftError: an empty frame, a window smaller than ``min_rows``, no common numeric feature column, or a
            ``label:`` column holding something other than 0/1.
    """
    if len(reference) == 0:
        raise DriftError(f"the reference frame of {family} has no rows; calibrate the model version first")
    if len(current) == 0:
        raise DriftError(f"the current window of {family} has no records; widen the window or wait for traffic")
    if len(current) < min_rows:
        raise DriftError(
            f"the current window of {family} has {len(current)} records, fewer than the {min_rows} a drift report "
            "needs (min_rows); widen the window"
        )
    columns = _common_feature_columns(reference, current)
    if not columns:
        raise DriftError(
            f"no numeric feature column is common to the current window of {family} "
            f"({_listing(c for c in current.columns if _is_feature(c))}) and its reference frame "
            f"({_listing(c for c in reference.columns if _is_feature(c))})"
        )
    ref, cur = _numbers(reference, columns), _numbers(current, columns)
    skipped = [c for c in columns if cur[c].notna().sum() < min_rows or ref[c].notna().sum() == 0]
    compared = [c for c in columns if c not in skipped]
    if skipped:
        log.warning(
            "drift report of %s leaves out %d column(s) with too few finite values (under %d in the window or none "
            "in the reference): %s", family, len(skipped), min_rows, _listing(skipped),
        )  # fmt: skip
    if not compared:
        raise DriftError(
            f"every feature column common to the current window of {family} and its reference has fewer than "
            f"{min_rows} finite values in the window or none in the reference: {_listing(skipped)}"
        )

    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    created_at = time.time()
    moment = dt.datetime.fromtimestamp(created_at, dt.UTC)
    # Evidently stamps snapshots with naive datetimes (datetime.now()); a naive UTC time keeps the workspace's
    # snapshots comparable with each other.
    created = moment.replace(tzinfo=None)
    # Evidently shows the columns as a reader knows them ("Edema: probability", "Image: dark end (5th
    # percentile)"); the summary and the store keep the column names.
    shown = display_names(compared)
    back = {name: column for column, name in shown.items()}
    definition = DataDefinition(numerical_columns=list(shown.values()))
    report = Report(
        [DataDriftPreset(columns=list(shown.values()), drift_share=drift_share_threshold)],
        include_tests=True,  # the per-column verdicts are read from Evidently's tests
        metadata={"family": family, "version": "" if version is None else str(version)},
        tags=[family] + ([] if version is None else [f"version:{version}"]),
    )
    # Evidently's correlation table divides by a zero SD for a column constant in the window (a flag never raised).
    with np.errstate(divide="ignore", invalid="ignore"):
        drift = report.run(
            Dataset.from_pandas(cur[compared].rename(columns=shown), data_definition=definition),
            Dataset.from_pandas(ref[compared].rename(columns=shown), data_definition=definition),
            timestamp=created,
        )
    n_drifted, drift_share, drifted = _read_drift(drift)
    drifted = [back.get(name, name) for name in drifted]
    detected = drift_share >= drift_share_threshold

    sections: list[tuple[str, Any]] = []
    quality: dict[str, dict[str, float | None]] = {}
    label_classes = [
        c[len(LABEL_PREFIX) :] for c in current.columns if isinstance(c, str) and c.startswith(LABEL_PREFIX)
    ]
    for name in label_classes:
        threshold = float((thresholds or {}).get(name, 0.5))
        section, info = _quality_report(current, reference, name, threshold, created)
        if info:
            quality[name] = info
        if section is not None:
            sections.append(
                (f"Classification quality: {name} ({int(info['n_labelled'])} labelled records, threshold "
                 f"{threshold:g})", section)
            )  # fmt: skip

    version_text = "" if version is None else f" version {version}"
    title = (
        f"Data drift: {family}{version_text}, {len(current)} current vs {len(reference)} reference records, "
        f"{n_drifted} of {len(compared)} columns drifted"
    )
    snapshot = _merge(drift, title, sections)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe_family = re.sub(r"[^A-Za-z0-9_.-]+", "_", family)
    stem = _free_stem(out_dir, f"drift-{safe_family}-{moment:%Y%m%dT%H%M%SZ}")
    html_path, json_path = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
    write_html(snapshot, html_path, self_contained=self_contained_html)
    json_path.write_text(snapshot.dumps(), encoding="utf-8")

    summary_path = out_dir / f"{stem}.summary.json"
    rates = flag_rates(current)
    summary = DriftSummary(
        family=family,
        version=None if version is None else str(version),
        drift_share=drift_share,
        n_drifted=n_drifted,
        n_columns=len(compared),
        drifted_columns=drifted,
        detected=detected,
        flag_rate=rates,
        flag_alerts=[name for name, rate in rates.items() if rate >= flag_rate_threshold],
        n_current=len(current),
        n_reference=len(reference),
        html_path=html_path,
        json_path=json_path,
        created_at=created_at,
        drift_share_threshold=drift_share_threshold,
        flag_rate_threshold=flag_rate_threshold,
        skipped_columns=skipped,
        quality=quality,
        summary_path=summary_path,
        performance=performance,
    )
    if workspace is not None:
        summary.workspace_project_id, summary.snapshot_id = _add_to_workspace(
            Path(workspace),
            project_name or family,
            snapshot,
            run_name=f"{family}{version_text} drift {moment:%Y-%m-%d %H:%M:%SZ}",
        )
    summary_path.write_text(json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")

    if detected:
        log.warning(
            "drift detected for %s%s: %.0f%% of %d columns drifted (threshold %.0f%%); top: %s",
            family, version_text, 100 * drift_share, len(compared), 100 * drift_share_threshold,
            _listing(drifted, _TOP_COLUMNS_LOGGED),
        )  # fmt: skip
    for name in summary.flag_alerts:
        log.warning(
            "INFORMER flag rate of %s%s class %s is %.2f over %d records (threshold %.2f)",
            family, version_text, name, rates[name], len(current), flag_rate_threshold,
        )  # fmt: skip
    return summary


# -- the command ------------------------------------------------------------------------------------------------------


def _window_performance(
    store: Any, family: str, version: str, since: float | None, last: int | None, contracts: Any
) -> list[dict[str, Any]] | dict[str, Any]:
    """The report window's estimated and realized performance of ``version``; ``{"error": why}`` when it cannot be
    had. Without ``contracts`` the registry's are read, but only once a tracking URI is set (``cmd_report`` sets
    it): an MLflow client used before that leaves a stray ``./mlflow.db`` where the process runs."""
    from medmlops.monitoring.performance import window_performance

    if contracts is None:
        import mlflow

        if not mlflow.is_tracking_uri_set():
            return {"error": "no model registry is configured (no tracking URI set), so no contract to estimate with"}
        from medmlops.monitoring.tiers import registry_calibration as contracts
    rows = store.performance_rows(family=family, version=version, since=since, limit=last)
    return window_performance(rows, contracts)


def _performance_line(performance: list[dict[str, Any]] | dict[str, Any] | None) -> str | None:
    if not isinstance(performance, list) or not performance:
        return None if not isinstance(performance, dict) else f"performance: not estimated ({performance['error']})"
    entry = performance[0]
    if not entry.get("estimable"):
        return f"performance: not estimable ({entry.get('reason')})"
    gate = entry["gate"]

    def show(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    return (
        f"performance: {gate.get('metric')} estimated {show(gate.get('estimated'))} (CBPE, {entry['n']} records), "
        f"realized {show(gate.get('realized'))} ({entry.get('n_labelled', 0)} labelled), floor "
        f"{show(gate.get('floor'))}: {'BELOW the floor' if gate.get('below_floor') else 'not below the floor'}"
    )


def _wait_for_analysis(store: Any, family: str, wait_s: float) -> None:
    """Wait up to ``wait_s`` until no record of ``family`` is pending analysis (``monitor report --wait-s``): a
    report run right after traffic would otherwise miss the records the workers have not reached yet."""
    deadline = time.monotonic() + max(wait_s, 0.0)
    while True:
        pending = sum(int(row["n"]) for row in store.status_counts(family=family) if row["status"] == "pending")
        if pending == 0 or time.monotonic() >= deadline:
            if pending and wait_s > 0:
                log.warning("%d records of %s still pending after %.0f s; reporting on those analysed", pending,
                            family, wait_s)  # fmt: skip
            return
        time.sleep(1.0)


def _log_window(registry: Any, summary: DriftSummary) -> str | None:
    """The window's summary as a run in MLflow's ``<prefix>-production`` experiment, linked to the version
    (:func:`medmlops.registry.tracking.log_production_window`); None (and a warning) when MLflow refused it: the
    report and the store's summary stand without it."""
    from medmlops.registry import tracking

    files = [path for path in (summary.html_path, summary.summary_path) if path is not None]
    try:
        return tracking.log_production_window(
            registry, summary.family, str(summary.version), summary.to_dict(), window_end=summary.created_at,
            artifacts=files,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the drift report stands without its MLflow run
        log.warning("the window of %s version %s was not logged to MLflow: %s", summary.family, summary.version, exc)
        return None


def report_command(args: Any, *, contracts: Any = None, registry: Any = None) -> int:
    """``medmlops monitor report``: a drift report of one family's recent window, kept in the monitoring store.

    ``args``: family, workspace, db_url, version, since_hours, last, out (default ``<workspace>/reports``). Exit 0
    whether or not drift is found: alerts are the log lines and the store's metrics. The summary also holds the
    window's estimated (CBPE) and realized performance; ``contracts`` is ``(family, version) -> (contract,
    informer)`` (default: the registry's, :func:`medmlops.monitoring.tiers.registry_calibration`). With
    ``registry`` (or ``args.registry``: params.yaml's :class:`~medmlops.config.RegistryConfig`, MLflow configured)
    the window's summary is also logged against the model version in MLflow (:func:`_log_window`).
    """
    from medmlops.informer.calibrate import load_reference
    from medmlops.monitoring.store import Store, resolve_db_url

    family = args.family
    version = None if getattr(args, "version", None) is None else str(args.version)
    since_hours, last = getattr(args, "since_hours", None), getattr(args, "last", None)
    store = Store(resolve_db_url(getattr(args, "db_url", None)))
    try:
        _wait_for_analysis(store, family, float(getattr(args, "wait_s", 0.0) or 0.0))
        since = None if since_hours is None else time.time() - float(since_hours) * 3600.0
        current = store.results_frame(family, version=version, since=since, limit=last)
        if current.empty:
            raise DriftError(f"the monitoring store has no processed records of {family} in the window asked for")
        if version is None:
            counts = current["version"].astype(str).value_counts()
            version = str(counts.index[0])
            if len(counts) > 1:
                log.info(
                    "the window of %s holds versions %s; reporting on version %s (%d records)",
                    family, _listing(counts.index), version, int(counts.iloc[0]),
                )  # fmt: skip
                current = current[current["version"].astype(str) == version]
        reference = load_reference(family, version)
        workspace = Path(args.workspace)
        out_dir = Path(args.out) if getattr(args, "out", None) else workspace / "reports"
        try:
            performance = _window_performance(store, family, version, since, last, contracts)
        except Exception as exc:  # noqa: BLE001 - the drift report stands without its performance section
            log.warning("performance of %s version %s not estimated: %s", family, version, exc)
            performance = {"error": str(exc)}
        summary = drift_report(
            reference, current, family=family, version=version, out_dir=out_dir, workspace=workspace,
            performance=performance,
        )  # fmt: skip
        store.add_drift_report(family, summary.to_dict())
    finally:
        store.close()
    registry = registry if registry is not None else getattr(args, "registry", None)
    run_id = None if registry is None else _log_window(registry, summary)
    alerts = ", ".join(summary.flag_alerts) or "none"
    print(
        f"{family} version {version}: drift share {summary.drift_share:.2f} ({summary.n_drifted} of "
        f"{summary.n_columns} columns), {summary.n_current} current vs {summary.n_reference} reference records"
    )
    print(f"drift detected: {'yes' if summary.detected else 'no'}; INFORMER flag-rate alerts: {alerts}")
    line = _performance_line(summary.performance)
    if line:
        print(line)
        if "BELOW the floor" in line:
            log.warning("%s version %s: estimated %s", family, version, line)
    print(f"report: {summary.html_path} (snapshot {summary.json_path})")
    if run_id is not None:
        print(f"MLflow: run {run_id} in experiment {registry.experiment_prefix}-production")
    return 0
