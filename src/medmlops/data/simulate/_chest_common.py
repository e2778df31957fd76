"""Plumbing shared by the three chest X-ray generators: argument checks, random streams, the BLAS guard.

Determinism: nothing in the CXR simulators reads clocks or global random state; every draw comes from a
:class:`numpy.random.Generator` that the generators derive from ``(seed, dataset, index, stream)`` with
:func:`rng_for`, so item order and ``n`` never change an item's pixels.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from medmlops.data.simulate import CXR_LIMITS, SHIFTS

__all__ = ["CXR_SHIFTS", "check_args", "rng_for", "sigmoid", "single_threaded_blas"]

# The package's single list: generate() checks a shift against SHIFTS before it reaches a generator, so a second
# spelling here could only drift from it.
CXR_SHIFTS = SHIFTS


def check_args(n: int, shape: Sequence[int], shift: str | None) -> tuple[int, int]:
    """Validate the arguments shared by the three generators; returns ``shape`` as ``(rows, cols)``.

    Raises:
        ValueError: unknown ``shift``, ``n`` < 4, or a ``shape`` that is not two dims ≥ 32.
    """
    if shift is not None and shift not in CXR_SHIFTS:
        raise ValueError(f"shift must be None or one of {', '.join(CXR_SHIFTS)}, got {shift!r}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < CXR_LIMITS.min_n:
        raise ValueError(f"n must be an integer >= {CXR_LIMITS.min_n}, got {n!r}.")
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"shape must be a (rows, cols) pair of integers >= {CXR_LIMITS.min_size}, got {shape!r}."
        ) from None
    if len(dims) != CXR_LIMITS.dims or min(dims) < CXR_LIMITS.min_size:
        raise ValueError(f"shape must be a (rows, cols) pair of integers >= {CXR_LIMITS.min_size}, got {shape!r}.")
    return dims[0], dims[1]


def rng_for(seed: int, dataset: str, index: int, stream: int = 0) -> np.random.Generator:
    """Independent generator for one (seed, dataset, item, stream): item order and ``n`` never matter."""
    return np.random.default_rng([int(seed) % (1 << 63), zlib.crc32(dataset.encode()), int(index), int(stream)])


def sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    """Logistic function (tanh form: no overflow warnings)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))) if np.ndim(z) else 0.5 * (1 + math.tanh(z / 2))


def single_threaded_blas() -> AbstractContextManager[object]:
    """Limit BLAS to one thread while generating.

    :func:`~medmlops.data.simulate.chest_phantom.smooth_field` uses small matrix products; with several BLAS threads they are slower (thread start-up
    dwarfs the work) and the summation order could depend on the thread count. One thread keeps outputs
    identical whatever the machine's core count.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
