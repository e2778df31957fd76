"""``medmlops demo``: the front door, run by ``make demo``.

Stage 1 (this module so far): get the demo datasets — reuse them when they already match ``data.dvc``, else pull
them from the DVC remote, else generate them — check them against the hashes recorded in ``data.dvc``, and
validate each with Great Expectations. Later stages (MLflow, pipelines, serving, monitoring) append here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medmlops.config import Params
from medmlops.data.simulate import DATASETS, generate_from_params


def dvc(repo: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the DVC CLI of this interpreter's environment in ``repo``."""
    exe = Path(sys.executable).with_name("dvc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dvc"]
    return subprocess.run([*cmd, *args], cwd=repo, capture_output=True, text=True, check=check)


def dvc_matches(repo: Path, target: str = "data.dvc") -> tuple[bool, str]:
    """True when the workspace data equals what ``target`` records (``dvc status`` reports nothing)."""
    if not (repo / target).is_file():
        return False, f"{target} not found"
    result = dvc(repo, "status", "--json", target)
    if result.returncode != 0:
        return False, (result.stderr or result.stdout).strip().splitlines()[-1] if (result.stderr or result.stdout) else "dvc failed"
    try:
        status = json.loads(result.stdout or "{}")
    except json.JSONDecodeError:
        return False, result.stdout.strip()
    return (not status), ("up to date" if not status else json.dumps(status))


def _step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def ensure_demo_data(params: Params, repo: Path, progress: bool = True) -> tuple[bool, str]:
    """Reuse, pull or generate ``data/raw``; return (matches data.dvc, how it was obtained)."""
    raw = repo / params.data.raw_dir
    ok, detail = dvc_matches(repo)
    if ok:
        return True, "reused (already matches data.dvc)"
    remote = dvc(repo, "remote", "list")
    if remote.returncode == 0 and remote.stdout.strip():
        pulled = dvc(repo, "pull", "data.dvc")
        if pulled.returncode == 0:
            ok, detail = dvc_matches(repo)
            if ok:
                return True, "pulled from the DVC remote"
    if raw.exists():
        shutil.rmtree(raw)  # a partial or stale copy: regenerate from scratch so the hashes are comparable
    for dataset in DATASETS:
        generate_from_params(dataset, raw / dataset, params, progress=progress)
    ok, detail = dvc_matches(repo)
    return ok, "generated" + ("" if ok else f" — does NOT match data.dvc: {detail}")


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
        print(f"{dataset:<12} {report.rows:>6} {report.images_checked:>7} {'passed' if report.success else 'FAILED':>11}")
    print(f"data matches data.dvc: {'yes' if matches else 'NO'}")
    print(f"reports: {reports_dir}/<dataset>.html")
    print(f"finished in {elapsed:.0f} s")
    return 0 if matches and all(r.success for r in results.values()) else 1
