"""Out-of-distribution score of every answer: how far an image's embedding lies from the training reference.

The embedding is the model's penultimate features (:func:`medmlops.informer.outputs.embedding`, the one INFORMER's
drift features and the ``mahalanobis`` CSF use). The reference is fitted at registration on the registered fold's
*training* images: their mean, the first ``k <= 16`` principal axes (:func:`medmlops.informer.csf.embedding_pca`,
shared with that CSF) and a Ledoit-Wolf shrunk covariance of the projections. The score is the Mahalanobis
distance in that subspace, ``sqrt(z' Σ⁻¹ z)`` with ``z`` the centred, projected embedding; it is computed as one
product, ``||(e - mean) @ projection||`` with ``projection = axes' · L`` and ``Σ⁻¹ = L L'`` (Cholesky). The threshold
is the ``percentile`` (params ``serving.inputs.<family>.ood_percentile``, 99 by default) of the *validation*
split's scores, taken at an observed score (``method="higher"``): at least that share of the validation images is
in distribution by construction, and new in-distribution images are in at about that rate (the test images of the
smoke models: ``tests/inference/test_ood.py``).

What the score cannot see: a direction of the embedding outside the ``k`` principal axes (an image that differs from
the training images only there scores like the mean). Natural photographs and document scans move the embedding
along those axes in the tests; it is a distance to the training distribution, not a proof of being inside it.

Where the reference lives: in the contract (``input_gate.ood``), with its two arrays as base64 float32
(``{"dtype": "<f4", "shape": [...], "b64": "..."}``, :func:`encode_array`). The contract and the weights are one
download by version number (:func:`medmlops.registry.tracking.load_model`), so a reference can never be paired with
another version's weights, and serving and monitoring read no second artifact. Size: ``(k + 1) · F`` float32, for
DenseNet-121's 1024 features and ``k = 16`` 70 KB raw, the whole ``ood`` section 93 KB as JSON; as indented
float32 lists it measured 507 KB (the contract is written with ``indent=2``), which is why the arrays are not plain
lists. The contract is read once per version per process (the gateway keeps it); parsing and decoding the section
took 0.1 ms, scoring a batch of 16 embeddings 0.02 ms (this machine's CPU).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

METHOD = "mahalanobis-pca"
MAX_DIMS = 16
MAX_REFERENCE_IMAGES = 2048  # training images the reference is fitted on (a seeded sample beyond): cheap at any size
DEFAULT_PERCENTILE = 99.0


class OodError(ValueError):
    """A reference that cannot be fitted or read; the message says why."""


def encode_array(array: np.ndarray) -> dict[str, Any]:
    """``array`` as JSON: little-endian float32 bytes in base64 with their shape (see the module docstring)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"dtype": "<f4", "shape": list(data.shape), "b64": base64.b64encode(data.tobytes()).decode("ascii")}


def decode_array(obj: Any) -> np.ndarray:
    """Inverse of :func:`encode_array` (as float64); OodError when it is not one."""
    try:
        if obj["dtype"] != "<f4":
            raise OodError(f"reference array dtype must be '<f4', got {obj['dtype']!r}")
        shape = tuple(int(s) for s in obj["shape"])
        flat = np.frombuffer(base64.b64decode(obj["b64"], validate=True), dtype="<f4")
        return flat.reshape(shape).astype(np.float64)
    except OodError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise OodError(f"reference array is not a base64 float32 array with its shape ({exc})") from exc


def fit_reference(
    train: np.ndarray, validation: np.ndarray, *, action: str = "warn", percentile: float = DEFAULT_PERCENTILE,
    max_dims: int = MAX_DIMS,
) -> dict[str, Any]:  # fmt: skip
    """The reference ``input_gate.ood`` stores: fitted on ``train`` embeddings ``(N, F)``, thresholded at
    ``percentile`` of ``validation``'s scores. Keys: ``action``, ``percentile``, ``threshold``, ``method``,
    ``dims`` (k), ``features`` (F), ``n_train``, ``n_validation``, ``validation_in_rate``, ``mean``, ``projection``.

    Raises:
        OodError: fewer than 4 training or 1 validation embedding, or embeddings that are not finite.
    """
    from sklearn.covariance import LedoitWolf

    from medmlops.informer.csf import embedding_pca

    if action not in ("warn", "refuse"):
        raise OodError(f"action must be 'warn' or 'refuse', got {action!r}")
    if not 0 < percentile <= 100:
        raise OodError(f"percentile must be in (0, 100], got {percentile}")
    train = np.asarray(train, dtype=np.float64)
    validation = np.asarray(validation, dtype=np.float64)
    if train.ndim != 2 or len(train) < 4:
        raise OodError(f"the reference needs at least 4 training embeddings, got {len(train)}")
    if validation.ndim != 2 or len(validation) < 1 or validation.shape[1] != train.shape[1]:
        raise OodError(f"the threshold needs validation embeddings of {train.shape[1]} features")
    if not (np.isfinite(train).all() and np.isfinite(validation).all()):
        raise OodError("the embeddings hold NaN or infinite values")
    mean, axes = embedding_pca(train, max_dims)
    z = (train - mean) @ axes.T
    precision = LedoitWolf(assume_centered=True).fit(z).precision_
    whitening = np.linalg.cholesky((precision + precision.T) / 2)  # precision = L L'
    reference = {
        "action": action, "percentile": float(percentile), "method": METHOD, "dims": int(axes.shape[0]),
        "features": int(train.shape[1]), "n_train": int(len(train)), "n_validation": int(len(validation)),
        "mean": encode_array(mean), "projection": encode_array(axes.T @ whitening),
    }  # fmt: skip
    val_scores = score(reference, validation)
    threshold = float(np.percentile(val_scores, percentile, method="higher"))
    reference["threshold"] = threshold
    reference["validation_in_rate"] = float(np.mean(val_scores <= threshold))
    return reference


class Scorer:
    """A reference with its arrays decoded once (serving scores every batch with it)."""

    def __init__(self, reference: dict[str, Any]) -> None:
        self.reference = reference
        self.mean = decode_array(reference["mean"])
        self.projection = decode_array(reference["projection"])
        self.threshold = float(reference.get("threshold", "nan"))
        if self.projection.shape[0] != self.mean.shape[0]:
            raise OodError("reference projection and mean disagree on the number of features")

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """``(N,)`` Mahalanobis distances of ``(N, F)`` embeddings (NaN for a row that is not finite)."""
        emb = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
        if emb.shape[1] != self.mean.shape[0]:
            raise OodError(f"embeddings have {emb.shape[1]} features; the reference has {self.mean.shape[0]}")
        return np.linalg.norm((emb - self.mean) @ self.projection, axis=1)


def score(reference: dict[str, Any], embeddings: np.ndarray) -> np.ndarray:
    """``(N,)`` scores of ``embeddings`` against ``reference`` (see :class:`Scorer` to score many batches)."""
    return Scorer(reference)(embeddings)


def verdict(reference: dict[str, Any] | None, scores: Iterable[float]) -> list[dict[str, Any]]:
    """Per score: ``{in_distribution, score, threshold}``; ``in_distribution`` is None (and the score and
    threshold too) for a version without a reference or a score that is not finite."""
    out = []
    for value in scores:
        value = float(value)
        if reference is None or not math.isfinite(value):
            out.append({"in_distribution": None, "score": None, "threshold": None})
            continue
        threshold = float(reference["threshold"])
        out.append({"in_distribution": value <= threshold, "score": round(value, 4), "threshold": round(threshold, 4)})
    return out


def refused(reference: dict[str, Any] | None, result: dict[str, Any]) -> bool:
    """Whether the contract refuses an input with this :func:`verdict` (action ``refuse``, out of distribution)."""
    return reference is not None and reference.get("action") == "refuse" and result["in_distribution"] is False


def forward_with_embedding(model: torch.nn.Module, x: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
    """One pass for the outputs and the penultimate embedding through the uniform model surface
    (``forward_head(forward_features(x))`` and ``forward_head(..., pre_logits=True)``, as
    :func:`medmlops.informer.outputs.embedding`); ``(model(x), None)`` for a module without that surface."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return model(x), None
    features = model.forward_features(x)
    return model.forward_head(features), model.forward_head(features, pre_logits=True).flatten(1)


def embeddings(model: torch.nn.Module, images: Sequence[torch.Tensor] | torch.Tensor, batch_size: int = 16):
    """``(N, F)`` float64 embeddings of preprocessed ``images`` in batches (eval mode, no gradients)."""
    import torch

    from medmlops.informer.outputs import embedding

    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            x = batch if isinstance(batch, torch.Tensor) else torch.stack(list(batch))
            parts.append(embedding(model, x.float()).double().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def sample_ids(ids: Sequence[str], limit: int = MAX_REFERENCE_IMAGES, seed: int = 0) -> list[str]:
    """``ids`` when at most ``limit``, else a seeded sample of ``limit`` of them (in their order)."""
    if len(ids) <= limit:
        return list(ids)
    keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=limit, replace=False))
    return [ids[i] for i in keep]
