"""CT preprocessing: skull strip, HU window with clipping, resize, non-finite rejection."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from medmlops.data.ct_transforms import ct_transforms, skull_strip_mask
from medmlops.errors import DataError


def _phantom() -> np.ndarray:
    """A 64×64×12 head: air, scalp (40 HU), skull ring (1000 HU), brain (30 HU) with a hematoma (70 HU)."""
    x, y = np.meshgrid(np.arange(64) - 31.5, np.arange(64) - 31.5, indexing="ij")
    r = np.sqrt(x**2 + y**2)
    slice_ = np.full((64, 64), -1000.0)
    slice_[r < 30] = 40.0
    slice_[r < 27] = 1000.0
    slice_[r < 23] = 30.0
    slice_[(x - 8) ** 2 + y**2 < 25] = 70.0
    return np.repeat(slice_[:, :, None], 12, axis=2)


def test_skull_strip_keeps_brain_and_blood_removes_bone_and_scalp():
    vol = _phantom()
    mask = skull_strip_mask(vol)
    assert mask[..., 6][vol[..., 6] == 70].all()  # hematoma kept
    assert mask[..., 6][vol[..., 6] == 30].mean() > 0.95  # brain kept
    assert not mask[vol >= 300].any()  # no bone
    assert not mask[vol == 40].any()  # no scalp


def test_chain_windows_clips_and_resizes(tmp_path):
    vol = _phantom()
    nib.save(nib.Nifti1Image(vol.astype(np.int16), np.diag([0.9, 0.9, 5.0, 1.0])), tmp_path / "1.nii.gz")
    out = Compose(ct_transforms((32, 32, 8)))({"image": str(tmp_path / "1.nii.gz")})["image"]
    assert tuple(out.shape) == (1, 32, 32, 8) and out.dtype == torch.float32
    assert float(out.min()) == 0.0 and float(out.max()) <= 1.0
    # 70 HU inside [15, 100] → (70-15)/85 ≈ 0.65, and nothing outside the skull survives stripping.
    assert abs(float(out[0, 20, 16, 4]) - 55 / 85) < 0.1
    assert float(out[0, 0, 0, 4]) == 0.0
    unstripped = Compose(ct_transforms((32, 32, 8), skull_strip=False))({"image": str(tmp_path / "1.nii.gz")})["image"]
    assert float((unstripped > 0).float().mean()) > float((out > 0).float().mean())  # scalp (40 HU) now visible
    # Bone (1000 HU) clips to 1 instead of being zeroed (the paper's window; the public code zeroes > 100 HU).
    assert float(unstripped.max()) == pytest.approx(1.0)


def test_non_finite_voxels_stop_the_chain_naming_the_file(tmp_path):
    vol = _phantom().astype(np.float32)
    vol[3, 3, 3] = np.inf
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "bad.nii.gz")
    with pytest.raises(Exception) as info:  # MONAI wraps it: "applying transform ..."
        Compose(ct_transforms((32, 32, 8)))(
            {"image": str(tmp_path / "bad.nii.gz"), "image_path": str(tmp_path / "bad.nii.gz")}
        )
    chain = info.value
    while chain.__cause__ is not None and not isinstance(chain, DataError):
        chain = chain.__cause__
    assert isinstance(chain, DataError) and "NaN/Inf" in str(chain) and "bad.nii.gz" in str(chain)
