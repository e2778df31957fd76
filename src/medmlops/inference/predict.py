"""Load a registered model with its contract and predict from uploaded image bytes: shared by serving and monitoring.

One code path from bytes to labels: the upload's format is recognised from its content (not its name), checked
against the contract's formats, written to a private temporary file and run through the *training* preprocessing
chain rebuilt from the contract's ``preprocessing`` block; the model's logits become per-task probabilities and
labels at the contract's thresholds (ordinal tasks decoded monotonically, as in training).

Everything wrong with an upload raises :class:`InputError` with a short ``error`` code and a ``detail`` sentence
naming the problem; a server turns it into a 4xx JSON answer.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmlops.config import ValidationConfig
from medmlops.inference.errors import InputError
from medmlops.inference.upload import Upload, deidentified_dicom, inspect_upload, sniff_format
from medmlops.registry.contract import ModelContract, TaskSpec

__all__ = ["InputError", "Predictor", "Preprocessor", "decode", "sniff_format"]

# Format → the suffix the readers expect, and the contract's accepted formats.
_SUFFIX = {"nifti": ".nii", "png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}
_ACCEPTS = {"nifti": {"nii", "nii.gz", "nifti"}, "png": {"png"}, "jpeg": {"jpg", "jpeg"}, "dicom": {"dcm", "dicom"},
            "zip": {"zip"}}  # fmt: skip


def preprocessing_chain(contract: ModelContract) -> list:
    """The deterministic training chain (with loading) rebuilt from the contract's ``preprocessing`` block."""
    prep = dict(contract.preprocessing)
    chain = prep.get("chain")
    if chain == "ct":
        from medmlops.data.ct_transforms import ct_transforms

        return ct_transforms(prep["spatial_size"], prep["window"], prep["skull_strip"], prep.get("orientation", "RAS"))
    if chain == "cxr":
        from medmlops.data.cxr import cxr_transforms

        return cxr_transforms(
            int(prep["size"]), lung_crop=bool(prep["lung_crop"]), percentiles=tuple(prep["percentiles"])
        )
    raise InputError("bad_contract", f"the model contract's preprocessing chain '{chain}' is unknown", status=500)


def _task_def(spec: TaskSpec):
    from medmlops.training.tasks import TaskDef

    return TaskDef(spec.name, spec.name, spec.kind, tuple(spec.classes))


def decode(contract: ModelContract, outputs: dict[str, torch.Tensor] | torch.Tensor) -> list[dict[str, Any]]:
    """Per sample, per task: ``probabilities`` (class → p; ``>=class`` cumulative for ordinal), ``label`` (at the
    contract's thresholds; ordinal = leading cumulative bits, monotone) and, for multilabel, ``labels``."""
    if isinstance(outputs, torch.Tensor):
        outputs = {contract.tasks[0].name: outputs}
    n = len(next(iter(outputs.values())))
    results: list[dict[str, Any]] = [{} for _ in range(n)]
    for spec in contract.tasks:
        task = _task_def(spec)
        probs = task.probabilities(outputs[spec.name])
        labels = task.predict(probs, np.asarray(spec.thresholds))
        for i in range(n):
            p = probs[i]
            if spec.kind == "binary":
                entry = {"probabilities": {spec.classes[0]: float(1 - p[0]), spec.classes[1]: float(p[0])},
                         "label": spec.classes[int(labels[i])]}  # fmt: skip
            elif spec.kind == "ordinal":
                entry = {"probabilities": {f">={c}": float(v) for c, v in zip(spec.classes[1:], p, strict=True)},
                         "label": spec.classes[int(labels[i])]}  # fmt: skip
            elif spec.kind == "multiclass":
                entry = {"probabilities": dict(zip(spec.classes, map(float, p), strict=True)),
                         "label": spec.classes[int(labels[i])]}  # fmt: skip
            else:
                positive = [c for c, flag in zip(spec.classes, labels[i], strict=True) if flag]
                entry = {"probabilities": dict(zip(spec.classes, map(float, p), strict=True)), "labels": positive}
            entry["thresholds"] = list(spec.thresholds)
            results[i][spec.name] = entry
    return results


@dataclass(frozen=True)
class Prepared:
    """One upload made ready: the model's input, what its header said, and the copy monitoring keeps (a DICOM
    without patient identifiers; a series as the NIfTI volume built from it; anything else as sent)."""

    image: torch.Tensor
    upload: Upload
    stored: bytes


def contract_limits(contract: ModelContract, default: ValidationConfig | None = None) -> ValidationConfig:
    """The validation suite's plausibility limits the version was registered with (its input gate), else ``default``."""
    base = default or ValidationConfig()
    if contract.input_gate is None or not contract.input_gate.limits:
        return base
    known = {f for f in ValidationConfig.__dataclass_fields__}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in contract.input_gate.limits.items() if k in known}
    return dataclasses.replace(base, **given)


@dataclass
class Preprocessor:
    """Upload bytes → the model's input tensor, exactly as training preprocessed its data (from the contract).

    The header is read and checked against the contract's input gate before any pixel is decoded
    (:mod:`medmlops.inference.upload`); a CT must hold Hounsfield units with air around the head (the validation
    suite's rule, :func:`medmlops.validation.images.ct_value_problems`).
    """

    family: str
    contract: ModelContract
    max_bytes: int = 64 * 1024 * 1024
    # Plausible raw image sizes, from the contract (the validation suite's at registration; params.yaml
    # ``validation`` defaults for versions registered before): a 1-voxel volume would otherwise be resized into a
    # "valid" input.
    limits: ValidationConfig | None = None
    max_zip_entries: int = 2048

    def __post_init__(self) -> None:
        from monai.transforms import Compose

        chain = preprocessing_chain(self.contract)
        self._load, self._rest = chain[0], Compose(chain[1:])
        self.limits = contract_limits(self.contract, self.limits)

    def accepted_formats(self) -> tuple[str, ...]:
        return tuple(self.contract.input.formats)

    def _check_raw_shape(self, shape: tuple[int, ...]) -> None:
        lim = self.limits
        if self.contract.input.modality == "ct":
            *inplane, slices = shape[-3:]
            ok = lim.ct_min_slices <= slices <= lim.ct_max_slices and all(
                lim.ct_min_inplane <= s <= lim.ct_max_inplane for s in inplane
            )
            ranges = (
                f"{lim.ct_min_inplane}-{lim.ct_max_inplane} in-plane, {lim.ct_min_slices}-{lim.ct_max_slices} slices"
            )
        else:
            ok = all(lim.cxr_min_size <= s <= lim.cxr_max_size for s in shape[-2:])
            ranges = f"{lim.cxr_min_size}-{lim.cxr_max_size} pixels per side"
        if not ok:
            raise InputError(
                "implausible_shape", f"the image has shape {list(shape[1:])}; {self.family} takes {ranges}"
            )

    def _check_ct_values(self, image: Any) -> None:
        from medmlops.validation.images import array_stats, ct_value_problems

        array = np.asarray(image, dtype=np.float32)
        problems = ct_value_problems(array_stats(array[0] if array.ndim == 4 else array, []), self.limits)
        if problems:
            raise InputError("not_hounsfield_units", f"{problems[0]}; {self.family} takes CT in Hounsfield units", 422)

    def __call__(self, data: bytes) -> torch.Tensor:
        """Upload bytes → the model's input tensor (contract shape), or InputError naming what is wrong."""
        return self.prepare(data).image

    def prepare(self, data: bytes) -> Prepared:
        """Upload bytes → :class:`Prepared`, or InputError naming what is wrong (before decoding when it can)."""
        if len(data) > self.max_bytes:
            raise InputError(
                "too_large", f"the upload has {len(data)} bytes; the limit is {self.max_bytes}", status=413
            )
        fmt = sniff_format(data)
        formats = {f.lstrip(".").lower() for f in self.accepted_formats()}
        if not _ACCEPTS[fmt] & formats:
            sent = "a zip (a DICOM series)" if fmt == "zip" else fmt.upper()
            raise InputError(
                "wrong_modality",
                f"model {self.family} takes {', '.join(self.accepted_formats())} images; the upload is {sent}",
                status=415,
            )
        upload = inspect_upload(data, self.family, self.contract.input_gate)
        stored = deidentified_dicom(data) if fmt == "dicom" else data
        with tempfile.TemporaryDirectory(prefix="medmlops-upload-") as tmp:
            if fmt == "zip":
                upload, stored = self._series(data)
                path = Path(tmp) / "upload.nii.gz"
                path.write_bytes(stored)
            else:
                suffix = ".nii.gz" if fmt == "nifti" and data[:2] == b"\x1f\x8b" else _SUFFIX[fmt]
                path = Path(tmp) / f"upload{suffix}"  # our name: a client's file name never becomes a path
                path.write_bytes(data)
            try:
                item = self._load({"image": str(path), "sample_id": "upload"})
                self._check_raw_shape(tuple(item["image"].shape))
                if self.contract.input.modality == "ct":
                    self._check_ct_values(item["image"])
                item = self._rest(item)
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - MONAI wraps reader errors in RuntimeError chains
                text = _root_message(exc).replace(str(path), "the upload")  # never show our temporary paths
                code = "non_finite" if "NaN/Inf" in text else "unreadable_image"
                raise InputError(code, text) from exc
        image = torch.as_tensor(item["image"], dtype=torch.float32)
        expected = tuple(self.contract.input.shape)
        if tuple(image.shape) != expected:
            raise InputError(
                "wrong_shape", f"the preprocessed image has shape {list(image.shape)}, the model needs {list(expected)}"
            )
        if not torch.isfinite(image).all():
            raise InputError("non_finite", "the image contains NaN or infinite values")
        return Prepared(image, upload, stored)

    def _series(self, data: bytes) -> tuple[Upload, bytes]:
        """A zip of one CT series → (what its headers said, the volume as gzipped NIfTI in the training geometry)."""
        import gzip

        import nibabel as nib

        from medmlops.data.dicom_series import SeriesError, SeriesLimits, read_series_zip
        from medmlops.inference.upload import check_header, check_pixels, study_identity

        gate = self.contract.input_gate
        max_voxels = gate.max_pixels if gate is not None else SeriesLimits().max_voxels
        limits = SeriesLimits(max_entries=self.max_zip_entries, max_inflated_bytes=max_voxels * 4 + (16 << 20),
                              max_voxels=max_voxels)  # fmt: skip
        try:
            volume, header = read_series_zip(data, limits)
        except SeriesError as exc:
            raise InputError(exc.code, str(exc), exc.status) from exc
        upload = Upload("zip", tuple(volume.array.shape), dict(header), study_identity(header))
        if gate is not None:
            check_pixels(upload.pixels, upload.shape, self.family, gate)
            check_header({**header, "SamplesPerPixel": "1", "NumberOfFrames": "1"}, self.family, gate)
        image = nib.Nifti1Image(volume.array.astype(np.float32), volume.affine)
        return upload, gzip.compress(image.to_bytes(), compresslevel=1)


def flatten_outputs(contract: ModelContract, outputs: dict[str, torch.Tensor] | torch.Tensor) -> np.ndarray:
    """The model's outputs as one (N, total logits) float32 array, tasks in contract order (for batching)."""
    if isinstance(outputs, torch.Tensor):
        outputs = {contract.tasks[0].name: outputs}
    return np.concatenate([outputs[t.name].detach().float().cpu().numpy() for t in contract.tasks], axis=1)


def split_outputs(contract: ModelContract, logits: np.ndarray) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten_outputs`."""
    out, start = {}, 0
    for task in contract.tasks:
        out[task.name] = torch.as_tensor(np.asarray(logits)[:, start : start + task.n_logits], dtype=torch.float32)
        start += task.n_logits
    return out


@dataclass
class Predictor:
    """A model version with its contract, ready to turn uploads into predictions."""

    family: str
    version: str
    contract: ModelContract
    model: torch.nn.Module
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    max_bytes: int = 64 * 1024 * 1024
    limits: ValidationConfig = field(default_factory=lambda: ValidationConfig())

    def __post_init__(self) -> None:
        self.preprocess = Preprocessor(self.family, self.contract, self.max_bytes, self.limits)
        self.model.to(self.device).eval()

    @classmethod
    def from_registry(
        cls,
        family: str,
        alias: str = "champion",
        *,
        device: str | None = None,
        max_bytes: int = 64 * 1024 * 1024,
        limits: ValidationConfig | None = None,
    ) -> Predictor:
        """Load ``models:/family@alias`` (MLflow from the environment); raises ModelNotFoundError in one sentence."""
        from medmlops.registry.tracking import load_model

        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, contract, version = load_model(family, alias, device=target)
        return cls(family, version, contract, model, target, max_bytes, limits or ValidationConfig())

    @torch.no_grad()
    def forward(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Preprocessed images (N, *contract shape) → logits (N, total logits), tasks in contract order."""
        return self.forward_scored(batch)[0]

    @property
    def ood_reference(self) -> dict[str, Any] | None:
        """The contract's out-of-distribution reference (:mod:`medmlops.inference.ood`); None when it has none."""
        gate = self.contract.input_gate
        return gate.ood if gate is not None and gate.ood and "projection" in gate.ood else None

    @torch.no_grad()
    def forward_scored(self, batch: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass → (logits (N, total logits), out-of-distribution scores (N,)): the embedding is taken
        from the same pass (:func:`medmlops.inference.ood.forward_with_embedding`); scores are NaN when the
        version has no reference."""
        from medmlops.inference import ood

        x = torch.as_tensor(batch, dtype=torch.float32).to(self.device)
        reference = self.ood_reference
        with torch.autocast(device_type=self.device.type, enabled=self.device.type == "cuda"):
            if reference is None:
                outputs, emb = self.model(x), None
            else:
                outputs, emb = ood.forward_with_embedding(self.model, x)
        logits = flatten_outputs(self.contract, outputs)
        scores = np.full(len(logits), np.nan)
        if emb is not None:
            if getattr(self, "_ood_scorer", None) is None or self._ood_scorer.reference is not reference:
                self._ood_scorer = ood.Scorer(reference)
            scores = self._ood_scorer(emb.float().cpu().numpy())
        return logits, scores

    def predict_tensors(self, images: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        """One forward pass over a batch of preprocessed images; decoded per sample."""
        return decode(self.contract, split_outputs(self.contract, self.forward(torch.stack(list(images)))))

    def predict_bytes(self, data: bytes) -> dict[str, Any]:
        return self.predict_tensors([self.preprocess(data)])[0]


def _root_message(exc: BaseException) -> str:
    """The innermost error's message, on one line (MONAI nests the reader's error several levels deep)."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(seen).split()) or type(seen).__name__
    return f"the image cannot be read: {text[:300]}"
