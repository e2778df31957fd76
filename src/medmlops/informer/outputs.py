"""What INFORMER computes for a batch of images, shared by calibration, evaluation and the monitoring worker's
:class:`~medmlops.informer.analyser.Analyser`: logits, class-specific saliency (batched), distinctiveness, the
baselines' scores (entropy, maximum response, test-time augmentation), the penultimate embedding and image
statistics; and, given a calibration, the flags and the per-image features the drift reports compare.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medmlops.informer import scores
from medmlops.interpret.saliency import LogitsModel, class_saliency
from medmlops.registry.contract import ModelContract

IMAGE_STATS = ("mean", "std", "p05", "p50", "p95")


# ---------------------------------------------------------------------------------------------------------------
# Test-time augmentation (the paper's TTA baseline: rotation up to 45°, a 10 × 10 box blur, random crop, padding 8)
# ---------------------------------------------------------------------------------------------------------------


def _as_2d(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, C, H, W) stays; (B, C, X, Y, Z) → (B, C·Z, X, Y) so the in-plane axes are augmented slice by slice."""
    if x.dim() == 4:
        return x, tuple(x.shape)
    b, c, sx, sy, sz = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(b, c * sz, sx, sy), tuple(x.shape)


def _from_2d(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if len(shape) == 4:
        return x
    b, c, sx, sy, sz = shape
    return x.reshape(b, c, sz, sx, sy).permute(0, 1, 3, 4, 2)


def tta_augment(x: torch.Tensor, generator: torch.Generator, max_degrees: float = 45.0, blur: int = 10, pad: int = 8):
    """One random augmentation of every image: rotation in [-max_degrees, max_degrees], box blur (kernel ``blur``,
    applied with probability 0.5) and a random crop of the image padded by ``pad`` pixels (zeros)."""
    flat, shape = _as_2d(x)
    b, _, h, w = flat.shape
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta.to(flat), list(flat.shape), align_corners=False)
    out = F.grid_sample(flat, grid, padding_mode="zeros", align_corners=False)
    if blur > 1:
        blurred = F.avg_pool2d(F.pad(out, (blur // 2, (blur - 1) // 2) * 2, mode="replicate"), blur, stride=1)
        use = (torch.rand(b, generator=generator) < 0.5).to(out)[:, None, None, None]
        out = use * blurred + (1 - use) * out
    padded = F.pad(out, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    return _from_2d(out, shape)


# ---------------------------------------------------------------------------------------------------------------
# The shared computation
# ---------------------------------------------------------------------------------------------------------------


def embedding(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate features through the uniform model surface: ``forward_head(forward_features(x), pre_logits)``."""
    inner = model.model if isinstance(model, LogitsModel) else model
    with torch.no_grad():
        return inner.forward_head(inner.forward_features(x), pre_logits=True).flatten(1)


def image_stats(x: torch.Tensor) -> np.ndarray:
    """``(B, 5)`` mean, std, 5th / 50th / 95th percentile of each preprocessed image (first channel)."""
    flat = x[:, 0].reshape(len(x), -1).double()
    q = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64), dim=1).T
    return torch.cat([flat.mean(1, keepdim=True), flat.std(1, keepdim=True), q], dim=1).numpy()


def compute_outputs(
    model: LogitsModel,
    contract: ModelContract,
    x: torch.Tensor,
    *,
    methods: Sequence[str] = ("ixg",),
    tta_samples: int = 0,
    seed: int = 0,
    keep_maps: bool = False,
) -> dict[str, Any]:
    """Everything INFORMER and its baselines need for a batch of preprocessed images ``x``.

    Returns a dict of arrays: ``logits``, ``probabilities``, ``predictions`` (N, C); ``d`` {method: (N, C)};
    ``cos`` {method: (N, C (C - 1) / 2)} pairwise map distances (:func:`~medmlops.informer.scores.pairwise_distances`);
    ``entropy``, ``msr`` (N, C); ``tta`` (N, C) std of each probability over ``tta_samples`` augmentations (when
    > 0); ``embedding`` (N, F); ``image_stats`` (N, 5); ``maps`` {method: tensor} when ``keep_maps``.
    """
    model.eval()
    out: dict[str, Any] = {"d": {}, "cos": {}, "maps": {}}
    logits = None
    for method in methods:
        maps, method_logits = class_saliency(model, x, method, return_logits=True)
        logits = method_logits if logits is None else logits
        out["d"][method] = scores.distinctiveness(maps)
        out["cos"][method] = scores.pairwise_distances(maps)
        if keep_maps:
            out["maps"][method] = maps
    if logits is None:
        with torch.no_grad():
            logits = model(x)
    logits_np = logits.double().cpu().numpy()
    probs = scores.logit_probabilities(contract, logits_np)
    out.update(
        logits=logits_np, probabilities=probs, predictions=scores.logit_predictions(contract, probs),
        entropy=scores.binary_entropy(probs), msr=scores.max_response(probs),
        embedding=embedding(model, x).double().cpu().numpy(), image_stats=image_stats(x.cpu()),
    )  # fmt: skip
    if tta_samples > 0:
        generator = torch.Generator().manual_seed(seed)
        runs = []
        with torch.no_grad():
            for _ in range(tta_samples):
                aug = tta_augment(x, generator)
                runs.append(scores.logit_probabilities(contract, model(aug).double().cpu().numpy()))
        out["tta"] = np.stack(runs).std(axis=0)
    return out


class Batches(Protocol):
    """Images read one batch at a time: a split of any size costs one batch of image memory
    (:class:`medmlops.informer.calibrate.SplitImages`)."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]: ...


def image_batches(images: torch.Tensor | Batches, batch_size: int) -> Iterator[torch.Tensor]:
    """``images`` in batches of ``batch_size``: slices of a tensor, or a :class:`Batches`' own batches."""
    if isinstance(images, torch.Tensor):
        return (images[start : start + batch_size] for start in range(0, len(images), batch_size))
    return images.batches(batch_size)


def batched_outputs(
    model: LogitsModel,
    contract: ModelContract,
    images: torch.Tensor | Batches,
    *,
    methods: tuple[str, ...],
    tta_samples: int,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    desc: str = "informer",
) -> dict[str, Any]:
    """:func:`compute_outputs` over ``images`` in batches, concatenated. Only the per-image outputs (scores,
    logits, embedding, statistics: a few kB an image) are kept; each batch's images and saliency maps are dropped
    before the next batch is read, so peak memory does not grow with the split (benchmarks/informer_memory.py)."""
    from tqdm.auto import tqdm

    parts = []
    # The bar is updated by hand: tqdm wrapping the iterator would hold the previous batch while the next is read.
    with tqdm(total=math.ceil(len(images) / batch_size), desc=desc, disable=not progress, unit="batch") as bar:
        start = 0  # no enumerate(): its reused result tuple would hold the previous batch while the next is read
        for x in image_batches(images, batch_size):
            parts.append(compute_outputs(model, contract, x, methods=methods, tta_samples=tta_samples,
                                         seed=seed + start))  # fmt: skip
            start += len(x)
            del x  # before the next batch is read
            bar.update()
    if not parts:
        raise ValueError(f"{desc}: no images")
    out: dict[str, Any] = {
        key: {m: np.concatenate([p[key][m] for p in parts]) for m in methods} for key in ("d", "cos")
    }
    for key in ("logits", "probabilities", "predictions", "entropy", "msr", "embedding", "image_stats", "tta"):
        if key in parts[0]:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


# ---------------------------------------------------------------------------------------------------------------
# With a calibration: flags and the drift reports' features
# ---------------------------------------------------------------------------------------------------------------


def feature_frame(outputs: dict[str, Any], classes: Sequence[str], calibration: dict | None, method: str):
    """The per-image numeric features the drift reports compare (one row per image): ``img.*`` statistics,
    ``p.<class>``, ``d.<class>``, ``flag.<class>``, ``entropy.<class>`` and ``emb.pc1..5`` (PCA fitted at
    calibration on the validation embeddings)."""
    import pandas as pd

    cols: dict[str, np.ndarray] = {}
    for i, name in enumerate(IMAGE_STATS):
        cols[f"img.{name}"] = outputs["image_stats"][:, i]
    flags = flags_from_calibration(outputs, calibration, method)
    for j, cls in enumerate(classes):
        cols[f"p.{cls}"] = outputs["probabilities"][:, j]
        cols[f"d.{cls}"] = outputs["d"][method][:, j]
        cols[f"flag.{cls}"] = flags[:, j].astype(np.float64)
        cols[f"entropy.{cls}"] = outputs["entropy"][:, j]
    if calibration and calibration.get("pca"):
        mean = np.asarray(calibration["pca"]["mean"])
        components = np.asarray(calibration["pca"]["components"])
        pcs = (outputs["embedding"] - mean) @ components.T
        for k in range(pcs.shape[1]):
            cols[f"emb.pc{k + 1}"] = pcs[:, k]
    return pd.DataFrame(cols)


def flags_from_calibration(outputs: dict[str, Any], calibration: dict | None, method: str) -> np.ndarray:
    """``(N, C)`` INFORMER flags with the calibration's per-class thresholds (all False when uncalibrated)."""
    d = outputs["d"][method]
    flags = np.zeros(d.shape, dtype=bool)
    if not calibration:
        return flags
    fit = calibration["methods"][method]
    for j, cls in enumerate(calibration["classes"]):
        flags[:, j] = scores.flag(d[:, j], fit["tau"].get(cls), fit["direction"])
    return flags
