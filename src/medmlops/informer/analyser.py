"""A registered model version with its INFORMER calibration, turning images into per-image INFORMER results.

:class:`Analyser` runs :func:`~medmlops.informer.outputs.compute_outputs` (the computation shared with calibration
and evaluation), applies the calibration (thresholds, PCA of the embedding) and shapes one JSON result per image for
the monitoring service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medmlops.informer import csf
from medmlops.informer.outputs import compute_outputs, feature_frame, flags_from_calibration
from medmlops.interpret.figures import saliency_png
from medmlops.interpret.saliency import LogitsModel
from medmlops.registry.contract import ModelContract


@dataclass
class Analyser:
    """INFORMER for one model version: :meth:`analyse_bytes` (uploads) or :meth:`analyse_tensors` (preprocessed).

    Attributes:
        calibration: the version's stored calibration (:mod:`medmlops.informer.calibrate`); ``None`` when the
            version was never calibrated: distinctiveness is still computed, every flag is False and each result
            says ``"calibrated": False``.

    ``flags`` in a result are the deployed confidence scoring function's (the calibration's ``csf.selected`` at
    its operating point, :mod:`medmlops.informer.csf`): the flag monitoring counts and reviewers see.
    ``informer_flags`` are INFORMER's thresholded ``d_c`` as the paper defines it, always reported beside them.
    A calibration made before the CSFs existed has no ``csf`` section: its flags are INFORMER's.
    """

    family: str
    version: str
    contract: ModelContract
    model: torch.nn.Module
    calibration: dict | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        from medmlops.inference.predict import Preprocessor

        self.logits_model = LogitsModel(self.model, self.contract.task_names()).eval()
        self.classes = self.contract.output_names()
        self.method = self.method or (self.calibration or {}).get("method", "ixg")
        self.preprocess = Preprocessor(self.family, self.contract)
        section = (self.calibration or {}).get("csf")
        self.csf_name = section["selected"] if section else f"informer_{self.method}"
        self.csf = csf.get(self.csf_name, section["method"] if section else self.method)
        self.csf_state = (section or {}).get("states", {}).get(self.csf_name)
        self.csf_tau = section["operating_point"]["tau"] if section else None
        # The saliency methods to run: the monitored one, and the deployed CSF's if that is another INFORMER method.
        extra = self.csf_name.removeprefix("informer_") if self.csf_name.startswith("informer_") else None
        self.methods = tuple(dict.fromkeys([self.method] + ([extra] if extra and extra != "learned" else [])))
        self.tta_samples = int((self.calibration or {}).get("tta_samples", 0)) if self.csf_name == "tta" else 0

    @classmethod
    def from_registry(cls, family: str, version: str, *, device: str | None = None) -> Analyser:
        """Load ``models:/family/version`` and its calibration (MLflow from the environment)."""
        from medmlops.informer.calibrate import load_calibration
        from medmlops.registry.tracking import load_model

        model, contract, resolved = load_model(family, str(version), device=device or "cpu")
        return cls(family, resolved, contract, model, load_calibration(family, resolved, contract))

    def analyse_bytes(self, uploads: Sequence[bytes]) -> list[dict[str, Any] | Exception]:
        """One batched pass over the uploads that preprocess; an upload that cannot be read gets its InputError."""
        from medmlops.inference.predict import InputError

        slots: list[dict[str, Any] | Exception | None] = [None] * len(uploads)
        images, where = [], []
        for i, data in enumerate(uploads):
            try:
                images.append(self.preprocess(data))
                where.append(i)
            except InputError as exc:
                slots[i] = exc
        if images:
            for i, result in zip(where, self.analyse_tensors(torch.stack(images)), strict=True):
                slots[i] = result
        return slots  # type: ignore[return-value]

    def analyse_tensors(self, images: torch.Tensor) -> list[dict[str, Any]]:
        outputs = compute_outputs(
            self.logits_model, self.contract, images, methods=self.methods, tta_samples=self.tta_samples,
            keep_maps=True,
        )  # fmt: skip
        features = feature_frame(outputs, self.classes, self.calibration, self.method)
        informer_flags = flags_from_calibration(outputs, self.calibration, self.method)
        confidence = self.csf.confidence(outputs, self.contract, self.csf_state) if self.csf_tau else None
        flags = informer_flags if confidence is None else csf.flags(confidence, self.csf_tau)
        maps = outputs["maps"][self.method]
        results = []
        for i in range(len(images)):
            d = outputs["d"][self.method][i]
            # The thumbnail shows the flagged class with the least distinctive map, else the most probable class.
            focus = (
                int(np.argmin(np.where(flags[i], d, np.inf)))
                if flags[i].any()
                else int(outputs["probabilities"][i].argmax())
            )
            results.append({
                "family": self.family, "version": self.version, "calibrated": self.calibration is not None,
                "method": self.method, "classes": list(self.classes),
                "probabilities": _named(self.classes, outputs["probabilities"][i]),
                "labels": {c: int(v) for c, v in zip(self.classes, outputs["predictions"][i], strict=True)},
                "distinctiveness": _named(self.classes, d),
                # Whose map each class's map is most like (smallest cosine distance): what a low d_c means, in words.
                "nearest": _nearest(self.classes, outputs["cos"][self.method][i]),
                "flags": {c: bool(v) for c, v in zip(self.classes, flags[i], strict=True)},
                "flagged": bool(flags[i].any()),
                "csf": self.csf_name,
                **({} if confidence is None else {"confidence": _named(self.classes, confidence[i])}),
                "informer_flags": {c: bool(v) for c, v in zip(self.classes, informer_flags[i], strict=True)},
                "entropy": _named(self.classes, outputs["entropy"][i]),
                "msr": _named(self.classes, outputs["msr"][i]),
                "features": {k: float(v) for k, v in features.iloc[i].items()},
                "saliency_class": self.classes[focus],
                "saliency_png": saliency_png(images[i], maps[i, focus]),
                # Every class's map, for the review page; stored apart from the result (one small PNG per class).
                "class_pngs": [saliency_png(images[i], maps[i, j]) for j in range(len(self.classes))],
            })  # fmt: skip
        return results


def _nearest(classes: Sequence[str], pairs: np.ndarray) -> dict[str, str]:
    """Each class → the other class whose saliency map is closest to its own, from the pairwise cosine distances
    (``scores.pairwise_distances``: the upper triangle, row-major); empty for one class."""
    n = len(classes)
    if n < 2:
        return {}
    distance = np.full((n, n), np.inf)
    rows, cols = np.triu_indices(n, k=1)
    distance[rows, cols] = distance[cols, rows] = np.asarray(pairs, dtype=np.float64)
    return {c: classes[int(np.argmin(distance[k]))] for k, c in enumerate(classes)}


def _named(classes: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {c: float(v) for c, v in zip(classes, values, strict=True)}
