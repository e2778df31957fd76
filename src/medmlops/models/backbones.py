"""The MDMT paper's 18 CNN backbones (Ruffini et al., Sec. 3) as bare 2D feature extractors.

Every backbone returned by :func:`build_backbone` maps ``(B, C, H, W)`` to pooled features ``(B, num_features)``.
timm builds every architecture it has (``num_classes=0`` gives timm's bare backbone); torchvision builds the two
families timm lacks (GoogLeNet, ShuffleNetV2) with the classifier replaced by ``Identity`` so their state-dict keys
stay torchvision's and a torchvision checkpoint loads as is.

No weights can be downloaded here: ImageNet (or any other) initialisation comes from a local state-dict file, named
explicitly or found in the weights store / the libraries' caches (:mod:`medmlops.models.weights`, docs/models.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from medmlops.models.names import BACKBONES  # the table of names; re-exported here

# Checkpoint keys that belong to a classifier (ImageNet's 1000-way layer, GoogLeNet's auxiliary classifiers):
# they have no counterpart in a bare backbone and are ignored when loading a weights file.
_TORCHVISION_CLASSIFIER_PREFIXES = ("fc.", "aux1.", "aux2.")


def build_backbone(
    name: str,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    in_chans: int = 3,
    weights_dir: str | Path | None = None,
) -> nn.Module:
    """Build one of :data:`BACKBONES` as a pooled-feature extractor.

    Args:
        name: A key of :data:`BACKBONES` (e.g. ``"densenet121"``, ``"shufflenet_v2_x0_5"``).
        pretrained: Start from ImageNet weights: ``weights_path`` when given, else the weights store ``weights_dir``
            or timm's/torchvision's local cache (:func:`medmlops.models.weights.find_weights`). Nothing is downloaded.
        weights_path: A local state dict for this architecture (timm's or torchvision's key names, ``.pth`` or
            ``.safetensors``); classifier keys in it are ignored, every backbone key must be present. Loaded
            whenever given, and it wins over the store.
        in_chans: Input channels (the first convolution is rebuilt for values other than 3).
        weights_dir: The weights store (default ``.medmlops/weights``): ``<timm or torchvision name>.pth``.

    Returns:
        The backbone; ``forward(x)`` gives ``(B, num_features)`` and ``num_features`` is set.

    Raises:
        ValueError: Unknown name.
        medmlops.models.weights.WeightsError: A weights file that does not match the architecture (a ValueError).
        medmlops.models.weights.MissingWeightsError: ``weights_path`` does not exist, or ``pretrained`` and the
            weights are nowhere (a FileNotFoundError whose message says how to make the file).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}' (expected one of: {', '.join(BACKBONES)})")
    if pretrained and weights_path is None:
        from medmlops.models.weights import DEFAULT_WEIGHTS_DIR, resolve_weights

        weights_path = resolve_weights(name, DEFAULT_WEIGHTS_DIR if weights_dir is None else weights_dir).path
    library, model_name = BACKBONES[name]
    backbone = _build_timm(model_name, in_chans) if library == "timm" else _build_torchvision(model_name, in_chans)
    if weights_path is not None:
        load_backbone_weights(backbone, weights_path, name=name)
    return backbone


def _build_timm(model_name: str, in_chans: int) -> nn.Module:
    import timm

    return timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans)


def _build_torchvision(model_name: str, in_chans: int) -> nn.Module:
    import torchvision

    if model_name == "googlenet":
        # aux_logits=False: the auxiliary classifiers are an ImageNet training aid, not part of the feature path;
        # init_weights=True silences torchvision's FutureWarning and keeps its truncated-normal initialisation.
        model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
        # The dropout before `fc` belongs to the ImageNet classifier; the MDMT heads carry their own dropout.
        model.dropout = nn.Identity()
    else:
        model = getattr(torchvision.models, model_name)(weights=None)
    model.num_features = model.fc.in_features
    model.fc = nn.Identity()
    if in_chans != 3:
        name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
        model.set_submodule(
            name,
            nn.Conv2d(
                in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
            ),
        )
    return model


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    cfg = getattr(backbone, "pretrained_cfg", None)
    if cfg:  # timm names its classifier in the model's config ("classifier", "fc", "head.fc", ...)
        classifier = cfg.get("classifier")
        names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
        return tuple(f"{n}." for n in names if n)
    return _TORCHVISION_CLASSIFIER_PREFIXES


def load_backbone_weights(backbone: nn.Module, weights_path: str | Path, name: str | None = None) -> None:
    """Load a local state dict into ``backbone``: strict on the backbone's keys, classifier keys ignored.

    Nothing is loaded unless every backbone key is in the file with its shape (BatchNorm's ``num_batches_tracked``
    counters may be absent): a file of another architecture, or with the other library's key names (timm's and
    torchvision's EfficientNet/MobileNetV2 differ; their ResNets and DenseNets share names), is refused, never
    loaded in part.

    Args:
        backbone: A model from :func:`build_backbone`.
        weights_path: The state dict (``torch.save``-d, or ``.safetensors``).
        name: The backbone's key of :data:`BACKBONES`, for the messages.

    Raises:
        medmlops.models.weights.MissingWeightsError: The file does not exist (a FileNotFoundError).
        medmlops.models.weights.WeightsError: The file holds no state dict, a backbone key is missing, an unknown
            non-classifier key is present, or a shape differs (a ValueError).
    """
    from medmlops.models.weights import MissingWeightsError, WeightsError, make_command, read_state_dict

    path = Path(weights_path)
    if not path.is_file():
        raise MissingWeightsError(f"weights_path {path} does not exist")
    ignored = _classifier_prefixes(backbone)
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(ignored)}
    expected = backbone.state_dict()
    for key in expected:  # counters, not weights: torch's BatchNorm starts them at 0 when a checkpoint lacks them
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(expected[key])
    what = f"backbone '{name}'" if name else "this backbone"
    fix = f"; make the right file with `{make_command(name)}`" if name else ""
    missing = [k for k in expected if k not in state]
    shared = len(expected) - len(missing)
    if missing and shared < len(expected) / 2:
        other = next((k for k in state if k not in expected), None)
        raise WeightsError(
            f"weights file {path} does not fit {what}: only {shared} of its {len(expected)} keys are in the file "
            f"(it expects e.g. '{missing[0]}'{f', the file has e.g. {other!r}' if other else ''}), so it holds "
            f"another architecture or the other library's key names{fix}"
        )
    if missing:
        raise WeightsError(
            f"weights file {path} lacks backbone key '{missing[0]}' ({len(missing)} missing in all); "
            f"is it a state dict for {what}?"
        )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise WeightsError(
            f"weights file {path} has key '{unexpected[0]}' that {what} does not have ({len(unexpected)} in all): "
            f"is it a state dict of another architecture?"
        )
    mismatched = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise WeightsError(
            f"weights file {path} has shape {tuple(state[k].shape)} for '{k}' where {what} has "
            f"{tuple(expected[k].shape)}: is it a state dict of another architecture (or in_chans)?"
        )
    backbone.load_state_dict(state, strict=True)


def feature_layer(backbone: nn.Module) -> nn.Module:
    """The last convolutional block, whose output map is global-pooled into the features (Grad-CAM's layer).

    Args:
        backbone: A model from :func:`build_backbone`.

    Returns:
        DenseNet ``features.norm5``, EfficientNet/MobileNetV2 ``bn2`` (after ``conv_head``), ResNet ``layer4``,
        GoogLeNet ``inception5b``, ShuffleNetV2 ``conv5``.
    """
    import torchvision

    if isinstance(backbone, torchvision.models.GoogLeNet):
        return backbone.inception5b
    if isinstance(backbone, torchvision.models.ShuffleNetV2):
        return backbone.conv5
    # timm's EfficientNet family reports its last *stage* in feature_info, but a 1x1 conv_head + bn2 follows it;
    # bn2's (activated) output is the map that is pooled, so Grad-CAM belongs there.
    if hasattr(backbone, "conv_head") and hasattr(backbone, "bn2"):
        return backbone.bn2
    info = getattr(backbone, "feature_info", None)
    if info:
        return backbone.get_submodule(info[-1]["module"])
    raise ValueError(f"no known feature layer for {type(backbone).__name__}")


def disable_inplace(module: nn.Module) -> nn.Module:
    """Switch off in-place activations everywhere in ``module`` and return it.

    Captum's hook-based attributions (Grad-CAM, Guided Backprop, LRP) fail or give wrong gradients when an
    activation overwrites its input (docs/library-notes.md), and timm/torchvision build in-place ReLUs by default.
    """
    for m in module.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    return module


def average_state_dicts(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element-wise mean of two state dicts of the same architecture.

    MDMT is initialised from the average of the two single-task backbones (paper, Sec. 3). Integer tensors
    (BatchNorm's ``num_batches_tracked``) have no meaningful mean and are copied from ``a``.

    Args:
        a: The first state dict (its integer buffers are kept).
        b: The second state dict, with the same keys and shapes.

    Returns:
        A new state dict (tensors are fresh, not views of ``a`` or ``b``).

    Raises:
        ValueError: The key sets or a shape differ.
    """
    only = sorted(set(a) ^ set(b))
    if only:
        side = "first" if only[0] in a else "second"
        raise ValueError(f"state dicts differ: key '{only[0]}' is only in the {side} one")
    averaged: dict[str, torch.Tensor] = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ValueError(f"state dicts differ: '{key}' has shape {tuple(ta.shape)} and {tuple(tb.shape)}")
        if torch.is_floating_point(ta):
            averaged[key] = (ta + tb.to(ta.dtype)) / 2
        else:
            averaged[key] = ta.clone()
    return averaged


def check_loads(entries) -> None:
    """Load every weights file found (``models.weights.weights_plan``'s entries) into its backbone; set ``problem``
    where it does not fit (another architecture, the other library's key names)."""
    from medmlops.models.weights import MissingWeightsError, WeightsError

    for entry in entries:
        if entry.source.found:
            try:
                build_backbone(entry.source.name, weights_path=entry.source.path)
            except (WeightsError, MissingWeightsError) as exc:
                entry.problem = str(exc)
