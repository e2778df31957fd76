"""3D models for ICH prognosis (Cobo et al.): the DenseNet121 multi-task model and the Perez et al. baseline."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from medmlops.models import register_architecture


class MultiTaskHead(nn.Module):
    """One head per task: ReLU → AdaptiveAvgPool3d → Flatten → Linear(features, k), as MONAI's DenseNet121
    classifier is built (the paper attaches each task to the shared trunk's last feature map this way)."""

    def __init__(self, in_features: int, tasks: Mapping[str, int], dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.ReLU(inplace=False), nn.AdaptiveAvgPool3d(1), nn.Flatten(1))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = nn.ModuleDict({name: nn.Linear(in_features, k) for name, k in tasks.items()})

    def forward(self, features: torch.Tensor, pre_logits: bool = False) -> dict[str, torch.Tensor] | torch.Tensor:
        pooled = self.drop(self.pool(features))
        if pre_logits:
            return pooled
        return {name: head(pooled) for name, head in self.heads.items()}


class IchDenseNet3D(nn.Module):
    """MONAI ``DenseNet121(spatial_dims=3, in_channels=1, dropout_prob=0.2)`` trunk with its classifier removed
    and one linear head per task (prognosis k=1, GCS k=1 binary or k=2 ordinal, age k=1).

    In-place ReLUs are switched off: Captum's hook-based attributions (Guided Backprop, Grad-CAM) need them off.
    Every spatial size must be ≥ 32 (the trunk downsamples by 32).
    """

    min_input_size = 32  # five stride-2 stages

    def __init__(self, tasks: Mapping[str, int], in_channels: int = 1, dropout_prob: float = 0.2) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121

        trunk = DenseNet121(
            spatial_dims=3, in_channels=in_channels, out_channels=1, dropout_prob=dropout_prob,
            act=("relu", {"inplace": False}),
        )  # fmt: skip
        self.features = trunk.features
        self.num_features = trunk.class_layers.out.in_features
        self.head = MultiTaskHead(self.num_features, tasks)
        self.tasks = dict(tasks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False):
        return self.head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    @property
    def saliency_layer(self) -> nn.Module:
        """The last transition's convolution, the layer Grad-CAM attributes to (the paper's Guided Grad-CAM)."""
        return self.features.transition3.conv


class PerezCnn3D(nn.Module):
    """The small 3D CNN of Perez et al. as the authors' public code builds it (``AmaiaModel``): four
    Conv3d(k=3, no padding) + ReLU blocks with 16/32/64/128 filters, max-pooling after the first three, 3D dropout
    0.5 after the second, BatchNorm3d and global max-pooling after the fourth, then one linear layer per task.
    Kaiming-uniform conv / Xavier-uniform linear initialisation as in that code."""

    min_input_size = 38  # unpadded 3x3x3 convolutions between three 2x poolings

    def __init__(self, tasks: Mapping[str, int], in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(in_channels, 16, kernel_size=3, bias=False), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(16, 32, kernel_size=3), nn.ReLU(), nn.MaxPool3d(2), nn.Dropout3d(0.5),
            nn.Conv3d(32, 64, kernel_size=3), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(64, 128, kernel_size=3, bias=False), nn.ReLU(), nn.BatchNorm3d(128),
        )  # fmt: skip
        self.pool = nn.Sequential(nn.AdaptiveMaxPool3d(1), nn.Flatten(1))
        self.num_features = 128
        self.heads = nn.ModuleDict({name: nn.Linear(128, k) for name, k in tasks.items()})
        self.tasks = dict(tasks)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False):
        pooled = self.pool(features)
        if pre_logits:
            return pooled
        return {name: head(pooled) for name, head in self.heads.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    @property
    def saliency_layer(self) -> nn.Module:
        return self.features[10]  # the last convolution


@register_architecture("densenet121_3d")
def densenet121_3d(tasks: Mapping[str, int], in_channels: int = 1, dropout_prob: float = 0.2, **_: object) -> nn.Module:
    return IchDenseNet3D(tasks, in_channels=in_channels, dropout_prob=dropout_prob)


@register_architecture("perez_cnn3d")
def perez_cnn3d(tasks: Mapping[str, int], in_channels: int = 1, **_: object) -> nn.Module:
    return PerezCnn3D(tasks, in_channels=in_channels)
