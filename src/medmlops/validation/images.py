"""Per-image statistics: the table Great Expectations validates for the images of a dataset.

Each referenced file is opened with the same loaders training uses; a file that cannot be opened gets
``loads = False`` and its error text, so one bad file is reported, not fatal. DICOM X-rays add their header's
attributes (read without the pixel data), which the suites check against the family's serving input gate.

The CT value rule (Hounsfield units, air around the head) lives here as data (:func:`ct_value_rules`), so the
validation suite and serving apply the same rule: :func:`array_stats` on a loaded volume, then
:func:`ct_value_problems`.
"""

from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medmlops.data.io import load_xray_bytes, suffix_of

if TYPE_CHECKING:
    from medmlops.config import ValidationConfig

# DICOM header columns (X-ray datasets): '' (text) or NaN (numbers) for PNG/JPEG and CT; ``dicom`` marks the rows
# that have a header. Text values stripped and upper-case (DICOM code strings are upper-case by definition).
HEADER_COLUMNS = ("dicom", "modality", "body_part", "view_position", "photometric", "samples_per_pixel", "frames")
STAT_COLUMNS = (
    "sample_id", "image_path", "exists", "loads", "error", "ndim", "dim0", "dim1", "dim2", "spacing_min",
    "spacing_max", "nonfinite", "vmin", "vmax", "p01", "p99", "std", *HEADER_COLUMNS,
)  # fmt: skip
TEXT_HEADER_COLUMNS = ("modality", "body_part", "view_position", "photometric")


def _ct_stats(path: Path) -> dict:
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    zooms = [float(z) for z in img.header.get_zooms()[: arr.ndim]]
    return array_stats(arr, zooms)


def _xray_stats(path: Path, header: dict) -> dict:
    """Pixel statistics; ``header`` is filled first (DICOM attributes), so a file that fails to decode keeps them."""
    data = path.read_bytes()
    header.update(dicom_header_columns(data, str(path)))
    image = load_xray_bytes(data, name=str(path))
    return array_stats(image.array, [1.0, 1.0])


def dicom_header_columns(data: bytes, name: str = "") -> dict:
    """The header columns of one X-ray file's bytes: DICOM attributes read without the pixel data; a PNG/JPEG (or
    bytes pydicom cannot parse) gets ``dicom`` False, '' and NaN. ``frames`` is NumberOfFrames, 1 where absent."""
    out: dict = {"dicom": False, **{c: "" for c in TEXT_HEADER_COLUMNS}, "samples_per_pixel": np.nan, "frames": np.nan}
    if not (data[128:132] == b"DICM" or suffix_of(name) in (".dcm", ".dicom")):
        return out
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        values = {
            "modality": ds.get("Modality"),
            "body_part": ds.get("BodyPartExamined"),
            "view_position": ds.get("ViewPosition"),
            "photometric": ds.get("PhotometricInterpretation"),
        }
        samples, frames = ds.get("SamplesPerPixel"), ds.get("NumberOfFrames")
        out.update({k: str(v or "").strip().upper() for k, v in values.items()})
        out["samples_per_pixel"] = float(int(samples)) if samples not in (None, "") else np.nan
        out["frames"] = float(int(frames)) if frames not in (None, "") else 1.0
    except Exception:  # an unreadable header is the pixel reader's finding ("every image must open"), not ours
        return {"dicom": False, **{c: "" for c in TEXT_HEADER_COLUMNS}, "samples_per_pixel": np.nan, "frames": np.nan}
    out["dicom"] = True
    return out


def array_stats(arr: np.ndarray, spacing: list[float] | tuple[float, ...]) -> dict:
    """The statistics the image suites check, of one image or volume (``spacing`` in mm per axis): ndim, dim0-2,
    spacing_min/max, nonfinite, and over the finite values vmin, vmax, p01, p99 (on a ≤ 200 k-value subsample) and
    std. Serving calls it on a loaded CT volume before :func:`ct_value_problems`."""
    finite = np.isfinite(arr)
    values = arr[finite]
    dims = list(arr.shape) + [0] * (3 - arr.ndim)
    out = {
        "ndim": arr.ndim,
        "dim0": dims[0],
        "dim1": dims[1],
        "dim2": dims[2],
        "spacing_min": min(spacing) if spacing else np.nan,
        "spacing_max": max(spacing) if spacing else np.nan,
        "nonfinite": int(arr.size - values.size),
    }
    if values.size:
        # Subsample for the percentiles: exact enough for plausibility checks, 10x cheaper on big volumes.
        sample = values[:: max(1, values.size // 200_000)]
        out.update(
            vmin=float(values.min()),
            vmax=float(values.max()),
            p01=float(np.percentile(sample, 1)),
            p99=float(np.percentile(sample, 99)),
            std=float(values.std()),
        )
    else:
        out.update(vmin=np.nan, vmax=np.nan, p01=np.nan, p99=np.nan, std=0.0)
    return out


def ct_value_rules(cfg: ValidationConfig) -> list[tuple[str, float | None, float | None, str]]:
    """The CT value rule as (stats column, minimum or None, maximum or None, description): values in Hounsfield
    units (``ct_hu_min``/``ct_hu_max``) and air around the head (1st percentile ≤ ``ct_air_below_hu``)."""
    return [
        ("vmin", cfg.ct_hu_min, None, f"CT values must be Hounsfield units (minimum ≥ {cfg.ct_hu_min:g})"),
        ("vmax", None, cfg.ct_hu_max, f"CT values must be Hounsfield units (maximum ≤ {cfg.ct_hu_max:g})"),
        (
            "p01",
            None,
            cfg.ct_air_below_hu,
            f"CT must contain air around the head (1st percentile ≤ {cfg.ct_air_below_hu:g} HU; "
            "a volume already rescaled away from HU fails here)",
        ),
    ]


def ct_value_problems(stats: dict, cfg: ValidationConfig) -> list[str]:
    """The descriptions of the :func:`ct_value_rules` that ``stats`` (from :func:`array_stats`) fail; [] when all
    pass. A missing or NaN value (a volume without a finite voxel) fails its rule."""
    problems = []
    for column, lo, hi, description in ct_value_rules(cfg):
        value = stats.get(column)
        finite = value is not None and math.isfinite(float(value))
        if not (finite and (lo is None or value >= lo) and (hi is None or value <= hi)):
            problems.append(description)
    return problems


def image_stats(manifest: pd.DataFrame, modality: str, max_images: int = 0, progress: bool = True) -> pd.DataFrame:
    """Open every image of ``manifest`` (``modality`` "ct" or "xray") and return one row of statistics per file.

    Args:
        max_images: check at most this many (evenly spaced) images; 0 = all.
    """
    loader = {"ct": _ct_stats, "xray": _xray_stats}[modality]
    rows = manifest[["sample_id", "image_path"]]
    if max_images and len(rows) > max_images:
        rows = rows.iloc[np.linspace(0, len(rows) - 1, max_images).astype(int)]

    def one(record: tuple[str, str]) -> dict:
        sample_id, image_path = record
        path = Path(image_path)
        base = {"sample_id": sample_id, "image_path": image_path, "exists": path.is_file(), "loads": False, "error": ""}
        if not base["exists"]:
            base["error"] = "file not found"
            return base
        try:
            base.update(_ct_stats(path) if loader is _ct_stats else _xray_stats(path, base))
            base["loads"] = True
        except Exception as exc:  # any reader failure is a finding about this file, not a crash of the check
            base["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return base

    records = list(rows.itertuples(index=False, name=None))
    with ThreadPoolExecutor(max_workers=2) as pool:  # zlib and pydicom decoding release the GIL
        results = list(
            tqdm(pool.map(one, records), total=len(records), desc=f"checking {modality} images", disable=not progress)
        )
    frame = pd.DataFrame(results)
    for column in STAT_COLUMNS:
        if column not in frame:
            frame[column] = np.nan
    for column in TEXT_HEADER_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    frame["dicom"] = frame["dicom"].eq(True)
    return frame[list(STAT_COLUMNS)]
