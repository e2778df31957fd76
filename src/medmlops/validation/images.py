"""Per-image statistics: the table Great Expectations validates for the images of a dataset.

Each referenced file is opened with the same loaders training uses; a file that cannot be opened gets
``loads = False`` and its error text, so one bad file is reported, not fatal.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medmlops.data.io import load_xray_bytes

STAT_COLUMNS = (
    "sample_id", "image_path", "exists", "loads", "error", "ndim", "dim0", "dim1", "dim2", "spacing_min",
    "spacing_max", "nonfinite", "vmin", "vmax", "p01", "p99", "std",
)  # fmt: skip


def _ct_stats(path: Path) -> dict:
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    zooms = [float(z) for z in img.header.get_zooms()[: arr.ndim]]
    return _array_stats(arr, zooms)


def _xray_stats(path: Path) -> dict:
    image = load_xray_bytes(path.read_bytes(), name=str(path))
    return _array_stats(image.array, [1.0, 1.0])


def _array_stats(arr: np.ndarray, spacing: list[float]) -> dict:
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
            base.update(_ct_stats(path) if loader is _ct_stats else _xray_stats(path))
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
    return frame[list(STAT_COLUMNS)]
