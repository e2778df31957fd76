"""A CT DICOM series (one file per slice, sent as a zip) → the :class:`~medmlops.data.io.CtVolume` that
:func:`~medmlops.data.io.load_ct` gives for a NIfTI of the same geometry, so serving runs the model's own chain.

Decisions:

- **The zip is untrusted.** Entry count and the declared sizes are checked first (cheap), then every entry is
  inflated by this module in 1 MiB chunks from its raw compressed bytes, counting the real output: reading stops
  as soon as the total passes ``max_inflated_bytes``, whatever the headers declare (a lying size cannot make us
  inflate a bomb in full). Python's ``zipfile`` alone would cut the output at the declared size and report a
  CRC error instead, which hides the cause. Only stored and deflated entries are accepted (what zip tools make);
  the inflated size and CRC must match the directory.
- **Headers before pixels.** Every slice's header is read with ``stop_before_pixels`` and the series is checked
  (one series, CT, one geometry, voxel budget, slice spacing) before any pixel is decoded.
- **Sorting** is by the position along the slice normal ``n = X × Y`` (``X`` = ImageOrientationPatient[:3], the
  direction of increasing column; ``Y`` = [3:], increasing row): ``dot(ImagePositionPatient, n)``, ascending.
  Never by file name or InstanceNumber, which hospitals renumber freely. A NIfTI whose third voxel axis runs
  against ``n`` (a left-handed voxel grid) therefore comes back with its slices in the other order and the
  matching affine: the same image in space, which ``Orientationd`` maps to the same RAS tensor.
- **Spacing tolerance.** With ``d`` the median step along ``n``: a step under 0.01 mm is a duplicate slice; a
  step over 1.5 ``d`` is a gap (a missing slice, or a series that changes its spacing); any other step differing
  from ``d`` by more than ``max(1 % of d, 0.01 mm)`` is inconsistent spacing, as is a slice shifted in-plane by
  more than that. 1 % of a step moves a slice by 1 % of a voxel, far below what the model's resampling
  resolves; the 0.01 mm floor absorbs positions written with two decimals (rounding up to 0.005 mm per slice),
  which is common in scanner output. The model's resampling assumes one uniform step, so more is refused.
- **LPS → RAS.** DICOM patient coordinates are LPS. Pixel (row r, column c) of sorted slice k sits at
  ``IPP_0 + c·Δc·X + r·Δr·Y + k·s`` (PixelSpacing = [Δr, Δc], ``s`` the mean step vector, so a gantry tilt is
  kept). The array is (x = column, y = row, z = slice) in HU (float32, each slice's RescaleSlope/Intercept), and
  the affine is that LPS affine with its first two rows negated: RAS, as nibabel gives it.
"""

from __future__ import annotations

import copy
import io
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from medmlops.data.io import CtVolume
from medmlops.errors import DataError

#: Header attributes returned with the volume (strings, '' when absent): routing and checks, no patient names.
HEADER_ATTRIBUTES = (
    "Modality",
    "BodyPartExamined",
    "StudyInstanceUID",
    "AccessionNumber",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "StudyDate",
    "PhotometricInterpretation",
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "KVP",
    "SliceThickness",
    "PatientPosition",
    "FrameOfReferenceUID",
    "SOPClassUID",
    "TransferSyntaxUID",
)

_CHUNK = 1 << 20  # inflated bytes per step
_RAW_CHUNK = 1 << 16  # compressed bytes read per step
_DUPLICATE_MM = 0.01
_SPACING_REL = 0.01
_SPACING_ABS_MM = 0.01
_GAP_FACTOR = 1.5
_DRIVE = re.compile(r"^[A-Za-z]:")


class SeriesError(DataError):
    """A refused series. ``code``: a stable short string; ``str(exc)``: one sentence naming the problem and what is
    accepted; ``status``: the HTTP status serving answers with (400 malformed, 413 too large, 422 not usable)."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class SeriesLimits:
    max_entries: int = 2048  # files in the zip
    max_inflated_bytes: int = 1 << 30  # total bytes after decompression, counted while reading
    max_voxels: int = 64 * 1024 * 1024


@dataclass
class _Slice:
    name: str
    data: bytes
    header: Any  # pydicom FileDataset without pixels
    position: np.ndarray  # ImagePositionPatient (LPS, mm)
    height: float = 0.0  # position along the slice normal


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------


def read_series_zip(data: bytes, limits: SeriesLimits = SeriesLimits()) -> tuple[CtVolume, dict[str, str]]:
    """Read a zip of one CT series' slices into a volume and the first (lowest) slice's header attributes.

    Returns:
        The volume as :func:`medmlops.data.io.load_ct` gives it for a NIfTI of the same geometry (array (x=column,
        y=row, z=slice) float32 HU, RAS affine, spacing (column, row, slice step) mm, description =
        SeriesDescription), and :data:`HEADER_ATTRIBUTES` as strings ('' when absent).

    Raises:
        SeriesError: with ``code`` one of bad_zip, too_many_entries, bad_entry_name, too_large, not_dicom,
            missing_attribute, unsupported_image, mixed_series, not_ct, inconsistent_geometry, too_few_slices,
            duplicate_slices, missing_slices, inconsistent_spacing, unreadable_slice.
    """
    files = _read_zip(data, limits)
    slices = [_read_header(name, content) for name, content in files]
    geometry = _check_series(slices, limits)
    ordered, step = _sort_and_check_spacing(slices, geometry["normal"])
    array = _decode(ordered, geometry)
    x, y = geometry["x"], geometry["y"]
    row_spacing, col_spacing = geometry["spacing"]
    lps = np.eye(4)
    lps[:3, 0] = x * col_spacing
    lps[:3, 1] = y * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = ordered[0].position
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    first = ordered[0].header
    volume = CtVolume(
        array=array,
        affine=affine,
        spacing=(float(col_spacing), float(row_spacing), float(np.linalg.norm(step))),
        description=_text(first.get("SeriesDescription")),
    )
    return volume, _attributes(first)


def _read_zip(data: bytes, limits: SeriesLimits) -> list[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise SeriesError(
            "bad_zip",
            f"the upload is not a readable zip archive ({_reason(exc)}); send one series' DICOM files as a zip",
            400,
        ) from exc
    if len(infos) > limits.max_entries:
        raise SeriesError(
            "too_many_entries",
            f"the zip holds {len(infos)} entries, more than the {limits.max_entries} accepted; send one series per zip",
            413,
        )
    for info in infos:
        _check_name(info.filename)
    wanted = [info for info in infos if not _skipped(info)]
    declared = sum(info.file_size for info in wanted)
    if declared > limits.max_inflated_bytes:
        raise SeriesError(
            "too_large",
            f"the zip's files declare {declared} bytes uncompressed, more than the {limits.max_inflated_bytes} "
            "accepted; send one series per zip",
            413,
        )
    files: list[tuple[str, bytes]] = []
    budget = limits.max_inflated_bytes
    with archive:
        for info in wanted:
            content = _inflate(archive, info, budget, limits.max_inflated_bytes)
            budget -= len(content)
            files.append((info.filename, content))
    return files


def _check_name(name: str) -> None:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or _DRIVE.match(name) or ".." in parts:
        raise SeriesError(
            "bad_entry_name",
            f"zip entry '{name}' has an unsafe name (absolute, '..', backslash or drive letter); entries must be "
            "relative paths with '/' separators",
            400,
        )


def _skipped(info: zipfile.ZipInfo) -> bool:
    parts = [p for p in info.filename.split("/") if p]
    return (
        info.is_dir()
        or not parts
        or parts[0] == "__MACOSX"
        or any(p.startswith(".") for p in parts)
        or parts[-1].upper() == "DICOMDIR"
    )


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, limit: int) -> bytes:
    """Inflate one entry from its raw bytes, counting real output: never more than ``budget`` + one chunk."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise SeriesError("bad_zip", f"zip entry '{name}' is encrypted; send the zip without a password", 400)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise SeriesError(
            "bad_zip",
            f"zip entry '{name}' uses compression method {info.compress_type}; stored or deflate (the zip default) "
            "is accepted",
            400,
        )
    raw_info = copy.copy(info)  # zipfile hands back the compressed bytes as they are; we inflate and count
    raw_info.compress_type = zipfile.ZIP_STORED
    raw_info.file_size = info.compress_size
    del raw_info.CRC  # the CRC is of the inflated data: checked below
    inflater = zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == zipfile.ZIP_DEFLATED else None
    parts: list[bytes] = []
    size = 0
    crc = 0

    def take(chunk: bytes) -> None:
        nonlocal size, crc
        size += len(chunk)
        if size > budget:
            raise SeriesError(
                "too_large",
                f"the zip inflates to more than {limit} bytes (stopped in entry '{name}', which declares "
                f"{info.file_size}); send one series per zip, at most {limit} bytes uncompressed",
                413,
            )
        crc = zlib.crc32(chunk, crc)
        parts.append(chunk)

    try:
        with archive.open(raw_info) as raw:
            while True:
                block = raw.read(_RAW_CHUNK)
                if not block:
                    break
                if inflater is None:
                    take(block)
                    continue
                while block:
                    take(inflater.decompress(block, _CHUNK))
                    block = inflater.unconsumed_tail
            if inflater is not None:
                take(inflater.flush())
    except SeriesError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, RuntimeError) as exc:
        raise SeriesError(
            "bad_zip", f"zip entry '{name}' is corrupt ({_reason(exc)}); send the zip again", 400
        ) from exc
    if (inflater is not None and not inflater.eof) or size != info.file_size or crc != info.CRC:
        raise SeriesError(
            "bad_zip",
            f"zip entry '{name}' is corrupt (its data does not match the size or CRC in the zip directory); "
            "send the zip again",
            400,
        )
    return b"".join(parts)


def _read_header(name: str, content: bytes) -> _Slice:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(io.BytesIO(content), stop_before_pixels=True, force=False)
    except InvalidDicomError as exc:
        raise SeriesError(
            "not_dicom",
            f"zip entry '{name}' is not a DICOM file (no 'DICM' marker after the 128-byte preamble); the zip must "
            "hold only the series' DICOM Part 10 files",
        ) from exc
    except Exception as exc:  # truncated or malformed elements raise many types
        raise SeriesError(
            "not_dicom",
            f"zip entry '{name}' cannot be read as DICOM ({_reason(exc)}); the zip must hold only the "
            "series' DICOM Part 10 files",
        ) from exc
    for keyword in ("SeriesInstanceUID", "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient"):
        if header.get(keyword) in (None, ""):
            raise _missing(name, keyword)
    position = _floats(header, "ImagePositionPatient", 3, name)
    return _Slice(name=name, data=content, header=header, position=position)


def _missing(name: str, keyword: str) -> SeriesError:
    return SeriesError(
        "missing_attribute",
        f"slice '{name}' has no {keyword}; each slice needs SeriesInstanceUID, Modality, Rows, Columns, PixelSpacing, "
        "ImageOrientationPatient and ImagePositionPatient",
    )


def _floats(header: Any, keyword: str, count: int, name: str) -> np.ndarray:
    value = header.get(keyword)
    if value in (None, ""):
        raise _missing(name, keyword)
    try:
        from pydicom.multival import MultiValue

        items = value if isinstance(value, MultiValue | list | tuple) else [value]  # VM 1: a bare DSfloat
        values = np.array([float(v) for v in items], dtype=float)
    except (TypeError, ValueError) as exc:
        raise SeriesError(
            "inconsistent_geometry", f"slice '{name}' has a non-numeric {keyword} ({value}); numbers are required"
        ) from exc
    if values.shape != (count,) or not np.isfinite(values).all():
        raise SeriesError(
            "inconsistent_geometry",
            f"slice '{name}' has {keyword} {list(values)}; {count} finite numbers are required",
        )
    return values


def _check_series(slices: list[_Slice], limits: SeriesLimits) -> dict[str, Any]:
    series = Counter(str(s.header.SeriesInstanceUID) for s in slices)
    if len(series) > 1:
        listed = ", ".join(f"{uid}: {n} slice{'s' if n != 1 else ''}" for uid, n in series.most_common())
        raise SeriesError(
            "mixed_series",
            f"the zip holds slices of {len(series)} series ({listed}); send one series per zip",
        )
    for s in slices:
        modality = _text(s.header.get("Modality"))
        if modality != "CT":
            raise SeriesError(
                "not_ct",
                f"slice '{s.name}' has Modality '{modality}'; only CT series are accepted by this model",
            )
        frames = s.header.get("NumberOfFrames")
        samples = s.header.get("SamplesPerPixel", 1)
        if (frames not in (None, "") and int(frames) > 1) or int(samples or 1) != 1:
            raise SeriesError(
                "unsupported_image",
                f"slice '{s.name}' is a multi-frame or colour image (NumberOfFrames {frames}, SamplesPerPixel "
                f"{samples}); one grayscale slice per file (CT Image Storage) is accepted",
            )
    if not slices:
        raise SeriesError("too_few_slices", "the zip holds no DICOM slices; send one CT series of at least 2 slices")
    ref = slices[0]
    rows, cols = int(ref.header.Rows), int(ref.header.Columns)
    spacing = _floats(ref.header, "PixelSpacing", 2, ref.name)
    orientation = _floats(ref.header, "ImageOrientationPatient", 6, ref.name)
    for s in slices[1:]:
        other = (
            int(s.header.Rows),
            int(s.header.Columns),
            _floats(s.header, "PixelSpacing", 2, s.name),
            _floats(s.header, "ImageOrientationPatient", 6, s.name),
        )
        if (
            other[:2] != (rows, cols)
            or not np.allclose(other[2], spacing, rtol=0, atol=1e-4)
            or not np.allclose(other[3], orientation, rtol=0, atol=1e-4)
        ):
            raise SeriesError(
                "inconsistent_geometry",
                f"slice '{s.name}' ({other[0]}×{other[1]}, PixelSpacing {list(other[2])}, ImageOrientationPatient "
                f"{list(other[3])}) differs from slice '{ref.name}' ({rows}×{cols}, PixelSpacing {list(spacing)}, "
                f"ImageOrientationPatient {list(orientation)}); all slices of a series must share them",
            )
    if (spacing <= 0).any():
        raise SeriesError(
            "inconsistent_geometry",
            f"PixelSpacing {list(spacing)} is not positive; positive spacings in mm are required",
        )
    x, y = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(x) - 1) > 1e-3 or abs(np.linalg.norm(y) - 1) > 1e-3 or abs(float(x @ y)) > 1e-3:
        raise SeriesError(
            "inconsistent_geometry",
            f"ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors, as DICOM requires",
        )
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    voxels = rows * cols * len(slices)
    if voxels > limits.max_voxels:
        raise SeriesError(
            "too_large",
            f"the series has {rows}×{cols}×{len(slices)} = {voxels} voxels, more than the {limits.max_voxels} "
            "accepted; send a series with fewer or smaller slices",
            413,
        )
    if len(slices) < 2:
        raise SeriesError(
            "too_few_slices",
            f"the zip holds {len(slices)} DICOM slice ('{slices[0].name}'); a CT volume of at least 2 slices is needed",
        )
    normal = np.cross(x, y)
    return {"rows": rows, "cols": cols, "spacing": spacing, "x": x, "y": y, "normal": normal / np.linalg.norm(normal)}


def _sort_and_check_spacing(slices: list[_Slice], normal: np.ndarray) -> tuple[list[_Slice], np.ndarray]:
    for s in slices:
        s.height = float(s.position @ normal)
    ordered = sorted(slices, key=lambda s: s.height)
    heights = np.array([s.height for s in ordered])
    steps = np.diff(heights)
    for k in np.flatnonzero(steps < _DUPLICATE_MM):
        a, b = ordered[k], ordered[k + 1]
        raise SeriesError(
            "duplicate_slices",
            f"slices '{a.name}' and '{b.name}' are at the same position ({a.height:.3f} mm along the slice normal); "
            "each position must appear once",
        )
    d = float(np.median(steps))
    tolerance = max(_SPACING_REL * d, _SPACING_ABS_MM)
    for k in np.flatnonzero(steps > _GAP_FACTOR * d):
        a, b = ordered[k], ordered[k + 1]
        missing = max(int(round(steps[k] / d)) - 1, 1)
        raise SeriesError(
            "missing_slices",
            f"a gap of {steps[k]:.3f} mm between slices '{a.name}' and '{b.name}' ({a.height:.3f} and {b.height:.3f} "
            f"mm along the slice normal, slices {k + 1} and {k + 2} of {len(ordered)}) where the series' step is "
            f"{d:.3f} mm: about {missing} slice{'s' if missing != 1 else ''} missing; send the complete series with "
            "one uniform slice spacing",
        )
    for k in np.flatnonzero(np.abs(steps - d) > tolerance):
        a, b = ordered[k], ordered[k + 1]
        raise SeriesError(
            "inconsistent_spacing",
            f"the step between slices '{a.name}' and '{b.name}' is {steps[k]:.3f} mm where the series' step is "
            f"{d:.3f} mm (tolerance {tolerance:.3f} mm); a series with one uniform slice spacing is accepted",
        )
    positions = np.stack([s.position for s in ordered])
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    expected = positions[0] + np.arange(len(ordered))[:, None] * step
    off = np.linalg.norm(positions - expected, axis=1)
    if off.max() > tolerance:
        s = ordered[int(np.argmax(off))]
        raise SeriesError(
            "inconsistent_spacing",
            f"slice '{s.name}' lies {off.max():.3f} mm off the line through the other slices' positions (tolerance "
            f"{tolerance:.3f} mm); slices stacked along one straight line at a uniform step are accepted",
        )
    return ordered, step


def _decode(ordered: list[_Slice], geometry: dict[str, Any]) -> np.ndarray:
    import pydicom

    rows, cols = geometry["rows"], geometry["cols"]
    array = np.empty((cols, rows, len(ordered)), dtype=np.float32)
    for k, s in enumerate(ordered):
        syntax = s.header.file_meta.get("TransferSyntaxUID", "unknown")
        syntax_name = getattr(syntax, "name", "") or str(syntax)
        try:
            ds = pydicom.dcmread(io.BytesIO(s.data), force=False)
            pixels = ds.pixel_array
        except Exception as exc:  # each decoder plugin raises its own types
            raise SeriesError(
                "unreadable_slice",
                f"slice '{s.name}' cannot be decoded (transfer syntax {syntax_name} [{syntax}]: {_reason(exc)}); send uncompressed, JPEG (baseline/lossless), JPEG-LS, JPEG 2000 or RLE slices",
            ) from exc
        if pixels.shape != (rows, cols):
            raise SeriesError(
                "unreadable_slice",
                f"slice '{s.name}' decodes to shape {tuple(pixels.shape)} instead of {rows}×{cols} (transfer syntax "
                f"{syntax_name}); one {rows}×{cols} grayscale frame per file is accepted",
            )
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        array[:, :, k] = (pixels.astype(np.float64) * slope + intercept).T
    return array


def _reason(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line (pydicom lists each decoder plugin's failure on its own line)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(value: Any) -> str:
    if value is None:
        return ""
    from pydicom.multival import MultiValue

    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _attributes(header: Any) -> dict[str, str]:
    out = {}
    for keyword in HEADER_ATTRIBUTES:
        source = header.file_meta if keyword == "TransferSyntaxUID" else header
        out[keyword] = _text(source.get(keyword))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Writing (tests, hospital-integration example)
# ----------------------------------------------------------------------------------------------------------------------


def series_zip_from_volume(
    array: np.ndarray,
    affine: np.ndarray,
    *,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    **attributes: Any,
) -> bytes:
    """Write a volume (x, y, z) in HU with its RAS affine as a zip of one DICOM file per slice.

    CT Image Storage (MR Image Storage when ``modality="MR"``), explicit VR little endian, int16 with RescaleSlope 1
    and RescaleIntercept -1024 (HU are rounded to integers); ImagePositionPatient, ImageOrientationPatient,
    PixelSpacing and SliceThickness from the affine; InstanceNumber follows z. ``attributes`` are further DICOM
    keywords (``BodyPartExamined="HEAD"``). Entries are written in a shuffled order under names that do not follow
    z, as hospital exports do. The in-plane affine columns must be orthogonal (DICOM cannot store a shear).
    """
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
    from pydicom.valuerep import format_number_as_ds

    volume = np.asarray(array)
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume (x, y, z), got shape {volume.shape}")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    col_vec, row_vec, slice_vec = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    col_spacing, row_spacing = float(np.linalg.norm(col_vec)), float(np.linalg.norm(row_vec))
    x, y = col_vec / col_spacing, row_vec / row_spacing
    if abs(float(x @ y)) > 1e-6:
        raise ValueError("the affine's first two columns are not orthogonal; DICOM cannot store a sheared slice")
    unknown = [k for k in attributes if tag_for_keyword(k) is None]
    if unknown:
        raise ValueError(f"not DICOM keywords: {', '.join(unknown)}")
    intercept = -1024
    stored = np.rint(volume.astype(np.float64)) - intercept
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"HU values {volume.min()}..{volume.max()} do not fit int16 with RescaleIntercept {intercept}")
    stored = stored.astype("<i2")

    def ds_values(values) -> list[str]:
        return [format_number_as_ds(float(v)) for v in values]

    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    thickness = abs(float(slice_vec @ np.cross(x, y)))
    n = volume.shape[2]
    order = np.random.default_rng(n).permutation(n)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry, k in enumerate(order):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = modality
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.SeriesNumber = 1
            ds.InstanceNumber = int(k) + 1
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImagePositionPatient = ds_values(lps[:3, :] @ np.array([0.0, 0.0, float(k), 1.0]))
            ds.ImageOrientationPatient = ds_values(np.concatenate([x, y]))
            ds.PixelSpacing = ds_values([row_spacing, col_spacing])
            ds.SliceThickness = format_number_as_ds(thickness)
            ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept = str(intercept)
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            for keyword, value in attributes.items():
                setattr(ds, keyword, value)
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            out = io.BytesIO()
            pydicom.dcmwrite(out, ds, enforce_file_format=True)
            archive.writestr(f"series/IM{entry:05d}.dcm", out.getvalue())
    return buffer.getvalue()
