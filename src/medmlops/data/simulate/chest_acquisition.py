"""Acquisition: how a centre's detector turns phantom attenuation into a display image, and the drift shifts
that act on it.

:class:`Acquisition` holds one centre's or scanner's settings (contrast curve, noise, unsharpness, borders,
stored bit depth and photometric interpretation); :func:`acquire` applies them. The production-traffic shifts
act at different stages: "scanner" swaps the :class:`Acquisition` (each generator names its new centre),
"noise" scales its noise (:data:`NOISE_SHIFT_FACTOR`), "intensity" and "corruption" change the display image
after acquisition (:func:`apply_display_shift`), and "population" changes the patients, not the images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

__all__ = [
    "CORRUPTIONS",
    "NOISE_SHIFT_FACTOR",
    "Acquisition",
    "acquire",
    "apply_corruption",
    "apply_display_shift",
    "apply_intensity_shift",
]

NOISE_SHIFT_FACTOR = 3.0  # the "noise" shift: three times each centre's detector noise


@dataclass(frozen=True)
class Acquisition:
    """How a centre / scanner turns attenuation into stored pixels.

    Attributes:
        name: centre or manufacturer label (exposed in latents).
        gamma, gain, offset: contrast curve ``offset + gain * att ** gamma`` (display units, MONOCHROME2).
        noise_std: detector noise std in display units at 256 × 256.
        blur: detector unsharpness (pixels at 256 × 256).
        border: fractional (top, bottom, left, right) margins: black padding or collimation.
        border_value: 0 black padding (image-processing frames) or 1 bright (unexposed collimated area).
        bits: stored bit depth (8, 12 or 16).
        monochrome1: stored inverted (air bright), PhotometricInterpretation MONOCHROME1.
        manufacturer, model, modality: DICOM identification.
        size_mean: mean body scale in the field of view (collimation / patient mix of the centre).
    """

    name: str
    gamma: float = 1.0
    gain: float = 1.0
    offset: float = 0.0
    noise_std: float = 0.012
    blur: float = 0.6
    border: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    border_value: float = 0.0
    bits: int = 12
    monochrome1: bool = False
    manufacturer: str = ""
    model: str = ""
    modality: str = "CR"
    size_mean: float = 1.0

    def with_noise(self, factor: float) -> Acquisition:
        return replace(self, noise_std=self.noise_std * factor)


def acquire(att: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Attenuation → display image in [0, 1] (MONOCHROME2): unsharpness, contrast curve, noise, borders."""
    rows, cols = att.shape
    scale = min(rows, cols) / 256.0
    img = att
    if acq.blur * scale > 0.3:
        img = ndimage.gaussian_filter(img, acq.blur * scale, mode="nearest")
    disp = acq.offset + acq.gain * np.power(np.clip(img, 0.0, 1.0), acq.gamma)
    if acq.noise_std > 0:
        # Noise per pixel grows when pixels are larger (fewer pixels, same dose → we keep it per-pixel constant
        # so small test images look like the defaults); mildly signal-dependent like quantum noise.
        disp = disp + acq.noise_std * (0.7 + 0.6 * np.clip(1.0 - disp, 0.0, 1.0)) * rng.standard_normal(
            att.shape, dtype=np.float32
        )
    disp = np.clip(disp, 0.0, 1.0)
    top, bottom, left, right = (int(round(f * n)) for f, n in zip(acq.border, (rows, rows, cols, cols), strict=True))
    if top:
        disp[:top] = acq.border_value
    if bottom:
        disp[rows - bottom :] = acq.border_value
    if left:
        disp[:, :left] = acq.border_value
    if right:
        disp[:, cols - right :] = acq.border_value
    return disp


def apply_intensity_shift(disp: np.ndarray) -> np.ndarray:
    """Global gamma + brightness change (e.g. a new post-processing LUT pushed to a modality)."""
    return np.clip(0.06 + 0.97 * np.power(disp, 0.65), 0.0, 1.0)


CORRUPTIONS = ("text", "blur", "stripes", "clipping")


def apply_corruption(disp: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Artefacts on a display image: always a burned-in text box, plus one or two of blur, grid stripes
    (anti-scatter grid moiré) and partial clipping (saturated region). The image stays a valid image.

    Returns:
        (corrupted image in [0, 1], names of the artefacts applied)
    """
    rows, cols = disp.shape
    out = disp.copy()
    extra = [CORRUPTIONS[1 + int(i)] for i in sorted(rng.choice(3, size=int(rng.integers(1, 3)), replace=False))]
    names = ["text", *extra]
    if "blur" in extra:
        out = ndimage.gaussian_filter(out, rng.uniform(1.5, 2.5) * min(rows, cols) / 256.0, mode="nearest")
    if "stripes" in extra:
        period = rng.uniform(3.0, 6.0)
        phase = rng.uniform(0, 2 * math.pi)
        stripes = np.cos(2 * math.pi * np.arange(cols) / period + phase)
        out = out + rng.uniform(0.06, 0.10) * stripes[None, :]
    if "clipping" in extra:  # detector saturation over part of the image (over-exposure / wrong window)
        frac = rng.uniform(0.2, 0.4)
        if rng.random() < 0.5:
            sl = (slice(0, int(rows * frac)), slice(None))
        else:
            sl = (slice(None), slice(cols - int(cols * frac), cols))
        q = np.quantile(out[sl], 0.45)
        out[sl] = np.clip(out[sl] / max(q, 1e-3), 0.0, 1.0)
    # Burned-in annotation: black box with white "characters" (a coarse random glyph grid).
    bh = max(4, int(rows * rng.uniform(0.07, 0.10)))
    bw = max(8, int(cols * rng.uniform(0.22, 0.35)))
    r0 = int(rng.integers(1, max(2, rows // 12)))
    c0 = (
        int(rng.integers(1, max(2, cols // 12)))
        if rng.random() < 0.5
        else cols - bw - int(rng.integers(1, max(2, cols // 12)))
    )
    out[r0 : r0 + bh, c0 : c0 + bw] = 0.0
    ih, iw = bh - 2, bw - 2
    n_chars = max(2, iw // 4)
    grid = (rng.random((2, n_chars)) < 0.7).astype(np.float64)
    ri = np.arange(ih) * 2 // ih
    ci = np.arange(iw) * n_chars // iw
    glyphs = grid[ri][:, ci] * ((np.arange(iw) * n_chars % iw) >= iw // 3)[None, :]  # gaps between characters
    out[r0 + 1 : r0 + 1 + ih, c0 + 1 : c0 + 1 + iw] = glyphs
    return np.clip(out, 0.0, 1.0), names


def apply_display_shift(
    disp: np.ndarray, shift: str | None, corruption_rng: np.random.Generator
) -> tuple[np.ndarray, list[str]]:
    """Apply the shifts that act on the acquired display image; any other ``shift`` leaves it as it is.

    Args:
        disp: display image in [0, 1] from :func:`acquire`.
        shift: "intensity" (a new LUT), "corruption" (artefacts, drawn from ``corruption_rng``) or anything else.
        corruption_rng: the item's own artefact stream; untouched unless ``shift`` is "corruption".

    Returns:
        (display image, names of the artefacts applied: empty unless ``shift`` is "corruption")
    """
    if shift == "intensity":
        return apply_intensity_shift(disp), []
    if shift == "corruption":
        return apply_corruption(disp, corruption_rng)
    return disp, []
