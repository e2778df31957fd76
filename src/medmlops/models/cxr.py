"""2D chest X-ray models: the MDMT COVID-19 prognosis/severity model (Ruffini et al.) and the 5-finding
CheXpert DenseNet-121 that INFORMER (Shu et al.) monitors.

Both keep the uniform surface of :mod:`medmlops.models`. Their backbones pool inside (timm ``num_classes=0``,
torchvision with ``Identity`` classifiers), so ``forward_features`` already returns ``(B, num_features)`` and
``forward_head(features, pre_logits=True)`` hands those features back unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from medmlops.models import register_architecture
from medmlops.models.backbones import build_backbone, disable_inplace, feature_layer

MDMT_TASKS: dict[str, int] = {"prognosis": 2, "severity": 4}


def mlp_head(in_features: int, num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """A task head F → 128 → 32 → k with ReLU and dropout after each hidden layer.

    This is the shape specified for the prognosis head (k = 2, dropout 0.5); the paper only says "fully connected
    layers" for the BRIXIA severity head, so the same shape is used there with k = 4.
    """
    return nn.Sequential(
        nn.Linear(in_features, 128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, 32), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(32, num_classes),
    )  # fmt: skip


class MdmtModel(nn.Module):
    """Multi-dataset multi-task model: one shared backbone (any of the paper's 18) and one MLP head per task.

    Args:
        backbone: A key of :data:`medmlops.models.backbones.BACKBONES`.
        tasks: Task name → number of classes, in output order (paper: prognosis 2, BRIXIA severity 4).
        pretrained: Start the backbone from ImageNet weights: ``weights_path`` when given, else the weights store
            ``weights_dir`` or timm's/torchvision's local cache (nothing is downloaded; docs/models.md).
        weights_path: A local state-dict file for the backbone (wins over the store; loaded whenever given).
        dropout: Dropout after each hidden layer of every head.
        in_chans: Input channels.
        weights_dir: The weights store (default ``.medmlops/weights``).
    """

    min_input_size = 32  # every backbone downsamples by 32 and still runs at 1x1 in its last stage

    def __init__(
        self,
        backbone: str,
        tasks: Mapping[str, int] = MDMT_TASKS,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        dropout: float = 0.5,
        in_chans: int = 3,
        weights_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        # In-place activations off: INFORMER and the saliency figures run Captum's hook-based methods on every family.
        self.backbone = disable_inplace(
            build_backbone(backbone, pretrained, weights_path, in_chans=in_chans, weights_dir=weights_dir)
        )
        self.num_features: int = self.backbone.num_features
        self.tasks = dict(tasks)
        self.heads = nn.ModuleDict({name: mlp_head(self.num_features, k, dropout) for name, k in self.tasks.items()})

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> dict[str, torch.Tensor] | torch.Tensor:
        if pre_logits:
            return features
        return {name: head(features) for name, head in self.heads.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    @property
    def saliency_layer(self) -> nn.Module:
        """The backbone's last convolutional block (see :func:`medmlops.models.backbones.feature_layer`)."""
        return feature_layer(self.backbone)


class FindingsDenseNet121(nn.Module):
    """timm DenseNet-121 with one linear layer of ``num_classes`` multi-label logits (CheXpert's five findings).

    In-place activations are switched off everywhere: Captum's hook-based methods need it (docs/library-notes.md).

    Args:
        num_classes: Number of findings (one logit each; sigmoid downstream).
        task: The output's key.
        pretrained: Start from ImageNet weights: ``weights_path`` when given, else the weights store ``weights_dir``
            (``densenet121.pth``) or timm's local cache (nothing is downloaded; docs/models.md).
        weights_path: A local DenseNet-121 state dict (timm's or torchvision's key names; its classifier is ignored).
        in_chans: Input channels.
        weights_dir: The weights store (default ``.medmlops/weights``).
    """

    min_input_size = 32

    def __init__(
        self,
        num_classes: int = 5,
        task: str = "findings",
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        in_chans: int = 3,
        weights_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.backbone = disable_inplace(
            build_backbone("densenet121", pretrained, weights_path, in_chans=in_chans, weights_dir=weights_dir)
        )
        self.num_features: int = self.backbone.num_features
        self.task = task
        self.tasks = {task: num_classes}
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> dict[str, torch.Tensor] | torch.Tensor:
        if pre_logits:
            return features
        return {self.task: self.classifier(features)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    @property
    def saliency_layer(self) -> nn.Module:
        """``features.norm5``: the last BatchNorm + ReLU, whose (activated) 1024-channel map is what gets pooled,
        so Grad-CAM explains exactly the features the classifier sees."""
        return self.backbone.features.norm5


def _single_task(tasks: Mapping[str, int] | None, default: tuple[str, int]) -> tuple[str, int]:
    if tasks is None:
        return default
    if len(tasks) != 1:
        raise ValueError(f"densenet121_findings has one multi-label head; got tasks {sorted(tasks)}")
    return next(iter(tasks.items()))


@register_architecture("mdmt")
def mdmt(
    tasks: Mapping[str, int] | None = None,
    backbone: str = "densenet121",
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    dropout: float = 0.5,
    in_chans: int = 3,
    weights_dir: str | Path | None = None,
    **_: object,
) -> nn.Module:
    return MdmtModel(
        backbone, tasks=MDMT_TASKS if tasks is None else tasks, pretrained=pretrained, weights_path=weights_path,
        dropout=dropout, in_chans=in_chans, weights_dir=weights_dir,
    )  # fmt: skip


@register_architecture("densenet121_findings")
def densenet121_findings(
    tasks: Mapping[str, int] | None = None,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    in_chans: int = 3,
    weights_dir: str | Path | None = None,
    **_: object,
) -> nn.Module:
    task, num_classes = _single_task(tasks, ("findings", 5))
    return FindingsDenseNet121(
        num_classes, task=task, pretrained=pretrained, weights_path=weights_path, in_chans=in_chans,
        weights_dir=weights_dir,
    )  # fmt: skip
