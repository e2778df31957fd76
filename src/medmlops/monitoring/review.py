"""The review queue: which stored cases a person should look at first, why each was flagged (in words), what a
case page shows, and what the reviews say back (realized error rate and flag precision per model version).

A case is in the queue while it has no label (``POST /v1/labels`` takes it out) and at least one reason:

1. **out of distribution**: serving's verdict (``in_distribution`` false: the score above the version's threshold);
2. **confidence**: the logit tier flagged a class at ingest (the calibration's selected score against its τ);
3. **deployed flag**: the saliency tier (INFORMER workers) flagged a class with the deployed confidence scoring
   function at its operating point; INFORMER's own distinctiveness flags are named beside it;
4. **sampled**: none of the above, but drawn at ingest by the backlog's random sample (``--sample-p``, stratum
   "sample"), so reviews also measure the error rate of the cases nobody flagged (flag precision alone says
   nothing about what the flags miss).

Priority (:func:`priority`): out-of-distribution cases first (the furthest above their threshold first), then the
flagged cases by the deployed CSF's confidence over their flagged classes, lowest first (the saliency tier's
``confidence`` once analysed, else the logit tier's score; a case with neither comes after those with one), then
the sampled cases; within a group the oldest first. Only the newest :data:`SCAN_LIMIT` unreviewed candidates are
ranked (the queue says when it was cut).

An error (:func:`case_errors`) is a reviewed case whose label differs from the model's decision on any class the
reviewer labelled (the contract's decisions from the logits the record carries: what serving answered). Flag
precision of a version = errors among its reviewed flagged cases / its reviewed flagged cases; the sampled cases'
error rate is the unflagged baseline.

What a case page shows beyond the record: the upload drawn through the version's own preprocessing (what the model
saw; a volume's middle axial slice) at the maps' 160 pixels, and every class's saliency map. The worker keeps those
maps (one PNG per class in ``class_maps``: about 23 KB each for a DenseNet's map at 160 pixels, so 14 classes add
about 0.3 MB per analysed record, beside the upload the record already holds); records analysed before have only the
one thumbnail. The sampled cases come from the ingest sample (``--sample-p``, 10 % of unflagged records by default);
at volume they outnumber what reviewers can read, which is why they come last.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import sqlalchemy as sa

from medmlops.errors import NotFound, UserError
from medmlops.inference.record import CONTROL_CHARACTERS, RecordError, check_request_id, finite, iso
from medmlops.informer.scores import head_slices, logit_predictions, logit_probabilities
from medmlops.monitoring.performance import label_targets
from medmlops.monitoring.store import FLAGGED, SAMPLE, STRATA
from medmlops.monitoring.store.tables import class_maps, labels, records, results
from medmlops.registry.contract import ModelContract

ContractLookup = Callable[[str, str], tuple[ModelContract, Mapping[str, Any] | None]]
SCAN_LIMIT = 2000  # unreviewed candidates ranked per request (the newest)
NOTE_MAX_CHARS = 2000
IMAGE_SIZE = 160  # the original image is drawn at the saliency maps' size, so they line up side by side
# Reason kinds, in priority order.
OOD, CONFIDENCE, DEPLOYED, INFORMER, SAMPLED = (
    "out_of_distribution",
    "confidence",
    "deployed_flag",
    "informer",
    "sampled",
)
_GROUP = {OOD: 0, CONFIDENCE: 1, DEPLOYED: 1, INFORMER: 1, SAMPLED: 2}
_STUDY_KEYS = (("study_instance_uid", "StudyInstanceUID"), ("accession_number", "AccessionNumber"),
               ("study_id", "study id"))  # fmt: skip
_CSF_NAMES = {"msr": "MSR", "maxlogit": "max logit", "entropy": "entropy", "energy": "energy", "tta": "TTA"}


def parse_note(body: Any) -> str | None:
    """The optional ``note`` of a labels post: a string of at most :data:`NOTE_MAX_CHARS` characters, no control
    characters but newlines and tabs; RecordError (422) naming ``note`` otherwise. Empty → None."""
    if not isinstance(body, Mapping) or body.get("note") is None:
        return None
    note = body["note"]
    if not isinstance(note, str):
        raise RecordError("note", f"field 'note' must be a string, not {type(note).__name__}", error="bad_type")
    if len(note) > NOTE_MAX_CHARS:
        raise RecordError("note", f"field 'note' has {len(note)} characters; at most {NOTE_MAX_CHARS}",
                          error="bad_value")  # fmt: skip
    if CONTROL_CHARACTERS.search(note.replace("\n", " ").replace("\t", " ").replace("\r", " ")):
        raise RecordError("note", "field 'note' must not hold control characters (NUL, ...)", error="bad_value")
    return note.strip() or None


def short(name: str) -> str:
    """``findings/Edema`` → ``Edema``: the class as a reviewer reads it."""
    return name.rsplit("/", 1)[-1]


def csf_name(name: str | None) -> str:
    if not name:
        return "confidence"
    if name.startswith("informer_"):
        return f"INFORMER {name.removeprefix('informer_')}"
    return _CSF_NAMES.get(name, name)


def study_label(study: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The first identifier the hospital's systems know the case by: StudyInstanceUID, AccessionNumber, study id."""
    for key, words in _STUDY_KEYS:
        value = (study or {}).get(key)
        if value:
            return {"key": key, "name": words, "value": str(value)}
    return None


def _fmt(value: Any) -> str:
    return "?" if value is None else f"{float(value):.2f}"


def _against(value: Any, threshold: Any) -> str:
    """How a flagged class's confidence stands to its threshold (a flag is raised below it)."""
    if threshold is None:
        return ""
    if value is not None and float(value) < float(threshold):
        return f" below its threshold {_fmt(threshold)}"
    return f" (threshold {_fmt(threshold)})"


def _percent(share: Any) -> str:
    return f"{100 * float(share):.0f} %"


# -- why a case is in the queue ---------------------------------------------------------------------------------------


def reasons(row: Mapping[str, Any], informer: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Every reason ``row`` (:func:`candidate_rows`) is in the queue, most urgent first: ``{"kind", "text",
    "classes", "confidence"}`` (confidence: the lowest deployed-CSF confidence over the flagged classes, or None)."""
    informer = informer or {}
    out: list[dict[str, Any]] = []
    if row.get("in_distribution") is False:
        score, threshold = row.get("ood_score"), row.get("ood_threshold")
        excess = None if score is None or not threshold else float(score) / float(threshold)
        out.append({"kind": OOD, "classes": [], "confidence": None, "excess": excess,
                    "text": f"out of distribution: score {_fmt(score)} above the threshold {_fmt(threshold)} "
                            "(unlike the images the model was trained on)"})  # fmt: skip
    result = row.get("result") or {}
    operating = ((informer.get("csf") or {}).get("operating_point")) or {}
    budget = operating.get("review_budget")
    among = f", among the least confident {_percent(budget)} of validation predictions" if budget else ""
    # The deployed CSF on the saliency tier (what the worker flags with; INFORMER's own when no CSF was deployed).
    if result.get("flagged") and not result.get("csf"):
        result = {**result, "informer_flags": result.get("flags") or {}, "csf": "none"}
    elif result.get("flagged"):
        names = [c for c, f in (result.get("flags") or {}).items() if f]
        confidence = result.get("confidence") or {}
        tau = operating.get("tau") or []
        classes = list(result.get("classes") or [])
        lines = []
        for name in names:
            j = classes.index(name) if name in classes else None
            t = tau[j] if j is not None and j < len(tau) else None
            value = confidence.get(name)
            if value is None:
                lines.append(f"{short(name)} flagged")
            else:
                lines.append(f"{short(name)} {_fmt(value)}" + _against(value, t))
        values = [confidence[n] for n in names if confidence.get(n) is not None]
        out.append({"kind": DEPLOYED, "classes": names, "confidence": min(values) if values else None,
                    "text": f"confidence ({csf_name(result.get('csf'))}): " + "; ".join(lines) + among})  # fmt: skip
    # INFORMER's own distinctiveness flags (the paper's), when they differ from what the deployed CSF says.
    informer_flags = [c for c, f in (result.get("informer_flags") or {}).items() if f]
    if informer_flags and not str(result.get("csf")).startswith("informer_"):
        d, nearest = result.get("distinctiveness") or {}, result.get("nearest") or {}
        tau_d = informer.get("tau") or {}
        side = "below" if informer.get("direction", "low") == "low" else "above"
        lines = []
        for c in informer_flags:
            like = f"{short(nearest[c])}'s" if nearest.get(c) else "the other classes' maps"
            limit = tau_d.get(c) if isinstance(tau_d, Mapping) else None
            bound = f", {side} this class's threshold {_fmt(limit)}" if limit is not None else ""
            lines.append(
                f"the map of {short(c)} is nearly the same as {like} (distinctiveness {_fmt(d.get(c))}{bound})"
            )
        out.append({"kind": INFORMER, "classes": informer_flags, "confidence": None,
                    "text": "INFORMER: " + "; ".join(lines)})  # fmt: skip
    # The logit tier at ingest.
    logit_flags = [c for c, f in (row.get("logit_flags") or {}).items() if f]
    if logit_flags:
        logit = row.get("logit") or {}
        score = logit.get("score")
        values_by_class = ((logit.get("scores") or {}).get(score) or {}) if score else {}
        tier = informer.get("logit_tier") or {}
        tau = tier.get("tau") or []
        names_all = list(values_by_class)
        lines = []
        for name in logit_flags:
            j = names_all.index(name) if name in names_all else None
            t = tau[j] if j is not None and j < len(tau) else None
            value = values_by_class.get(name)
            lines.append(f"{short(name)} {_fmt(value)}" + _against(value, t))
        values = [values_by_class[n] for n in logit_flags if values_by_class.get(n) is not None]
        out.append({"kind": CONFIDENCE, "classes": logit_flags, "confidence": min(values) if values else None,
                    "text": f"confidence ({csf_name(score)}) at intake: " + "; ".join(lines) + among})  # fmt: skip
    if not out and row.get("stratum") == SAMPLE:
        p = row.get("sample_p")
        chance = f" (each case with probability {_percent(p)})" if p else ""
        out.append({"kind": SAMPLED, "classes": [], "confidence": None,
                    "text": f"sampled: not flagged, drawn at random at intake{chance}, so reviews also measure the "
                            "error rate of unflagged cases"})  # fmt: skip
    return out


def priority(found: list[dict[str, Any]], created_at: float) -> tuple[Any, ...]:
    """The sort key of a case from its :func:`reasons` (module docstring): group, then within out-of-distribution
    the excess over the threshold (largest first), within flagged the lowest confidence (lowest first), then age."""
    group = min((_GROUP[r["kind"]] for r in found), default=3)
    if group == 0:
        excess = max((r.get("excess") or 0.0 for r in found if r["kind"] == OOD), default=0.0)
        return (0, 0, -excess, created_at)
    if group == 1:
        values = [r["confidence"] for r in found if r.get("confidence") is not None]
        return (1, 0 if values else 1, min(values) if values else 0.0, created_at)
    return (group, 0, 0.0, created_at)


# -- the store's reads ------------------------------------------------------------------------------------------------


def _window(query: sa.Select, family: str | None, version: str | None) -> sa.Select:
    if family is not None:
        query = query.where(records.c.family == family)
    if version is not None:
        query = query.where(records.c.version == str(version))
    return query


_CASE_COLUMNS = (
    records.c.request_id, records.c.family, records.c.version, records.c.created_at, records.c.logits,
    records.c.logit, records.c.logit_flags, records.c.stratum, records.c.sample_p, records.c.in_distribution,
    records.c.ood_score, records.c.ood_threshold, records.c.study, records.c.status, records.c.predictions,
    results.c.flagged, results.c.result,
)  # fmt: skip


def candidate_rows(engine: sa.Engine, family: str | None, version: str | None, limit: int = SCAN_LIMIT) -> list[dict]:
    """The newest ``limit`` unreviewed records with a reason to be reviewed (out of distribution, flagged by either
    tier, or in the ingest sample)."""
    reason = sa.or_(records.c.in_distribution.is_(False), records.c.stratum.in_([FLAGGED, SAMPLE]),
                    results.c.flagged.is_(True))  # fmt: skip
    query = (
        sa.select(*_CASE_COLUMNS)
        .select_from(records.outerjoin(results).outerjoin(labels))
        .where(labels.c.request_id.is_(None), reason)
    )
    query = _window(query, family, version).order_by(records.c.created_at.desc(), records.c.request_id.desc())
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(query.limit(int(limit))).mappings()]


def reviewed_rows(engine: sa.Engine, family: str | None, version: str | None) -> list[dict]:
    """Every reviewed (labelled) record of the window, with what its flags and decisions need."""
    query = sa.select(*_CASE_COLUMNS, labels.c.labels, labels.c.note).select_from(
        records.join(labels).outerjoin(results)
    )
    with engine.connect() as connection:
        return [dict(r) for r in connection.execute(_window(query, family, version)).mappings()]


def case_row(engine: sa.Engine, request_id: str) -> dict | None:
    query = (
        sa.select(
            *_CASE_COLUMNS,
            records.c.correlation_id,
            labels.c.labels,
            labels.c.note,
            labels.c.received_at,
            (results.c.saliency_png.is_not(None)).label("has_saliency"),
        )  # fmt: skip
        .select_from(records.outerjoin(results).outerjoin(labels))
        .where(records.c.request_id == request_id)
    )
    with engine.connect() as connection:
        row = connection.execute(query).mappings().first()
        if row is None:
            return None
        maps = connection.execute(
            sa.select(class_maps.c.position, class_maps.c.class_name)
            .where(class_maps.c.request_id == request_id)
            .order_by(class_maps.c.position)
        ).all()
    return {**dict(row), "maps": {name: int(position) for position, name in maps}}


def class_map_png(engine: sa.Engine, request_id: str, position: int) -> bytes | None:
    query = sa.select(class_maps.c.png).where(
        (class_maps.c.request_id == request_id) & (class_maps.c.position == int(position))
    )
    with engine.connect() as connection:
        return connection.execute(query).scalar_one_or_none()


def upload_of(engine: sa.Engine, request_id: str) -> tuple[str, str, bytes] | None:
    query = sa.select(records.c.family, records.c.version, records.c.upload).where(records.c.request_id == request_id)
    with engine.connect() as connection:
        row = connection.execute(query).first()
    return None if row is None else (row[0], row[1], bytes(row[2]))


# -- decisions, errors, precision -------------------------------------------------------------------------------------


def decisions(contract: ModelContract, logits: Any) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(output names, probabilities, 0/1 decisions) of one record's logits, or None when they do not fit."""
    names = contract.output_names()
    if not isinstance(logits, list) or len(logits) != len(names):
        return None
    array = np.asarray(logits, dtype=np.float64)[None, :]
    if not np.all(np.isfinite(array)):
        return None
    probabilities = logit_probabilities(contract, array)
    return names, probabilities[0], logit_predictions(contract, probabilities)[0]


def thresholds(contract: ModelContract) -> list[float | None]:
    """Each output's decision threshold (None: the head's argmax decides)."""
    out: list[float | None] = []
    for spec, cols in head_slices(contract):
        width = cols.stop - cols.start
        given = list(spec.thresholds or [])
        for k in range(width):
            out.append(None if spec.kind == "multiclass" or k >= len(given) else float(given[k]))
    return out


def case_errors(contract: ModelContract, row: Mapping[str, Any]) -> bool | None:
    """Whether the reviewed ``row``'s labels disagree with the model's decision on any labelled class (None: its
    logits or labels cannot be compared)."""
    decided = decisions(contract, row.get("logits"))
    if decided is None:
        return None
    targets, _ = label_targets(contract, [row.get("labels")])
    known = np.isfinite(targets[0])
    if not known.any():
        return None
    return bool((targets[0][known] != decided[2][known]).any())


def _share(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def review_stats(rows: list[Mapping[str, Any]], lookup: ContractLookup) -> list[dict[str, Any]]:
    """Per (family, version) of the reviewed ``rows``: reviewed, errors, the realized error rate, flag precision
    (errors among reviewed flagged cases / reviewed flagged cases; per reason kind too) and the sampled cases'
    error rate (the unflagged baseline)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["family"], str(row["version"])), []).append(row)
    out = []
    for (family, version), members in sorted(groups.items()):
        try:
            contract, informer = lookup(family, version)
        except Exception:  # noqa: BLE001 - a version the registry cannot give: counted, not judged
            contract, informer = None, None
        kinds: dict[str, list[int]] = {k: [0, 0] for k in (OOD, CONFIDENCE, DEPLOYED, INFORMER, SAMPLED)}
        flagged, judged, errors = [0, 0], 0, 0
        for row in members:
            wrong = None if contract is None else case_errors(contract, row)
            if wrong is None:
                continue
            judged += 1
            errors += wrong
            found = {r["kind"] for r in reasons(row, informer)}
            if row.get("stratum") == SAMPLE and not found - {SAMPLED}:
                found = {SAMPLED}
            for kind in found:
                kinds[kind][0] += 1
                kinds[kind][1] += wrong
            if found & {OOD, CONFIDENCE, DEPLOYED, INFORMER}:
                flagged[0] += 1
                flagged[1] += wrong
        out.append({
            "family": family, "version": version, "reviewed": len(members), "judged": judged, "errors": errors,
            "error_rate": _share(errors, judged), "flagged_reviewed": flagged[0], "flagged_errors": flagged[1],
            "flag_precision": _share(flagged[1], flagged[0]),
            "by_reason": {k: {"reviewed": n, "errors": e, "error_rate": _share(e, n)} for k, (n, e) in kinds.items()},
            "sampled_error_rate": _share(kinds[SAMPLED][1], kinds[SAMPLED][0]),
            "contract": contract is not None,
        })  # fmt: skip
    return out


# -- the views --------------------------------------------------------------------------------------------------------


class Review:
    """The review queue over a store's engine and a contract lookup (the logit tier's cache: ``(family, version)
    -> (contract, informer section)``)."""

    def __init__(self, engine: sa.Engine, lookup: ContractLookup, *, preprocessors: int = 4) -> None:
        self.engine, self.lookup = engine, lookup
        self._preprocessors: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._size, self._lock = preprocessors, threading.Lock()

    def _informer(self, family: str, version: str) -> tuple[ModelContract | None, Mapping[str, Any] | None]:
        try:
            return self.lookup(family, version)
        except Exception:  # noqa: BLE001 - the registry cannot give it: the case is shown with what the record holds
            return None, None

    def queue(self, *, family: str | None = None, version: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Unreviewed cases in priority order (the first ``limit``), and per version what the reviews say."""
        for name, value in (("family", family), ("version", version)):
            if value is not None and CONTROL_CHARACTERS.search(value):
                raise UserError(f"query parameter '{name}' must not hold control characters (NUL, newline, ...)")
        rows = candidate_rows(self.engine, family, version)
        cases = []
        for row in rows:
            _, informer = self._informer(row["family"], str(row["version"]))
            found = reasons(row, informer)
            if not found:
                continue
            cases.append((priority(found, row["created_at"]), row, found))
        cases.sort(key=lambda c: c[0])
        counts = {kind: 0 for kind in (OOD, "flagged", SAMPLED)}
        for key, _row, _found in cases:
            counts[(OOD, "flagged", SAMPLED)[key[0]]] += 1
        listed = [self._summary(row, found) for _key, row, found in cases[:limit]]
        return finite({
            "family": family, "version": version, "total": len(cases), "counts": counts, "cases": listed,
            "scanned": len(rows), "truncated": len(rows) >= SCAN_LIMIT, "order": ORDER,
            "versions": review_stats(reviewed_rows(self.engine, family, version), self.lookup),
        })  # fmt: skip

    def _summary(self, row: Mapping[str, Any], found: list[dict[str, Any]]) -> dict[str, Any]:
        request_id = row["request_id"]
        contract, _ = self._informer(row["family"], str(row["version"]))
        decided = None if contract is None else decisions(contract, row.get("logits"))
        predicted = [short(n) for n, d in zip(decided[0], decided[2], strict=True) if d] if decided else None
        return {
            "request_id": request_id, "model": row["family"], "version": row["version"],
            "created_at": iso(row["created_at"]), "study": row.get("study"), "study_label": study_label(row.get("study")),
            "category": found[0]["kind"], "reasons": [r["text"] for r in found], "kinds": [r["kind"] for r in found],
            "predicted": predicted, "url": f"/review#case={request_id}",
        }  # fmt: skip

    def case(self, request_id: str) -> dict[str, Any] | None:
        """Everything the case page shows, or None when no such record is stored."""
        row = case_row(self.engine, request_id)
        if row is None:
            return None
        version = str(row["version"])
        contract, informer = self._informer(row["family"], version)
        found = reasons(row, informer)
        result = row.get("result") or {}
        decided = None if contract is None else decisions(contract, row.get("logits"))
        names = decided[0] if decided else list(result.get("classes") or [])
        limits = thresholds(contract) if contract is not None else [None] * len(names)
        flagged = {c for r in found for c in r["classes"]}
        confidence = result.get("confidence") or {}
        logit = row.get("logit") or {}
        intake = ((logit.get("scores") or {}).get(logit.get("score")) or {}) if logit.get("score") else {}
        classes = []
        for j, name in enumerate(names):
            position = row["maps"].get(name)
            classes.append({
                "name": name, "label": short(name),
                "probability": float(decided[1][j]) if decided else (result.get("probabilities") or {}).get(name),
                "predicted": int(decided[2][j]) if decided else (result.get("labels") or {}).get(name),
                "threshold": limits[j] if j < len(limits) else None,
                "flagged": name in flagged,
                "confidence": confidence.get(name, intake.get(name)),
                "distinctiveness": (result.get("distinctiveness") or {}).get(name),
                "map_like": short(like) if (like := (result.get("nearest") or {}).get(name)) else None,
                "map_url": None if position is None else f"/v1/records/{request_id}/maps/{position}.png",
                "label_given": (row.get("labels") or {}).get(name, (row.get("labels") or {}).get(short(name))),
            })  # fmt: skip
        predicted = [c["label"] for c in classes if c["predicted"] == 1]
        wrong = None if contract is None or not row.get("labels") else case_errors(contract, row)
        return finite({
            "request_id": request_id, "model": row["family"], "version": version,
            "created_at": iso(row["created_at"]), "correlation_id": row.get("correlation_id"),
            "study": row.get("study"), "study_label": study_label(row.get("study")),
            "status": row["status"], "analysed": row.get("result") is not None,
            "stratum": STRATA[row["stratum"]] if row.get("stratum") is not None else None,
            "reasons": [{"kind": r["kind"], "text": r["text"], "classes": [short(c) for c in r["classes"]]}
                        for r in found],
            "in_queue": bool(found) and row.get("labels") is None,
            "prediction": ", ".join(predicted) if predicted else "no class above its threshold",
            "csf": csf_name(result.get("csf") or logit.get("score")),
            "classes": classes, "image_url": f"/v1/records/{request_id}/image.png",
            "saliency_url": f"/v1/records/{request_id}/saliency.png" if row.get("has_saliency") else None,
            "saliency_class": result.get("saliency_class"),
            "maps_kept": bool(row["maps"]),
            "review": None if row.get("labels") is None else {
                "labels": row["labels"], "note": row.get("note"), "at": iso(row.get("received_at")), "error": wrong,
            },
            "ood": {"in_distribution": row.get("in_distribution"), "score": row.get("ood_score"),
                    "threshold": row.get("ood_threshold")},
        })  # fmt: skip

    def image_png(self, request_id: str) -> bytes | None:
        """The stored upload as the model saw it (the version's own preprocessing, from its contract), in grey at
        the maps' size; a volume shows its middle axial slice. None when no such record is stored; LookupError
        (contract unavailable) or the loader's InputError when it cannot be drawn."""
        found = upload_of(self.engine, request_id)
        if found is None:
            return None
        family, version, upload = found
        image = self._preprocessor(family, version).prepare(upload).image
        return grey_png(image)

    def _preprocessor(self, family: str, version: str) -> Any:
        from medmlops.inference.predict import Preprocessor

        key = (family, version)
        with self._lock:
            if key in self._preprocessors:
                self._preprocessors.move_to_end(key)
                return self._preprocessors[key]
        contract, _ = self.lookup(family, version)  # LookupError when the registry cannot give it
        made = Preprocessor(family, contract)
        with self._lock:
            self._preprocessors[key] = made
            while len(self._preprocessors) > self._size:
                self._preprocessors.popitem(last=False)
        return made

    def class_map(self, request_id: str, position: int) -> bytes | None:
        return class_map_png(self.engine, request_id, position)

    # -- what the HTTP routes answer (NotFound: 404 with a stable code and one sentence) ------------------------------

    def case_view(self, request_id: str) -> dict[str, Any]:
        check_request_id(request_id)
        view = self.case(request_id)
        if view is None:
            raise NotFound("unknown_request_id", f"no record {request_id} is stored")
        return view

    def image(self, request_id: str) -> bytes:
        from medmlops.inference.predict import InputError

        check_request_id(request_id)
        try:
            png = self.image_png(request_id)
        except LookupError as exc:
            raise NotFound("no_image", f"record {request_id}: its model version is not available ({exc})") from exc
        except InputError as exc:
            raise NotFound(
                "no_image", f"record {request_id}: the stored upload cannot be drawn ({exc.detail})"
            ) from exc
        if png is None:
            raise NotFound("unknown_request_id", f"no record {request_id} is stored")
        return png

    def map_png(self, request_id: str, position: int) -> bytes:
        check_request_id(request_id)
        png = self.class_map(request_id, position) if 0 <= position < 1 << 15 else None
        if png is None:
            raise NotFound(
                "no_class_map",
                f"record {request_id} has no saliency map of output {position} (not "
                "analysed yet, analysed before maps were kept, or no such output)",
            )
        return png


ORDER = (
    "out of distribution first (furthest above the threshold first); then flagged cases by the deployed confidence "
    "scoring function's confidence, lowest first; then cases sampled at random at intake; oldest first within each"
)


def grey_png(image: Any, size: int = IMAGE_SIZE) -> bytes:
    """A model input tensor ``(C, H, W)`` or ``(C, X, Y, Z)`` as a grey PNG (1st-99th percentile window, as the
    saliency maps draw it; a volume: its middle axial slice, rotated like the maps)."""
    from PIL import Image

    array = np.asarray(image.detach().cpu().double().numpy() if hasattr(image, "detach") else image, dtype=np.float64)
    pixels = array[0]
    if pixels.ndim == 3:
        pixels = np.rot90(pixels[..., pixels.shape[-1] // 2])
    lo, hi = np.percentile(pixels, [1, 99])
    grey = np.clip((pixels - lo) / max(hi - lo, 1e-9), 0, 1)
    picture = Image.fromarray((grey * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class ReviewCollector:
    """``medmlops_review_flag_precision`` and ``medmlops_review_error_rate`` per version (Prometheus)."""

    def __init__(self, review: Review) -> None:
        self.review = review

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        precision = GaugeMetricFamily(
            "medmlops_review_flag_precision",
            "Of the reviewed flagged cases of a version, the share that were real errors (label != prediction).",
            labels=["family", "version"],
        )
        error_rate = GaugeMetricFamily(
            "medmlops_review_error_rate",
            "Of the reviewed cases of a version, the share whose label differs from the prediction "
            "(kind: all, flagged, sampled).",
            labels=["family", "version", "kind"],
        )
        try:
            stats = review_stats(reviewed_rows(self.review.engine, None, None), self.review.lookup)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database blinked
            stats = []
        for s in stats:
            if s["flag_precision"] is not None:
                precision.add_metric([s["family"], s["version"]], s["flag_precision"])
            for kind, value in (("all", s["error_rate"]), ("flagged", s["flag_precision"]),
                                ("sampled", s["sampled_error_rate"])):  # fmt: skip
                if value is not None:
                    error_rate.add_metric([s["family"], s["version"], kind], value)
        yield from (precision, error_rate)
