"""Chest X-ray preprocessing shared by the COVID MDMT models and the CheXpert findings classifier.

One chain for training, serving and monitoring, as MONAI dictionary transforms on key ``image``:
load (DICOM / PNG / JPEG, display polarity) → percentile clip + min–max to [0, 1] → lung bounding-box crop →
resize → 3 channels → ImageNet normalisation (:func:`cxr_transforms`). Training adds the MDMT public code's
augmentation after the cache (:func:`cxr_augmentations`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

from medmlops.data.transforms import RejectNonFinited

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The MDMT public code resizes to 256 × 256 before augmenting; pixel-valued ranges below are given at that size
# and scaled to the actual image so that small CPU shapes get the same relative deformation.
_REFERENCE_SIDE = 256

# ----------------------------------------------------------------------------------------------------------------------
# Lung bounding box
# ----------------------------------------------------------------------------------------------------------------------


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of a 1D sample (between-class variance maximised over a histogram)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1.0)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1.0)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _otsu3(values: np.ndarray, bins: int = 64) -> tuple[float, float]:
    """Two thresholds splitting a sample into three classes (multi-level Otsu, exhaustive over a histogram)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w = np.concatenate([[0.0], np.cumsum(hist, dtype=np.float64)])
    m = np.concatenate([[0.0], np.cumsum(hist * centres)])
    best, pair = -1.0, (1, 2)
    for i in range(1, bins - 1):
        for j in range(i + 1, bins):
            score = 0.0
            for a, b in ((0, i), (i, j), (j, bins)):
                weight = w[b] - w[a]
                if weight > 0:
                    score += (m[b] - m[a]) ** 2 / weight
            if score > best:
                best, pair = score, (i, j)
    return float(edges[pair[0]]), float(edges[pair[1]])


def _uniform_frame(image: np.ndarray, max_fraction: float = 0.25) -> tuple[int, int, int, int]:
    """Rows/columns to strip on each side where the film is a uniform band (black padding or bright collimation).

    A bright collimation frame would otherwise close the body outline at the image edge and make the air beside
    the neck look like a hole inside the body.
    """
    rows, cols = image.shape
    spread = max(float(np.ptp(image)), 1e-6)

    def run(lines: np.ndarray, limit: int) -> int:
        n = 0
        while n < limit and float(np.ptp(lines[n])) < 0.08 * spread:
            n += 1
        return n

    top = run(image, int(rows * max_fraction))
    bottom = run(image[::-1], int(rows * max_fraction))
    left = run(image.T, int(cols * max_fraction))
    right = run(image.T[::-1], int(cols * max_fraction))
    return top, rows - bottom, left, cols - right


def lung_bbox(image: np.ndarray, margin: float = 0.05) -> tuple[int, int, int, int]:
    """Bounding box ``(r0, r1, c0, c1)`` (half-open) of both lungs on a frontal chest X-ray in display polarity.

    The MDMT paper crops each radiograph to the bounding box of a U-Net lung segmentation; those weights cannot be
    fetched here, so this is a documented classical approximation. Uniform borders (padding, collimation) are
    stripped; the body is the largest bright component with its holes filled, so air outside the patient (which
    reaches the film edge) is excluded; inside the body, the lungs are the pixels darker than Otsu's threshold of
    the body, opened (to cut thin links through the mediastinum) and closed (to bridge ribs), keeping the one or
    two largest components that do not touch the film border. The union box grows by ``margin`` of the image side
    on every side. When only one lung is found (a white-out on the other side) its column span is mirrored about
    the body midline, since the crop must keep both hemithoraces.

    Falls back to the full image whenever no plausible lung field is found (too small, too large, off-centre,
    tiny or flat image), so the result is always a valid non-empty box.

    Args:
        image: 2D array, air dark (``load_xray`` output or any rescaling of it).
        margin: fraction of the image height/width added on each side of the box.

    Returns:
        ``(r0, r1, c0, c1)`` with ``0 <= r0 < r1 <= rows`` and ``0 <= c0 < c1 <= cols``.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"lung_bbox expects a 2D image, got shape {arr.shape}")
    rows, cols = arr.shape
    full = (0, rows, 0, cols)
    if min(rows, cols) < 16 or not np.isfinite(arr).all():
        return full
    found = _lung_box_on_grid(arr)
    if found is None:
        return full
    r0, r1, c0, c1 = found
    dr, dc = margin * rows, margin * cols
    r0, r1 = max(0, int(np.floor(r0 - dr))), min(rows, int(np.ceil(r1 + dr)))
    c0, c1 = max(0, int(np.floor(c0 - dc))), min(cols, int(np.ceil(c1 + dc)))
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else full


def _lung_box_on_grid(arr: np.ndarray, work_side: int = 128) -> tuple[float, float, float, float] | None:
    """The lung box in ``arr``'s pixel coordinates (no margin), or None when implausible."""
    rows, cols = arr.shape
    # A ~128-px working grid: enough to find lungs, and the cost stays flat whatever the detector size.
    scale = min(1.0, work_side / max(rows, cols))
    work = ndimage.zoom(arr, scale, order=1) if scale < 1.0 else arr
    wr, wc = work.shape
    lo, hi = np.percentile(work, [1.0, 99.0])
    if hi - lo <= 1e-6 * max(1.0, abs(float(hi))):
        return None
    work = np.clip((work - lo) / (hi - lo), 0.0, 1.0)
    # Frames are found before smoothing, which would blur their edge into the film.
    t0, t1, l0, l1 = _uniform_frame(work)
    # Smoothing at ~1.5 % of the side removes detector noise and most rib texture before thresholding.
    work = ndimage.gaussian_filter(work, sigma=max(1.0, 0.015 * min(wr, wc)))
    inner = work[t0:t1, l0:l1]
    if min(inner.shape) < 12:
        return None
    # Lungs and the air around the patient are the dark class; ribs cross the lungs as bright bands, so the dark
    # mask is closed a little to keep each lung in one piece.
    structure = ndimage.generate_binary_structure(2, 1)
    side = min(inner.shape)
    k = max(1, round(0.015 * side))
    dark = inner < _otsu(inner.ravel())
    if not dark.any() or dark.all() or float(inner[~dark].mean() - inner[dark].mean()) < 0.2:
        # Lungs on a radiograph differ from soft tissue by a large part of the dynamic range; textures without
        # such two-class contrast (noise, flat images) have no lungs to find.
        return None
    # Edge-padded so that the closing neither invents nor erases dark pixels along the film edge.
    dark = np.pad(dark, k, mode="edge")
    dark = ndimage.binary_closing(dark, structure=structure, iterations=k)[k:-k, k:-k]
    # The lung apices can reach the air beside the neck through a gap of a few pixels: the dark mask is eroded with
    # growing radii until the lungs separate from everything that reaches the film edge. Among the plausible
    # results a pair of lungs beats a single one, then the larger lung area (the least eroded, most complete) wins.
    found = [_lungs_from_dark(dark, round(fraction * side)) for fraction in (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12)]
    plausible = [f for f in found if f is not None]
    if not plausible:
        return None
    (r0, r1, c0, c1), _, _ = max(plausible, key=lambda f: (f[1], f[2]))
    back_r, back_c = rows / wr, cols / wc
    return ((r0 + t0) * back_r, (r1 + t0) * back_r, (c0 + l0) * back_c, (c1 + l0) * back_c)


def _lungs_from_dark(dark: np.ndarray, radius: int) -> tuple[tuple[float, float, float, float], int, float] | None:
    """Lung box on the working grid for one erosion radius of the dark mask, with the number of lungs found and
    their area fraction; None when implausible."""
    ir, ic = dark.shape
    structure = ndimage.generate_binary_structure(2, 1)
    # border_value=1: what reaches the film edge must still reach it after erosion, or the air band above the
    # shoulders would pull away from the edge and pass for a lung.
    core = ndimage.binary_erosion(dark, structure=structure, iterations=radius, border_value=1) if radius else dark
    labels, count = ndimage.label(core)
    if count == 0:
        return None
    edge = np.zeros_like(core)
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    touching = set(np.unique(labels[edge & core]).tolist())
    candidates = [k for k in range(1, count + 1) if k not in touching]
    if not candidates:
        return None
    sizes = ndimage.sum_labels(core, labels, index=candidates)
    order = np.argsort(sizes)[::-1]
    keep = [candidates[order[0]]]
    # A second component counts as the other lung only if it is comparable in size (not the trachea or a bubble).
    if len(order) > 1 and sizes[order[1]] >= 0.25 * sizes[order[0]]:
        keep.append(candidates[order[1]])
    # Grow the kept cores back by the erosion radius, within the dark mask, to recover the lung outline; pixels
    # that the air reaching the film edge also grows into stay air, so the lungs do not re-join it.
    lungs = np.isin(labels, keep)
    if radius:
        outside = ndimage.binary_dilation(np.isin(labels, list(touching - {0})), structure=structure, iterations=radius)
        lungs = ndimage.binary_dilation(lungs, structure=structure, iterations=radius) & dark & ~outside
    area = float(lungs.sum() / dark.size)
    if not 0.06 <= area <= 0.7:
        return None

    rr, cc = np.nonzero(lungs)
    r0, r1, c0, c1 = float(rr.min()), float(rr.max() + 1), float(cc.min()), float(cc.max() + 1)
    if len(keep) == 1:
        # One lung (the other whited out): mirror its span about the film's centre so both hemithoraces stay in.
        c0, c1 = max(0.0, min(c0, ic - c1)), min(float(ic), max(c1, ic - c0))
    else:
        # Two lungs lie on either side of the midline: a pair on one side is two pieces of one lung or not lungs.
        centres = ndimage.center_of_mass(lungs, labels, keep)
        if (centres[0][1] - ic / 2.0) * (centres[1][1] - ic / 2.0) > 0:
            return None
    # An adult pair of lung fields is about as tall as it is wide. A much shorter dark region means the lower
    # lung is consolidated or effused (basal in COVID-19 pneumonia and effusion), so the box extends down to keep it.
    r1 = min(float(ir), max(r1, r0 + 0.85 * (c1 - c0)))
    height, width = (r1 - r0) / ir, (c1 - c0) / ic
    centre_r, centre_c = (r0 + r1) / 2.0 / ir, (c0 + c1) / 2.0 / ic
    if height < 0.25 or width < 0.35 or not (0.2 <= centre_r <= 0.8 and 0.3 <= centre_c <= 0.7):
        return None
    return (r0, r1, c0, c1), len(keep), area
