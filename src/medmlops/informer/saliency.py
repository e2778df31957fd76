"""Class-specific saliency maps for INFORMER: one map per output logit, all from one batched computation.

Captum attributes one ``target`` per call, so C classes cost C forward + backward passes. Here:

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
``Identity`` and dropout the identity rule (swapped for a cloning pass-through, see :class:`_Clone`). timm's ``BatchNormAct2d`` is not a leaf (its act and drop are), so its affine
normalisation propagates relevance by the plain gradient, as in Captum's handling of any unhooked operation;
the relevance is checked for approximate conservation in the tests (sum of relevance ≈ the logit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

METHODS = ("ixg", "lrp", "gradcam", "ig")


class LogitsModel(nn.Module):
    """A model whose forward returns ``dict[task, (B, k)]`` (or a tensor) as one ``(B, C)`` tensor of logits,
    tasks in contract order: the classes INFORMER compares are the model's output logits."""

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


def _gradients_per_class(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
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
    if method not in METHODS:
        raise ValueError(f"unknown saliency method '{method}' (expected one of: {', '.join(METHODS)})")
    x = x.detach()
    if method == "ixg":
        xg = x.clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xg)
            maps = _gradients_per_class(logits, xg) * x.unsqueeze(1)
        logits = logits.detach()
    else:
        with torch.no_grad():
            logits = model(x)
        maps = _captum_expanded(model, x, logits.shape[1], method, n_steps)
    maps = maps.detach()
    return (maps, logits) if return_logits else maps


def _captum_attributor(model: nn.Module, method: str, n_steps: int):
    from captum.attr import LRP, IntegratedGradients, LayerAttribution, LayerGradCam

    if method == "lrp":
        lrp = LRP(lrp_ready(model))

        def relevance(x: torch.Tensor, target) -> torch.Tensor:
            lrp_ready(model)
            return lrp.attribute(x, target=target)

        return relevance
    if method == "ig":
        ig = IntegratedGradients(model)
        return lambda x, target: ig.attribute(x, target=target, n_steps=n_steps, internal_batch_size=None)
    gradcam = LayerGradCam(model, model.saliency_layer)

    def cam(x: torch.Tensor, target) -> torch.Tensor:
        mode = "trilinear" if x.dim() == 5 else "bilinear"
        attr = gradcam.attribute(x, target=target)
        return LayerAttribution.interpolate(attr, tuple(x.shape[2:]), interpolate_mode=mode)

    return cam


def _captum_expanded(model: nn.Module, x: torch.Tensor, n_classes: int, method: str, n_steps: int) -> torch.Tensor:
    """Captum on the expanded batch: image b repeated C times, target c on copy c → (B, C, ...)."""
    batch = x.shape[0]
    repeated = x.repeat_interleave(n_classes, dim=0)
    targets = torch.arange(n_classes, device=x.device).repeat(batch)
    with torch.enable_grad():
        attr = _captum_attributor(model, method, n_steps)(repeated, targets.tolist())
    return attr.reshape(batch, n_classes, *attr.shape[1:])


def captum_class_saliency(model: nn.Module, x: torch.Tensor, method: str = "ixg", *, n_steps: int = 16) -> torch.Tensor:
    """The reference: Captum's attribution called once per class (C forward + backward passes)."""
    from captum.attr import InputXGradient

    if method not in METHODS:
        raise ValueError(f"unknown saliency method '{method}' (expected one of: {', '.join(METHODS)})")
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    if method == "ixg":
        ixg = InputXGradient(model)

        def attribute(inp: torch.Tensor, target: int) -> torch.Tensor:
            return ixg.attribute(inp, target=target)
    else:
        attribute = _captum_attributor(model, method, n_steps)
    with torch.enable_grad():
        maps = [attribute(x.detach().clone(), c).detach() for c in range(n_classes)]
    return torch.stack(maps, dim=1)
