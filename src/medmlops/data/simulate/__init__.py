"""Simulators that write the four public datasets' exact on-disk formats.

The same readers (:mod:`medmlops.data.readers`) serve real and simulated data, so everything downstream is
exercised on the real formats. Each generator is deterministic: the same arguments give byte-identical files,
which keeps DVC hashes stable. ``shift`` produces drifted production traffic (see ``SHIFTS``).

Where things live:

* one module per dataset: ``ich`` (head CT, NIfTI), ``aiforcovid``, ``brixia``, ``chexpert`` (chest X-ray);
* shared by the three chest X-ray simulators: ``chest_phantom`` (anatomy, positioning, the lateral view),
  ``chest_findings`` (lesions and support devices), ``chest_acquisition`` (detector, noise, the shifts that act
  on images), ``chest_writers`` (quantisation, DICOM/PNG/JPEG/CSV) and ``_chest_common`` (argument checks,
  random streams).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASETS = ("ich", "aiforcovid", "brixia", "chexpert")
SHIFTS = ("scanner", "intensity", "noise", "population", "corruption")


@dataclass(frozen=True)
class Limits:
    """What a simulator accepts (its own checks raise ValueError beyond them; the CLI checks them up front): at least
    ``min_n`` samples, a shape of ``dims`` sizes of at least ``min_size`` each (``example``: a valid ``--shape``)."""

    min_n: int
    dims: int
    min_size: int
    example: str


CT_LIMITS = Limits(min_n=2, dims=3, min_size=8, example="32,128,128")
CXR_LIMITS = Limits(min_n=4, dims=2, min_size=32, example="256,256")
LIMITS = {"ich": CT_LIMITS, "aiforcovid": CXR_LIMITS, "brixia": CXR_LIMITS, "chexpert": CXR_LIMITS}

# Lazy: importing one simulator should not import the others (the CT one pulls nibabel, the CXR ones pydicom).
_GENERATORS = {
    "ich": ("medmlops.data.simulate.ich", "generate_ich"),
    "aiforcovid": ("medmlops.data.simulate.aiforcovid", "generate_aiforcovid"),
    "brixia": ("medmlops.data.simulate.brixia", "generate_brixia"),
    "chexpert": ("medmlops.data.simulate.chexpert", "generate_chexpert"),
}


def get_generator(dataset: str) -> Callable[..., Any]:
    if dataset not in _GENERATORS:
        raise ValueError(f"unknown dataset '{dataset}' (expected one of: {', '.join(DATASETS)})")
    module, name = _GENERATORS[dataset]
    return getattr(importlib.import_module(module), name)


def generate(
    dataset: str,
    out_dir: str | Path,
    *,
    n: int,
    seed: int = 0,
    shape: tuple[int, ...] | None = None,
    shift: str | None = None,
    progress: bool = True,
    **extra: Any,
) -> Any:
    """Generate ``dataset`` into ``out_dir``; returns the simulator's latent ground truth (a DataFrame)."""
    if shift is not None and shift not in SHIFTS:
        raise ValueError(f"unknown shift '{shift}' (expected one of: {', '.join(SHIFTS)})")
    kwargs: dict[str, Any] = {"n": n, "seed": seed, "shift": shift, "progress": progress, **extra}
    if shape is not None:
        kwargs["shape"] = tuple(shape)
    return get_generator(dataset)(Path(out_dir), **kwargs)


def generate_from_params(dataset: str, out_dir: str | Path, params: Any, *, progress: bool = True) -> Any:
    """Generate ``dataset`` at the sizes of the loaded :class:`~medmlops.config.Params` (the active profile)."""
    cfg = getattr(params.data, dataset)
    extra = {"n_valid": cfg.n_valid} if dataset == "chexpert" else {}
    return generate(dataset, out_dir, n=cfg.n, seed=params.data.seed, shape=cfg.shape, progress=progress, **extra)
