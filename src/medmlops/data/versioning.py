"""DVC versioning of a profile's raw data (``data.raw_dir``): track it in its record (``data.dvc_file``: ``data.dvc``
for the demo profile, ``data-smoke.dvc`` for smoke), compare the workspace with it, push and pull.

Thin over the ``dvc`` CLI of the project's environment (the same commands a user types), so what the demo and
tests do is what the README says.
"""

from __future__ import annotations

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


def workspace_hash(repo: Path, data_dir: str = "data/raw") -> str:
    """DVC's md5 of a folder in the workspace (``<md5>.dir``), computed the way ``dvc add`` does.

    ``dvc status`` cannot answer "does the workspace equal the record?" on a fresh clone: it reports
    "not in cache" whenever the cache lacks the object, even when the files are identical. Hashing the
    workspace with dvc-data (as ``dvc add`` does, honouring .dvcignore) needs no cache.
    """
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    path = (repo / data_dir).resolve()
    if not path.is_dir():
        raise DataError(f"{path}: not found")
    with Repo(str(repo)) as dvc_repo:
        _, _, obj = build(dvc_repo.cache.local, str(path), dvc_repo.fs, "md5", ignore=dvc_repo.dvcignore, dry_run=True)
    return str(obj.hash_info.value)


def workspace_matches(repo: Path, target: str = DATA_DVC) -> tuple[bool, str]:
    """Whether the workspace data equals what ``target`` records; the detail says how they differ."""
    if not (repo / target).is_file():
        return False, f"{target} not found"
    record = yaml.safe_load((repo / target).read_text())["outs"][0]
    data_dir = record["path"]
    if not (repo / data_dir).is_dir():
        return False, f"{data_dir} not found"
    actual = workspace_hash(repo, data_dir)
    if actual == record["md5"]:
        return True, "up to date"
    return False, f"modified: {data_dir} hashes to {actual}, {target} records {record['md5']}"


def commit(repo: Path, target: str = DATA_DVC) -> None:
    """Store the workspace data in the DVC cache under the recorded hash (only call after workspace_matches)."""
    dvc(repo, "commit", "--force", target, check=True)


def track(repo: Path, data_dir: str = "data/raw", target: str = DATA_DVC) -> Path:
    """``dvc add`` the data folder and keep its record as ``target`` (the profile's ``data.dvc_file``) at the root.

    DVC 3 writes ``<dir>.dvc`` next to the folder; the project keeps its records at the root (the layout
    the README documents), so the record is moved and its path rewritten relative to the root.
    """
    dvc(repo, "add", data_dir, check=True)  # not --quiet: it would also silence the error we report
    written = repo / f"{data_dir}.dvc"
    if not written.is_file() and (repo / target).is_file():
        return repo / target  # already tracked: dvc add updated the record in place
    record = yaml.safe_load(written.read_text())
    for out in record.get("outs", []):
        out["path"] = data_dir
    path = repo / target
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    written.unlink()
    return path


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
    """Push ``target``'s data to the default remote (the workspace is committed to the cache first: a push of data
    that is not in the cache pushes nothing and still succeeds)."""
    commit(repo, target)
    dvc(repo, "push", target, check=True)


def pull(repo: Path, target: str = DATA_DVC) -> bool:
    """Try ``dvc pull``; False (not an error) when no remote is configured or it lacks the data."""
    listed = dvc(repo, "remote", "list")
    if listed.returncode != 0 or not listed.stdout.strip():
        return False
    return dvc(repo, "pull", "--quiet", target).returncode == 0
