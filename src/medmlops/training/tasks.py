"""Task definitions: how a manifest column becomes a target, a loss and a prediction.

- binary: one logit, BCE (ICH tasks).
- ordinal: K classes, K-1 logits trained with BCE on the cumulative encoding (ICH GCS: 0→[0,0], 1→[1,0],
  2→[1,1], Cobo et al.), decoded monotonically.
- multiclass: K logits, cross-entropy (MDMT: AIforCOVID prognosis and BRIXIA severity, Ruffini et al. Eq. 3).
- multilabel: K logits, BCE per label with NaN targets masked out (CheXpert U-Ignore).

Rows whose label is -1 (or NaN for multilabel) do not belong to the task: for MDMT this is the paper's
indicator function I(X_i, τ_j). How the tasks' row losses add up (per-task means, Cobo et al. Eq. 1, or one sum
over the batch, Ruffini et al. Eq. 2) is ``training.loop.multitask_loss``'s ``reduction``.
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
        if self.kind == "binary":
            return 1
        if self.kind == "ordinal":
            return len(self.classes) - 1
        return len(self.classes)

    def labelled(self, labels: torch.Tensor) -> torch.Tensor:
        """Mask of rows that belong to this task (the indicator function)."""
        if self.kind == "multilabel":
            return ~torch.isnan(labels.float()).all(dim=1)
        return labels >= 0

    def encode(self, labels: torch.Tensor) -> torch.Tensor:
        """Integer labels (B,) → BCE targets (B, out_features); rows with label -1 are masked by the loss."""
        labels = labels.long().clamp(min=0)
        if self.kind == "binary":
            return labels.float().unsqueeze(1)
        thresholds = torch.arange(1, len(self.classes), device=labels.device)
        return (labels.unsqueeze(1) >= thresholds).float()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's loss over the rows that have a label (mean over those rows)."""
        keep = self.labelled(labels)
        if not bool(keep.any()):
            return logits.sum() * 0.0
        logits, labels = logits[keep].float(), labels[keep]
        if self.kind == "multiclass":
            return F.cross_entropy(logits, labels.long())
        if self.kind == "multilabel":
            targets = labels.float()
            mask = ~torch.isnan(targets)
            per_element = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), reduction="none")
            return (per_element * mask).sum() / mask.sum().clamp(min=1)
        return F.binary_cross_entropy_with_logits(logits, self.encode(labels))

    def row_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One loss per batch row labelled for this task (I(X_i, τ) = 1), in row order; the other rows are left out.
        A row's loss is its cross-entropy (multiclass) or the mean BCE over its labelled outputs (binary, ordinal
        bits, multilabel findings), so ``row_losses(...).mean()`` equals :meth:`loss` for every kind but multilabel
        rows with different numbers of labelled findings."""
        keep = self.labelled(labels)
        logits, labels = logits[keep].float(), labels[keep]
        if self.kind == "multiclass":
            return F.cross_entropy(logits, labels.long(), reduction="none")
        if self.kind == "multilabel":
            targets = labels.float()
            mask = ~torch.isnan(targets)
            per_element = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), reduction="none")
            return (per_element * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return F.binary_cross_entropy_with_logits(logits, self.encode(labels), reduction="none").mean(dim=1)

    def probabilities(self, logits: torch.Tensor) -> np.ndarray:
        if self.kind == "multiclass":
            return torch.softmax(logits.float(), dim=1).detach().cpu().numpy()
        return torch.sigmoid(logits.float()).detach().cpu().numpy()

    def predict(self, probs: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
        """Labels from probabilities: binary at the threshold; ordinal = number of LEADING bits above threshold,
        so the decoded class is monotone even when a later bit fires without an earlier one."""
        probs = np.asarray(probs)
        if self.kind == "multiclass":
            return probs.argmax(axis=1).astype(np.int64)
        above = probs >= np.asarray(thresholds)
        if self.kind == "binary":
            return above[:, 0].astype(np.int64)
        if self.kind == "multilabel":
            return above.astype(np.int64)
        return np.cumprod(above, axis=1).sum(axis=1).astype(np.int64)


ICH_TASKS = {
    "prognosis": TaskDef("prognosis", "prognosis", "binary", ("good", "poor")),
    "gcs_binary": TaskDef("gcs_binary", "gcs_binary", "binary", ("GCS 9-15", "GCS 3-8")),
    "gcs_ordinal": TaskDef(
        "gcs_ordinal", "gcs_ordinal", "ordinal", ("mild GCS 13-15", "moderate GCS 9-12", "severe GCS 3-8")
    ),
    "age_binary": TaskDef("age_binary", "age_binary", "binary", ("age < 80", "age >= 80")),
}

COVID_TASKS = {
    # Ruffini et al.: τ1 AIforCOVID prognosis (MILD / SEVERE), τ2 BRIXIA global severity (4 classes), both CE.
    "prognosis": TaskDef("prognosis", "prognosis", "multiclass", ("MILD", "SEVERE")),
    "severity": TaskDef("severity", "severity", "multiclass", ("BS 0-4", "BS 5-8", "BS 9-13", "BS 14-18")),
}

CHEXPERT_TASKS = {
    "findings": TaskDef(
        "findings",
        "findings",
        "multilabel",
        ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"),
    ),
}

TASKS_BY_DATASET = {"ich": ICH_TASKS, "covid": COVID_TASKS, "chexpert": CHEXPERT_TASKS}


def resolve_tasks(dataset: str, names) -> dict[str, TaskDef]:
    from medmlops.config import ConfigError

    catalogue = TASKS_BY_DATASET.get(dataset, {})
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise ConfigError(
            f"unknown task '{unknown[0]}' for dataset {dataset} (expected one of: {', '.join(catalogue)})"
        )
    return {n: catalogue[n] for n in names}
