"""A CT DICOM series in a zip → the same volume, affine and model input as the NIfTI path; refusals with codes."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Compose
from pydicom.data import get_testdata_file

from medmlops.data.ct_transforms import LoadCtd, ct_transforms
from medmlops.data.dicom_series import SeriesError, SeriesLimits, read_series_zip, series_zip_from_volume
from medmlops.data.io import load_ct


def _head(shape: tuple[int, int, int] = (48, 40, 12)) -> np.ndarray:
    """Air (-1000) around an ellipsoid head: scalp 40 HU, skull 1000 HU, brain 30 HU, a 70 HU bleed, ramps so that
    every axis is asymmetric (a flipped axis cannot pass as the original)."""
    nx, ny, nz = shape
    x, y, z = np.meshgrid(
        (np.arange(nx) - nx / 2 + 0.5) / (nx / 2 - 2),
        (np.arange(ny) - ny / 2 + 0.5) / (ny / 2 - 2),
        (np.arange(nz) - nz / 2 + 0.5) / (nz / 2),
        indexing="ij",
    )
    r = np.sqrt(x**2 + y**2 + 0.5 * z**2)
    vol = np.full(shape, -1000, dtype=np.int16)
    vol[r < 1.0] = 40
    vol[r < 0.9] = 1000
    vol[r < 0.78] = 30
    vol[(r < 0.78) & ((x - 0.3) ** 2 + (y + 0.2) ** 2 < 0.04)] = 70
    inside = r < 0.78
    ramp = np.arange(nx)[:, None, None] + 2 * np.arange(ny)[None, :, None] + 3 * np.arange(nz)[None, None, :]
    vol[inside] += (ramp[inside] % 7).astype(np.int16)
    return vol


def _rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def _affine(kind: str) -> np.ndarray:
    spacing = np.diag([0.8, 0.9, 5.0])
    rot = {
        "axial": np.eye(3),
        "oblique": _rotation(np.deg2rad(17.0), np.deg2rad(-9.0)),  # a tilted head, right-handed grid
        "lps": np.diag([-1.0, -1.0, 1.0]),  # stored as DICOM is (x to the left, y to the back)
        "flipped": np.diag([-1.0, 1.0, 1.0]),  # left-handed grid: the third axis runs against X × Y
    }[kind]
    affine = np.eye(4)
    affine[:3, :3] = rot @ spacing
    affine[:3, 3] = [-19.3, 17.1, -30.2]
    return affine


def _nifti(tmp_path, vol: np.ndarray, affine: np.ndarray) -> str:
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), path)
    return str(path)


def _entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries:
            archive.writestr(name, content)
    return buffer.getvalue()


def _edit(data: bytes, edit) -> bytes:
    """Rewrite each slice through ``edit(ds) -> ds | None`` (None drops the slice)."""
    out = []
    for name, content in _entries(data):
        ds = edit(pydicom.dcmread(io.BytesIO(content)))
        if ds is not None:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            out.append((name, buffer.getvalue()))
    return _zip(out)


def _refused(data: bytes, code: str, limits: SeriesLimits | None = None) -> SeriesError:
    with pytest.raises(SeriesError) as info:
        read_series_zip(data, limits or SeriesLimits())
    assert info.value.code == code, str(info.value)
    message = str(info.value)
    assert message.count("\n") == 0 and ";" in message  # one sentence: the problem; what is accepted
    return info.value


@pytest.fixture(scope="module")
def series() -> bytes:
    return series_zip_from_volume(_head(), _affine("axial"), BodyPartExamined="HEAD", AccessionNumber="A123")


# ----------------------------------------------------------------------------------------------------------------------
# Same volume as the NIfTI path
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["axial", "oblique", "lps"])
def test_series_gives_the_array_affine_and_spacing_of_load_ct(tmp_path, kind):
    vol, affine = _head(), _affine(kind)
    from_nifti = load_ct(_nifti(tmp_path, vol, affine))
    data = series_zip_from_volume(vol, affine, BodyPartExamined="HEAD", AccessionNumber="A123")
    numbers = [pydicom.dcmread(io.BytesIO(content)).InstanceNumber for _, content in _entries(data)]
    assert sorted(numbers) == list(range(1, 13)) and numbers != sorted(numbers)  # written in a shuffled order
    from_series, header = read_series_zip(data)
    assert from_series.array.dtype == np.float32 and from_series.array.shape == vol.shape
    assert np.array_equal(from_series.array, from_nifti.array)
    assert np.allclose(from_series.affine, from_nifti.affine, atol=1e-4)
    assert np.allclose(from_series.spacing, from_nifti.spacing, atol=1e-4)
    assert header["Modality"] == "CT" and header["BodyPartExamined"] == "HEAD" and header["AccessionNumber"] == "A123"
    assert header["PhotometricInterpretation"] == "MONOCHROME2" and header["StudyDate"] == ""


def test_entry_order_file_names_and_instance_numbers_do_not_decide_the_slice_order(series):
    reversed_numbers = _edit(series, lambda ds: setattr(ds, "InstanceNumber", 100 - ds.InstanceNumber) or ds)
    entries = _entries(reversed_numbers)
    renamed = _zip([(f"{i:03d}.dcm", content) for i, (_, content) in enumerate(reversed(entries))])
    volume, _ = read_series_zip(renamed)
    assert np.array_equal(volume.array, _head())


@pytest.mark.parametrize("kind", ["axial", "oblique", "lps", "flipped"])
def test_model_input_is_the_same_tensor_from_both_paths(tmp_path, kind):
    vol, affine = _head(), _affine(kind)
    path = _nifti(tmp_path, vol, affine)
    volume, _ = read_series_zip(series_zip_from_volume(vol, affine))
    # Orientationd to RAS: the same voxels and affine.
    from monai.transforms import Orientationd

    oriented = [
        Orientationd(keys="image", axcodes="RAS")(LoadCtd(keys="image")({"image": value}))["image"]
        for value in (path, volume)
    ]
    assert torch.equal(oriented[0].as_tensor(), oriented[1].as_tensor())
    assert torch.allclose(oriented[0].affine, oriented[1].affine, atol=1e-4)
    # The whole preprocessing chain of the model contract.
    chain = Compose(ct_transforms((24, 20, 8)))
    a, b = chain({"image": path})["image"], chain({"image": volume})["image"]
    assert torch.allclose(a, b, atol=1e-6)


def test_left_handed_grid_comes_back_sorted_along_the_normal(tmp_path):
    vol, affine = _head(), _affine("flipped")
    from_nifti = load_ct(_nifti(tmp_path, vol, affine))
    volume, _ = read_series_zip(series_zip_from_volume(vol, affine))
    assert np.array_equal(volume.array, from_nifti.array[:, :, ::-1])
    expected = from_nifti.affine.copy()
    expected[:3, 3] += expected[:3, 2] * (vol.shape[2] - 1)
    expected[:3, 2] *= -1
    assert np.allclose(volume.affine, expected, atol=1e-4)


def test_real_ct_header_series_with_rle_slices():
    """pydicom's CT_small.dcm (a real scanner header, signed 16-bit, RescaleIntercept -1024) stacked into 4 slices
    2.5 mm apart, RLE-compressed: decoded through the plugins, rescaled, axes (column, row, slice)."""
    from pydicom.uid import RLELossless, generate_uid

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = base.pixel_array
    entries = []
    for k in range(4):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], -75.7 + 2.5 * k]
        ds.InstanceNumber = 4 - k
        ds.compress(RLELossless, (pixels + 10 * k).astype(pixels.dtype))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        entries.append((f"z{3 - k}.dcm", buffer.getvalue()))
    volume, header = read_series_zip(_zip(entries))
    assert header["TransferSyntaxUID"] == RLELossless and header["Modality"] == "CT"
    assert volume.array.shape == (128, 128, 4)
    for k in range(4):
        assert np.array_equal(volume.array[:, :, k], (pixels.astype(np.float32) + 10 * k - 1024).T)
    ps = 0.661468
    assert np.allclose(
        volume.affine,
        [[-ps, 0, 0, 158.135803], [0, -ps, 0, 179.035797], [0, 0, 2.5, -75.7], [0, 0, 0, 1]],
        atol=1e-4,
    )
    assert np.allclose(volume.spacing, (ps, ps, 2.5))


def test_undecodable_slice_names_the_entry_and_transfer_syntax(series):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    def broken(ds):
        if ds.InstanceNumber == 3:
            ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
        return ds

    error = _refused(_edit(series, broken), "unreadable_slice")
    assert "JPEG 2000" in str(error) and ".dcm'" in str(error)


def test_skips_folders_macos_metadata_hidden_files_and_dicomdir(series):
    extra = [("series/", b""), ("__MACOSX/series/._IM00000.dcm", b"junk"), (".DS_Store", b"junk"), ("DICOMDIR", b"x")]
    volume, _ = read_series_zip(_zip(extra + _entries(series)))
    assert np.array_equal(volume.array, _head())


# ----------------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------------


def test_one_real_slice_is_too_few():
    content = open(get_testdata_file("CT_small.dcm"), "rb").read()  # noqa: SIM115
    error = _refused(_zip([("CT_small.dcm", content)]), "too_few_slices")
    assert "at least 2 slices" in str(error) and "CT_small.dcm" in str(error)


def test_not_a_zip():
    error = _refused(b"\x7fELF this is no zip", "bad_zip")
    assert error.status == 400 and "not a readable zip" in str(error)
    assert isinstance(error, ValueError)  # a DataError: the CLI and serving print it as one sentence


def test_encrypted_entry_is_refused(series):
    raw = bytearray(series)
    offset = raw.find(b"PK\x01\x02")
    struct.pack_into("<H", raw, offset + 8, struct.unpack_from("<H", raw, offset + 8)[0] | 1)
    error = _refused(bytes(raw), "bad_zip")
    assert "encrypted" in str(error)


@pytest.mark.parametrize("name", ["../x.dcm", "/etc/x.dcm", "series/../../x.dcm", "series\\x.dcm", "C:/x.dcm"])
def test_unsafe_entry_names(series, name):
    error = _refused(_zip([*_entries(series), (name, b"x")]), "bad_entry_name")
    assert error.status == 400 and f"'{name}'" in str(error)


def test_too_many_entries(series):
    error = _refused(series, "too_many_entries", SeriesLimits(max_entries=11))
    assert error.status == 413 and "12 entries" in str(error)


def test_declared_sizes_over_the_limit_are_refused_before_reading(series):
    error = _refused(series, "too_large", SeriesLimits(max_inflated_bytes=30_000))
    assert error.status == 413 and "declare" in str(error)


def _bomb(inflated: int, declared: int) -> bytes:
    """One deflated entry of ``inflated`` zero bytes whose zip headers claim ``declared`` bytes."""
    buffer = io.BytesIO()
    zeros = bytes(1 << 20)
    info = zipfile.ZipInfo("IM0001.dcm")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(buffer, "w") as archive, archive.open(info, "w") as entry:
        for _ in range(inflated // len(zeros)):
            entry.write(zeros)
    raw = bytearray(buffer.getvalue())
    struct.pack_into("<I", raw, 22, declared)  # local header: uncompressed size
    central = raw.find(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, declared)  # central directory: uncompressed size
    return bytes(raw)


def test_zip_bomb_with_a_lying_size_is_stopped_while_inflating():
    bomb_size = 256 << 20
    bomb = _bomb(bomb_size, declared=1000)
    assert len(bomb) < bomb_size // 500
    limit = 4 << 20
    tracemalloc.start()
    try:
        error = _refused(bomb, "too_large", SeriesLimits(max_inflated_bytes=limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.status == 413 and "IM0001.dcm" in str(error) and "declares 1000" in str(error)
    assert peak < 3 * limit < bomb_size // 16, peak  # stopped after about ``limit`` bytes: the bomb never inflated


def test_lying_size_under_the_limit_is_a_corrupt_zip():
    error = _refused(_bomb(2 << 20, declared=1000), "bad_zip", SeriesLimits(max_inflated_bytes=8 << 20))
    assert "IM0001.dcm" in str(error) and "CRC" in str(error)


def test_many_entries_inflating_past_the_limit_together():
    data = _zip([(f"IM{i:03d}.dcm", bytes(300_000)) for i in range(40)])  # 12 MB of zeros, honestly declared
    error = _refused(data, "too_large", SeriesLimits(max_inflated_bytes=10_000_000))
    assert "declare 12000000 bytes" in str(error)
    raw = bytearray(data)  # now each entry claims 1000 bytes: the first one that inflates past its claim stops it
    offset = 0
    while (offset := raw.find(b"PK\x01\x02", offset)) >= 0:
        struct.pack_into("<I", raw, offset + 24, 1000)
        offset += 4
    error = _refused(bytes(raw), "bad_zip", SeriesLimits(max_inflated_bytes=10_000_000))
    assert "'IM000.dcm'" in str(error) and "size or CRC" in str(error)


def test_not_dicom_entry(series):
    error = _refused(_zip([*_entries(series), ("series/notes.txt", b"requested by Dr X")]), "not_dicom")
    assert "'series/notes.txt'" in str(error) and "not a DICOM file" in str(error)


def test_mixed_series_names_both_uids_and_counts(series):
    def other_series(ds):
        if ds.InstanceNumber == 5:
            ds.SeriesInstanceUID = "1.2.3.4.5"
        return ds

    error = _refused(_edit(series, other_series), "mixed_series")
    uid = pydicom.dcmread(io.BytesIO(_entries(series)[0][1])).SeriesInstanceUID
    assert f"{uid}: 11 slices" in str(error) and "1.2.3.4.5: 1 slice" in str(error) and "2 series" in str(error)


def test_mr_series_is_not_ct():
    error = _refused(series_zip_from_volume(_head(), _affine("axial"), modality="MR"), "not_ct")
    assert "'MR'" in str(error) and "only CT" in str(error)


def test_inconsistent_geometry(series):
    def wider(ds):
        if ds.InstanceNumber == 2:
            ds.PixelSpacing = [0.95, 0.8]
        return ds

    error = _refused(_edit(series, wider), "inconsistent_geometry")
    assert "PixelSpacing" in str(error) and "must share" in str(error)


def test_voxel_budget(series):
    error = _refused(series, "too_large", SeriesLimits(max_voxels=48 * 40 * 11))
    assert error.status == 413 and "40×48×12 = 23040 voxels" in str(error)  # rows × columns × slices


def test_missing_slice_says_where(series):
    error = _refused(_edit(series, lambda ds: None if ds.InstanceNumber == 6 else ds), "missing_slices")
    assert (
        "gap of 10.000 mm" in str(error) and "step is 5.000 mm" in str(error) and "about 1 slice missing" in str(error)
    )
    assert "slices 5 and 6 of 11" in str(error)


def test_inconsistent_spacing(series):
    def shifted(ds):
        if ds.InstanceNumber == 7:
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 0.3]
        return ds

    error = _refused(_edit(series, shifted), "inconsistent_spacing")
    assert "5.300 mm" in str(error) and "uniform slice spacing" in str(error)


def test_slice_shifted_in_plane_is_inconsistent(series):
    def shifted(ds):
        if ds.InstanceNumber == 7:
            ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 2.0, *ds.ImagePositionPatient[1:]]
        return ds

    error = _refused(_edit(series, shifted), "inconsistent_spacing")
    assert "off the line" in str(error)


def test_rounded_positions_are_within_tolerance(series):
    def rounded(ds):
        ds.ImagePositionPatient = [f"{float(v) + 0.004 * (ds.InstanceNumber % 2):.3f}" for v in ds.ImagePositionPatient]
        return ds

    volume, _ = read_series_zip(_edit(series, rounded))
    assert volume.array.shape == (48, 40, 12)


def test_duplicate_slice_names_both_entries(series):
    entries = _entries(series)
    error = _refused(_zip([*entries, ("copy/again.dcm", entries[3][1])]), "duplicate_slices")
    assert "'copy/again.dcm'" in str(error) and f"'{entries[3][0]}'" in str(error)


def test_crc_of_stored_entries_is_checked(series):
    entries = _entries(series)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, content in entries:
            archive.writestr(name, content)
    raw = bytearray(buffer.getvalue())
    raw[raw.find(b"DICM") + 200] ^= 0xFF  # flip a byte inside the first entry's data
    error = _refused(bytes(raw), "bad_zip")
    assert "CRC" in str(error)


def test_slice_without_position_names_the_attribute(series):
    def no_position(ds):
        if ds.InstanceNumber == 4:
            del ds.ImagePositionPatient
        return ds

    error = _refused(_edit(series, no_position), "missing_attribute")
    assert "has no ImagePositionPatient" in str(error)
