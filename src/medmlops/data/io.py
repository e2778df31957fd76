"""Image loading for the public formats: NIfTI head CT, DICOM / PNG / JPEG chest X-rays.

One code path for training, validation, serving and monitoring: everything that opens an image calls these.
Errors are :class:`~medmlops.errors.DataError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmlops.errors import DataError

CT_SUFFIXES = (".nii.gz", ".nii")
CXR_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class CtVolume:
    """A CT volume as stored: array axes follow the file (x, y, z), values in HU, spacing in mm."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    description: str = ""


@dataclass(frozen=True)
class XrayImage:
    """A radiograph as float32 rows × cols in display polarity (air dark), plus where it came from."""

    array: np.ndarray
    photometric: str  # MONOCHROME1 / MONOCHROME2 (PNG and JPEG are MONOCHROME2)
    bits: int
    manufacturer: str = ""


def suffix_of(name: str) -> str:
    lower = name.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else Path(lower).suffix


def load_ct(path: str | Path) -> CtVolume:
    """Read a NIfTI head CT (``.nii`` or ``.nii.gz``) with its voxel spacing.

    Raises:
        DataError: missing, truncated or not NIfTI, not 3D, or not finite.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if suffix_of(path.name) not in CT_SUFFIXES:
        raise DataError(f"{path}: expected a NIfTI file (.nii or .nii.gz), got '{suffix_of(path.name) or path.name}'")
    try:
        img = nib.load(str(path))
        array = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt gzip / header / truncated data
        raise DataError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc
    return _ct_from_nifti(img, array, path)


def load_ct_bytes(data: bytes, name: str = "upload.nii.gz") -> CtVolume:
    """Read a NIfTI volume from bytes (serving): gzip-compressed or not, detected from the content."""
    import gzip

    import nibabel as nib

    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        img = nib.Nifti1Image.from_bytes(raw)
        array = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise DataError(f"{name}: cannot be read as NIfTI ({type(exc).__name__}: {exc})") from exc
    return _ct_from_nifti(img, array, Path(name))


def _ct_from_nifti(img, array: np.ndarray, path: Path) -> CtVolume:
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got {array.ndim}D with shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{path}: contains {bad} NaN/Inf voxels")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    descrip = img.header.get("descrip")
    description = descrip.item().decode("latin-1", "replace").strip("\x00 ") if descrip is not None else ""
    return CtVolume(array=array, affine=np.asarray(img.affine), spacing=zooms, description=description)


def load_xray(path: str | Path) -> XrayImage:
    """Read a chest X-ray from DICOM, PNG (8/16-bit) or JPEG into float32 in display polarity.

    DICOM: ``RescaleSlope``/``RescaleIntercept`` applied, MONOCHROME1 inverted (air bright on disk → dark here).

    Raises:
        DataError: missing, corrupt, not 2D, or not finite.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return load_xray_bytes(path.read_bytes(), name=str(path))


def load_xray_bytes(data: bytes, name: str = "upload") -> XrayImage:
    if not data:
        raise DataError(f"{name}: empty file")
    if _looks_like_dicom(data) or suffix_of(name) in (".dcm", ".dicom"):
        image = _read_dicom(data, name)
    else:
        image = _read_raster(data, name)
    arr = image.array
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2D grayscale image, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise DataError(f"{name}: contains NaN/Inf pixels")
    return image


def _looks_like_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _read_dicom(data: bytes, name: str) -> XrayImage:
    """Decode with pydicom and its plugins (pylibjpeg: JPEG Baseline/Extended/Lossless, JPEG-LS, JPEG 2000; RLE,
    deflated and big endian natively). A transfer syntax no installed decoder reads is a DataError naming it."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise DataError(f"{name}: cannot be read as DICOM ({type(exc).__name__}: {exc})") from exc
    try:
        arr = ds.pixel_array.astype(np.float32)
    except Exception as exc:
        unsupported = _unsupported_syntax(ds)
        if unsupported:
            raise DataError(f"{name}: {unsupported}") from exc
        raise DataError(f"{name}: cannot be read as DICOM ({type(exc).__name__}: {exc})") from exc
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if samples > 1 and arr.ndim >= 3 and arr.shape[-1] == samples:  # RGB secondary captures: use luminance
        arr = arr[..., :3].mean(axis=-1)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    arr = arr * slope + intercept
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    if photometric == "MONOCHROME1":
        # MONOCHROME1: the minimum value is displayed white. Invert within the stored range so that every
        # image reaches the model with air dark, whatever the vendor wrote.
        arr = (arr.max() + arr.min()) - arr
    return XrayImage(arr, photometric, bits, str(getattr(ds, "Manufacturer", "") or ""))


def _unsupported_syntax(ds) -> str:
    """Why the pixel data's transfer syntax cannot be decoded here, in one sentence; '' when the failure is not
    the syntax's (no transfer syntax in the header, or an uncompressed one: truncated or inconsistent data)."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    raw = meta.get("TransferSyntaxUID") if meta is not None else None
    if not raw:
        return ""
    uid = UID(str(raw).strip())
    if not uid.is_transfer_syntax:
        return f"transfer syntax {uid} is not supported (not a DICOM transfer syntax pydicom knows)"
    label = f"transfer syntax '{uid.name}' ({uid})"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"{label} is not supported (no decoder exists for it here)"
    if not decoder.is_available:
        return f"{label} is not supported (its decoder plugins are not installed)"
    if not uid.is_compressed:
        return ""
    bits = getattr(ds, "BitsStored", "?")
    samples = getattr(ds, "SamplesPerPixel", "?")
    plugins = ", ".join(sorted(decoder.available_plugins))
    return (
        f"{label} is not supported for this image ({bits}-bit, {samples} sample(s) per pixel): none of the "
        f"installed decoders ({plugins}) can decode its pixel data"
    )


def _read_raster(data: bytes, name: str) -> XrayImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32)
                bits = 16
            elif mode in ("L", "P", "RGB", "RGBA", "LA"):
                arr = np.asarray(img.convert("L"), dtype=np.float32)
                bits = 8
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float32)
                bits = 32
            else:
                raise DataError(f"{name}: unsupported image mode '{mode}'")
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{name}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc
    return XrayImage(arr, "MONOCHROME2", bits)
