"""The serving door: what an upload is, read from its header before any pixel is decoded, and whether the model
takes it (the contract's :class:`~medmlops.registry.contract.InputGate`).

Why header first: a hostile test run found uploads that are small on the wire and huge once decoded (a 130 KB
16-bit PNG of 8192², an 8 MB 1-bit DICOM of 8192², a 261 KB gzipped NIfTI of 1024² × 256, a 522 KB deflated
DICOM that inflates to 4.5 GB); each took a minute and gigabytes before its shape was refused. Here every format's
size is read from its header (PNG IHDR, JPEG SOF, DICOM Rows/Columns/NumberOfFrames, NIfTI dim) and refused
(413 ``too_many_pixels``) before decoding; compressed streams are inflated in bounded chunks.

DICOM attributes checked, in this order, each refusal a 422 ``not_accepted`` naming the attribute, its value and
what the model takes: NumberOfFrames, SamplesPerPixel, PhotometricInterpretation, Modality, BodyPartExamined and
ViewPosition (the last two only where the header has them: many archives leave them empty). PNG/JPEG have no
header to check: the contract's ``raster`` says whether the model takes them at all (the out-of-distribution score
still applies to what it answers).

Study identity: StudyInstanceUID and AccessionNumber travel with the record (a flagged case can be found in the
hospital's systems). Everything else that identifies a patient is dropped from the copy monitoring keeps
(:func:`deidentified_dicom`).
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from medmlops.inference.errors import InputError
from medmlops.registry.contract import InputGate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
GZIP_SIGNATURE = b"\x1f\x8b"
ZIP_SIGNATURE = b"PK\x03\x04"
DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"
# A header, tags and pixel data beyond the pixel bound: what a deflated DICOM may inflate to before it is refused.
HEADER_ALLOWANCE = 16 * 1024 * 1024

# DICOM attributes the gate reads (keyword → the name clients see in a refusal).
GATE_ATTRIBUTES = (
    "Modality", "BodyPartExamined", "ViewPosition", "PhotometricInterpretation", "SamplesPerPixel",
    "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "StudyInstanceUID", "AccessionNumber",
)  # fmt: skip

# Dropped from the copy of a DICOM upload that monitoring keeps (PS3.15 Annex E's basic profile, the attributes that
# occur in radiographs; private tags go too). StudyInstanceUID and AccessionNumber are kept on purpose.
IDENTIFYING_ATTRIBUTES = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "PatientMotherBirthName",
    "PatientAddress", "PatientTelephoneNumbers", "PatientInsurancePlanCodeSequence", "MilitaryRank",
    "MedicalRecordLocator", "EthnicGroup", "PatientComments", "PatientReligiousPreference", "ResponsiblePerson",
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "StudyID", "RequestAttributesSequence", "AdmissionID", "CurrentPatientLocation",
)  # fmt: skip


@dataclass(frozen=True)
class Upload:
    """What the header says: the format, the decoded grid, the DICOM attributes read and the study identity."""

    format: str  # nifti | png | jpeg | dicom | zip
    shape: tuple[int, ...] = ()  # decoded pixels/voxels, from the header (empty for a zip: read with the series)
    header: dict[str, str] = field(default_factory=dict)
    study: dict[str, str] = field(default_factory=dict)  # study_instance_uid, accession_number (when present)

    @property
    def pixels(self) -> int:
        total = 1
        for side in self.shape:
            total *= int(side)
        return total if self.shape else 0


class NotAccepted(InputError):
    """422: the upload is readable but not what the model is for; names the attribute, its value, what is taken."""

    def __init__(self, family: str, attribute: str, value: Any, accepted: Any) -> None:
        listed = ", ".join(map(str, accepted)) if isinstance(accepted, list | tuple) else str(accepted)
        super().__init__("not_accepted", f"{attribute} is {value!r}; {family} takes {attribute} {listed}", status=422)
        self.attribute, self.value, self.accepted = attribute, value, accepted

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail, "attribute": self.attribute, "value": self.value,
                "accepted": list(self.accepted) if isinstance(self.accepted, list | tuple) else self.accepted}  # fmt: skip


def sniff_format(data: bytes) -> str:
    """``nifti`` (plain or gzipped), ``png``, ``jpeg``, ``dicom`` or ``zip`` from the content, never the name."""
    if not data:
        raise InputError("empty_upload", "the uploaded file is empty")
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(ZIP_SIGNATURE):
        return "zip"
    head = gunzip_head(data, 352) if data.startswith(GZIP_SIGNATURE) else data
    if _nifti_header(head) is not None:
        return "nifti"
    raise InputError(
        "unsupported_format",
        "the upload is not NIfTI, PNG, JPEG, DICOM or a zip of a DICOM series (recognised from its content, not its "
        "name)",
    )


def inspect_upload(data: bytes, family: str, gate: InputGate | None) -> Upload:
    """The upload's header, checked against the gate (``None``: the bound below only) before any decoding.

    Raises:
        InputError: unreadable header (400), more pixels than the gate's bound (413), a DICOM attribute the model
            does not take (422, :class:`NotAccepted`).
    """
    gate = gate or InputGate()
    fmt = sniff_format(data)
    if fmt == "png":
        upload = Upload(fmt, _png_shape(data))
    elif fmt == "jpeg":
        upload = Upload(fmt, _jpeg_shape(data))
    elif fmt == "nifti":
        upload = Upload(fmt, _nifti_shape(data, gate.max_pixels))
    elif fmt == "dicom":
        upload = _dicom_upload(data, gate.max_pixels)
    else:
        return Upload(fmt)  # a series: its headers are checked as it is read (medmlops.data.dicom_series)
    check_pixels(upload.pixels, upload.shape, family, gate)
    if fmt in ("png", "jpeg") and not gate.raster:
        raise NotAccepted(family, "format", fmt.upper(), "DICOM or NIfTI (PNG and JPEG carry no header to check)")
    if fmt == "dicom":
        check_header(upload.header, family, gate)
    return upload


def check_pixels(pixels: int, shape: tuple[int, ...], family: str, gate: InputGate) -> None:
    if pixels > gate.max_pixels:
        grid = " x ".join(map(str, shape))
        raise InputError(
            "too_many_pixels",
            f"the image is {grid} ({pixels} pixels once decoded); {family} takes at most {gate.max_pixels}",
            status=413,
        )


def check_header(header: dict[str, str], family: str, gate: InputGate) -> None:
    """The gate's DICOM rules on a header read by :func:`inspect_upload` (or a series' first slice)."""
    frames = int(header.get("NumberOfFrames") or 1)
    if frames > gate.max_frames:
        raise NotAccepted(family, "NumberOfFrames", frames, f"at most {gate.max_frames}")
    samples = int(header.get("SamplesPerPixel") or 1)
    if samples != gate.samples_per_pixel:
        raise NotAccepted(family, "SamplesPerPixel", samples, (gate.samples_per_pixel,))
    for attribute, allowed, required in (
        ("PhotometricInterpretation", gate.photometric, True),
        ("Modality", gate.modalities, True),
        ("BodyPartExamined", gate.body_parts, False),
        ("ViewPosition", gate.view_positions, False),
    ):
        value = header.get(attribute, "").strip().upper()
        if not allowed or (not value and not required):
            continue
        if value not in {a.upper() for a in allowed}:
            raise NotAccepted(family, attribute, value, allowed)


def study_identity(header: dict[str, str], study_id: str | None = None) -> dict[str, str]:
    """The identifiers that travel with the record: StudyInstanceUID, AccessionNumber, a client's study id."""
    found = {"study_instance_uid": header.get("StudyInstanceUID", ""),
             "accession_number": header.get("AccessionNumber", ""), "study_id": study_id or ""}  # fmt: skip
    return {k: v.strip() for k, v in found.items() if v and v.strip()}


# ----------------------------------------------------------------------------------------------------------------------
# Headers
# ----------------------------------------------------------------------------------------------------------------------


def _png_shape(data: bytes) -> tuple[int, ...]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise InputError("corrupt_file", "the PNG has no IHDR header (truncated or not a PNG)")
    width, height = struct.unpack(">II", data[16:24])
    if not width or not height:
        raise InputError("corrupt_file", f"the PNG header gives a {width} x {height} image")
    return (height, width)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_shape(data: bytes) -> tuple[int, ...]:
    """Rows and columns from the first SOF marker (markers walked by their lengths; nothing decoded)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if not height or not width:
                raise InputError("corrupt_file", f"the JPEG header gives a {width} x {height} image")
            return (height, width)
        if marker == 0xDA or length < 2:  # the scan started without a frame header
            break
        pos += 2 + length
    raise InputError("corrupt_file", "the JPEG has no frame header (truncated or not a JPEG)")


def gunzip_head(data: bytes, n: int) -> bytes:
    """The first ``n`` bytes of a gzip stream (400 naming the problem when it is corrupt)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            return f.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError("corrupt_file", f"the upload is gzip data that cannot be decompressed ({exc})") from exc


def _nifti_header(head: bytes) -> tuple[tuple[int, ...], int, int] | None:
    """(dims, bits per voxel, voxel offset) of a NIfTI-1/-2 header in either byte order, or None."""
    for order in ("<", ">"):
        if len(head) >= 348 and struct.unpack(f"{order}i", head[:4])[0] == 348:
            ndim = struct.unpack(f"{order}h", head[40:42])[0]
            dims = struct.unpack(f"{order}7h", head[42:56])
            bitpix = struct.unpack(f"{order}h", head[72:74])[0]
            offset = int(struct.unpack(f"{order}f", head[108:112])[0])
            return tuple(max(int(d), 0) for d in dims[: max(0, min(ndim, 7))]), int(bitpix), offset
        if len(head) >= 540 and struct.unpack(f"{order}i", head[:4])[0] == 540:
            ndim = struct.unpack(f"{order}q", head[16:24])[0]
            dims = struct.unpack(f"{order}7q", head[24:80])
            bitpix = struct.unpack(f"{order}h", head[14:16])[0]
            offset = struct.unpack(f"{order}q", head[168:176])[0]
            return tuple(max(int(d), 0) for d in dims[: max(0, min(ndim, 7))]), int(bitpix), int(offset)
    return None


def _nifti_shape(data: bytes, max_voxels: int) -> tuple[int, ...]:
    gz = data.startswith(GZIP_SIGNATURE)
    parsed = _nifti_header(gunzip_head(data, 544) if gz else data[:544])
    if parsed is None:
        raise InputError("corrupt_file", "the NIfTI header cannot be read (truncated or not NIfTI)")
    dims, bitpix, offset = parsed
    voxels = 1
    for d in dims:
        voxels *= d
    if gz and voxels <= max_voxels:  # the whole stream, inflated in bounded chunks: a corrupt tail is caught here
        _check_gzip(data, offset + voxels * max(bitpix, 8) // 8 + HEADER_ALLOWANCE)
    return dims


def _check_gzip(data: bytes, limit: int) -> None:
    total = 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            while chunk := f.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise InputError(
                        "too_large", f"the upload inflates to more than its header announces ({limit} bytes)", 413
                    )
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError("corrupt_file", f"the upload is gzip data that cannot be decompressed ({exc})") from exc


def _meta_transfer_syntax(data: bytes) -> tuple[str, int]:
    """The transfer syntax UID of a DICOM file's meta group (explicit VR little endian by the standard) and where
    the data set starts; read by hand because pydicom inflates a deflated data set whole before any check."""
    pos, syntax = 132, ""
    while pos + 8 <= len(data):
        group, element = struct.unpack("<HH", data[pos : pos + 4])
        if group != 2:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            (length,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            start = pos + 12
        else:
            (length,) = struct.unpack("<H", data[pos + 6 : pos + 8])
            start = pos + 8
        if element == 0x0010:
            syntax = data[start : start + length].decode("ascii", "replace").strip("\x00 ")
        pos = start + length
    return syntax, pos


def _bounded_inflate(data: bytes, limit: int) -> None:
    inflater, total, pos = zlib.decompressobj(-zlib.MAX_WBITS), 0, 0
    try:
        while pos < len(data):
            chunk = inflater.decompress(data[pos : pos + (1 << 16)], 1 << 20)
            pos += 1 << 16
            while True:
                total += len(chunk)
                if total > limit:
                    raise InputError(
                        "too_large",
                        f"the deflated DICOM inflates to more than {limit} bytes, beyond what the model's pixel "
                        "bound allows",
                        status=413,
                    )
                if not inflater.unconsumed_tail:
                    break
                chunk = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
    except zlib.error as exc:
        raise InputError("corrupt_file", f"the deflated DICOM data set cannot be inflated ({exc})") from exc


def _dicom_upload(data: bytes, max_pixels: int) -> Upload:
    import pydicom
    from pydicom.errors import InvalidDicomError

    syntax, start = _meta_transfer_syntax(data)
    if syntax == DEFLATED_DICOM:
        _bounded_inflate(data[start:], max_pixels * 8 + HEADER_ALLOWANCE)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, ValueError, struct.error, EOFError, zlib.error) as exc:
        raise InputError("corrupt_file", f"the DICOM header cannot be read ({type(exc).__name__}: {exc})") from exc
    header = {}
    for keyword in GATE_ATTRIBUTES:
        value = ds.get(keyword)
        header[keyword] = "" if value is None else str(value).strip()
    try:
        rows, cols = int(header["Rows"] or 0), int(header["Columns"] or 0)
        frames = int(header["NumberOfFrames"] or 1)
    except ValueError as exc:
        raise InputError("corrupt_file", f"the DICOM header's image size cannot be read ({exc})") from exc
    if not rows or not cols:
        raise InputError(
            "corrupt_file", "the DICOM header has no Rows/Columns (truncated, or an object without an image)"
        )
    shape = (frames, rows, cols) if frames > 1 else (rows, cols)
    return Upload("dicom", shape, header, study_identity(header))


def deidentified_dicom(data: bytes) -> bytes:
    """The DICOM upload without the attributes that identify a patient (:data:`IDENTIFYING_ATTRIBUTES`, private
    tags); pixel data untouched (still encapsulated when compressed). The copy monitoring keeps."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    for keyword in IDENTIFYING_ATTRIBUTES:
        if keyword in ds:
            delattr(ds, keyword)
    ds.remove_private_tags()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()
