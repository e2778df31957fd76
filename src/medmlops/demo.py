"""``medmlops demo``: the front door, run by ``make demo``.

Stage 1 (this module so far): get the demo datasets — reuse them when they already match ``data.dvc``, else pull
them from the DVC remote, else generate them — check them against the hashes recorded in ``data.dvc``, and
validate each with Great Expectations. Later stages (MLflow, pipelines, serving, monitoring) append here.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from medmlops.config import Params
from medmlops.data import versioning
from medmlops.data.simulate import DATASETS, generate_from_params


def _step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def ensure_demo_data(params: Params, repo: Path, progress: bool = True) -> tuple[bool, str]:
    """Reuse, pull or generate ``data/raw``; return (matches data.dvc, how it was obtained)."""
    raw = repo / params.data.raw_dir
    ok, _ = versioning.workspace_matches(repo)
    if ok:
        return True, "reused (already matches data.dvc)"
    if versioning.pull(repo) and versioning.workspace_matches(repo)[0]:
        return True, "pulled from the DVC remote"
    if raw.exists():
        shutil.rmtree(raw)  # a partial or stale copy: regenerate from scratch so the hashes are comparable
    for dataset in DATASETS:
        generate_from_params(dataset, raw / dataset, params, progress=progress)
    ok, detail = versioning.workspace_matches(repo)
    if not ok:
        return False, f"generated, but it does NOT match data.dvc ({detail}); params or simulator changed?"
    remote = versioning.ensure_remote(repo)
    versioning.push(repo)
    return True, f"generated; matches data.dvc; pushed to the DVC remote '{remote}'"


def run_demo(params: Params, repo: Path = Path("."), progress: bool = True) -> int:
    from medmlops.validation import validate_dataset

    repo = repo.resolve()
    started = time.monotonic()
    _step(f"1/2 demo data ({params.profile} profile) in {params.data.raw_dir}")
    matches, how = ensure_demo_data(params, repo, progress=progress)
    print(f"data: {how}")

    _step("2/2 validating with Great Expectations")
    reports_dir = repo / params.validation.reports_dir
    results = {}
    for dataset in DATASETS:
        report = validate_dataset(dataset, repo / params.data.raw_dir / dataset, params, progress=progress)
        report.write(reports_dir / f"{dataset}.json")
        report.write(reports_dir / f"{dataset}.html")
        results[dataset] = report
        print(report.summary())

    elapsed = time.monotonic() - started
    print("\n==> summary")
    print(f"{'dataset':<12} {'rows':>6} {'images':>7} {'validation':>11}")
    for dataset, report in results.items():
        print(
            f"{dataset:<12} {report.rows:>6} {report.images_checked:>7} {'passed' if report.success else 'FAILED':>11}"
        )
    print(f"data matches data.dvc: {'yes' if matches else 'NO'}")
    print(f"reports: {reports_dir}/<dataset>.html")
    print(f"finished in {elapsed:.0f} s")
    return 0 if matches and all(r.success for r in results.values()) else 1
