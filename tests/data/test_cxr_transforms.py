"""Chest X-ray preprocessing: polarity, formats, lung crop, ImageNet normalisation, augmentation, errors."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Compose
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from scipy import ndimage

from medmlops.data.cxr import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandShiftd,
    cxr_augmentations,
    cxr_transforms,
    lung_bbox,
)
from medmlops.data.io import load_xray
from medmlops.data.readers import read_aiforcovid, read_brixia, read_chexpert
from medmlops.data.simulate import generate
from medmlops.errors import DataError

SIZE = 48


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> dict[str, list[str]]:
    """Eight frontal films from each chest simulator at 128 × 128, as the readers list them."""
    root = tmp_path_factory.mktemp("cxr")
    readers = {"aiforcovid": read_aiforcovid, "brixia": read_brixia, "chexpert": read_chexpert}
    out = {}
    for name, read in readers.items():
        generate(name, root / name, n=8, shape=(128, 128), progress=False)
        out[name] = read(root / name)["image_path"].astype(str).tolist()[:8]
    return out


def _display_image(path: str) -> np.ndarray:
    """A simulated film as 12-bit display values (air dark)."""
    arr = load_xray(path).array
    return np.rint((arr - arr.min()) / np.ptp(arr) * 4095).astype(np.uint16)


def _write_dicom(path, pixels: np.ndarray, photometric: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _run(path, **kwargs) -> torch.Tensor:
    return Compose(cxr_transforms(SIZE, **kwargs))({"image": str(path), "image_path": str(path)})["image"]


def _unnormalised(out: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return out * std + mean


def test_monochrome1_and_monochrome2_of_the_same_film_give_the_same_input(simulated, tmp_path):
    film = _display_image(simulated["brixia"][0])
    _write_dicom(tmp_path / "m2.dcm", film, "MONOCHROME2")
    _write_dicom(tmp_path / "m1.dcm", 4095 - film, "MONOCHROME1")  # stored inverted: air bright on disk
    m2, m1 = _run(tmp_path / "m2.dcm"), _run(tmp_path / "m1.dcm")
    assert float((m1 - m2).abs().max()) < 0.05
    # and a MONOCHROME1 file read as if it were MONOCHROME2 would be the negative: the check above can fail.
    _write_dicom(tmp_path / "wrong.dcm", 4095 - film, "MONOCHROME2")
    assert float((_run(tmp_path / "wrong.dcm") - m2).abs().mean()) > 1.0


def test_png16_and_jpeg_give_imagenet_normalised_three_channel_inputs(simulated, tmp_path):
    film = _display_image(simulated["aiforcovid"][0])
    Image.fromarray((film.astype(np.uint16) * 16).astype(np.uint16)).save(tmp_path / "film16.png")
    assert Image.open(tmp_path / "film16.png").mode.startswith("I")
    Image.fromarray((film // 16).astype(np.uint8)).save(tmp_path / "film.jpg", quality=95)
    outs = [_run(tmp_path / "film16.png"), _run(tmp_path / "film.jpg")]
    for out in outs:
        assert tuple(out.shape) == (3, SIZE, SIZE) and out.dtype == torch.float32
        assert not hasattr(out, "meta")  # plain tensor: batches collate without metadata
        # Three identical channels before normalisation, each spanning [0, 1] after the percentile clip.
        raw = _unnormalised(out)
        assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[0], raw[2], atol=1e-5)
        assert float(raw.min()) > -1e-4 and float(raw.max()) < 1 + 1e-4
        means = out.mean(dim=(1, 2))
        # A film averaging ~0.5 sits near 0 after ImageNet normalisation, the blue channel highest (lowest mean).
        assert bool((means.abs() < 1.5).all()) and float(means[2]) > float(means[0])
    # The same film through 16-bit PNG and 8-bit JPEG: same picture up to quantisation and JPEG loss.
    assert float((outs[0] - outs[1]).abs().mean()) < 0.1


def test_in_memory_xray_gives_the_same_input_as_its_path(simulated):
    from medmlops.data.io import load_xray_bytes

    path = simulated["chexpert"][0]
    with open(path, "rb") as fh:
        upload = load_xray_bytes(fh.read(), name="upload.jpg")
    from_memory = Compose(cxr_transforms(SIZE))({"image": upload})["image"]
    assert torch.allclose(from_memory, _run(path))


@pytest.mark.parametrize("dataset", ["aiforcovid", "brixia", "chexpert"])
def test_lung_box_covers_the_lungs_and_is_smaller_than_the_film(simulated, dataset):
    areas, fallbacks = [], 0
    for path in simulated[dataset]:
        film = load_xray(path).array
        rows, cols = film.shape
        r0, r1, c0, c1 = lung_bbox(film)
        assert 0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols
        if (r0, r1, c0, c1) == (0, rows, 0, cols):
            fallbacks += 1  # allowed for the odd film whose lungs are mostly consolidated
            continue
        areas.append((r1 - r0) * (c1 - c0) / (rows * cols))
        # Lung pixels: the darkest quarter of the thorax (central band, away from the borders and the air beside
        # the neck), smoothed so that noise does not decide.
        smooth = ndimage.gaussian_filter(film, 2.0)
        thorax = np.zeros_like(film, dtype=bool)
        thorax[int(0.2 * rows) : int(0.75 * rows), int(0.15 * cols) : int(0.85 * cols)] = True
        lungs = thorax & (smooth < np.quantile(smooth[thorax], 0.25))
        inside = np.zeros_like(lungs)
        inside[r0:r1, c0:c1] = True
        assert lungs[inside].sum() >= 0.95 * lungs.sum(), f"{path}: box {(r0, r1, c0, c1)} misses lung"
    assert fallbacks <= 1
    # The simulated lungs fill much of the film; with the 5 % margin the box is still clearly smaller.
    assert max(areas) < 0.9 and float(np.median(areas)) < 0.75


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(0).random((128, 128)),
        np.random.default_rng(1).normal(size=(300, 200)),
        np.full((64, 64), 7.0),
        np.zeros((1, 1)),
        np.arange(21.0).reshape(3, 7),
    ],
    ids=["uniform-noise", "gaussian-noise", "constant", "one-pixel", "tiny"],
)
def test_lung_box_falls_back_to_the_full_image_without_lungs(image):
    assert lung_bbox(image) == (0, image.shape[0], 0, image.shape[1])


def test_lung_crop_changes_the_input_and_can_be_switched_off(simulated):
    path = simulated["brixia"][1]
    cropped, whole = _run(path), _run(path, lung_crop=False)
    assert cropped.shape == whole.shape
    assert float((cropped - whole).abs().mean()) > 0.1
    # Without the crop the film's dark corners (air beside the neck) are in view; cropping removes them.
    assert float(_unnormalised(whole)[0, :3, :3].mean()) < float(_unnormalised(cropped)[0, :3, :3].mean())


def test_augmentations_keep_shape_and_are_reproducible_with_a_seed(simulated):
    x = _run(simulated["aiforcovid"][1])

    def augment(seed: int, prob: float = 1.0) -> torch.Tensor:
        chain = Compose(cxr_augmentations(prob=prob))
        chain.set_random_state(seed)
        return chain({"image": x.clone()})["image"]

    a, b, c = augment(3), augment(3), augment(4)
    assert tuple(a.shape) == (3, SIZE, SIZE) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float((a - x).abs().mean()) > 0.05  # everything applied at p = 1 changes the image
    assert torch.equal(augment(3, prob=0.0), x)


def test_shift_matches_the_public_codes_scipy_shift():
    img = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    shift = RandShiftd(keys="image", prob=1.0, max_fraction=0.3)
    shift.set_random_state(0)
    out = shift({"image": img})["image"]
    dy, dx = shift._offsets
    assert (dy, dx) != (0, 0) and max(abs(dy), abs(dx)) <= 3
    expected = ndimage.shift(img[0].numpy(), (dy, dx), order=0, mode="nearest")
    assert np.array_equal(out[0].numpy(), expected)


def test_corrupt_file_raises_data_error_naming_it(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    with pytest.raises(Exception) as info:  # MONAI wraps it: "applying transform ..."
        Compose(cxr_transforms(SIZE))({"image": str(bad)})
    chain = info.value
    while chain.__cause__ is not None and not isinstance(chain, DataError):
        chain = chain.__cause__
    assert isinstance(chain, DataError) and "broken.png" in str(chain)
