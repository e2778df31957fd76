"""Storage: display images to stored integers, and the file formats the CXR releases use (DICOM, 16-bit PNG,
JPEG, CSV).

Every writer is reproducible byte for byte: DICOM UIDs are hashes of the caller's ``uid_parts`` (never random,
never time-based), the implementation UID is fixed, and CSV cells arrive pre-formatted as strings, because the
datasets are versioned by content hash (DVC) and a changed byte is a new dataset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["fmt", "make_uid", "quantize", "write_csv", "write_dicom", "write_jpeg", "write_png"]

# DICOM: pydicom's registered root; every UID below is a hash of (dataset, seed, index, kind) under it.
UID_ROOT = "1.2.826.0.1.3680043.8.498."
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1"  # fixed, so files do not change with the pydicom version
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def quantize(disp: np.ndarray, bits: int, *, monochrome1: bool = False) -> np.ndarray:
    """Display image in [0, 1] → unsigned integers of ``bits`` (uint8 for 8, uint16 otherwise); MONOCHROME1
    stores the inverse (air bright) as the standard says."""
    top = (1 << bits) - 1
    v = np.rint(np.clip(disp, 0.0, 1.0) * top)
    if monochrome1:
        v = top - v
    return v.astype(np.uint8 if bits <= 8 else np.uint16)


# ----------------------------------------------------------------------------------------------------------------------
# Image files: DICOM, PNG, JPEG
# ----------------------------------------------------------------------------------------------------------------------


def make_uid(*parts: object) -> str:
    """Deterministic DICOM UID (hash of ``parts`` under the pydicom root): never random, never time-based."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    bits: int,
    monochrome1: bool,
    modality: str,
    uid_parts: Iterable[object],
    manufacturer: str = "",
    model: str = "",
    patient_id: str = "",
    patient_sex: str = "",
    patient_age: int | None = None,
    study_date: str = "20200101",
    view_position: str = "",
    extra: dict[str, object] | None = None,
) -> None:
    """Write a single-frame uncompressed radiograph (Explicit VR Little Endian, CR or DX storage).

    Every UID is derived from ``uid_parts`` so the same inputs give byte-identical files.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    parts = [str(p) for p in uid_parts]
    sop_class = DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE
    sop_uid = make_uid(*parts, "sop")
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "MEDMLOPS_SIM_1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "120000"
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.PatientName = f"SIM^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientSex = patient_sex
    if patient_age is not None:
        ds.PatientAge = f"{int(patient_age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    if view_position:
        ds.ViewPosition = view_position
    ds.StudyInstanceUID = make_uid(*parts, "study")
    ds.SeriesInstanceUID = make_uid(*parts, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits)
    ds.HighBit = int(bits) - 1
    ds.PixelRepresentation = 0
    top = (1 << int(bits)) - 1
    ds.WindowCenter = top // 2
    ds.WindowWidth = top
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x spelling of the same thing (preamble + complete file meta)
        ds.save_as(str(path), write_like_original=False)


def write_png(path: str | Path, pixels: np.ndarray) -> None:
    """Write a grayscale PNG (8- or 16-bit, from ``pixels``' dtype) with zlib level 6."""
    Image.fromarray(pixels).save(path, format="PNG", compress_level=6)


def write_jpeg(path: str | Path, pixels: np.ndarray, *, quality: int) -> None:
    """Write an 8-bit grayscale JPEG at ``quality``."""
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


# ----------------------------------------------------------------------------------------------------------------------
# Tables: CSV
# ----------------------------------------------------------------------------------------------------------------------


def _csv_field(value: object, sep: str, force_quote: bool) -> str:
    text = "" if value is None else str(value)
    if force_quote or any(ch in text for ch in (sep, '"', "\n", "\r")):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_csv(
    path: str | Path,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    sep: str = ",",
    quote: Iterable[str] = (),
) -> None:
    """Write pre-formatted string cells: ``\\n`` endings, UTF-8 without BOM, RFC-4180 quoting only where needed
    (plus always for the columns in ``quote``, e.g. BrixiaScore so the leading zeros read as text)."""
    forced = {columns.index(c) for c in quote}
    lines = [sep.join(_csv_field(c, sep, False) for c in columns)]
    for row in rows:
        lines.append(sep.join(_csv_field(v, sep, i in forced) for i, v in enumerate(row)))
    Path(path).write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


def fmt(value: float | None, decimals: int) -> str:
    """Fixed float formatting for CSV cells; ``None``/NaN → blank."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{float(value):.{decimals}f}"
