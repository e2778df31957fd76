"""Captum saliency for the ICH models: Guided Backprop and Guided Grad-CAM on one task's head (Cobo et al.,
Sec. 3: the maps the neuroradiologist reviewed), saved as NIfTI and as a PNG montage over the CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

METHODS = ("guided_backprop", "guided_gradcam")


class OneHead(nn.Module):
    """Wraps a multi-task model so Captum sees one task's logits (B, k)."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.task]


def saliency(
    model: nn.Module, x: torch.Tensor, task: str, method: str = "guided_backprop", target: int = 0
) -> np.ndarray:
    """Attribution of ``task``'s logit ``target`` w.r.t. the input ``x`` (B, C, *spatial) → (B, C, *spatial).

    Guided Grad-CAM attributes to ``model.saliency_layer`` (the last transition convolution of the DenseNet,
    the layer the paper used) and upsamples trilinearly for 3D inputs.
    """
    from captum.attr import GuidedBackprop, GuidedGradCam

    if method not in METHODS:
        raise ValueError(f"unknown saliency method '{method}' (expected one of: {', '.join(METHODS)})")
    was_training = model.training
    model.eval()
    wrapped = OneHead(model, task)
    x = x.detach().clone().requires_grad_(True)
    if method == "guided_backprop":
        attr = GuidedBackprop(wrapped).attribute(x, target=target)
    else:
        mode = "trilinear" if x.dim() == 5 else "bilinear"
        attr = GuidedGradCam(wrapped, model.saliency_layer).attribute(x, target=target, interpolate_mode=mode)
    model.train(was_training)
    return attr.detach().cpu().numpy()


def save_nifti(saliency_map: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(np.asarray(saliency_map, dtype=np.float32), np.eye(4) if affine is None else affine), str(path)
    )
    return path


def montage(volume: np.ndarray, saliency_map: np.ndarray, path: Path, n_slices: int = 6, title: str = "") -> Path:
    """The ``n_slices`` axial slices with the most |saliency| (volume axes x, y, z), saliency over the CT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volume, sal = np.asarray(volume), np.abs(np.asarray(saliency_map))
    per_slice = sal.reshape(-1, sal.shape[-1]).sum(axis=0)
    order = np.sort(np.argsort(per_slice)[::-1][: min(n_slices, sal.shape[-1])])
    vmax = np.percentile(sal, 99.5) or 1.0
    fig, axes = plt.subplots(1, len(order), figsize=(2.2 * len(order), 2.6))
    for ax, k in zip(np.atleast_1d(axes), order, strict=False):
        ax.imshow(np.rot90(volume[..., k]), cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.rot90(sal[..., k]), cmap="hot", alpha=0.5, vmin=0, vmax=vmax)
        ax.set_title(f"slice {k}", fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
