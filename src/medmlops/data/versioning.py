"""DVC versioning of ``data/raw``: track it in ``data.dvc``, compare the workspace with it, push and pull.

Thin over the ``dvc`` CLI of the project's environment (the same commands a user types), so what the demo and
tests do is what the README says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from medmlops.errors import DataError

DATA_DVC = "data.dvc"
DEFAULT_REMOTE = Path(os.environ.get("MEDMLOPS_DVC_REMOTE", Path.home() / ".cache" / "medmlops" / "dvc-remote"))


def dvc(repo: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run this environment's ``dvc`` in ``repo``; with ``check``, a failure raises DataError with dvc's last line."""
    exe = Path(sys.executable).with_name("dvc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dvc"]
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([*cmd, *args], cwd=repo, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        text = " ".join((result.stderr + result.stdout).split())
        raise DataError(f"dvc {' '.join(args)} failed in {repo}: {text[:400] or 'no output'}")
    return result


def workspace_matches(repo: Path, target: str = DATA_DVC) -> tuple[bool, str]:
    """Whether the workspace data equals what ``target`` records (``dvc status`` reports nothing)."""
    if not (repo / target).is_file():
        return False, f"{target} not found"
    result = dvc(repo, "status", "--json", target)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return False, lines[-1] if lines else "dvc status failed"
    try:
        status = json.loads(result.stdout or "{}")
    except json.JSONDecodeError:
        return False, result.stdout.strip()
    return (not status), ("up to date" if not status else json.dumps(status))


def track(repo: Path, data_dir: str = "data/raw") -> Path:
    """``dvc add`` the data folder and keep its record as ``data.dvc`` at the project root.

    DVC 3 writes ``<dir>.dvc`` next to the folder; the project keeps one ``data.dvc`` at the root (the layout
    the README documents), so the record is moved and its path rewritten relative to the root.
    """
    dvc(repo, "add", data_dir, check=True)  # not --quiet: it would also silence the error we report
    written = repo / f"{data_dir}.dvc"
    record = yaml.safe_load(written.read_text())
    for out in record.get("outs", []):
        out["path"] = data_dir
    target = repo / DATA_DVC
    target.write_text(yaml.safe_dump(record, sort_keys=False))
    written.unlink()
    return target


def recorded_hash(repo: Path, target: str = DATA_DVC) -> str:
    record = yaml.safe_load((repo / target).read_text())
    return str(record["outs"][0]["md5"])


def ensure_remote(repo: Path, url: Path | str = DEFAULT_REMOTE, name: str = "local") -> str:
    """Configure a default remote in ``.dvc/config.local`` (outside git) unless one is configured already."""
    listed = dvc(repo, "remote", "list")
    if listed.returncode == 0 and listed.stdout.strip():
        return listed.stdout.split()[0]
    Path(url).mkdir(parents=True, exist_ok=True)
    dvc(repo, "remote", "add", "--local", "--default", name, str(url), check=True)
    return name


def push(repo: Path, target: str = DATA_DVC) -> None:
    dvc(repo, "push", "--quiet", target, check=True)


def pull(repo: Path, target: str = DATA_DVC) -> bool:
    """Try ``dvc pull``; False (not an error) when no remote is configured or it lacks the data."""
    listed = dvc(repo, "remote", "list")
    if listed.returncode != 0 or not listed.stdout.strip():
        return False
    return dvc(repo, "pull", "--quiet", target).returncode == 0
