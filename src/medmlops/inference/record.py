"""The prediction record serving sends to monitoring: one schema, built on one side and parsed on the other.

Serving makes a :class:`PredictionRecord` from each prediction (:meth:`PredictionRecord.build`), spools its
:meth:`~PredictionRecord.to_json` and answers the client with :meth:`~PredictionRecord.answer`; monitoring turns the
posted JSON back into one with :meth:`PredictionRecord.parse`, which names the first field at fault.

On the wire (JSON)::

    {"request_id": "...", "model": family, "version": "3", "created_at": ISO 8601 (UTC) or Unix seconds,
     "predictions": {task: {...}}, "logits": [number, ...],
     "input": {"sha256": 64 hex digits, "bytes_b64": the upload, base64},
     "correlation_id": "...",   (optional: only when the client sent an X-Request-ID)
     "in_distribution": true | false | null, "ood": {"score": number | null, "threshold": number | null},
                                (optional: the out-of-distribution verdict, :mod:`medmlops.inference.ood`)
     "study": {"study_instance_uid": "...", "accession_number": "...", "study_id": "..."}}
                                (optional, only the identifiers known: where the case is in the hospital's systems)

The record id is the server's (:func:`new_request_id`, one per prediction): a client reusing its ``X-Request-ID``
would otherwise make two predictions one record, and monitoring would keep only the first. What the client sent is
kept beside it as ``correlation_id``. The request-id rule lives here and only here and holds for both: an id becomes
a spool file name and a database key, so it is kept to a short run of characters that are safe in both.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medmlops.errors import UserError

REQUEST_ID_RULE = "1-128 letters, digits, '.', '_' or '-'"
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")  # PostgreSQL text cannot hold NUL; none belongs in a name
MAX_CLOCK_AHEAD_S = 86400.0  # a record's time may run ahead of the reader's clock by this much, no more
_JSON_NAMES = {str: "a string", int: "a number", float: "a number", dict: "an object", list: "an array",
               bool: "a boolean", type(None): "null"}  # fmt: skip


class RecordError(UserError, ValueError):
    """A record (or label post) that is refused; ``field`` names the culprit, ``error`` is a stable code."""

    def __init__(self, field: str, detail: str, *, error: str = "invalid_field", status: int = 422) -> None:
        super().__init__(detail)
        self.field, self.detail, self.error, self.status = field, detail, error, status


def is_request_id(value: object) -> bool:
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def check_request_id(value: str, field: str = "request_id") -> str:
    """``value`` when it follows the request-id rule; RecordError naming ``field`` otherwise."""
    if not is_request_id(value):
        raise RecordError(
            field, f"field '{field}' must be {REQUEST_ID_RULE}, not {str(value)[:40]!r}", error=f"bad_{field}"
        )
    return value


def new_request_id() -> str:
    """A record id no other prediction has (32 hex digits, inside the request-id rule)."""
    return uuid.uuid4().hex


def correlation_id_from_header(header: str | None) -> str | None:
    """The client's ``X-Request-ID``, None when it sent none; RecordError (400) naming the header if it breaks the rule.

    It becomes the record's ``correlation_id``, never its id: clients reuse ids (retries, one id per study).
    """
    if not header:
        return None
    if not is_request_id(header):
        raise RecordError("X-Request-ID", f"X-Request-ID must be {REQUEST_ID_RULE}", error="bad_request_id", status=400)
    return header


STUDY_ID_RULE = "1-128 printable characters"


def check_study_id(value: str, field: str = "study_id") -> str:
    """A study identifier (a client's ``study_id`` form field, a StudyInstanceUID, an AccessionNumber) when it
    follows :data:`STUDY_ID_RULE`; RecordError (400) naming the field otherwise."""
    if not isinstance(value, str) or not 1 <= len(value) <= 128 or not value.isprintable():
        raise RecordError(field, f"{field} must be {STUDY_ID_RULE}", error=f"bad_{field}", status=400)
    return value


STUDY_KEYS = ("study_instance_uid", "accession_number", "study_id")
OOD_KEYS = ("in_distribution", "score", "threshold")


def _check_study(study: Mapping[str, Any]) -> None:
    """Only :data:`STUDY_KEYS`, each following :data:`STUDY_ID_RULE` (RecordError 422 naming ``study.<key>``)."""
    if not isinstance(study, Mapping):
        raise RecordError("study", "field 'study' must be an object", error="bad_type")
    for key, value in study.items():
        if key not in STUDY_KEYS:
            raise RecordError(
                f"study.{key}", f"field 'study' takes only {', '.join(STUDY_KEYS)}, not {str(key)[:40]!r}"
            )
        try:
            check_study_id(value, f"study.{key}")
        except RecordError as exc:
            raise RecordError(exc.field, exc.detail, error="bad_study") from None


def _check_ood(ood: Mapping[str, Any]) -> None:
    """``{in_distribution: bool | None, score: finite number | None, threshold: finite number | None}``."""
    if not isinstance(ood, Mapping) or set(ood) != set(OOD_KEYS):
        raise RecordError("ood", f"field 'ood' must hold exactly {', '.join(OOD_KEYS)}", error="bad_type")
    if ood["in_distribution"] is not None and not isinstance(ood["in_distribution"], bool):
        raise RecordError("in_distribution", "field 'in_distribution' must be true, false or null", error="bad_type")
    for key in ("score", "threshold"):
        value = ood[key]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise RecordError(f"ood.{key}", f"field 'ood.{key}' must be a finite number or null", error="bad_type")


def required(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    """``obj[key]`` when present and of JSON type ``kind``; RecordError naming ``{where}{key}`` otherwise."""
    name = f"{where}{key}"
    if key not in obj or obj[key] is None:
        raise RecordError(name, f"the record has no '{name}' field", error="missing_field")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:  # JSON true is no number
        wanted = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        got = _JSON_NAMES.get(type(value), type(value).__name__)
        raise RecordError(name, f"field '{name}' must be {wanted}, not {got}", error="bad_type")
    return value


def unix_seconds(value: str | float) -> float:
    """A time as Unix seconds: a number, or an ISO 8601 time (UTC when it has no offset, as serving writes it).

    Raises:
        ValueError: neither, or not finite.
    """
    try:
        seconds = float(value)
    except ValueError:  # a string that is no number: an ISO 8601 time
        moment = dt.datetime.fromisoformat(value)
        seconds = (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()
    except OverflowError as exc:  # an integer too large for a float
        raise ValueError(f"{value!r} is out of range") from exc
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite time")
    return seconds


def iso(seconds: float | None) -> str | None:
    """Unix seconds as ISO 8601 in UTC, to the millisecond; None for none or a non-finite time."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


def _logits(values: Sequence[Any]) -> tuple[float, ...]:
    try:
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            numbers = tuple(float(v) for v in values)
            if all(math.isfinite(v) for v in numbers):
                return numbers
    except OverflowError:  # an integer too large for a float
        pass
    raise RecordError("logits", "field 'logits' must be a list of finite numbers", error="bad_type")


def _is_calendar_time(seconds: float) -> bool:
    """Finite, with a calendar date, and not ahead of this clock by more than :data:`MAX_CLOCK_AHEAD_S` (a time of
    1e18 would make every later time window and summary fail)."""
    if not math.isfinite(seconds) or seconds > time.time() + MAX_CLOCK_AHEAD_S:
        return False
    try:
        iso(seconds)
    except (ValueError, OverflowError, OSError):
        return False
    return True


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (strict JSON and PostgreSQL's JSON refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON types: numpy scalars and arrays, paths, sets and tuples converted; NaN → None."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "tolist"):
            return obj.tolist()
        if hasattr(obj, "item"):
            return obj.item()
        if isinstance(obj, Path):
            return str(obj)
        if isinstance(obj, set | tuple):
            return list(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return finite(json.loads(json.dumps(value, default=default)))


@dataclasses.dataclass(frozen=True)
class PredictionRecord:
    """One prediction as monitoring needs it; every instance holds the rules below (RecordError if not).

    Attributes:
        request_id: the request-id rule.
        family: the registered model, 1-128 characters (``model`` on the wire).
        version: the model version that computed the prediction, 1-64 characters.
        created_at: Unix seconds, finite.
        upload: the uploaded bytes, not empty (``input.bytes_b64`` on the wire).
        sha256: their lower-case hex digest (``input.sha256``); :meth:`parse` checks it matches.
        predictions: serving's decoded answer, strict JSON.
        logits: the model's raw outputs, finite.
        correlation_id: the client's ``X-Request-ID``, the request-id rule; None when it sent none.
        ood: the out-of-distribution verdict ``{in_distribution, score, threshold}`` (bool / finite numbers, each
            may be None: the version has no reference); None for records made before it existed.
        study: the study identity, :data:`STUDY_KEYS` → :data:`STUDY_ID_RULE` (only those known); None when none.
    """

    request_id: str
    family: str
    version: str
    created_at: float
    upload: bytes = dataclasses.field(repr=False)  # up to 64 MiB: never in a log line
    sha256: str
    predictions: dict[str, Any]
    logits: tuple[float, ...]
    correlation_id: str | None = None  # last and optional: records spooled before it existed still parse
    ood: dict[str, Any] | None = None  # optional likewise
    study: dict[str, str] | None = None  # optional likewise

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        if self.correlation_id is not None:
            check_request_id(self.correlation_id, "correlation_id")
        if not 1 <= len(self.family) <= 128:
            raise RecordError("model", "field 'model' must name the registered model in 1-128 characters")
        if not 1 <= len(self.version) <= 64:
            raise RecordError("version", "field 'version' must be the model version in 1-64 characters")
        for field, value in (("model", self.family), ("version", self.version)):
            if CONTROL_CHARACTERS.search(value):
                raise RecordError(field, f"field '{field}' must not hold control characters such as NUL or a newline")
        if not _is_calendar_time(self.created_at):
            raise RecordError(
                "created_at", f"field 'created_at' ({self.created_at:g}) is more than a day in the future or has no "
                "calendar date", error="bad_time",
            )  # fmt: skip
        _logits(self.logits)
        if not self.upload:
            raise RecordError("input.bytes_b64", "field 'input.bytes_b64' holds an empty upload", error="empty_upload")
        if not _SHA256.fullmatch(self.sha256):
            raise RecordError("input.sha256", "field 'input.sha256' must be 64 hexadecimal digits", error="bad_sha256")
        if self.ood is not None:
            _check_ood(self.ood)
        if self.study is not None:
            _check_study(self.study)

    @classmethod
    def build(
        cls, *, request_id: str, family: str, version: str, upload: bytes, predictions: Mapping[str, Any],
        logits: Sequence[float], created_at: float | None = None, correlation_id: str | None = None,
        ood: Mapping[str, Any] | None = None, study: Mapping[str, str] | None = None,
    ) -> PredictionRecord:  # fmt: skip
        """The record of a prediction just made (``created_at`` defaults to now, to the millisecond the wire keeps)."""
        return cls(
            request_id, family, version, round(time.time() if created_at is None else created_at, 3), upload,
            hashlib.sha256(upload).hexdigest(), jsonable(dict(predictions)), tuple(map(float, logits)), correlation_id,
            None if ood is None else jsonable(dict(ood)), dict(study) if study else None,
        )  # fmt: skip

    @classmethod
    def parse(cls, obj: Any) -> PredictionRecord:
        """The record a wire payload holds; RecordError names the first field at fault."""
        if not isinstance(obj, Mapping):
            raise RecordError("record", f"the record must be a JSON object, not {type(obj).__name__}", error="bad_type")
        request_id = check_request_id(required(obj, "request_id", str))
        correlation_id = None  # absent or null: the client sent no X-Request-ID, or serving predates the field
        if obj.get("correlation_id") is not None:
            correlation_id = check_request_id(required(obj, "correlation_id", str), "correlation_id")
        family = required(obj, "model", str).strip()
        version = str(required(obj, "version", (str, int))).strip()
        given = required(obj, "created_at", (str, int, float))
        try:
            created_at = unix_seconds(given)
        except ValueError as exc:
            raise RecordError(
                "created_at",
                f"field 'created_at' must be an ISO 8601 time or Unix seconds, not {str(given)[:40]!r}",
                error="bad_time",
            ) from exc
        predictions = required(obj, "predictions", dict)
        logits = _logits(required(obj, "logits", list))
        payload = required(obj, "input", dict)
        sha256 = required(payload, "sha256", str, "input.").lower()
        encoded = required(payload, "bytes_b64", str, "input.")
        try:
            upload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(
                "input.bytes_b64", "field 'input.bytes_b64' is not valid base64", error="bad_base64"
            ) from exc
        ood = None  # absent: serving predates the field
        if "in_distribution" in obj or obj.get("ood") is not None:
            scores = obj.get("ood") or {}
            if not isinstance(scores, Mapping):
                raise RecordError("ood", "field 'ood' must be an object", error="bad_type")
            ood = {"in_distribution": obj.get("in_distribution"), "score": scores.get("score"),
                   "threshold": scores.get("threshold")}  # fmt: skip
        study = obj.get("study")
        if study is not None and not isinstance(study, Mapping):
            raise RecordError("study", "field 'study' must be an object", error="bad_type")
        record = cls(
            request_id, family, version, created_at, upload, sha256, finite(dict(predictions)), logits, correlation_id,
            ood, dict(study) if study else None,
        )  # fmt: skip
        if hashlib.sha256(upload).hexdigest() != sha256:
            raise RecordError(
                "input.sha256", "field 'input.sha256' does not match the decoded upload", error="sha256_mismatch"
            )
        return record

    def answer(self) -> dict[str, Any]:
        """What serving answers the client: the record without the upload and the logits (``correlation_id`` echoes
        the client's X-Request-ID, when it sent one)."""
        answer = {
            "request_id": self.request_id, "model": self.family, "version": self.version,
            "created_at": iso(self.created_at), "predictions": self.predictions,
        }  # fmt: skip
        if self.correlation_id is not None:
            answer["correlation_id"] = self.correlation_id
        if self.ood is not None:
            answer["in_distribution"] = self.ood["in_distribution"]
            answer["ood"] = {"score": self.ood["score"], "threshold": self.ood["threshold"]}
        if self.study is not None:
            answer["study"] = dict(self.study)
        return answer

    def to_json(self) -> dict[str, Any]:
        """The wire payload (JSON types only); :meth:`parse` turns it back into an equal record."""
        return {
            **self.answer(), "logits": list(self.logits),
            "input": {"sha256": self.sha256, "bytes_b64": base64.b64encode(self.upload).decode()},
        }  # fmt: skip
