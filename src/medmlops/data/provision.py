"""Make the active profile's raw data exist: the one place that pulls or generates ``data.raw_dir``.

Every command that reads raw data calls :func:`ensure_raw_data` first (``medmlops preprocess|train|evaluate``,
``medmlops pipeline run --local``, ``medmlops demo``), so a fresh clone needs no data step. For a simulated profile
(``data.simulated: true``: demo, smoke) an absent folder is pulled from the DVC remote when one holds it, else
generated with the simulators exactly as ``medmlops data generate all`` does, and checked against the profile's own
record (``data.dvc_file``: ``data.dvc`` for demo, ``data-smoke.dvc`` for smoke). Real data (``simulated: false``,
the paper profile) is never generated: its absence is an error naming the fix. No record of another profile is read
or written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from medmlops.config import Params
from medmlops.data import versioning
from medmlops.errors import UserError


def _has_data(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _track_hint(params: Params) -> str:
    return f"`medmlops data track --profile {params.profile}`"


def ensure_raw_data(params: Params, repo: Path = Path("."), *, progress: bool = True, verify: bool = False) -> str:
    """Make ``params.data.raw_dir`` hold the profile's data; return what was done ("present", "pulled", ...).

    Present data is kept as it is (``verify`` also checks it against the profile's record). Absent data of a
    simulated profile is pulled from the DVC remote, else generated, and must hash to the record; one line says
    what was done and the equivalent command.

    Raises:
        UserError: real data (``data.simulated: false``) is absent; generated or (with ``verify``) present data does
            not match the record; or (with ``verify``) the profile has no record. The message names the command.
    """
    data, profile = params.data, params.profile
    raw, record = repo / data.raw_dir, repo / data.dvc_file
    if _has_data(raw):
        if not verify:
            return "present"
        if not record.is_file():
            raise UserError(
                f"{data.dvc_file} not found: run {_track_hint(params)} to record {data.raw_dir} as the {profile} "
                "profile's data version, and commit it"
            )
        ok, detail = versioning.workspace_matches(repo, data.dvc_file)
        if ok:
            return f"present (matches {data.dvc_file})"
        fix = (
            f"delete it (`rm -rf {data.raw_dir}`) to have it made again, or run {_track_hint(params)} to record it"
            if data.simulated
            else f"run {_track_hint(params)} to record this data as the new version"
        )
        raise UserError(f"the data in {data.raw_dir} does not match {data.dvc_file} ({detail}): {fix}")

    if (
        record.is_file()
        and versioning.pull(repo, data.dvc_file)
        and versioning.workspace_matches(repo, data.dvc_file)[0]
    ):
        print(f"data: pulled {data.raw_dir} from the DVC remote (matches {data.dvc_file}); "
              f"the same as `dvc pull {data.dvc_file}`", flush=True)  # fmt: skip
        return "pulled"
    if not data.simulated:
        pull = f", or `dvc pull {data.dvc_file}` from the DVC remote holding it" if record.is_file() else ""
        raise UserError(
            f"{data.raw_dir}: no data; the {profile} profile reads real data, which is never generated: put the datasets "
            f'there as README section "Using real data, end to end" describes and run {_track_hint(params)}{pull}'
        )
    return _generate(params, repo, progress)


def _generate(params: Params, repo: Path, progress: bool) -> str:
    """Generate every dataset into a sibling folder, check it against the record, then move it into place (an
    interrupted run leaves no half-written ``raw_dir`` behind)."""
    from medmlops.data.simulate import DATASETS, generate_from_params

    data, profile = params.data, params.profile
    raw, record = repo / data.raw_dir, repo / data.dvc_file
    partial = raw.with_name(f".{raw.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    for dataset in DATASETS:
        generate_from_params(dataset, partial / dataset, params, progress=progress)
    if record.is_file():
        actual = versioning.workspace_hash(repo, str(partial.relative_to(repo)))
        expected = versioning.recorded_hash(repo, data.dvc_file)
        if actual != expected:
            shutil.rmtree(partial)
            raise UserError(
                f"generated {data.raw_dir} hashes to {actual}, but {data.dvc_file} records {expected} (params, --set "
                f"or the simulator changed?): generate it with `medmlops data generate all --out {data.raw_dir} "
                f"--profile {profile}` and run {_track_hint(params)} to record the new version"
            )
    if raw.exists():
        raw.rmdir()  # empty (checked by the caller)
    partial.rename(raw)
    command = f"`medmlops data generate all --out {data.raw_dir} --profile {profile}`"
    if not record.is_file():
        print(f"data: generated {data.raw_dir} ({profile} profile; not versioned: {data.dvc_file} not found, "
              f"{_track_hint(params)} records it); the same as {command}", flush=True)  # fmt: skip
        return "generated"
    remote = versioning.ensure_remote(repo, versioning.DEFAULT_REMOTE)
    versioning.push(repo, data.dvc_file)
    print(f"data: generated {data.raw_dir} ({profile} profile; matches {data.dvc_file}; pushed to the DVC remote "
          f"'{remote}'); the same as {command}", flush=True)  # fmt: skip
    return "generated"
