"""MONAI dictionary transforms: one preprocessing definition per modality, shared by training, serving and
monitoring (the model contract records the parameters, :func:`ct_transforms` rebuilds the same chain).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

# ----------------------------------------------------------------------------------------------------------------------
# Skull stripping
# ----------------------------------------------------------------------------------------------------------------------

# Item key set (True) for a volume that is already skull-stripped (the authors' ``{id}_brain.nii.gz``, SynthStrip):
# SkullStripd leaves it as it is. Running the stand-in on it would find no closed skull and keep soft tissue,
# but it would also blank what SynthStrip kept above 300 HU (calcifications) and, where a remnant of bone
# closes a ring on a slice, cut that slice to the ring's inside.
SKULL_STRIPPED = "skull_stripped"


def skull_strip_mask(
    volume_hu: np.ndarray,
    bone_hu: float = 300.0,
    tissue_hu: tuple[float, float] = (-50.0, 150.0),
    slice_axis: int = -1,
) -> np.ndarray:
    """Intracranial mask of a head CT in Hounsfield units, from intensity thresholds and morphology.

    This approximates what SynthStrip (Hoopes et al., NeuroImage 2022) gives the ICH paper: the brain and the
    blood and CSF inside the skull, with bone, scalp and air removed. SynthStrip is a learned network whose
    weights cannot be fetched here; this classical stand-in works because CT's skull is a closed high-density
    shell: per axial slice, bone (≥ ``bone_hu``) is closed morphologically and its holes filled; the filled area
    minus the bone is the intracranial cavity. Kept voxels must be in the soft-tissue range.
    In 3D the largest connected component is kept, which drops the orbits and other soft tissue outside the
    skull. Where the skull is not closed on a slice (skull base, vertex, craniectomy) the slice falls back to the
    soft-tissue voxels connected to the cavity of its neighbours. It is coarser than SynthStrip at the skull
    base and ignores subtle partial-volume boundaries; it never removes intracranial blood (50-90 HU).

    Args:
        volume_hu: 3D array in HU.
        slice_axis: the axis across axial slices (NIfTI from a scanner: the last).

    Returns:
        Boolean mask of the same shape.
    """
    vol = np.moveaxis(np.asarray(volume_hu, dtype=np.float32), slice_axis, -1)
    bone = vol >= bone_hu
    tissue = (vol >= tissue_hu[0]) & (vol <= tissue_hu[1])
    cavity = np.zeros_like(bone)
    structure = ndimage.generate_binary_structure(2, 1)
    for k in range(vol.shape[-1]):
        ring = ndimage.binary_closing(bone[..., k], structure=structure, iterations=2)
        filled = ndimage.binary_fill_holes(ring)
        # Partial-volume voxels between soft tissue and bone fall outside ``tissue_hu`` and are dropped there.
        cavity[..., k] = filled & ~ring & tissue[..., k]
    labels, count = ndimage.label(cavity)
    if count == 0:
        # No closed skull anywhere (not a head CT, or already stripped): keep soft tissue, remove nothing else.
        return np.moveaxis(tissue | (vol > tissue_hu[1]) & (vol < bone_hu), -1, slice_axis)
    sizes = ndimage.sum_labels(cavity, labels, index=np.arange(1, count + 1))
    mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    return np.moveaxis(mask, -1, slice_axis)


class SkullStripd(MapTransform):
    """Set everything outside :func:`skull_strip_mask` to ``fill_hu`` (before windowing, so it maps to 0).

    Runs on HU data; place it before the intensity window. ``enabled=False`` makes it a no-op, so a contract
    can switch it off (e.g. for data that was stripped already). An item whose :data:`SKULL_STRIPPED` key is true
    (a ``{id}_brain.nii.gz`` file) passes unchanged; the key is removed from every item, so batches never carry it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        enabled: bool = True,
        bone_hu: float = 300.0,
        fill_hu: float = -1000.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = enabled
        self.bone_hu = bone_hu
        self.fill_hu = fill_hu

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        stripped = bool(d.pop(SKULL_STRIPPED, False))
        if not self.enabled or stripped:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            channels = [skull_strip_mask(arr[c], bone_hu=self.bone_hu) for c in range(arr.shape[0])]
            mask = np.stack(channels)
            if isinstance(img, torch.Tensor):
                d[key] = torch.where(
                    torch.as_tensor(mask, device=img.device), img, torch.as_tensor(self.fill_hu, dtype=img.dtype)
                )
            else:
                d[key] = np.where(mask, arr, self.fill_hu).astype(arr.dtype)
        return d


class LoadCtd(MapTransform):
    """Load a NIfTI CT with :func:`medmlops.data.io.load_ct` into a channel-first MetaTensor carrying its affine.

    The value may be a path or an already-read :class:`~medmlops.data.io.CtVolume` (serving reads uploads from
    bytes), so training and serving run the same chain. Unreadable files raise DataError naming the file, in one
    sentence (MONAI's LoadImage folds every reader's traceback into its message).
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        from medmlops.data.io import CtVolume, load_ct

        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            volume = value if isinstance(value, CtVolume) else load_ct(value)
            source = str(value) if not isinstance(value, CtVolume) else d.get("image_path", "upload")
            d[key] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(volume.array))[None],
                affine=torch.as_tensor(volume.affine, dtype=torch.float64),
                meta={"filename_or_obj": source, "space": "RAS"},
            )
        return d


class RejectNonFinited(MapTransform):
    """Fail with the file's name instead of training on NaN/Inf voxels (the loaders check files; this checks
    anything that reaches the chain another way, e.g. serving uploads)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medmlops.errors import DataError

        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            finite = torch.isfinite(value).all() if isinstance(value, torch.Tensor) else np.isfinite(value).all()
            if not bool(finite):
                source = d.get("image_path") or getattr(value, "meta", {}).get("filename_or_obj", key)
                raise DataError(f"{source}: contains NaN/Inf values")
        return d


# ----------------------------------------------------------------------------------------------------------------------
# CT chain (ICH)
# ----------------------------------------------------------------------------------------------------------------------


def ct_transforms(
    spatial_size: Sequence[int],
    window: Sequence[float] = (15.0, 100.0),
    skull_strip: bool = True,
    orientation: str = "RAS",
    load: bool = True,
) -> list:
    """Deterministic CT preprocessing as MONAI dictionary transforms on key ``image``.

    Load NIfTI → channel first → orientation → skull strip (HU) → window [15, 100] HU → [0, 1] with clipping →
    resize to ``spatial_size`` (x, y, z: in-plane, in-plane, slices; the paper's 301, 301, 40).

    The window follows Cobo et al. (Perez et al.'s best windowing). The authors' public code zeroes values
    above 100 HU instead of clipping them to 1; we clip, as the paper describes (docs/architecture.md, "Method decisions").
    """
    from monai.transforms import EnsureTyped, Orientationd, Resized, ScaleIntensityRanged

    chain: list = []
    if load:
        chain.append(LoadCtd(keys="image"))
    chain += [
        RejectNonFinited(keys="image"),
        Orientationd(keys="image", axcodes=orientation),
        SkullStripd(keys="image", enabled=skull_strip),
        ScaleIntensityRanged(
            keys="image", a_min=float(window[0]), a_max=float(window[1]), b_min=0.0, b_max=1.0, clip=True
        ),
        Resized(keys="image", spatial_size=tuple(int(s) for s in spatial_size), mode="trilinear", align_corners=False),
        EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
    ]
    return chain


def ct_augmentations(prob: float = 0.5, rotate_deg: float = 5.0, zoom: float = 0.1, noise_std: float = 0.01) -> list:
    """Training augmentation of Cobo et al.: rotation ±5°, zoom up to 10 %, Gaussian noise σ 0.01, each with p = 0.5."""
    from monai.transforms import RandGaussianNoised, RandRotated, RandZoomd

    angle = float(np.deg2rad(rotate_deg))
    return [
        RandRotated(
            keys="image", range_x=angle, range_y=angle, range_z=angle, prob=prob, keep_size=True, padding_mode="zeros"
        ),
        RandZoomd(
            keys="image", min_zoom=1.0 - zoom, max_zoom=1.0 + zoom, prob=prob, keep_size=True, padding_mode="constant"
        ),
        RandGaussianNoised(keys="image", prob=prob, mean=0.0, std=noise_std),
    ]
