"""Task definitions: how a manifest column becomes a target, a loss and a prediction.

Binary tasks have one logit; ordinal tasks with K classes have K-1 logits trained with BCE on the cumulative
encoding (ICH GCS: 0→[0,0], 1→[1,0], 2→[1,1], Cobo et al.) and are decoded monotonically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TaskDef:
    name: str
    column: str  # manifest column with the integer label (-1 = missing)
    kind: str  # "binary" | "ordinal"
    classes: tuple[str, ...]

    @property
    def out_features(self) -> int:
        return 1 if self.kind == "binary" else len(self.classes) - 1

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """Integer labels (B,) → BCE targets (B, out_features); rows with label -1 are masked by the loss."""
        labels = labels.long().clamp(min=0)
        if self.kind == "binary":
            return labels.float().unsqueeze(1)
        thresholds = torch.arange(1, len(self.classes), device=labels.device)
        return (labels.unsqueeze(1) >= thresholds).float()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE-with-logits over the rows that have a label (all tasks of the paper are BCE)."""
        keep = labels >= 0
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[keep].float(), self.encode(labels[keep]))

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(logits.float()).detach().cpu().numpy()

    def predict(self, probs: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
        """Labels from probabilities: binary at the threshold; ordinal = number of LEADING bits above threshold,
        so the decoded class is monotone even when a later bit fires without an earlier one."""
        probs = np.asarray(probs)
        above = probs >= np.asarray(thresholds)
        if self.kind == "binary":
            return above[:, 0].astype(np.int64)
        return np.cumprod(above, axis=1).sum(axis=1).astype(np.int64)

    def score(self, probs: np.ndarray) -> np.ndarray:
        """A scalar score per row for AUC-type metrics (binary: p; ordinal: expected class / (K-1))."""
        probs = np.asarray(probs)
        return probs[:, 0] if self.kind == "binary" else probs.mean(axis=1)


ICH_TASKS = {
    "prognosis": TaskDef("prognosis", "prognosis", "binary", ("good", "poor")),
    "gcs_binary": TaskDef("gcs_binary", "gcs_binary", "binary", ("GCS 9-15", "GCS 3-8")),
    "gcs_ordinal": TaskDef("gcs_ordinal", "gcs_ordinal", "ordinal", ("mild GCS 13-15", "moderate GCS 9-12", "severe GCS 3-8")),
    "age_binary": TaskDef("age_binary", "age_binary", "binary", ("age < 80", "age >= 80")),
}

TASKS_BY_DATASET = {"ich": ICH_TASKS}


def resolve_tasks(dataset: str, names) -> dict[str, TaskDef]:
    from medmlops.config import ConfigError

    catalogue = TASKS_BY_DATASET.get(dataset, {})
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise ConfigError(f"unknown task '{unknown[0]}' for dataset {dataset} (expected one of: {', '.join(catalogue)})")
    return {n: catalogue[n] for n in names}
