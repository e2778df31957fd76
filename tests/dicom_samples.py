"""DICOM test objects for the decoding, validation and serving tests, built only from the files pydicom ships.

``chest_like(uid)``: one chest-like object (CR, CHEST, PA, MONOCHROME2, one frame, 64×64) per transfer syntax a
PACS sends, with the same image inside wherever the syntax is lossless: the pixels of pydicom's ``MR_small.dcm``
(16-bit signed, values 127-2145). How each one is made (pydicom 3.0.2 with the pinned pylibjpeg plugins):

- uncompressed little endian (implicit/explicit) and deflated: ``MR_small.dcm`` relabelled and written by pydicom;
- explicit big endian: the bundled twin ``MR_small_bigendian.dcm`` relabelled (pixel data untouched);
- RLE Lossless, JPEG 2000 Lossless: ``ds.compress`` (pydicom's encoders: RLE natively or with pylibjpeg-rle, JPEG
  2000 with pylibjpeg-openjpeg; pydicom 3.0.2 has no other encoder here, JPEG-LS needs ``pyjpegls``); JPEG 2000
  (.91): the reversible stream relabelled, because pydicom's encoder asks for ``j2k_cr``/``j2k_psnr`` there;
- JPEG-LS Lossless: the bundled ``MR_small_jpeg_ls_lossless.dcm`` relabelled (pixel data untouched);
- JPEG Lossless (process 14, 1.2.840.10008.1.2.4.57, and its SV1 form .70): no encoder in pydicom and no monochrome
  bundled file (``SC_rgb_jpeg_gdcm.dcm`` is RGB), so :func:`jpeg_lossless_sv1` below writes the stream (ITU-T T.81
  annex H, predictor 1); the decoders' agreement with the reference is the check of both;
- JPEG Baseline (.50) and 8-bit JPEG Extended (.51): no encoder in pydicom and no monochrome bundled file, so
  Pillow encodes an 8-bit version of the image (quality 95). Lossy: :data:`JPEG_TOLERANCE`.

``bundled_objects()``: a cross-modality selection of pydicom's files with their key header attributes.
"""

from __future__ import annotations

import io
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid as U
from pydicom.encaps import encapsulate

__all__ = [
    "CHEST_LIKE_SYNTAXES",
    "JPEG_TOLERANCE",
    "LOSSLESS_SYNTAXES",
    "LOSSY_SYNTAXES",
    "bundled_objects",
    "chest_like",
    "chest_like_reference",
    "deflate_check",
    "header_of",
    "jpeg_lossless_sv1",
    "pydicom_test_file",
]

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as the simulators use
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

LOSSLESS_SYNTAXES = (
    U.ImplicitVRLittleEndian,
    U.ExplicitVRLittleEndian,
    U.DeflatedExplicitVRLittleEndian,
    U.ExplicitVRBigEndian,
    U.RLELossless,
    U.JPEG2000Lossless,
    U.JPEG2000,
    U.JPEGLSLossless,
    U.JPEGLossless,
    U.JPEGLosslessSV1,
)
LOSSY_SYNTAXES = (U.JPEGBaseline8Bit, U.JPEGExtended12Bit)
CHEST_LIKE_SYNTAXES = LOSSLESS_SYNTAXES + LOSSY_SYNTAXES
# JPEG Baseline at quality 95 against the 8-bit reference, in grey levels of 255: mean and maximum absolute error.
JPEG_TOLERANCE = {"mean": 2.0, "max": 12.0}  # measured 1.26 and 8

CHEST_HEADER = {
    "Modality": "CR",
    "BodyPartExamined": "CHEST",
    "ViewPosition": "PA",
    "PatientName": "CHEST^LIKE",
    "PatientID": "CHESTLIKE01",
    "AccessionNumber": "ACC0001",
    "StudyInstanceUID": UID_ROOT + "424242.1",
    "SeriesInstanceUID": UID_ROOT + "424242.2",
    "SOPClassUID": CR_IMAGE_STORAGE,
}


def pydicom_test_file(name: str) -> Path:
    """One of the test files pydicom ships (no download): ``pydicom_test_file("CT_small.dcm")``."""
    path = TEST_FILES / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not among pydicom's bundled test files ({TEST_FILES})")
    return path


def _read(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(pydicom_test_file(name))


def _relabel(ds: pydicom.Dataset, transfer_syntax: str) -> pydicom.Dataset:
    """The chest header on ``ds`` (pixel data and its attributes untouched), deterministic UIDs."""
    for keyword, value in CHEST_HEADER.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = UID_ROOT + "424242.3." + transfer_syntax.removeprefix("1.2.840.10008.")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _eight_bit(ds: pydicom.Dataset) -> np.ndarray:
    arr = ds.pixel_array.astype(np.float64)
    return np.rint((arr - arr.min()) / (arr.max() - arr.min()) * 255).astype(np.uint8)


def _encapsulated(ds: pydicom.Dataset, frame: bytes, transfer_syntax: str) -> pydicom.Dataset:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return _relabel(ds, transfer_syntax)


@cache
def chest_like(transfer_syntax_uid: str) -> bytes:
    """A chest-like DICOM object in ``transfer_syntax_uid`` (one of :data:`CHEST_LIKE_SYNTAXES`), as file bytes."""
    ts = U.UID(transfer_syntax_uid)
    if ts not in CHEST_LIKE_SYNTAXES:
        raise ValueError(f"no chest-like sample for {ts} ({ts.name}); available: {', '.join(CHEST_LIKE_SYNTAXES)}")
    if ts == U.ExplicitVRBigEndian:
        return _bytes(_relabel(_read("MR_small_bigendian.dcm"), ts))
    if ts == U.JPEGLSLossless:
        return _bytes(_relabel(_read("MR_small_jpeg_ls_lossless.dcm"), ts))
    ds = _read("MR_small.dcm")
    if ts in (U.ImplicitVRLittleEndian, U.ExplicitVRLittleEndian, U.DeflatedExplicitVRLittleEndian):
        return _bytes(_relabel(ds, ts))
    if ts in (U.RLELossless, U.JPEG2000Lossless, U.JPEG2000):
        # pydicom's JPEG 2000 encoder insists on a lossy option for .91; a reversible stream is valid there too.
        ds.compress(U.JPEG2000Lossless if ts == U.JPEG2000 else ts, generate_instance_uid=False)
        return _bytes(_relabel(ds, ts))
    if ts in (U.JPEGLossless, U.JPEGLosslessSV1):
        frame = jpeg_lossless_sv1(ds.pixel_array.view(np.uint16), precision=int(ds.BitsStored))
        return _bytes(_encapsulated(ds, frame, ts))
    from PIL import Image  # JPEG Baseline / 8-bit Extended

    pixels = _eight_bit(ds)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return _bytes(_encapsulated(ds, buffer.getvalue(), ts))


def chest_like_reference(transfer_syntax_uid: str) -> np.ndarray:
    """The stored pixels ``chest_like(uid)`` must decode to: exactly for :data:`LOSSLESS_SYNTAXES` (the bundled
    ``MR_small.dcm``, the uncompressed twin of the relabelled big-endian and JPEG-LS files), within
    :data:`JPEG_TOLERANCE` for JPEG Baseline/Extended (its 8-bit version)."""
    ds = _read("MR_small.dcm")
    if U.UID(transfer_syntax_uid) in LOSSY_SYNTAXES:
        return _eight_bit(ds)
    return ds.pixel_array


def jpeg_lossless_sv1(pixels: np.ndarray, precision: int = 16) -> bytes:
    """A JPEG Lossless (process 14, selection value 1) stream of one 2D unsigned image: SOF3, one Huffman table
    (every difference category a 5-bit code), predictor Ra, no point transform."""
    rows, cols = pixels.shape
    x = pixels.astype(np.int64)
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]  # first row: left neighbour
    pred[1:, 0] = x[:-1, 0]  # first column: the one above
    pred[1:, 1:] = x[1:, :-1]  # selection value 1: left neighbour
    diff = (x - pred) % 65536
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
    bits: list[str] = []
    for d in diff.tolist():
        ssss = int(abs(d)).bit_length()
        bits.append(format(ssss, "05b"))
        if 0 < ssss < 16:
            bits.append(format(d if d > 0 else d + (1 << ssss) - 1, f"0{ssss}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = int(stream, 2).to_bytes(len(stream) // 8, "big") if stream else b""
    data = data.replace(b"\xff", b"\xff\x00")
    sof = b"\xff\xc3" + (11).to_bytes(2, "big") + bytes([precision]) + rows.to_bytes(2, "big")
    sof += cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5 for the categories 0..16
    dht = b"\xff\xc4" + (3 + 16 + 17).to_bytes(2, "big") + bytes([0x00, *counts, *range(17)])
    sos = b"\xff\xda" + (8).to_bytes(2, "big") + bytes([1, 1, 0x00, 1, 0, 0])
    return b"\xff\xd8" + sof + dht + sos + data + b"\xff\xd9"


# ----------------------------------------------------------------------------------------------------------------------
# A selection of pydicom's bundled files across modalities, with their key header attributes
# ----------------------------------------------------------------------------------------------------------------------

BUNDLED = (
    "CT_small.dcm",  # CT, explicit LE, 128×128 16-bit
    "MR_small.dcm",  # MR, explicit LE
    "examples_overlay.dcm",  # MR with BodyPartExamined ABDOMEN
    "J2K_pixelrep_mismatch.dcm",  # CT with BodyPartExamined HEAD, JPEG 2000 Lossless
    "JPEG2000.dcm",  # NM WHOLE BODY, JPEG 2000, NumberOfFrames 1
    "examples_rgb_color.dcm",  # US RGB
    "examples_palette.dcm",  # US PALETTE COLOR
    "examples_ybr_color.dcm",  # US YBR_FULL_422, 30 frames, JPEG Baseline
    "SC_rgb_jpeg_dcmd.dcm",  # secondary capture (OT) RGB, implicit LE
    "SC_rgb_rle_2frame.dcm",  # secondary capture RGB, 2 frames, RLE
    "image_dfl.dcm",  # OT MONOCHROME2, deflated
    "rtdose.dcm",  # RTDOSE, 15 frames, 32-bit
    "liver_1frame.dcm",  # SEG, 1-bit
    "JPEG-lossy.dcm",  # NM, 12-bit JPEG Extended: no installed decoder reads it
)
HEADER_KEYWORDS = (
    "Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation", "SamplesPerPixel", "NumberOfFrames",
    "Rows", "Columns", "TransferSyntaxUID",
)  # fmt: skip
# No CR or DX file ships with pydicom 3.0.2: the chest-like objects above are the only X-ray modality here.


def header_of(data: bytes) -> dict:
    """The key attributes of a DICOM object: '' where absent, SamplesPerPixel/NumberOfFrames/Rows/Columns as int
    (frames 1 where absent)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    out = {}
    for keyword in HEADER_KEYWORDS:
        value = ds.file_meta.get(keyword) if keyword == "TransferSyntaxUID" else ds.get(keyword)
        if keyword in ("SamplesPerPixel", "NumberOfFrames", "Rows", "Columns"):
            out[keyword] = int(value) if value not in (None, "") else (1 if keyword == "NumberOfFrames" else 0)
        else:
            out[keyword] = str(value or "").strip()
    return out


@cache
def bundled_objects() -> dict[str, tuple[bytes, dict]]:
    """File name → (the file's bytes, :func:`header_of` them) for :data:`BUNDLED`."""
    out = {}
    for name in BUNDLED:
        data = pydicom_test_file(name).read_bytes()
        out[name] = (data, header_of(data))
    return out


def deflate_check(data: bytes) -> bool:
    """True when ``data`` is a deflated-transfer-syntax file whose dataset really is deflated (not plain)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    if ds.file_meta.TransferSyntaxUID != U.DeflatedExplicitVRLittleEndian:
        return False
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    try:
        zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    except zlib.error:
        return False
    return True
