"""Findings painted onto a :class:`~medmlops.data.simulate.chest_phantom.ChestPhantom`: COVID-19 zone pneumonia,
pleural effusion, lobar consolidation, oedema, atelectasis, and radio-opaque support devices.

Lesion painters return lung fill maps in [0, 1] (the fraction of lung air a lesion displaces); combine several
with :func:`~medmlops.data.simulate.chest_phantom.combine_fill` and pass the result to
:meth:`ChestPhantom.render`. Devices are an attenuation overlay instead (they lie outside the lungs too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medmlops.data.simulate.chest_phantom import MEDIAL, ZONES, ChestPhantom, combine_fill, smooth_field, soft_step

__all__ = [
    "draw_support_devices",
    "paint_atelectasis",
    "paint_edema",
    "paint_effusion",
    "paint_lobar_consolidation",
    "paint_zone_pneumonia",
]


def _zone_weights(ph: ChestPhantom, values: Sequence[float]) -> np.ndarray:
    out = np.zeros(ph.shape, dtype=np.float32)
    for zone, v in zip(ZONES, values, strict=True):
        if v > 0:
            out += float(v) * ph.zone_mask(zone)
    return out


def paint_zone_pneumonia(
    ph: ChestPhantom,
    rng: np.random.Generator,
    interstitial: Sequence[float],
    alveolar: Sequence[float],
    *,
    peripheral: float = 0.6,
) -> np.ndarray:
    """COVID-19 pattern per zone: interstitial (reticular lines + faint haze) and alveolar (ground glass →
    dense consolidation) involvement, both in [0, 1] per zone A–F, with peripheral/lower predominance.

    Args:
        ph: the phantom.
        rng: generator for the patchy texture.
        interstitial: six amounts in [0, 1] (zone order A–F).
        alveolar: six amounts in [0, 1]; above ≈ 0.6 the opacity becomes dense and confluent.
        peripheral: 0..1 how strongly opacities favour the lung periphery (typical of COVID-19).
    """
    i_map = _zone_weights(ph, interstitial)
    a_map = _zone_weights(ph, alveolar)
    periph = (1.0 - peripheral) + peripheral * soft_step(ph.u - 0.45, 0.12)
    fill = np.zeros(ph.shape, dtype=np.float32)
    if i_map.max() > 0:
        cells = max(8, min(ph.shape) // 5)
        reticular = np.exp(-((smooth_field(rng, ph.shape, cells) / 0.3) ** 2))
        haze = 0.75 + 0.25 * smooth_field(rng, ph.shape, 6)
        fill = combine_fill(fill, i_map * (0.42 * reticular + 0.12 * haze) * (0.6 + 0.4 * periph))
    if a_map.max() > 0:
        patch = smooth_field(rng, ph.shape, 9)
        a_eff = a_map * periph
        # Coverage grows with involvement: scattered patches when mild, confluent when severe.
        cover = soft_step(patch - (1.1 - 2.6 * a_eff), 0.35)
        density = 0.30 + 0.62 * np.clip(a_eff, 0.0, 1.0) ** 1.5
        fill = combine_fill(fill, np.clip(a_eff * 1.6, 0.0, 1.0) * cover * density)
    return fill


def paint_effusion(ph: ChestPhantom, side: str, amount: float) -> np.ndarray:
    """Pleural effusion: basal homogeneous opacity with a meniscus rising laterally; even small ones fill the
    costophrenic angle (blunting), larger ones efface the hemidiaphragm.

    Args:
        ph: the phantom.
        side: "right" or "left" (patient side).
        amount: 0..1 (≈ 0.2 blunting only, 1 up to the mid zone).
    """
    s = 0 if side == "right" else 1
    cp = ph.cp_angle_y[s]
    level = cp - (0.10 + 0.55 * amount)  # fluid height at the lateral chest wall
    u = np.clip(ph.u, 0.0, 1.2)
    top = level + (0.10 + 0.12 * amount) * (1.0 - u) ** 2  # meniscus: lower medially
    fluid = soft_step(ph.Y - top, 0.025) * (0.80 + 0.20 * soft_step(ph.Y - top - 0.06, 0.05))
    return fluid * ph.side_mask(side) * soft_step(ph.u + 0.05, 0.05)


def paint_lobar_consolidation(ph: ChestPhantom, rng: np.random.Generator, lobe: str, severity: float) -> np.ndarray:
    """Dense focal lobar/segmental opacity with air bronchograms.

    Args:
        ph: the phantom.
        rng: generator (shape irregularity, bronchogram texture).
        lobe: one of "RUL", "RML", "RLL", "LUL", "LLL".
        severity: 0..1 (size and density).
    """
    # (side sign, centre u, centre Y, semi-axis u, semi-axis Y, fissure: (Y, +1 below / -1 above) or None)
    spec = {
        "RUL": (-1, 0.55, -0.50, 0.45, 0.30, (-0.10, -1)),
        "RML": (-1, 0.35, 0.12, 0.40, 0.20, (-0.10, 1)),
        "RLL": (-1, 0.55, 0.32, 0.42, 0.26, None),
        "LUL": (1, 0.55, -0.35, 0.42, 0.34, None),
        "LLL": (1, 0.62, 0.36, 0.38, 0.24, None),
    }[lobe]
    sign, cu, cy, su, sy, fissure = spec
    scale = 0.65 + 0.45 * severity
    cu += rng.normal(0.0, 0.05)
    cy += rng.normal(0.0, 0.04)
    side = ph.right if sign < 0 else 1.0 - ph.right
    r = np.sqrt(((ph.u - cu) / (su * scale)) ** 2 + ((ph.Y - cy) / (sy * scale)) ** 2)
    r = r + 0.22 * smooth_field(rng, ph.shape, 7)
    blob = soft_step(1.0 - r, 0.10)
    if fissure is not None:  # lobar opacities stop sharply at the fissure
        fy, direction = fissure
        blob = blob * soft_step((ph.Y - fy) if direction > 0 else (fy - ph.Y), 0.012)
    bronchi = np.exp(-((smooth_field(rng, ph.shape, max(8, min(ph.shape) // 10)) / 0.12) ** 2))
    density = 0.72 + 0.26 * severity
    return np.clip(blob * side * density * (1.0 - 0.45 * bronchi), 0.0, 1.0)


def paint_edema(ph: ChestPhantom, rng: np.random.Generator, severity: float) -> np.ndarray:
    """Pulmonary oedema: bilateral perihilar "bat-wing" haze, interstitial lines and basal Kerley B lines."""
    wing = np.exp(-(((ph.ax - 0.24) / (0.20 + 0.10 * severity)) ** 2 + ((ph.Y - 0.02) / (0.30 + 0.12 * severity)) ** 2))
    haze = wing * (0.80 + 0.20 * smooth_field(rng, ph.shape, 6)) * (0.30 + 0.45 * severity)
    cells = max(8, min(ph.shape) // 5)
    reticular = np.exp(-((smooth_field(rng, ph.shape, cells) / 0.3) ** 2)) * (0.10 + 0.15 * severity)
    # Kerley B: short horizontal septal lines at the lateral lung bases.
    kerley = np.clip((np.cos(2.0 * math.pi * ph.Y / 0.035) - 0.6) / 0.4, 0.0, 1.0)
    kerley *= soft_step(ph.u - 0.82, 0.04) * soft_step(ph.Y - 0.15, 0.05) * (0.25 + 0.25 * severity)
    return combine_fill(haze, reticular, kerley)


def paint_atelectasis(ph: ChestPhantom, rng: np.random.Generator, side: str, severity: float) -> np.ndarray:
    """Plate-like (discoid) atelectasis: a thin oblique band in the lower zone. Pair with ``dome_raise`` in
    :class:`ChestParams` for the volume loss (elevated hemidiaphragm)."""
    s = 0 if side == "right" else 1
    sign = -1.0 if s == 0 else 1.0
    u0 = rng.uniform(0.3, 0.65)
    y0 = rng.uniform(0.12, 0.24) - ph.params.dome_raise[s]
    angle = math.radians(rng.uniform(-18.0, 18.0))
    length = 0.22 + 0.18 * severity
    width = 0.020 + 0.022 * severity
    x0 = sign * (MEDIAL + u0 * 0.72)
    dx, dy = ph.X - x0, ph.Y - y0
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    band = np.exp(-((across / width) ** 2)) * soft_step(length / 2 - np.abs(along), 0.03)
    # A little collapse haze under the band.
    haze = 0.25 * severity * np.exp(-((along / length) ** 2 + ((across - 0.06) / 0.08) ** 2))
    return combine_fill(np.clip(band * (0.75 + 0.2 * severity), 0, 1), haze * ph.side_mask(side))


# ----------------------------------------------------------------------------------------------------------------------
# Support devices: an attenuation overlay (tubes and leads lie outside the lungs too), not a fill map
# ----------------------------------------------------------------------------------------------------------------------


def draw_support_devices(ph: ChestPhantom, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Radio-opaque support devices as an attenuation overlay: ET tube, NG tube, central line, ECG leads."""
    overlay = np.zeros(ph.shape, dtype=np.float32)
    kinds: list[str] = []
    X, Y = ph.X, ph.Y
    w = max(0.012, 0.8 * ph.px)
    k = rng.random(4)
    if k[0] < 0.55:  # endotracheal tube down the trachea, tip above the carina
        tip = rng.uniform(-0.45, -0.30)
        overlay += 0.30 * np.exp(-(((X - 0.005) / w) ** 2)) * soft_step(tip - Y, 0.01)
        kinds.append("ett")
    if k[1] < 0.45:  # nasogastric tube: midline, then left under the dome into the stomach
        path = 0.02 + 0.30 * np.clip((Y - 0.45) / 0.25, 0.0, 1.0) ** 2
        overlay += 0.22 * np.exp(-(((X - path) / w) ** 2)) * soft_step(0.78 - Y, 0.01)
        kinds.append("ngt")
    if k[2] < 0.5 or not kinds:  # right subclavian/jugular central line ending in the SVC
        horiz = (
            np.exp(-(((Y - (-0.62 + 0.25 * (X + 0.08) ** 2)) / w) ** 2))
            * soft_step(X + 0.55, 0.01)
            * soft_step(-0.06 - X, 0.01)
        )
        vert = np.exp(-(((X + 0.07) / w) ** 2)) * soft_step(Y + 0.63, 0.01) * soft_step(-0.12 - Y, 0.01)
        overlay += 0.28 * np.maximum(horiz, vert)
        kinds.append("cvc")
    if k[3] < 0.6:  # ECG electrodes: small rings
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.6)
            r = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2)
            overlay += 0.30 * np.exp(-(((r - 0.035) / w) ** 2))
        kinds.append("ecg")
    return overlay, kinds
