"""The model contract: a JSON document registered with every model version.

Serving, monitoring and evaluation read the input shape, the task and class names, the prediction thresholds and
the INFORMER calibration from here; nothing downstream hard-codes them (MONAI bundles' ``metadata.json`` habit).

Output logits per task kind (the same encoding as :mod:`medmlops.training.tasks`):

* ``binary``: ``classes`` is ``(negative, positive)``; one logit, the positive class's.
* ``ordinal``: K ordered classes; K-1 cumulative logits, logit k meaning "class >= classes[k]"
  (ICH GCS, Cobo et al.); decoded as the count of leading logits above their thresholds.
* ``multiclass``: K classes; K softmax logits.
* ``multilabel``: K independent findings; K sigmoid logits (CheXpert, Shu et al.).

``thresholds`` holds one probability threshold per output logit (0.5, or Youden's index fitted on validation).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal, get_args

from medmlops.errors import UserError

SCHEMA_VERSION = 1
TaskKind = Literal["binary", "ordinal", "multiclass", "multilabel"]
Modality = Literal["ct", "xray"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)
MODALITIES: tuple[str, ...] = get_args(Modality)
# Spatial dimensions of the model input per modality: CT volumes are (C, D, H, W), radiographs (C, H, W).
_SPATIAL_DIMS = {"ct": 3, "xray": 2}


class ContractError(UserError, ValueError):
    """An invalid or inconsistent model contract; the message names the field."""


@dataclass(frozen=True)
class TaskSpec:
    """One output head: its name (the key of the model's output dict), kind, class names and thresholds."""

    name: str
    kind: TaskKind
    classes: tuple[str, ...]
    thresholds: tuple[float, ...]  # one per output logit

    @property
    def n_logits(self) -> int:
        """Number of output logits of this head (see the module docstring for the encoding)."""
        if self.kind == "binary":
            return 1
        if self.kind == "ordinal":
            return len(self.classes) - 1
        return len(self.classes)

    def logit_names(self) -> list[str]:
        """Names of this head's logits, ``task/class`` (ordinal: ``task/>=class``)."""
        if self.kind == "binary":
            return [f"{self.name}/{self.classes[-1]}"]
        if self.kind == "ordinal":
            return [f"{self.name}/>={c}" for c in self.classes[1:]]
        return [f"{self.name}/{c}" for c in self.classes]

    def _validate(self, where: str) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ContractError(f"model contract: {where}.name must be a non-empty string")
        if self.kind not in TASK_KINDS:
            raise ContractError(
                f"model contract: {where}.kind '{self.kind}' is unknown (expected one of: {', '.join(TASK_KINDS)})"
            )
        if not self.classes or not all(isinstance(c, str) and c.strip() for c in self.classes):
            raise ContractError(f"model contract: {where}.classes must be a non-empty list of non-empty names")
        if len(set(self.classes)) != len(self.classes):
            raise ContractError(f"model contract: {where}.classes has duplicate names {list(self.classes)}")
        minimum = {"binary": 2, "ordinal": 2, "multiclass": 2, "multilabel": 1}[self.kind]
        if self.kind == "binary" and len(self.classes) != 2:
            raise ContractError(
                f"model contract: {where}.classes of binary task '{self.name}' must be (negative, positive), "
                f"got {len(self.classes)} names"
            )
        if len(self.classes) < minimum:
            raise ContractError(
                f"model contract: {where}.classes of {self.kind} task '{self.name}' needs at least {minimum} classes"
            )
        if len(self.thresholds) != self.n_logits:
            raise ContractError(
                f"model contract: {where}.thresholds has {len(self.thresholds)} values but {self.kind} task "
                f"'{self.name}' with {len(self.classes)} classes has {self.n_logits} output logits (one threshold each)"
            )
        for t in self.thresholds:
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or not 0.0 <= t <= 1.0:
                raise ContractError(
                    f"model contract: {where}.thresholds must be finite probabilities in [0, 1], got {t!r}"
                )


@dataclass(frozen=True)
class InputSpec:
    """What the model accepts: modality, file formats, and the tensor the preprocessing produces."""

    modality: Modality
    formats: tuple[str, ...]  # accepted upload formats, e.g. ("nii", "nii.gz") or ("png", "jpeg", "dicom")
    shape: tuple[int, ...]  # one model input without the batch axis: (C, D, H, W) for CT, (C, H, W) for X-ray
    spacing_mm: tuple[float, ...] | None  # resampled voxel/pixel spacing, one per spatial axis
    intensity_window: tuple[float, float] | None  # e.g. HU (15, 100) scaled to [0, 1]
    channels: int

    def _validate(self) -> None:
        if self.modality not in MODALITIES:
            raise ContractError(
                f"model contract: input.modality '{self.modality}' is unknown (expected one of: {', '.join(MODALITIES)})"
            )
        if not self.formats or not all(isinstance(f, str) and f.strip() for f in self.formats):
            raise ContractError("model contract: input.formats must list at least one file format")
        spatial = _SPATIAL_DIMS[self.modality]
        if len(self.shape) != spatial + 1:
            raise ContractError(
                f"model contract: input.shape {list(self.shape)} must have {spatial + 1} dimensions "
                f"(channels + {spatial} spatial) for modality '{self.modality}'"
            )
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in self.shape):
            raise ContractError(f"model contract: input.shape {list(self.shape)} must hold positive integers")
        if isinstance(self.channels, bool) or not isinstance(self.channels, int) or self.channels != self.shape[0]:
            raise ContractError(
                f"model contract: input.channels {self.channels!r} must equal input.shape[0] ({self.shape[0]})"
            )
        if self.spacing_mm is not None and (
            len(self.spacing_mm) != spatial or not all(_finite(s) and s > 0 for s in self.spacing_mm)
        ):
            raise ContractError(
                f"model contract: input.spacing_mm {list(self.spacing_mm)} must hold {spatial} positive finite values"
            )
        if self.intensity_window is not None and (
            len(self.intensity_window) != 2
            or not all(_finite(v) for v in self.intensity_window)
            or not self.intensity_window[0] < self.intensity_window[1]
        ):
            raise ContractError(
                f"model contract: input.intensity_window {list(self.intensity_window)} must be [low, high] "
                "with finite low < high"
            )


@dataclass(frozen=True)
class InputGate:
    """What the model takes beyond its formats: the serving door checks it before decoding an upload.

    ``modalities`` … ``max_frames`` are DICOM header rules (empty tuple: any value; body part and view are checked
    where the header has them). ``max_pixels`` bounds the decoded pixels (X-ray) or voxels (CT) of one upload,
    read from the header. ``limits`` are the validation suite's plausibility ranges at registration
    (:class:`medmlops.config.ValidationConfig` fields: sizes, and for CT the Hounsfield-unit rule). ``ood`` is the
    out-of-distribution reference: ``action`` (``warn`` | ``refuse``), ``percentile``, ``threshold`` and what
    scoring needs (see :mod:`medmlops.inference.ood`); None when the version has none.
    """

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    view_positions: tuple[str, ...] = ()
    photometric: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
    samples_per_pixel: int = 1
    max_frames: int = 1
    raster: bool = True
    max_pixels: int = 4096 * 4096
    limits: dict[str, Any] = field(default_factory=dict)
    ood: dict[str, Any] | None = None

    def _validate(self) -> None:
        for name in ("modalities", "body_parts", "view_positions", "photometric"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) and v.strip() for v in value):
                raise ContractError(f"model contract: input_gate.{name} must be a list of non-empty strings")
        for name in ("samples_per_pixel", "max_frames", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ContractError(f"model contract: input_gate.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.raster, bool):
            raise ContractError("model contract: input_gate.raster must be true or false")
        if not isinstance(self.limits, dict):
            raise ContractError("model contract: input_gate.limits must be a mapping")
        if self.ood is not None:
            if not isinstance(self.ood, dict):
                raise ContractError("model contract: input_gate.ood must be a mapping or null")
            if self.ood.get("action") not in ("warn", "refuse"):
                raise ContractError(
                    f"model contract: input_gate.ood.action must be 'warn' or 'refuse', got {self.ood.get('action')!r}"
                )


@dataclass(frozen=True)
class ModelContract:
    """The machine-readable input/output contract of one registered model version."""

    family: str
    tasks: tuple[TaskSpec, ...]
    input: InputSpec
    preprocessing: dict[str, Any]
    data_version: str
    git_commit: str
    metrics: dict[str, float]
    informer: dict[str, Any] | None = None  # INFORMER calibration: per-class tau, direction, saliency method, ...
    input_gate: InputGate | None = None  # what serving takes beyond the formats; None: versions registered before it
    experiment: str = ""
    created_at: str = ""  # ISO 8601, UTC; filled in at registration when empty
    schema_version: int = SCHEMA_VERSION

    # ---------------------------------------------------------------------------------------------------------------
    # Queries
    # ---------------------------------------------------------------------------------------------------------------

    def task(self, name: str) -> TaskSpec:
        """The task called ``name``; ContractError naming the known tasks otherwise."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise ContractError(
            f"model contract of '{self.family}' has no task '{name}' (tasks: {', '.join(self.task_names())})"
        )

    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def output_names(self) -> list[str]:
        """Every output logit's name in model order: tasks in contract order, each task's logits in order."""
        return [name for t in self.tasks for name in t.logit_names()]

    # ---------------------------------------------------------------------------------------------------------------
    # Validation
    # ---------------------------------------------------------------------------------------------------------------

    def validate(self) -> ModelContract:
        """Check every field; return ``self`` so calls chain.

        Raises:
            ContractError: the first invalid field, named in one sentence.
        """
        if self.schema_version != SCHEMA_VERSION:
            raise ContractError(
                f"model contract: schema_version {self.schema_version!r} is not supported (expected {SCHEMA_VERSION})"
            )
        if not isinstance(self.family, str) or not self.family.strip():
            raise ContractError("model contract: family must be a non-empty string")
        if not self.tasks:
            raise ContractError("model contract: tasks is empty (a model needs at least one output head)")
        seen: set[str] = set()
        for i, task in enumerate(self.tasks):
            if not isinstance(task, TaskSpec):
                raise ContractError(f"model contract: tasks[{i}] must be a TaskSpec, got {type(task).__name__}")
            task._validate(f"tasks[{i}]")
            if task.name in seen:
                raise ContractError(f"model contract: tasks[{i}].name '{task.name}' is used by two tasks")
            seen.add(task.name)
        if not isinstance(self.input, InputSpec):
            raise ContractError(f"model contract: input must be an InputSpec, got {type(self.input).__name__}")
        self.input._validate()
        if not isinstance(self.preprocessing, dict):
            raise ContractError("model contract: preprocessing must be a mapping of parameter name to value")
        for name in ("data_version", "git_commit", "experiment", "created_at"):
            if not isinstance(getattr(self, name), str):
                raise ContractError(f"model contract: {name} must be a string")
        if not isinstance(self.metrics, dict):
            raise ContractError("model contract: metrics must be a mapping of metric name to number")
        for key, value in self.metrics.items():
            # The contract is strict JSON read by other services: NaN/Infinity are not JSON. Drop undefined
            # metrics (e.g. AUC on a single-class fold) before registering instead.
            if not _finite(value):
                raise ContractError(f"model contract: metrics.{key} must be a finite number, got {value!r}")
        if self.informer is not None and not isinstance(self.informer, dict):
            raise ContractError("model contract: informer must be a mapping or null")
        if self.input_gate is not None:
            if not isinstance(self.input_gate, InputGate):
                raise ContractError(
                    f"model contract: input_gate must be an InputGate, got {type(self.input_gate).__name__}"
                )
            self.input_gate._validate()
        try:
            self.to_json()
        except (TypeError, ValueError) as exc:
            raise ContractError(
                f"model contract: preprocessing or informer holds a value JSON cannot store ({exc})"
            ) from exc
        return self

    # ---------------------------------------------------------------------------------------------------------------
    # Serialisation
    # ---------------------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self)}
        out["tasks"] = [_plain(asdict(t)) for t in self.tasks]
        out["input"] = _plain(asdict(self.input))
        out["input_gate"] = None if self.input_gate is None else _plain(asdict(self.input_gate))
        return out

    def to_json(self, indent: int | None = 2) -> str:
        # allow_nan=False: the JSON must parse in any language (browsers, Go), which reject NaN.
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, validate: bool = True) -> ModelContract:
        """Build a contract from parsed JSON; lists become tuples. Unknown or missing keys are ContractErrors."""
        if not isinstance(data, dict):
            raise ContractError(f"model contract must be a JSON object, got {type(data).__name__}")
        _check_keys(data, cls, "")
        if not isinstance(data["tasks"], list | tuple):
            raise ContractError("model contract: tasks must be a list")
        tasks = []
        for i, raw in enumerate(data["tasks"]):
            if not isinstance(raw, dict):
                raise ContractError(f"model contract: tasks[{i}] must be an object")
            _check_keys(raw, TaskSpec, f"tasks[{i}].")
            tasks.append(
                TaskSpec(
                    name=raw["name"],
                    kind=raw["kind"],
                    classes=_tuple(raw["classes"], f"tasks[{i}].classes"),
                    thresholds=_tuple(raw["thresholds"], f"tasks[{i}].thresholds"),
                )
            )
        raw_input = data["input"]
        if not isinstance(raw_input, dict):
            raise ContractError("model contract: input must be an object")
        _check_keys(raw_input, InputSpec, "input.")
        spacing = raw_input["spacing_mm"]
        window = raw_input["intensity_window"]
        spec = InputSpec(
            modality=raw_input["modality"],
            formats=_tuple(raw_input["formats"], "input.formats"),
            shape=_tuple(raw_input["shape"], "input.shape"),
            spacing_mm=None if spacing is None else _tuple(spacing, "input.spacing_mm"),
            intensity_window=None if window is None else _tuple(window, "input.intensity_window"),  # type: ignore[arg-type]
            channels=raw_input["channels"],
        )
        gate = data.get("input_gate")
        if gate is not None:
            if not isinstance(gate, dict):
                raise ContractError("model contract: input_gate must be an object or null")
            _check_keys(gate, InputGate, "input_gate.")
            listed = {"modalities", "body_parts", "view_positions", "photometric"}
            gate = InputGate(**{k: _tuple(v, f"input_gate.{k}") if k in listed else v for k, v in gate.items()})
        kwargs = {k: v for k, v in data.items() if k not in ("tasks", "input", "input_gate")}
        contract = cls(tasks=tuple(tasks), input=spec, input_gate=gate, **kwargs)
        return contract.validate() if validate else contract

    @classmethod
    def from_json(cls, text: str, *, validate: bool = True) -> ModelContract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"model contract is not valid JSON ({exc})") from exc
        return cls.from_dict(data, validate=validate)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _tuple(value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ContractError(f"model contract: {where} must be a list, got {value!r}")
    return tuple(value)


def _check_keys(data: dict[str, Any], cls: type, prefix: str) -> None:
    known = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.init and f.default is MISSING and f.default_factory is MISSING]
    for key in data:
        if key not in known:
            raise ContractError(f"model contract: unknown key '{prefix}{key}' (expected one of: {', '.join(known)})")
    for key in required:
        if key not in data:
            raise ContractError(f"model contract: missing key '{prefix}{key}'")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
