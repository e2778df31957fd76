"""Promotion gates, rollback and the version listing behind ``medmlops registry list|promote|rollback``.

Aliases, not stages (deprecated in MLflow 3): ``candidate`` marks the newest registered version, ``champion`` the
one serving loads (``models:/NAME@champion``). :func:`promote` moves ``champion`` to the candidate only when every
gate passes; the decision lives here, not in Kubeflow DSL control flow (``dsl.If`` is unreliable in local mode).

Rollback history is the registered model's tag ``champion_history``: a JSON list of the versions that were
champion before the current one, oldest first. :func:`promote` appends the outgoing champion; :func:`rollback`
pops the newest entry that still exists and moves ``champion`` back to it, so repeated rollbacks walk back in
time. A tag (not an extra alias) keeps the whole history in one place the UI and ``mlflow`` CLI show.
Concurrent promotions of one family are not serialised; run them from one pipeline.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from medmlops.config import GatesConfig
from medmlops.errors import UserError
from medmlops.registry.tracking import ModelNotFoundError, load_contract, resolve_version

CHAMPION = "champion"
CANDIDATE = "candidate"
HISTORY_TAG = "champion_history"
# Registered-model tag values are limited (5000 characters in the SQL stores): keep the newest entries.
_HISTORY_MAX = 200


class PromotionError(UserError, ValueError):
    """Promotion or rollback cannot proceed (e.g. no previous champion); the message says why."""


@dataclass(frozen=True)
class PromotionResult:
    """Outcome of :func:`promote` or :func:`rollback`.

    Attributes:
        promoted: whether ``champion`` moved.
        version: the version considered (the candidate; for rollback the restored one).
        previous_champion: the champion before the call, if any.
        failed: one line per failed gate, naming the metric and the values.
        message: one human-readable sentence (or gate lines joined by "; ").
    """

    promoted: bool
    family: str
    version: str
    previous_champion: str | None
    failed: list[str] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def promote(
    family: str,
    gates: GatesConfig,
    *,
    client: MlflowClient | None = None,
    alias: str = CANDIDATE,
) -> PromotionResult:
    """Move ``champion`` to ``family@alias`` if every gate passes.

    Gates: the version's data must be the DVC-recorded version (tag ``data_version_verified`` not ``false``); each
    ``gates.min_metrics`` floor; the primary metric must exist; and it may fall at most
    ``gates.max_regression`` below the current champion's. Metrics come from the candidate's contract, completed by
    its source run's logged metrics for names the contract lacks. A missing or non-finite metric fails its gate.

    Raises:
        ModelNotFoundError: the family, the alias or the candidate's contract is missing.
    """
    client = client or MlflowClient()
    candidate = resolve_version(family, alias, client)
    version = str(candidate.version)
    champion = _alias_version(client, family, CHAMPION)
    if champion == version:
        return PromotionResult(
            False, family, version, champion, [], f"'{family}' version {version} is already the champion"
        )

    metrics = _version_metrics(client, family, candidate)
    failed: list[str] = []
    tags = dict(candidate.tags or {})
    if tags.get("data_version_verified") == "false":
        # Registered (a candidate may be an experiment on modified data) but never served as champion: nobody could
        # say which data it learned from. Versions registered before the tag existed have none and are not judged.
        record = tags.get("data_record", "its DVC record")
        failed.append(
            f"trained on data {tags.get('data_version', '?')} that is not the version {record} records "
            f"({tags.get('data_version_recorded', '?')}): record it with `medmlops data track` or restore it with "
            f"`dvc checkout {record}`, then train and register again"
        )
    for name, floor in gates.min_metrics.items():
        value = metrics.get(name)
        if value is None:
            failed.append(f"{name} missing (floor {_fmt(floor)})")
        elif not value >= floor:
            failed.append(f"{name} {_fmt(value)} < floor {_fmt(floor)}")
    primary = gates.primary_metric
    notes: list[str] = []
    value = metrics.get(primary)
    if value is None:
        if primary not in gates.min_metrics:
            failed.append(f"{primary} missing (primary metric)")
    elif champion is not None:
        reference = _version_metrics(client, family, client.get_model_version(family, champion)).get(primary)
        if reference is None:
            # A champion registered before this metric existed cannot be compared; the floors still apply.
            notes.append(f"champion version {champion} has no {primary}, regression not checked")
        elif value < reference - gates.max_regression:
            failed.append(
                f"{primary} {_fmt(value)} < champion version {champion} {_fmt(reference)} "
                f"- max_regression {_fmt(gates.max_regression)}"
            )

    if failed:
        message = f"'{family}' version {version} not promoted: " + "; ".join(failed)
        return PromotionResult(False, family, version, champion, failed, message)

    if champion is not None:
        _write_history(client, family, [*_read_history(client, family), champion])
    client.set_registered_model_alias(family, CHAMPION, version)
    client.set_model_version_tag(family, version, "promoted_at", datetime.now(UTC).isoformat(timespec="seconds"))
    shown = f"{primary} {_fmt(value)}" if value is not None else "no primary metric"
    message = f"'{family}' version {version} is now champion ({shown}"
    message += f", replacing version {champion})" if champion else ")"
    if notes:
        message += "; " + "; ".join(notes)
    return PromotionResult(True, family, version, champion, [], message)


def rollback(family: str, *, client: MlflowClient | None = None) -> PromotionResult:
    """Move ``champion`` back to the previous champion recorded in ``champion_history``.

    Raises:
        ModelNotFoundError: the family does not exist.
        PromotionError: there is no earlier champion to restore.
    """
    client = client or MlflowClient()
    try:
        client.get_registered_model(family)
    except MlflowException as exc:
        raise ModelNotFoundError(f"registered model '{family}' not found") from exc
    current = _alias_version(client, family, CHAMPION)
    history = _read_history(client, family)
    while history:
        previous = history.pop()
        if previous == current:
            continue
        try:
            client.get_model_version(family, previous)
        except MlflowException:
            continue  # deleted since it was champion
        client.set_registered_model_alias(family, CHAMPION, previous)
        _write_history(client, family, history)
        message = f"'{family}' champion rolled back from version {current} to version {previous}"
        return PromotionResult(True, family, previous, current, [], message)
    raise PromotionError(f"'{family}' has no previous champion to roll back to (tag {HISTORY_TAG} is empty)")


def list_versions(family: str, *, client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """Every version of ``family``, oldest first: version, aliases, metrics (from the contract), created, tags.

    Raises:
        ModelNotFoundError: the family does not exist.
    """
    client = client or MlflowClient()
    try:
        registered = client.get_registered_model(family)
    except MlflowException as exc:
        raise ModelNotFoundError(f"registered model '{family}' not found") from exc
    # search_model_versions leaves `aliases` empty (MLflow 3.17); the registered model holds the mapping.
    aliases: dict[str, list[str]] = {}
    for name, version in (registered.aliases or {}).items():
        aliases.setdefault(str(version), []).append(name)
    rows = []
    for mv in client.search_model_versions(f"name='{family}'"):
        version = str(mv.version)
        try:
            metrics = load_contract(family, version).metrics
        except ModelNotFoundError:
            metrics = {}
        rows.append(
            {
                "version": version,
                "aliases": sorted(aliases.get(version, [])),
                "metrics": metrics,
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                "run_id": mv.run_id,
                "tags": dict(mv.tags or {}),
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]))


def _alias_version(client: MlflowClient, family: str, alias: str) -> str | None:
    version = (client.get_registered_model(family).aliases or {}).get(alias)
    return None if version is None else str(version)


def _version_metrics(client: MlflowClient, family: str, mv: Any) -> dict[str, float]:
    """The contract's metrics, completed by the source run's logged metrics; non-finite values dropped."""
    metrics = dict(load_contract(family, str(mv.version)).metrics)
    if mv.run_id:
        try:
            logged = client.get_run(mv.run_id).data.metrics
        except MlflowException:
            logged = {}
        for name, value in logged.items():
            metrics.setdefault(name, value)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def _read_history(client: MlflowClient, family: str) -> list[str]:
    raw = (client.get_registered_model(family).tags or {}).get(HISTORY_TAG, "[]")
    try:
        history = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PromotionError(f"'{family}' tag {HISTORY_TAG} is not a JSON list of versions: {raw!r}") from exc
    if not isinstance(history, list):
        raise PromotionError(f"'{family}' tag {HISTORY_TAG} is not a JSON list of versions: {raw!r}")
    return [str(v) for v in history]


def _write_history(client: MlflowClient, family: str, history: list[str]) -> None:
    client.set_registered_model_tag(family, HISTORY_TAG, json.dumps(history[-_HISTORY_MAX:]))


def _fmt(value: float) -> str:
    return f"{value:.3f}"
