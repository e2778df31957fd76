"""Exceptions for user mistakes: the CLI prints their message as one sentence, without a traceback."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class UserError(Exception):
    """Something the user can fix (a file, a column, a key); the message names it."""


class DataError(UserError, ValueError):
    """Unreadable, inconsistent or out-of-range data; the message names the file, column or row."""


class TrackingUnavailableError(UserError, ConnectionError):
    """The MLflow tracking server could not be reached (after MLflow's own retries)."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``value`` (difflib), or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_name(kind: str, value: str, choices: Iterable[str], plural: str | None = None) -> str:
    """One sentence for a name that is not one of ``choices``, with the closest match and the list:
    ``unknown family 'ich-prognossis'; did you mean 'ich-prognosis'? (families: a, b, c)``."""
    choices = sorted({str(c) for c in choices})
    listed = ", ".join(choices) if choices else "none defined"
    return f"unknown {kind} '{value}'{did_you_mean(value, choices)} ({plural or kind + 's'}: {listed})"


_CONNECTION_FAILURES = {
    "Connection refused": "connection refused",
    "timed out": "timed out",
    "Failed to establish a new connection": "no connection",
    "Max retries exceeded": "no answer after retries",
    "RemoteDisconnected": "the server closed the connection",
    "Connection aborted": "the connection was aborted",
    "Name or service not known": "unknown host",
}


class NotFound(UserError, LookupError):
    """What a request names is not stored (a 404 in the services); ``error`` is a stable code, ``detail`` one
    sentence."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error, self.detail = error, detail


def tracking_unreachable(exc: BaseException | None) -> TrackingUnavailableError | None:
    """The one-sentence error for ``exc`` when it (or an exception it came from) is a failed HTTP call from MLflow's
    client to the tracking server; None for anything else. MLflow wraps the ``requests`` failure in an
    ``MlflowException("API request to <url> failed with exception ...")``, so the text is what identifies it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        module, text = type(exc).__module__, str(exc)
        if module.split(".")[0] in ("mlflow", "requests", "urllib3"):
            reasons = [reason for marker, reason in _CONNECTION_FAILURES.items() if marker in text]
            if reasons:
                found = re.search(r"https?://[^/\s'\"]+", text)
                server = found.group(0) if found else "the configured address"
                return TrackingUnavailableError(
                    f"the MLflow tracking server at {server} cannot be reached ({reasons[0]}); checkpoints and "
                    "results written so far are kept: run the same command again to resume once it is back"
                )
        exc = exc.__cause__ or exc.__context__
    return None
