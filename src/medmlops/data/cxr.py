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

from medmlops.data.ct_transforms import RejectNonFinited

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
    fetched here, so this is a documented classical approximation (thresholds and morphology, scipy only):

    1. Uniform borders (black padding, bright collimation) are stripped and the film is smoothed on a ~128-px grid.
    2. Dark = below Otsu's threshold (two classes: lungs + air vs tissue) or below the upper of three Otsu classes
       (air < lung < tissue, for films with a large black background); both are tried. Closed a little to bridge
       ribs.
    3. Air outside the patient reaches the film edge; lungs do not. The dark mask is eroded with growing radii to
       cut the thin links between the apices and the air beside the neck, components touching the edge are
       dropped, and the one or two largest remaining ones are grown back (the body is thus "not background").
    4. Plausibility: lung area 6–70 % of the film, a pair on either side of the midline, box centred and at least
       a quarter of the film high and a third wide. A pair beats a single lung, then the larger area wins.
    5. Consolidated lung is not dark, so the box is completed: made symmetric about the mediastinum (a single
       lung is mirrored about the film centre), and extended down to about as tall as wide (basal opacities).

    The box grows by ``margin`` of the image side on every side. Known limits: a lung that is consolidated
    almost entirely (laterally and basally) can still be partly cut, and films without two-class contrast fall
    back to the full image.

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
    # A ~128-px working grid: enough to find lungs, and the cost stays flat whatever the detector size. Block means
    # (not point sampling) so a 3000-px film's noise averages out instead of aliasing.
    factor = max(1, int(np.ceil(max(rows, cols) / work_side)))
    if factor > 1:
        br, bc = rows // factor, cols // factor
        work = arr[: br * factor, : bc * factor].reshape(br, factor, bc, factor).mean(axis=(1, 3))
    else:
        work = arr
    wr, wc = work.shape
    back_r, back_c = (factor, factor) if factor > 1 else (1, 1)
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
    # Lungs are dark, but how dark depends on the exposure and on how much air surrounds the patient: with little
    # air, a two-class Otsu split gives lungs + air vs tissue; with a large black background it gives air vs
    # patient, and the lungs are the middle of three classes. Both splits are tried.
    structure = ndimage.generate_binary_structure(2, 1)
    side = min(inner.shape)
    k = max(1, round(0.015 * side))
    plausible = []
    for threshold in (_otsu(inner.ravel()), _otsu3(inner.ravel())[1]):
        dark = inner < threshold
        if not dark.any() or dark.all() or float(inner[~dark].mean() - inner[dark].mean()) < 0.2:
            # Lungs differ from soft tissue by a large part of the dynamic range; textures without such contrast
            # (noise, flat images) have no lungs to find.
            continue
        # Ribs cross the lungs as bright bands: a small closing keeps each lung in one piece. Edge-padded so that
        # the closing neither invents nor erases dark pixels along the film edge.
        dark = np.pad(dark, k, mode="edge")
        dark = ndimage.binary_closing(dark, structure=structure, iterations=k)[k:-k, k:-k]
        # The lung apices can reach the air beside the neck through a gap of a few pixels: the dark mask is eroded
        # with growing radii until the lungs separate from everything that reaches the film edge.
        for fraction in (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12):
            found = _lungs_from_dark(dark, round(fraction * side))
            if found is not None:
                plausible.append(found)
    if not plausible:
        return None
    # A pair of lungs beats a single one, then the larger lung area (the least eroded, most complete) wins.
    (r0, r1, c0, c1), _, _ = max(plausible, key=lambda f: (f[1], f[2]))
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
        # Consolidation is often peripheral (COVID-19) and leaves only the medial lung dark on that side: the box is
        # made symmetric about the mediastinum (midway between the lungs' medial edges) so both fields stay whole.
        first, second = sorted(keep, key=lambda label: centres[keep.index(label)][1])
        medial_left = float(np.nonzero((labels == first).any(axis=0))[0].max() + 1)
        medial_right = float(np.nonzero((labels == second).any(axis=0))[0].min())
        mid = (medial_left + medial_right) / 2.0
        c0, c1 = max(0.0, min(c0, 2 * mid - c1)), min(float(ic), max(c1, 2 * mid - c0))
    # An adult pair of lung fields is about as tall as it is wide. A much shorter dark region means the lower
    # lung is consolidated or effused (basal in COVID-19 pneumonia and effusion), so the box extends down to keep it.
    r1 = min(float(ir), max(r1, r0 + 0.85 * (c1 - c0)))
    height, width = (r1 - r0) / ir, (c1 - c0) / ic
    centre_r, centre_c = (r0 + r1) / 2.0 / ir, (c0 + c1) / 2.0 / ic
    if height < 0.25 or width < 0.35 or not (0.2 <= centre_r <= 0.8 and 0.3 <= centre_c <= 0.7):
        return None
    return (r0, r1, c0, c1), len(keep), area


# ----------------------------------------------------------------------------------------------------------------------
# Dictionary transforms
# ----------------------------------------------------------------------------------------------------------------------


class LoadXrayd(MapTransform):
    """Load a chest X-ray with :func:`medmlops.data.io.load_xray` into a (1, H, W) float32 MetaTensor.

    The value may be a path or an already-read :class:`~medmlops.data.io.XrayImage` (serving reads uploads from
    bytes), so training and serving run the same chain. Pixels are in display polarity (MONOCHROME1 inverted by the
    loader); unreadable files raise DataError naming the file.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        from medmlops.data.io import XrayImage, load_xray

        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            image = value if isinstance(value, XrayImage) else load_xray(value)
            source = d.get("image_path", "upload") if isinstance(value, XrayImage) else str(value)
            array = np.ascontiguousarray(image.array, dtype=np.float32)
            d[key] = MetaTensor(
                torch.from_numpy(array)[None],
                meta={"filename_or_obj": source, "photometric": image.photometric, "bits": image.bits},
            )
        return d


class LungCropd(MapTransform):
    """Crop to :func:`lung_bbox` of the first channel (the MDMT paper's lung bounding-box crop).

    ``enabled=False`` makes it a no-op, so a model contract can switch the crop off (the CheXpert classifier sees
    the whole film by default in the literature; the MDMT models crop).
    """

    def __init__(
        self, keys: KeysCollection, enabled: bool = True, margin: float = 0.05, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = enabled
        self.margin = margin

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.transforms import SpatialCrop

        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            first = img[0].detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)[0]
            r0, r1, c0, c1 = lung_bbox(first, margin=self.margin)
            # SpatialCrop keeps the MetaTensor's affine and records the crop, as every MONAI spatial transform does.
            d[key] = SpatialCrop(roi_start=(r0, c0), roi_end=(r1, c1))(img)
        return d


def cxr_transforms(
    size: int,
    lung_crop: bool = True,
    percentiles: Sequence[float] = (0.5, 99.5),
    load: bool = True,
    margin: float = 0.05,
) -> list:
    """Deterministic chest X-ray preprocessing as MONAI dictionary transforms on key ``image``.

    Load (display polarity) → percentile clip ``percentiles`` and min–max to [0, 1] → lung bounding-box crop →
    bilinear resize to ``size`` × ``size`` with anti-aliasing → 3 identical channels → ImageNet mean/std per channel
    → float32 tensor without metadata. The result is ``(3, size, size)``, ready for an ImageNet-style backbone.

    The MDMT public code clips at the 2nd/98th percentile of the whole film (after setting zeros to the mean) and
    normalises with ImageNet statistics; the 0.5/99.5 default keeps more of the lung range and is a parameter.

    Args:
        size: output side in pixels (the MDMT public code uses 256; CPU tests use less).
        lung_crop: crop to :func:`lung_bbox` before resizing.
        percentiles: lower and upper intensity percentiles mapped to 0 and 1 (values outside are clipped).
        load: start with :class:`LoadXrayd`; ``False`` when ``image`` already holds a (1, H, W) array.
        margin: lung box margin, as a fraction of the image side.
    """
    from monai.transforms import (
        EnsureTyped,
        NormalizeIntensityd,
        RepeatChanneld,
        Resized,
        ScaleIntensityRangePercentilesd,
    )

    chain: list = []
    if load:
        chain.append(LoadXrayd(keys="image"))
    chain += [
        RejectNonFinited(keys="image"),
        ScaleIntensityRangePercentilesd(
            keys="image",
            lower=float(percentiles[0]),
            upper=float(percentiles[1]),
            b_min=0.0,
            b_max=1.0,
            clip=True,
            relative=False,
        ),
        LungCropd(keys="image", enabled=lung_crop, margin=margin),
        Resized(keys="image", spatial_size=(int(size), int(size)), mode="bilinear", anti_aliasing=True),
        RepeatChanneld(keys="image", repeats=3),
        NormalizeIntensityd(keys="image", subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True),
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
    ]
    return chain


# ----------------------------------------------------------------------------------------------------------------------
# Augmentation (MDMT public code)
# ----------------------------------------------------------------------------------------------------------------------


class RandShiftd(RandomizableTransform, MapTransform):
    """Translate by a whole number of pixels up to ``max_fraction`` of each side, repeating the edge pixels.

    The MDMT public code's shift: ``scipy.ndimage.shift(img, [r1, r2], mode="nearest")`` with integer ``r`` drawn
    uniformly in ``[-int(0.1 * side), int(0.1 * side)]``. A fraction (not pixels) so any ``size`` gets the same shift.
    """

    def __init__(
        self, keys: KeysCollection, prob: float = 0.1, max_fraction: float = 0.1, allow_missing_keys: bool = False
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.max_fraction = max_fraction
        self._offsets: tuple[int, int] = (0, 0)

    def randomize(self, spatial_shape: Sequence[int]) -> None:  # type: ignore[override]
        super().randomize(None)
        if not self._do_transform:
            return
        limits = [int(self.max_fraction * n) for n in spatial_shape]
        self._offsets = (int(self.R.randint(-limits[0], limits[0] + 1)), int(self.R.randint(-limits[1], limits[1] + 1)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        self.randomize(d[first].shape[-2:])
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = torch.as_tensor(d[key])
            rows, cols = img.shape[-2:]
            # Index clamping is scipy's mode="nearest" for whole-pixel shifts: exact, no interpolation blur.
            r = (torch.arange(rows, device=img.device) - self._offsets[0]).clamp(0, rows - 1)
            c = (torch.arange(cols, device=img.device) - self._offsets[1]).clamp(0, cols - 1)
            d[key] = img[..., r, :][..., c]
        return d


class RandElasticd(RandomizableTransform, MapTransform):
    """MONAI's :class:`~monai.transforms.Rand2DElasticd` with its pixel ranges scaled to the image side.

    Ranges are given in pixels at ``reference_side`` (256, the MDMT public code's input size) so a 64-px CPU image
    gets the same relative deformation as a 256-px one. The inner transform shares this transform's random state,
    so ``set_random_state`` makes it reproducible.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        spacing: float = 20.0,
        magnitude_range: tuple[float, float] = (0.45, 0.85),
        reference_side: int = _REFERENCE_SIDE,
        padding_mode: str = "reflection",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.spacing = spacing
        self.magnitude_range = magnitude_range
        self.reference_side = reference_side
        self.padding_mode = padding_mode
        self._inner: dict[tuple[int, int], Any] = {}

    def _for_shape(self, shape: tuple[int, int]) -> Any:
        from monai.transforms import Rand2DElasticd

        if shape not in self._inner:
            scale = min(shape) / self.reference_side
            self._inner[shape] = Rand2DElasticd(
                keys=self.keys,
                spacing=max(2.0, self.spacing * scale),
                magnitude_range=(self.magnitude_range[0] * scale, self.magnitude_range[1] * scale),
                prob=1.0,
                mode="bilinear",
                padding_mode=self.padding_mode,
                allow_missing_keys=self.allow_missing_keys,
            )
        inner = self._inner[shape]
        inner.set_random_state(state=self.R)
        return inner

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        self.randomize(None)
        if not self._do_transform:
            return d
        shape = tuple(int(n) for n in d[first].shape[-2:])
        return dict(self._for_shape(shape)(d))  # type: ignore[arg-type]


def cxr_augmentations(prob: float = 0.5) -> list:
    """Training augmentation of the MDMT public code, as MONAI random dictionary transforms on key ``image``.

    Ranges from ``src/utils/utils_data.py::augmentation`` in cosbidev/Multi-Dataset-Multi-Task-Learning-for-COVID-19-
    Prognosis, applied in the same order, each independently with probability ``prob``:

    - shift: whole pixels, up to ±10 % of each side, edge pixels repeated (``scipy.ndimage.shift``, mode nearest);
    - zoom: factor uniform in [0.9, 1.1] about the centre, size kept, zero padding when zooming out;
    - flip: left–right (``cv2.flip(img, 1)``);
    - rotation: uniform in ±10° about the centre, size kept, zero corners (``imutils.rotate``);
    - elastic: Simard et al.'s deformation with α ∈ [20, 40] px and σ = 7 px at 256 px. MONAI's B-spline control
      grid stands in: spacing 20 px and magnitude 0.45–0.85 px at 256 px, matched to the public code's displacement
      standard deviation (0.5–1.0 px) and correlation length (about 10 px); scaled with the image side.

    The public code draws each with ``random.randint(0, 100) > 70``, i.e. p = 30/101 ≈ 0.3; ``prob`` defaults to
    0.5 and a params file reproduces the public code with 0.3. The public code augments the [0, 1] image before
    ImageNet normalisation; appended after :func:`cxr_transforms` (so MONAI's cache keeps the deterministic part),
    zero padding here is the ImageNet mean rather than black — padding is a constant either way.
    """
    from monai.transforms import EnsureTyped, RandFlipd, RandRotated, RandZoomd

    max_angle = float(np.deg2rad(10.0))
    return [
        RandShiftd(keys="image", prob=prob, max_fraction=0.1),
        RandZoomd(
            keys="image",
            prob=prob,
            min_zoom=0.9,
            max_zoom=1.1,
            mode="bilinear",
            padding_mode="constant",
            keep_size=True,
        ),
        RandFlipd(keys="image", prob=prob, spatial_axis=1),
        RandRotated(keys="image", range_x=max_angle, prob=prob, keep_size=True, mode="bilinear", padding_mode="zeros"),
        RandElasticd(keys="image", prob=prob),
        # MONAI's spatial transforms re-wrap tensors as MetaTensor; training batches stay plain like the cached part.
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
    ]
