"""DICOM decoding through the one loader (``load_xray_bytes``): every transfer syntax a PACS sends gives the same
pixels, and one no installed decoder reads is a DataError naming it."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom import uid as U
from pydicom.encaps import encapsulate

from medmlops.data.io import _read_dicom, load_xray_bytes
from medmlops.errors import DataError

from ..dicom_samples import (
    CHEST_LIKE_SYNTAXES,
    JPEG_TOLERANCE,
    LOSSLESS_SYNTAXES,
    bundled_objects,
    chest_like,
    chest_like_reference,
    deflate_check,
    header_of,
    pydicom_test_file,
)

SUPPORTED = set(CHEST_LIKE_SYNTAXES)
UNDECODABLE = {"JPEG-lossy.dcm"}  # 12-bit JPEG Extended: neither pylibjpeg-libjpeg nor Pillow reads it


@pytest.mark.parametrize("uid", CHEST_LIKE_SYNTAXES, ids=lambda u: U.UID(u).keyword or u)
def test_chest_like_decodes_to_its_reference(uid):
    data = chest_like(uid)
    header = header_of(data)
    assert header["TransferSyntaxUID"] == uid
    assert (header["Modality"], header["BodyPartExamined"], header["ViewPosition"]) == ("CR", "CHEST", "PA")
    assert (header["PhotometricInterpretation"], header["SamplesPerPixel"], header["NumberOfFrames"]) == (
        "MONOCHROME2",
        1,
        1,
    )
    assert header["Rows"] >= 64 and header["Columns"] >= 64
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert ds.StudyInstanceUID and ds.AccessionNumber and ds.PatientID and str(ds.PatientName)

    image = load_xray_bytes(data, name=f"chest-{uid}.dcm")
    reference = chest_like_reference(uid).astype(np.float32)
    assert image.array.shape == reference.shape and image.array.dtype == np.float32
    assert image.photometric == "MONOCHROME2"
    if uid in LOSSLESS_SYNTAXES:
        np.testing.assert_array_equal(image.array, reference)
    else:
        error = np.abs(image.array - reference)
        assert error.mean() <= JPEG_TOLERANCE["mean"] and error.max() <= JPEG_TOLERANCE["max"], (
            error.mean(),
            error.max(),
        )


def test_lossless_chest_likes_are_one_image():
    """The same stored image in every lossless syntax: the relabelled bundled files are twins of MR_small.dcm."""
    arrays = [load_xray_bytes(chest_like(uid)).array for uid in LOSSLESS_SYNTAXES]
    for arr in arrays[1:]:
        np.testing.assert_array_equal(arr, arrays[0])
    assert arrays[0].std() > 0


def test_chest_like_deflated_is_really_deflated():
    assert deflate_check(chest_like(U.DeflatedExplicitVRLittleEndian))


@pytest.mark.parametrize("name", sorted(set(bundled_objects()) - UNDECODABLE))
def test_bundled_files_in_supported_syntaxes_decode(name):
    data, header = bundled_objects()[name]
    assert header["TransferSyntaxUID"] in SUPPORTED
    image = _read_dicom(data, name)
    assert np.isfinite(image.array).all() and image.array.size > 0
    frames = header["NumberOfFrames"]
    if frames == 1:
        # One frame, colour or not: a 2D image through the public loader (RGB becomes luminance).
        loaded = load_xray_bytes(data, name=name)
        assert loaded.array.shape == (header["Rows"], header["Columns"])
    else:
        assert image.array.shape == (frames, header["Rows"], header["Columns"])
        with pytest.raises(DataError, match="expected a 2D grayscale image"):
            load_xray_bytes(data, name=name)


def test_bundled_selection_spans_modalities():
    headers = [h for _, h in bundled_objects().values()]
    assert {"CT", "MR", "US", "OT", "NM"} <= {h["Modality"] for h in headers}
    assert {"RGB", "PALETTE COLOR", "MONOCHROME2"} <= {h["PhotometricInterpretation"] for h in headers}
    assert any(h["NumberOfFrames"] > 1 for h in headers)
    assert any(h["BodyPartExamined"] for h in headers)


def test_12_bit_jpeg_extended_names_the_transfer_syntax():
    data = pydicom_test_file("JPEG-lossy.dcm").read_bytes()
    with pytest.raises(DataError) as caught:
        load_xray_bytes(data, name="JPEG-lossy.dcm")
    message = str(caught.value)
    assert "JPEG Extended (Process 2 and 4)" in message and U.JPEGExtended12Bit in message, message
    assert "not supported" in message and "12-bit" in message, message
    assert "libjpeg error" not in message and "Traceback" not in message and "\n" not in message, message


def test_unknown_transfer_syntax_is_named():
    ds = pydicom.dcmread(pydicom_test_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = U.MPEG2MPML
    ds.PixelData = encapsulate([ds.PixelData])  # not a video stream: the syntax is refused before any decoding
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(
        DataError, match=r"MPEG2 Main Profile / Main Level.*1\.2\.840\.10008\.1\.2\.4\.100.*not supported"
    ):
        load_xray_bytes(buffer.getvalue(), name="video.dcm")


def test_truncated_uncompressed_file_keeps_the_reader_message():
    data = pydicom_test_file("MR_truncated.dcm").read_bytes()
    with pytest.raises(DataError, match="cannot be read as DICOM"):
        load_xray_bytes(data, name="MR_truncated.dcm")


@pytest.mark.parametrize(
    ("variant", "twin"),
    [
        ("image_dfl.dcm", None),  # deflated: no uncompressed twin ships; decodes to a non-constant 512×512
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
        ("MR_small_expb.dcm", "MR_small.dcm"),
        ("liver_expb_1frame.dcm", "liver_1frame.dcm"),
        ("rtdose_expb_1frame.dcm", "rtdose_1frame.dcm"),
        ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("MR_small_implicit.dcm", "MR_small.dcm"),
    ],
)
def test_bundled_variants_decode_equal_to_their_twin(variant, twin):
    image = load_xray_bytes(pydicom_test_file(variant).read_bytes(), name=variant)
    if twin is None:
        assert deflate_check(pydicom_test_file(variant).read_bytes())
        assert image.array.shape == (512, 512) and image.array.std() > 0
        return
    expected = load_xray_bytes(pydicom_test_file(twin).read_bytes(), name=twin)
    np.testing.assert_array_equal(image.array, expected.array)
