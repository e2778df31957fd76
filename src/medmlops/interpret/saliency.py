"""Captum saliency for every consumer, through one model wrapper and one attribution factory.

* :func:`saliency`: one task head's map for one target, the ICH report's figures (Cobo et al., Sec. 3: Guided
  Backprop and Guided Grad-CAM on the prognosis head, the maps the neuroradiologist reviewed);
* :func:`class_saliency`: one map per output logit for INFORMER (Shu et al.), all from one batched computation.

Both see the model through :class:`LogitsModel` (its heads as one ``(B, C)`` tensor) and build Captum's attributions
in :func:`_attributor`. Captum attributes one ``target`` per call, so C classes would cost C forward + backward
passes. :func:`class_saliency` instead computes:

* ``ixg`` (Input × Gradient, the paper's INFORMER_ixg): one forward pass, then the C gradients of the logits
  w.r.t. the input in one vectorised backward, ``torch.autograd.grad(logits, x, grad_outputs=I_C,
  is_grads_batched=True)``; models whose backward cannot be vmapped fall back to C backward passes over the same
  forward graph (``retain_graph``).
* ``lrp`` (Layer-wise Relevance Propagation, the paper's INFORMER_lrp), ``gradcam`` and ``ig`` (Integrated
  Gradients): Captum's own attribution on an expanded batch (every image repeated C times, target ``c`` on the
  c-th copy), one Captum call. Batch-norm and dropout are in eval mode, so the rows are independent and the maps
  equal Captum's per-class maps (tested against :func:`captum_class_saliency`).

LRP on the timm / MONAI DenseNets: Captum has rules for 2D conv, linear, pooling and batch-norm layers only and
raises on any other leaf module. :func:`lrp_ready` gives 3D conv / pooling / batch-norm layers the epsilon rule
Captum uses for their 2D versions (``Flatten`` too: z = x, so the epsilon rule passes relevance through), and
``Identity`` and dropout the identity rule (swapped for a cloning pass-through, see :class:`_Clone`). timm's
``BatchNormAct2d`` is not a leaf (its act and drop are), so its affine normalisation propagates relevance by the plain
gradient, as in Captum's handling of any unhooked operation; the relevance is checked for approximate conservation in
the tests (sum of relevance ≈ the logit).

The figures made from the maps (NIfTI, montage, dashboard thumbnail) are in :mod:`medmlops.interpret.figures`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

# Batched class-specific maps (INFORMER); any of them also works for one head in :func:`saliency`.
METHODS = ("ixg", "lrp", "gradcam", "ig")
# The ICH report's figures (Cobo et al.): one head, one target, so not offered by :func:`class_saliency`.
GUIDED_METHODS = ("guided_backprop", "guided_gradcam")


class LogitsModel(nn.Module):
    """A model whose forward returns ``dict[task, (B, k)]`` (or a tensor) as one ``(B, C)`` tensor of logits,
    ``tasks`` in that order (all heads in the model's order when None): the classes INFORMER compares are the
    model's output logits, and with one task it is that head alone (the ICH figures' prognosis head)."""

    def __init__(self, model: nn.Module, tasks: Sequence[str] | None = None) -> None:
        super().__init__()
        self.model = model
        self.tasks = list(tasks) if tasks is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out
        names = self.tasks if self.tasks is not None else list(out)
        return torch.cat([out[name] for name in names], dim=1)

    @property
    def saliency_layer(self) -> nn.Module:
        return self.model.saliency_layer


class _Clone(nn.Module):
    """Identity that returns a new tensor: Captum's LRP hooks the input and the output tensor of every layer, and
    on an ``nn.Identity`` (or eval-mode dropout) they are the same tensor, so the hooks fire in the wrong order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def lrp_ready(model: nn.Module) -> nn.Module:
    """Prepare ``model`` in place for Captum's LRP (the forward pass is unchanged) and return it.

    Captum deletes every ``rule`` attribute after each attribution, so this runs before each call.

    Leaf modules Captum has no default rule for get the rule Captum uses for their 2D analogue (epsilon);
    ``Identity`` and dropout become :class:`_Clone` with the identity rule (relevance passes through).
    """
    from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule

    epsilon = (nn.Conv3d, nn.Conv1d, nn.BatchNorm3d, nn.BatchNorm1d, nn.AvgPool3d, nn.AvgPool1d,
               nn.AdaptiveAvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)  # fmt: skip
    passthrough = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, passthrough):
                setattr(parent, name, _Clone())
    for module in model.modules():
        if next(module.children(), None) is not None or hasattr(module, "rule"):
            continue
        if isinstance(module, epsilon):
            module.rule = EpsilonRule()
        elif isinstance(module, _Clone):
            module.rule = IdentityRule()
        elif isinstance(module, nn.Flatten):
            module.rule = EpsilonRule()  # not IdentityRule: that hands back the output's (flattened) shape
    return model


def _check(method: str, known: Sequence[str]) -> None:
    if method not in known:
        raise ValueError(f"unknown saliency method '{method}' (expected one of: {', '.join(known)})")


def _attributor(
    model: nn.Module, method: str, n_steps: int = 16
) -> Callable[[torch.Tensor, int | list[int]], torch.Tensor]:
    """Captum's attribution ``method`` of ``model`` (``(B, C)`` logits) as ``f(x, target) -> map``; the layer methods
    attribute to ``model.saliency_layer`` and are upsampled to the input size (trilinear for 3D inputs)."""
    from captum.attr import (
        LRP,
        GuidedBackprop,
        GuidedGradCam,
        InputXGradient,
        IntegratedGradients,
        LayerAttribution,
        LayerGradCam,
    )

    def mode(x: torch.Tensor) -> str:
        return "trilinear" if x.dim() == 5 else "bilinear"

    if method == "ixg":
        ixg = InputXGradient(model)
        return lambda x, target: ixg.attribute(x, target=target)
    if method == "lrp":
        lrp = LRP(lrp_ready(model))

        def relevance(x: torch.Tensor, target) -> torch.Tensor:
            lrp_ready(model)
            return lrp.attribute(x, target=target)

        return relevance
    if method == "ig":
        ig = IntegratedGradients(model)
        return lambda x, target: ig.attribute(x, target=target, n_steps=n_steps, internal_batch_size=None)
    if method == "guided_backprop":
        guided = GuidedBackprop(model)
        return lambda x, target: guided.attribute(x, target=target)
    if method == "guided_gradcam":
        guided_cam = GuidedGradCam(model, model.saliency_layer)
        return lambda x, target: guided_cam.attribute(x, target=target, interpolate_mode=mode(x))
    gradcam = LayerGradCam(model, model.saliency_layer)

    def cam(x: torch.Tensor, target) -> torch.Tensor:
        attr = gradcam.attribute(x, target=target)
        return LayerAttribution.interpolate(attr, tuple(x.shape[2:]), interpolate_mode=mode(x))

    return cam


def saliency(
    model: nn.Module, x: torch.Tensor, task: str, method: str = "guided_backprop", target: int = 0
) -> np.ndarray:
    """Attribution of ``task``'s logit ``target`` w.r.t. the input ``x`` (B, C, *spatial) → (B, C, *spatial).

    ``method``: one of :data:`GUIDED_METHODS` (the ICH figures) or :data:`METHODS`. Guided Grad-CAM attributes to
    ``model.saliency_layer`` (the last transition convolution of the DenseNet, the layer the paper used). The model
    is evaluated in eval mode and left in the mode it came in.
    """
    _check(method, GUIDED_METHODS + METHODS)
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    attr = _attributor(LogitsModel(model, [task]), method)(x, target)
    model.train(was_training)
    return attr.detach().cpu().numpy()


def gradients_per_class(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d logits[:, c] / d x for every class c, from one forward graph → (B, C, *x.shape[1:])."""
    n_classes = logits.shape[1]
    eye = torch.eye(n_classes, dtype=logits.dtype, device=logits.device)
    grad_outputs = eye[:, None, :].expand(n_classes, *logits.shape).contiguous()  # (C, B, C)
    try:
        (grads,) = torch.autograd.grad(logits, x, grad_outputs=grad_outputs, is_grads_batched=True, retain_graph=True)
    except RuntimeError:
        # Some backward formulas have no vmap rule; C backward passes over the one forward graph instead.
        grads = torch.stack(
            [torch.autograd.grad(logits, x, grad_outputs=g, retain_graph=True)[0] for g in grad_outputs]
        )
    return grads.transpose(0, 1)


def class_saliency(
    model: nn.Module, x: torch.Tensor, method: str = "ixg", *, n_steps: int = 16, return_logits: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """One saliency map per output logit for every image.

    Args:
        model: returns ``(B, C)`` logits (wrap multi-task models in :class:`LogitsModel`); in eval mode.
        x: images ``(B, channels, *spatial)``.
        method: ``ixg`` | ``lrp`` | ``gradcam`` | ``ig``.
        n_steps: Integrated Gradients' Riemann steps (baseline: zeros).
        return_logits: also return the ``(B, C)`` logits of the same forward pass (``ixg`` only shares it).

    Returns:
        ``(B, C, channels, *spatial)`` maps (``gradcam``: ``(B, C, 1, *spatial)``, upsampled to the input size),
        detached, and the logits when asked.
    """
    _check(method, METHODS)
    x = x.detach()
    if method == "ixg":
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xg)
            maps = gradients_per_class(logits, xg) * x.unsqueeze(1)
        logits = logits.detach()
    else:
        with torch.no_grad():
            logits = model(x)
        maps = _captum_expanded(model, x, logits.shape[1], method, n_steps)
    maps = maps.detach()
    return (maps, logits) if return_logits else maps


def _captum_expanded(model: nn.Module, x: torch.Tensor, n_classes: int, method: str, n_steps: int) -> torch.Tensor:
    """Captum on the expanded batch: image b repeated C times, target c on copy c → (B, C, ...)."""
    batch = x.shape[0]
    repeated = x.repeat_interleave(n_classes, dim=0)
    targets = torch.arange(n_classes, device=x.device).repeat(batch)
    with torch.enable_grad():
        attr = _attributor(model, method, n_steps)(repeated, targets.tolist())
    return attr.reshape(batch, n_classes, *attr.shape[1:])


def captum_class_saliency(model: nn.Module, x: torch.Tensor, method: str = "ixg", *, n_steps: int = 16) -> torch.Tensor:
    """The reference: Captum's attribution called once per class (C forward + backward passes)."""
    _check(method, METHODS)
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    attribute = _attributor(model, method, n_steps)
    with torch.enable_grad():
        maps = [attribute(x.detach().clone(), c).detach() for c in range(n_classes)]
    return torch.stack(maps, dim=1)
