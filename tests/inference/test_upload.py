"""The serving door without a server: headers read before decoding, the input gate on pydicom's own test files,
the amplification cases refused from their headers with flat memory, and the copy monitoring keeps de-identified."""

from __future__ import annotations

import gzip
import io
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medmlops.inference.errors import InputError
from medmlops.inference.upload import (
    IDENTIFYING_ATTRIBUTES,
    NotAccepted,
    deidentified_dicom,
    inspect_upload,
    sniff_format,
)
from medmlops.registry.contract import InputGate

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
CHEST = InputGate(modalities=("CR", "DX"), body_parts=("CHEST",), view_positions=("PA", "AP"))
HEAD_CT = InputGate(modalities=("CT",), body_parts=("HEAD", "BRAIN", "SKULL"), raster=False, max_pixels=1 << 26)


# ----------------------------------------------------------------------------------------------------------------------
# Hostile files, built as an attacker would: small on the wire, huge once decoded
# ----------------------------------------------------------------------------------------------------------------------


def png_16bit(side: int) -> bytes:
    """A valid 16-bit greyscale PNG of side × side zeros (compressed row by row: never held whole)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor, row, parts = zlib.compressobj(9), b"\0" * (1 + 2 * side), []
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def dicom_bytes(ds: pydicom.Dataset, syntax: str = pydicom.uid.ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def chest_dataset(rows: int = 64, cols: int = 64, bits: int = 16, **attributes) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "P-123", "19500101"
    ds.InstitutionName, ds.StudyInstanceUID, ds.AccessionNumber = "General Hospital", "1.2.3.4.5", "ACC-42"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = b"\0" * (rows * cols * bits // 8)
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def nifti_gz_header_only(dims: tuple[int, ...], chunks_of_zeros: int) -> bytes:
    """A gzipped NIfTI-1 of int8 zeros: header + ``chunks_of_zeros`` MiB (compressed chunk by chunk)."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", header, 70, 256, 8)  # datatype int8, bitpix 8
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    compressor, block, parts = zlib.compressobj(9, zlib.DEFLATED, 31), b"\0" * (1 << 20), []
    parts.append(compressor.compress(bytes(header)))
    for _ in range(chunks_of_zeros):
        parts.append(compressor.compress(block))
    parts.append(compressor.flush())
    return b"".join(parts)


def deflated_dicom(inflated_mib: int) -> bytes:
    """A deflated DICOM whose data set inflates to ``inflated_mib`` MiB (a 64² image announced, a bomb inside)."""
    plain = dicom_bytes(chest_dataset(), pydicom.uid.ExplicitVRLittleEndian)
    ds = pydicom.dcmread(io.BytesIO(plain))
    meta = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    body = io.BytesIO()
    del ds.PixelData
    pydicom.filewriter.write_dataset(pydicom.filebase.DicomFileLike(body), ds)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(body.getvalue())]
    # Private OB element (0009,1010) holding the bomb's zeros.
    parts.append(compressor.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, inflated_mib << 20)))
    block = b"\0" * (1 << 20)
    for _ in range(inflated_mib):
        parts.append(compressor.compress(block))
    parts.append(compressor.flush())
    return b"\0" * 128 + b"DICM" + meta.getvalue() + b"".join(parts)


# ----------------------------------------------------------------------------------------------------------------------
# Formats and headers
# ----------------------------------------------------------------------------------------------------------------------


def test_formats_are_recognised_from_their_content():
    assert sniff_format(png_16bit(40)) == "png"
    assert sniff_format(dicom_bytes(chest_dataset())) == "dicom"
    assert sniff_format(nifti_gz_header_only((40, 40, 8), 0)) == "nifti"
    assert sniff_format(gzip.decompress(nifti_gz_header_only((40, 40, 8), 0))) == "nifti"  # .nii as dcm2niix writes
    assert sniff_format(b"PK\x03\x04" + b"\0" * 40) == "zip"
    with pytest.raises(InputError, match="not NIfTI, PNG, JPEG, DICOM or a zip"):
        sniff_format(b"%PDF-1.7 a document")


def test_a_chest_dicom_passes_and_its_study_identity_is_read():
    upload = inspect_upload(dicom_bytes(chest_dataset()), "cxr-findings", CHEST)
    assert upload.format == "dicom" and upload.shape == (64, 64)
    assert upload.study == {"study_instance_uid": "1.2.3.4.5", "accession_number": "ACC-42"}


@pytest.mark.parametrize(
    ("name", "attribute", "value"),
    [
        ("CT_small.dcm", "Modality", "CT"),
        ("MR_small.dcm", "Modality", "MR"),
        ("examples_overlay.dcm", "Modality", "MR"),
        ("examples_rgb_color.dcm", "SamplesPerPixel", 3),  # ultrasound, RGB
        ("examples_palette.dcm", "PhotometricInterpretation", "PALETTE COLOR"),  # ultrasound, palette colour
        ("SC_rgb_jpeg_dcmd.dcm", "SamplesPerPixel", 3),  # secondary capture, RGB
        ("examples_ybr_color.dcm", "NumberOfFrames", 30),  # multi-frame ultrasound
        ("image_dfl.dcm", "Modality", "OT"),  # deflated secondary capture
        ("MR_small_jpeg_ls_lossless.dcm", "Modality", "MR"),
        ("693_J2KI.dcm", "Modality", "CT"),
    ],
)
def test_the_chest_gate_refuses_what_pydicoms_files_are_naming_the_attribute(name, attribute, value):
    with pytest.raises(NotAccepted) as info:
        inspect_upload((TEST_FILES / name).read_bytes(), "cxr-findings", CHEST)
    err = info.value
    assert err.status == 422 and err.error == "not_accepted"
    assert (err.attribute, err.value) == (attribute, value)
    assert attribute in err.detail and str(value) in err.detail and "cxr-findings takes" in err.detail
    assert set(err.body()) == {"error", "detail", "attribute", "value", "accepted"}


@pytest.mark.parametrize(
    ("attributes", "attribute"),
    [
        ({"ViewPosition": "LL"}, "ViewPosition"),  # a lateral film
        ({"BodyPartExamined": "HAND"}, "BodyPartExamined"),  # a CR of an extremity
        ({"Modality": "MG"}, "Modality"),
        ({"PhotometricInterpretation": "RGB", "SamplesPerPixel": 1}, "PhotometricInterpretation"),
    ],
)
def test_a_radiograph_the_model_is_not_for_is_refused(attributes, attribute):
    with pytest.raises(NotAccepted, match=attribute):
        inspect_upload(dicom_bytes(chest_dataset(**attributes)), "cxr-findings", CHEST)


def test_body_part_and_view_are_checked_only_where_the_header_has_them():
    bare = chest_dataset()
    del bare.BodyPartExamined, bare.ViewPosition
    assert inspect_upload(dicom_bytes(bare), "cxr-findings", CHEST).shape == (64, 64)


def test_raster_images_are_refused_where_the_contract_takes_none():
    with pytest.raises(NotAccepted, match="format is 'PNG'"):
        inspect_upload(png_16bit(64), "ich-prognosis", HEAD_CT)
    assert inspect_upload(png_16bit(64), "cxr-findings", CHEST).shape == (64, 64)


# ----------------------------------------------------------------------------------------------------------------------
# Amplification: refused from the header, before decoding, with flat memory
# ----------------------------------------------------------------------------------------------------------------------


def _refused_quietly(data: bytes, gate: InputGate, code: str) -> tuple[float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InputError) as info:
            inspect_upload(data, "any", gate)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.error == code and info.value.status == 413, info.value
    return elapsed, peak


@pytest.mark.reliability(
    "Bad input",
    "decompression amplification: a 16-bit PNG of 8192², a 1-bit DICOM of 8192², a gzipped NIfTI of 1024² x 256, a "
    "deflated DICOM inflating to 512 MiB",
    "413 from the header before any decoding; peak allocation measured (below 64 MiB)",
)
def test_amplification_cases_are_refused_from_their_headers_with_flat_memory():
    one_bit = chest_dataset(8192, 8192, 8)
    one_bit.BitsAllocated, one_bit.BitsStored, one_bit.HighBit = 1, 1, 0
    one_bit.PixelData = b"\0" * (8192 * 8192 // 8)
    cases = {
        "16-bit PNG 8192²": (png_16bit(8192), CHEST, "too_many_pixels"),
        "1-bit DICOM 8192²": (dicom_bytes(one_bit), CHEST, "too_many_pixels"),
        "gzipped NIfTI 1024² x 256": (nifti_gz_header_only((1024, 1024, 256), 256), HEAD_CT, "too_many_pixels"),
        "deflated DICOM, 512 MiB inside": (deflated_dicom(512), CHEST, "too_large"),
    }
    measured = {}
    for name, (data, gate, code) in cases.items():
        elapsed, peak = _refused_quietly(data, gate, code)
        measured[name] = (len(data), elapsed, peak)
        assert peak < 64 * 2**20, f"{name}: peak allocation {peak / 2**20:.0f} MiB"
    print("\n".join(f"{n}: {size / 1e3:.0f} kB sent, refused in {t * 1e3:.0f} ms, peak {p / 2**20:.1f} MiB"
                    for n, (size, t, p) in measured.items()))  # fmt: skip


def test_a_nifti_whose_stream_is_longer_than_its_header_says_is_refused():
    bomb = nifti_gz_header_only((64, 64, 16), 100)  # 64 KiB announced, 100 MiB inside
    with pytest.raises(InputError, match="inflates to more than its header announces"):
        inspect_upload(bomb, "ich-prognosis", HEAD_CT)


def test_corrupt_headers_are_400s_naming_the_format():
    for data, text in (
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 10, "PNG"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 4, "JPEG"),
        (dicom_bytes(chest_dataset())[:200], "DICOM"),
    ):
        with pytest.raises(InputError, match=text) as info:
            inspect_upload(data, "cxr-findings", CHEST)
        assert info.value.status == 400


# ----------------------------------------------------------------------------------------------------------------------
# What monitoring keeps
# ----------------------------------------------------------------------------------------------------------------------


def test_the_copy_monitoring_keeps_has_no_patient_identifiers_and_the_same_pixels():
    ds = chest_dataset()
    ds.PixelData = np.arange(64 * 64, dtype=np.uint16).tobytes()
    ds.add_new(0x00091010, "LO", "private vendor note")
    kept = pydicom.dcmread(io.BytesIO(deidentified_dicom(dicom_bytes(ds))))
    assert not [k for k in IDENTIFYING_ATTRIBUTES if k in kept]
    assert 0x00091010 not in kept
    assert (kept.StudyInstanceUID, kept.AccessionNumber) == ("1.2.3.4.5", "ACC-42")  # on purpose: the study is found
    np.testing.assert_array_equal(kept.pixel_array, np.arange(64 * 64).reshape(64, 64))
