"""Figures of saliency maps (:mod:`medmlops.interpret.saliency`): the ICH report's NIfTI files and PNG montages over
the CT, and the monitoring dashboard's PNG thumbnail."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch


def save_nifti(saliency_map: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(np.asarray(saliency_map, dtype=np.float32), np.eye(4) if affine is None else affine), str(path)
    )
    return path


def montage(volume: np.ndarray, saliency_map: np.ndarray, path: Path, n_slices: int = 6, title: str = "") -> Path:
    """The ``n_slices`` axial slices with the most |saliency| (volume axes x, y, z), saliency over the CT."""
    from medmlops.evaluation.figures import pyplot, save_figure

    plt = pyplot()

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
    return save_figure(fig, path, dpi=110)


def saliency_png(image: torch.Tensor, saliency_map: torch.Tensor, size: int = 160) -> bytes:
    """A small PNG: the image in grey with |saliency| as a red-yellow overlay (3D: the slice with most saliency)."""
    from PIL import Image

    img = image[0].detach().cpu().double().numpy()
    sal = saliency_map.detach().abs().sum(0).cpu().double().numpy()
    if img.ndim == 3:  # x, y, z: pick the axial slice with the most saliency
        k = int(sal.reshape(-1, sal.shape[-1]).sum(0).argmax())
        img, sal = np.rot90(img[..., k]), np.rot90(sal[..., k])
    lo, hi = np.percentile(img, [1, 99])
    grey = np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)
    heat = np.clip(sal / max(float(np.percentile(sal, 99.5)), 1e-12), 0, 1)
    rgb = np.stack([grey, grey, grey], axis=-1)
    overlay = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], axis=-1)
    alpha = (0.6 * heat)[..., None]
    pixels = ((1 - alpha) * rgb + alpha * overlay) * 255
    picture = Image.fromarray(pixels.astype(np.uint8)).resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
