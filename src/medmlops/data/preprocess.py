"""``medmlops preprocess``: run the deterministic MONAI chain once per volume and cache the tensors on disk.

Epochs then read cached tensors (MONAI ``PersistentDataset``) instead of re-reading and re-transforming NIfTI;
random augmentations run after the cache. The cache lives in ``<out_dir>/<dataset>/<config hash>/`` so a change
of preprocessing parameters never serves stale tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medmlops.atomic import write_atomically, write_text_atomically
from medmlops.config import Params
from medmlops.data.readers import read_manifest
from medmlops.errors import DataError

log = logging.getLogger(__name__)

LABEL_COLUMNS = {
    "ich": ("prognosis", "gcs_binary", "gcs_ordinal", "age_binary"),
    # AIforCOVID carries τ1 (prognosis), BRIXIA τ2 (severity); the other task is -1 (the indicator function).
    "aiforcovid": ("prognosis", "severity"),
    "brixia": ("prognosis", "severity"),
    "chexpert": (),  # the five findings travel as one vector, see items_from_manifest
}
GROUP_COLUMNS = {"ich": (), "aiforcovid": ("hospital",), "brixia": ("hospital",), "chexpert": ("patient_id", "split")}
PREPROCESS_KEY = {"ich": "ich", "aiforcovid": "covid", "brixia": "covid", "chexpert": "chexpert"}
# Labels every sample must have: ICH's auxiliary tasks (GCS, age) may be -1 (masked for that patient), prognosis not.
REQUIRED_LABELS = {"ich": ("prognosis",), "aiforcovid": ("prognosis",), "brixia": ("severity",), "chexpert": ()}


def preprocess_config(params: Params, dataset: str):
    return getattr(params.preprocess, PREPROCESS_KEY[dataset])


def config_hash(params: Params, dataset: str) -> str:
    cfg = asdict(preprocess_config(params, dataset))
    cfg.pop("aug_prob", None)  # augmentation runs after the cache: changing it must not invalidate cached tensors
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def cache_root(params: Params, dataset: str, repo: Path = Path(".")) -> Path:
    return repo / params.preprocess.out_dir / dataset / config_hash(params, dataset)


def deterministic_transforms(params: Params, dataset: str) -> list:
    cfg = preprocess_config(params, dataset)
    if dataset == "ich":
        from medmlops.data.ct_transforms import ct_transforms

        return ct_transforms(cfg.spatial_size, cfg.window, cfg.skull_strip, cfg.orientation)
    from medmlops.data.cxr import cxr_transforms

    return cxr_transforms(cfg.size, lung_crop=cfg.lung_crop, percentiles=tuple(cfg.percentiles))


def augmentations(params: Params, dataset: str) -> list:
    if dataset == "ich":
        from medmlops.data.ct_transforms import ct_augmentations

        return ct_augmentations(prob=params.train.aug_prob)
    from medmlops.data.cxr import cxr_augmentations

    return cxr_augmentations(prob=preprocess_config(params, dataset).aug_prob)


def items_from_manifest(manifest: pd.DataFrame, dataset: str) -> list[dict]:
    """Dataset items: the image path plus the labels (identical dicts ↔ identical cache keys).

    Sample ids are prefixed with the dataset for the CXR sets, so AIforCOVID and BRIXIA can share a batch.
    """
    from medmlops.data.readers import CHEXPERT_FINDINGS

    columns = LABEL_COLUMNS[dataset]
    items = []
    for _, row in manifest.iterrows():
        item = {"image": row["image_path"], "sample_id": str(row["sample_id"]), **{c: int(row[c]) for c in columns}}
        if dataset == "chexpert":
            item["findings"] = np.array([row[f] for f in CHEXPERT_FINDINGS], dtype=np.float32)  # NaN = masked
        if dataset == "ich" and _true(row.get("skull_stripped")):
            # Only where set, so the cache keys of {id}.nii.gz items are unchanged; SkullStripd drops the key.
            from medmlops.data.ct_transforms import SKULL_STRIPPED

            item[SKULL_STRIPPED] = True
        items.append(item)
    return items


def _true(value) -> bool:
    """A manifest flag read back from CSV (True / "True" / 1) or absent (None / NaN)."""
    return str(value).strip().lower() in ("true", "1", "1.0")


def _standardise(manifest: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Reader manifest → the columns the experiment needs, with both COVID tasks present (-1 where absent)."""
    frame = manifest.copy()
    if dataset in ("aiforcovid", "brixia"):
        frame["sample_id"] = f"{dataset}:" + frame["sample_id"].astype(str)
        if dataset == "aiforcovid":
            frame["severity"] = -1
        else:
            frame["prognosis"] = -1
            frame["hospital"] = frame["manufacturer"].astype(str)
        frame["prognosis"] = frame["prognosis"].fillna(-1)
    frame["dataset"] = dataset
    return frame


def make_dataset(params: Params, dataset: str, items: list[dict], *, augment: bool, repo: Path = Path(".")):
    """A ``PersistentDataset`` over ``items``: cached deterministic chain, then (optionally) augmentations."""
    from monai.data import PersistentDataset
    from monai.transforms import Compose

    chain = deterministic_transforms(params, dataset) + (augmentations(params, dataset) if augment else [])
    # One tensor cache per preprocessing chain: AIforCOVID and BRIXIA items share it (MDMT mixes them).
    cache = repo / params.preprocess.out_dir / "cache" / f"{PREPROCESS_KEY[dataset]}-{config_hash(params, dataset)}"
    cache.mkdir(parents=True, exist_ok=True)
    return PersistentDataset(items, transform=Compose(chain), cache_dir=cache)


def check_manifest(manifest: pd.DataFrame, dataset: str, root: Path) -> None:
    """Stop before any work on a missing file or label, naming it (nothing half-done downstream)."""
    missing = manifest[~manifest["image_exists"]]
    if len(missing):
        raise DataError(f"{missing['image_path'].iloc[0]}: image file not found ({len(missing)} missing in {root})")
    for column in REQUIRED_LABELS[dataset]:
        bad = manifest[manifest[column].isna() | (manifest[column] < 0)]
        if len(bad):
            raise DataError(
                f"{bad['image_path'].iloc[0]}: label '{column}' missing or invalid in the table for sample {bad['sample_id'].iloc[0]}"
            )
    if dataset == "ich":
        from medmlops.data.readers import ich_masked_labels

        masked = ich_masked_labels(manifest)
        if any(masked.values()):
            counts = ", ".join(f"{task} {n}" for task, n in masked.items())
            log.warning(
                "ICH: rows without GCS or Age, masked from that task's loss and metrics (prognosis kept): %s of %d",
                counts, len(manifest),
            )  # fmt: skip


def preprocess(
    params: Params, dataset: str, raw_root: Path | None = None, repo: Path = Path("."), progress: bool = True
) -> Path:
    """Read, check and preprocess every sample into the cache; write ``manifest.csv`` beside it and return it."""
    raw_root = Path(raw_root) if raw_root is not None else repo / params.data.raw_dir / dataset
    manifest = _standardise(read_manifest(dataset, raw_root, params), dataset)
    check_manifest(manifest, dataset, raw_root)
    out = cache_root(params, dataset, repo)
    out.mkdir(parents=True, exist_ok=True)
    items = items_from_manifest(manifest, dataset)
    ds = make_dataset(params, dataset, items, augment=False, repo=repo)
    for i in tqdm(range(len(ds)), desc=f"preprocessing {dataset}", disable=not progress):
        try:
            ds[i]
        except DataError:
            raise
        except Exception as exc:  # MONAI wraps loader errors in RuntimeError("applying transform ...")
            cause = exc
            while cause.__cause__ is not None and not isinstance(cause, DataError):
                cause = cause.__cause__
            if isinstance(cause, DataError):  # the first user-facing error in MONAI's chain of wrappers
                raise cause from exc
            raise DataError(f"{items[i]['image']}: cannot be preprocessed ({type(cause).__name__}: {cause})") from exc
    from medmlops.data.readers import CHEXPERT_FINDINGS

    manifest_path = out / "manifest.csv"
    extra = [c for c in ("gcs", "age", "skull_stripped", *GROUP_COLUMNS[dataset], "dataset") if c in manifest]
    findings = list(CHEXPERT_FINDINGS) if dataset == "chexpert" else []
    columns = ["sample_id", "image_path", *LABEL_COLUMNS[dataset], *findings, *extra]
    # Atomic: folds trained in parallel each run this and read the manifest (medmlops.atomic).
    write_atomically(manifest_path, lambda tmp: manifest[columns].to_csv(tmp, index=False))
    write_text_atomically(out / "config.json", json.dumps(asdict(preprocess_config(params, dataset)), indent=2))
    return manifest_path


def load_manifest(params: Params, dataset: str, repo: Path = Path(".")) -> pd.DataFrame:
    path = cache_root(params, dataset, repo) / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `medmlops preprocess {dataset}` first")
    return pd.read_csv(path, dtype={"sample_id": str})
