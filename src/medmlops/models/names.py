"""The 2D backbones by the names the papers and params use: paper-style key → (library, model name).

Its own module so that the weights store (``models.weights``) and the builders (``models.backbones``) both read it
without importing each other.
"""

from __future__ import annotations

# Paper-style key → (library, model name). timm wherever it has the architecture (checked with timm.list_models);
# torchvision for GoogLeNet and ShuffleNetV2, which timm does not provide.
BACKBONES: dict[str, tuple[str, str]] = {
    "densenet121": ("timm", "densenet121"),
    "densenet161": ("timm", "densenet161"),
    "densenet169": ("timm", "densenet169"),
    "densenet201": ("timm", "densenet201"),
    "efficientnet_b0": ("timm", "efficientnet_b0"),
    "efficientnet_b1_pruned": ("timm", "efficientnet_b1_pruned"),
    "efficientnet_es": ("timm", "efficientnet_es"),
    "efficientnet_es_pruned": ("timm", "efficientnet_es_pruned"),
    "efficientnet_lite0": ("timm", "efficientnet_lite0"),
    "googlenet": ("torchvision", "googlenet"),
    "mobilenet_v2": ("timm", "mobilenetv2_100"),
    "resnet18": ("timm", "resnet18"),
    "resnet34": ("timm", "resnet34"),
    "resnet50": ("timm", "resnet50"),
    "resnet101": ("timm", "resnet101"),
    "wide_resnet50_2": ("timm", "wide_resnet50_2"),
    "shufflenet_v2_x0_5": ("torchvision", "shufflenet_v2_x0_5"),
    "shufflenet_v2_x1_0": ("torchvision", "shufflenet_v2_x1_0"),
}
