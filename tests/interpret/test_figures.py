"""Saliency figures are readable files: a NIfTI that round-trips the map, PNG montages and dashboard thumbnails."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from medmlops.interpret.figures import montage, saliency_png, save_nifti


def test_save_nifti_round_trips_the_map(tmp_path):
    import nibabel as nib

    sal = np.random.default_rng(0).random((8, 9, 10))
    path = save_nifti(sal, tmp_path / "maps" / "case.nii.gz")
    np.testing.assert_allclose(np.asarray(nib.load(str(path)).dataobj), sal.astype(np.float32))


def test_montage_writes_one_panel_per_slice(tmp_path):
    rng = np.random.default_rng(1)
    volume, sal = rng.random((16, 16, 12)), np.zeros((16, 16, 12))
    sal[..., 3] = 1.0  # the slice with most saliency is drawn
    path = montage(volume, sal, tmp_path / "m.png", n_slices=4, title="case")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]


@pytest.mark.parametrize("shape", [(3, 24, 24), (1, 12, 12, 8)])
def test_saliency_png_is_a_thumbnail(shape):
    gen = torch.Generator().manual_seed(2)
    png = saliency_png(torch.rand(shape, generator=gen), torch.rand(shape, generator=gen), size=40)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (40, 40) and image.mode == "RGB"
