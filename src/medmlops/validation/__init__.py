"""``medmlops data validate``: Great Expectations over a dataset's table and images, with a readable report.

The table suite runs on the file as written (so spelling, types and ranges are checked where a human would
fix them); the image suite runs on per-image statistics computed with the same loaders training uses.
"""

from __future__ import annotations

import html
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medmlops.config import Params, ValidationConfig
from medmlops.data import readers
from medmlops.errors import DataError
from medmlops.validation.images import image_stats

log = logging.getLogger(__name__)

MODALITY = {"ich": "ct", "aiforcovid": "xray", "brixia": "xray", "chexpert": "xray"}
MAX_EXAMPLES = 5


@dataclass
class Failure:
    suite: str
    expectation: str
    description: str
    column: str | None
    unexpected: int
    total: int
    examples: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        count = f"{self.unexpected} of {self.total} rows" if self.total else "failed"
        shown = "; ".join(self.examples[:MAX_EXAMPLES])
        more = f" (e.g. {shown})" if shown else ""
        return f"{self.description}: {count}{more}"


@dataclass
class ValidationReport:
    dataset: str
    root: str
    rows: int = 0
    images_checked: int = 0
    expectations: int = 0
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts that are not failures (e.g. ICH labels masked per task)

    @property
    def success(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        head = (
            f"{self.dataset} at {self.root}: {self.rows} rows, {self.images_checked} images, "
            f"{self.expectations} expectations — "
        )
        notes = [f"  NOTE {note}" for note in self.notes]
        if self.success:
            return "\n".join([head + "all passed", *notes])
        lines = [head + f"{len(self.failures)} FAILED"]
        lines += [f"  FAILED [{f.suite}] {f.message}" for f in self.failures]
        return "\n".join(lines + notes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["success"] = self.success
        for failure, obj in zip(out["failures"], self.failures, strict=True):
            failure["message"] = obj.message
        return out

    def write(self, path: str | Path) -> Path:
        """Write the report as JSON (``.json``) or HTML (anything else, e.g. ``.html``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
        else:
            path.write_text(self.to_html(), encoding="utf-8")
        return path

    def to_html(self) -> str:
        status = "PASSED" if self.success else f"FAILED ({len(self.failures)})"
        rows = "".join(
            f"<tr><td>{html.escape(f.suite)}</td><td>{html.escape(f.description)}</td><td>{f.unexpected}/{f.total}</td>"
            f"<td>{'<br>'.join(html.escape(e) for e in f.examples[:20])}</td></tr>"
            for f in self.failures
        )
        table = (
            "<table><tr><th>suite</th><th>expectation</th><th>failing rows</th><th>examples</th></tr>"
            + rows
            + "</table>"
            if self.failures
            else "<p>No expectation failed.</p>"
        )
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>medmlops validation: "
            f"{html.escape(self.dataset)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
            "th{background:#eee}.ok{color:#080}.bad{color:#b00}</style></head><body>"
            f"<h1>Validation of {html.escape(self.dataset)}: <span class='{'ok' if self.success else 'bad'}'>{status}</span></h1>"
            f"<p>{html.escape(self.root)} — {self.rows} rows, {self.images_checked} images checked, "
            f"{self.expectations} expectations (Great Expectations).</p>"
            + "".join(f"<p>Note: {html.escape(note)}</p>" for note in self.notes)
            + f"{table}</body></html>"
        )


def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX sets levels on its own loggers (so the parent's level is not enough): quiet them before the context
    # announces its temporary docs folder.
    for name in [*logging.root.manager.loggerDict, "great_expectations.data_context.types.base"]:
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_suites(suites, report: ValidationReport) -> None:
    import great_expectations as gx

    context = _context()
    source = context.data_sources.add_pandas("medmlops")
    for i, suite in enumerate(suites):
        batch_definition = source.add_dataframe_asset(f"asset_{i}").add_batch_definition_whole_dataframe("all")
        gx_suite = context.suites.add(gx.ExpectationSuite(name=f"{suite.name}_{i}", expectations=suite.expectations))
        id_column = suite.id_column if suite.id_column in suite.frame.columns else None
        result_format: dict[str, Any] = {"result_format": "COMPLETE"}
        if id_column:
            result_format["unexpected_index_column_names"] = [id_column]
        batch = batch_definition.get_batch(batch_parameters={"dataframe": suite.frame.reset_index(drop=True)})
        outcome = batch.validate(gx_suite, result_format=result_format)
        report.expectations += len(outcome.results)
        for result in outcome.results:
            if not result.success:
                report.failures.append(_failure(suite, result, id_column))


def _plain(value: Any) -> Any:
    """numpy scalars → Python values, so messages read ``17`` rather than ``np.int64(17)``."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, TypeError):
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _failure(suite, result, id_column: str | None) -> Failure:
    config = result.expectation_config
    column = config.kwargs.get("column")
    info = result.result or {}
    examples: list[str] = []
    for item in (info.get("unexpected_index_list") or [])[: MAX_EXAMPLES * 4]:
        if isinstance(item, dict):
            ident = _plain(item.get(id_column)) if id_column else None
            value = _plain(item.get(column)) if column else None
            label = f"{id_column} {ident}" if id_column and id_column != "image_path" else str(ident)
            if suite.name.endswith(".images") and "error" in suite.frame.columns:
                error = suite.frame.loc[suite.frame["image_path"] == ident, "error"]
                detail = error.iloc[0] if len(error) and error.iloc[0] else f"{column}={value}"
                examples.append(f"{ident} ({detail})")
            else:
                examples.append(f"{label}: {value!r}" if value is not None else label)
        else:
            examples.append(str(item))
    if result.exception_info and result.exception_info.get("raised_exception"):
        examples.append(str(result.exception_info.get("exception_message")))
    unexpected = int(info.get("unexpected_count") or (0 if column is None else 1))
    if config.type == "expect_column_to_exist":
        unexpected, total = 0, 0
    else:
        total = int(info.get("element_count") or len(suite.frame))
    return Failure(
        suite=suite.name,
        expectation=config.type,
        description=config.description or config.type,
        column=column,
        unexpected=unexpected,
        total=total,
        examples=examples,
    )


def validate_dataset(
    dataset: str,
    root: str | Path,
    params: Params | None = None,
    *,
    progress: bool = True,
) -> ValidationReport:
    """Validate ``dataset`` at ``root``: table suite, file placement, then every image's statistics."""
    from medmlops.validation import suites as S

    if dataset not in MODALITY:
        raise DataError(f"unknown dataset '{dataset}' (expected one of: {', '.join(MODALITY)})")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    cfg: ValidationConfig = params.validation if params is not None else ValidationConfig()
    report = ValidationReport(dataset=dataset, root=str(root))

    manifest: pd.DataFrame | None = None
    try:
        manifest = readers.read_manifest(dataset, root, params)
    except DataError as exc:
        # The table suite below usually says more precisely what is wrong; keep the reader's sentence too.
        report.failures.append(Failure(f"{dataset}.reader", "read", str(exc), None, 0, 0))

    if dataset == "ich":
        table = readers.read_ich_table(root / readers.ICH_TABLE)
        suites = S.ich_table_suite(table, manifest)
    elif dataset == "aiforcovid":
        table, _ = readers.read_aiforcovid_table(root.resolve())
        suites = S.aiforcovid_table_suite(table)
    elif dataset == "brixia":
        table = pd.read_csv(root / readers.BRIXIA_TABLE, sep=";", dtype={"BrixiaScore": str}, encoding="utf-8-sig")
        suites = S.brixia_table_suite(table)
    else:
        tables = readers.read_chexpert_tables(root)
        table = pd.concat(tables.values(), ignore_index=True)
        suites = S.chexpert_table_suite(tables)
    report.rows = len(table)

    if dataset == "ich" and manifest is not None:
        masked = readers.ich_masked_labels(manifest)
        if any(masked.values()):
            counts = ", ".join(f"{task} {n}" for task, n in masked.items())
            report.notes.append(
                f"labels masked (no GCS or Age in the table; that task is left out of loss and metrics for those "
                f"patients, prognosis is kept): {counts} of {len(manifest)} rows"
            )
    if manifest is not None and len(manifest):
        stats = image_stats(manifest, MODALITY[dataset], max_images=cfg.max_images, progress=progress)
        if "skull_stripped" in manifest:  # ICH: the air rule does not apply to already stripped volumes
            stripped = dict(
                zip(manifest["sample_id"].astype(str), manifest["skull_stripped"].astype(bool), strict=True)
            )
            stats["skull_stripped"] = stats["sample_id"].astype(str).map(stripped).fillna(False).astype(bool)
        report.images_checked = len(stats)
        suites.append(S.image_suite(stats, MODALITY[dataset], cfg, dataset, gate=S.dataset_gate(dataset, params)))
    run_suites(suites, report)
    return report
