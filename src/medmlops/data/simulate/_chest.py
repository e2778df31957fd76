"""Shared 2-D chest-radiograph phantom, lesion painters and acquisition models for the CXR simulators.

Everything here works on a normalised coordinate grid with plain vectorised numpy (no per-pixel loops), so a
256 × 256 radiograph costs a few milliseconds. The phantom returns float "attenuation" images in [0, 1]: 0 is
direct exposure (air outside the patient), 1 is dense (bone, metal). Display polarity is MONOCHROME2 (air dark);
each dataset maps that to its storage (DICOM 12/16-bit MONOCHROME1/2, 16-bit PNG, 8-bit JPEG).

Conventions (radiological, as on a real PA film):

* image left = patient's RIGHT. ``X < 0`` is the right hemithorax, ``X > 0`` the left (heart side).
* Brixia zones: A, B, C = right lung upper → lower; D, E, F = left lung upper → lower (``ZONES``).
* Lung "fill" maps in [0, 1] say which fraction of the lung air a lesion displaces (0 = aerated, 1 = as dense
  as soft tissue). Lesion painters return fill maps; :meth:`ChestPhantom.render` turns them into attenuation.

Determinism: nothing here reads clocks or global random state; every draw comes from the
:class:`numpy.random.Generator` passed in, which callers derive from ``(seed, dataset, index, stream)`` with
:func:`rng_for`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "CXR_SHIFTS",
    "ZONES",
    "Acquisition",
    "ChestParams",
    "ChestPhantom",
    "acquire",
    "apply_corruption",
    "apply_intensity_shift",
    "check_args",
    "combine_fill",
    "draw_support_devices",
    "fmt",
    "make_uid",
    "paint_atelectasis",
    "paint_edema",
    "paint_effusion",
    "paint_lobar_consolidation",
    "paint_zone_pneumonia",
    "quantize",
    "render_lateral",
    "rng_for",
    "sample_chest_params",
    "single_threaded_blas",
    "smooth_field",
    "write_csv",
    "write_dicom",
]

CXR_SHIFTS = ("scanner", "intensity", "noise", "population", "corruption")
ZONES = ("A", "B", "C", "D", "E", "F")

# DICOM: pydicom's registered root; every UID below is a hash of (dataset, seed, index, kind) under it.
UID_ROOT = "1.2.826.0.1.3680043.8.498."
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1"  # fixed, so files do not change with the pydicom version
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


# ----------------------------------------------------------------------------------------------------------------------
# Argument checks, random streams, small numeric helpers
# ----------------------------------------------------------------------------------------------------------------------


def check_args(n: int, shape: Sequence[int], shift: str | None) -> tuple[int, int]:
    """Validate the arguments shared by the three generators; returns ``shape`` as ``(rows, cols)``.

    Raises:
        ValueError: unknown ``shift``, ``n`` < 4, or a ``shape`` that is not two dims ≥ 32.
    """
    if shift is not None and shift not in CXR_SHIFTS:
        raise ValueError(f"shift must be None or one of {', '.join(CXR_SHIFTS)}, got {shift!r}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4:
        raise ValueError(f"n must be an integer >= 4, got {n!r}.")
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a (rows, cols) pair of integers >= 32, got {shape!r}.") from None
    if len(dims) != 2 or min(dims) < 32:
        raise ValueError(f"shape must be a (rows, cols) pair of integers >= 32, got {shape!r}.")
    return dims[0], dims[1]


def rng_for(seed: int, dataset: str, index: int, stream: int = 0) -> np.random.Generator:
    """Independent generator for one (seed, dataset, item, stream): item order and ``n`` never matter."""
    return np.random.default_rng([int(seed) % (1 << 63), zlib.crc32(dataset.encode()), int(index), int(stream)])


def sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    """Logistic function (tanh form: no overflow warnings)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))) if np.ndim(z) else 0.5 * (1 + math.tanh(z / 2))


def _step(d: np.ndarray, w: float) -> np.ndarray:
    """Smooth step from 0 (d ≤ -w) to 1 (d ≥ w): anti-aliased masks from signed distances.

    A clipped linear ramp rather than tanh: transcendental ufuncs dominate the cost of a phantom otherwise.
    """
    r = d * (0.5 / w)
    r += 0.5
    np.maximum(r, 0.0, out=r)
    return np.minimum(r, 1.0, out=r)


@lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_cells: int) -> np.ndarray:
    pos = (np.arange(n_out) + 0.5) / n_out * (n_cells - 1)
    w = np.exp(-0.5 * ((pos[:, None] - np.arange(n_cells)[None, :]) / 0.7) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    w.setflags(write=False)
    return w


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int | tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-std random field smooth on the scale of ``shape / cells``.

    A coarse Gaussian grid interpolated with separable Gaussian weights (two small matrix products): much
    cheaper than filtering full-resolution noise and exactly ``shape`` whatever the aspect ratio.
    """
    cr, cc = (cells, cells) if isinstance(cells, int) else cells
    cr, cc = max(2, int(cr)), max(2, int(cc))
    grid = rng.standard_normal((cr, cc))
    field = _interp_matrix(shape[0], cr) @ grid @ _interp_matrix(shape[1], cc).T
    field -= field.mean()
    field /= field.std() + 1e-12
    return field.astype(np.float32)


def combine_fill(*fills: np.ndarray | None) -> np.ndarray | None:
    """Union of independent lung fills: 1 - Π(1 - f)."""
    out = None
    for f in fills:
        if f is None:
            continue
        f = np.clip(f, 0.0, 1.0)
        out = f.copy() if out is None else 1.0 - (1.0 - out) * (1.0 - f)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Phantom
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChestParams:
    """Patient anatomy and positioning (normal variation and disease-driven geometry).

    Attributes:
        size: body scale in the field of view (> 1: larger patient / tighter collimation).
        rotation_deg: in-plane rotation (patients are rarely perfectly straight).
        offset: (dx, dy) centring error in normalised units.
        inspiration: > 0 deeper breath (lower domes, longer lungs); supine AP films are often shallow.
        ctr: cardiothoracic ratio, heart width / inner thoracic width (normal ≈ 0.42, cardiomegaly > 0.5).
        dome_raise: (right, left) elevation of each hemidiaphragm (volume loss, e.g. atelectasis).
        breast: 0..1 density of breast shadows over the lower zones.
        soft_tissue: body habitus multiplier (obese patients: denser, lower lung contrast).
        ap: AP projection (supine/portable): heart magnified, clavicles project higher.
        rib_phase: rib position (radians) so ribs do not line up across patients.
    """

    size: float = 1.0
    rotation_deg: float = 0.0
    offset: tuple[float, float] = (0.0, 0.0)
    inspiration: float = 0.0
    ctr: float = 0.42
    dome_raise: tuple[float, float] = (0.0, 0.0)
    breast: float = 0.0
    soft_tissue: float = 1.0
    ap: bool = False
    rib_phase: float = 0.0


def sample_chest_params(
    rng: np.random.Generator,
    *,
    sex: str,
    age: float,
    size_mean: float = 1.0,
    ap: bool = False,
    ctr: float | None = None,
    dome_raise: tuple[float, float] = (0.0, 0.0),
) -> ChestParams:
    """Draw normal anatomical / positioning variation for one patient.

    Args:
        rng: the patient's generator.
        sex: "M"/"F" (or "Male"/"Female"): breast shadows for women, slightly smaller body.
        age: years; older patients have a slightly larger heart.
        size_mean: centre-specific mean body scale (collimation habits differ between hospitals).
        ap: AP (portable) projection.
        ctr: force the cardiothoracic ratio (before AP magnification); drawn from the normal range otherwise.
        dome_raise: hemidiaphragm elevation (right, left).
    """
    female = str(sex).upper().startswith("F")
    size = size_mean * float(np.exp(rng.normal(0.0, 0.045))) * (0.96 if female else 1.0)
    rotation = float(np.clip(rng.normal(0.0, 1.8), -5.0, 5.0))
    offset = (float(rng.normal(0.0, 0.02)), float(rng.normal(0.0, 0.02)))
    inspiration = float(np.clip(rng.normal(0.0, 0.035), -0.09, 0.09)) - (0.04 if ap else 0.0)
    if ctr is None:
        ctr = float(np.clip(rng.normal(0.415 + 0.0006 * (age - 55.0), 0.022), 0.35, 0.47))
    # Portable AP films magnify the heart (it is far from the detector): a real reason CTR is read with care on AP.
    ctr = float(ctr) + (0.03 if ap else 0.0)
    breast = float(rng.uniform(0.5, 1.0)) if female else 0.0
    soft_tissue = float(np.clip(np.exp(rng.normal(0.0, 0.07)), 0.85, 1.2))
    return ChestParams(
        size=size,
        rotation_deg=rotation,
        offset=offset,
        inspiration=inspiration,
        ctr=ctr,
        dome_raise=(float(dome_raise[0]), float(dome_raise[1])),
        breast=breast,
        soft_tissue=soft_tissue,
        ap=bool(ap),
        rib_phase=float(rng.uniform(0.0, 2.0 * math.pi)),
    )


# Geometry constants (patient coordinates, size 1): lung apex, zone boundaries, thorax half-width.
_APEX_Y = -0.80
_UPPER_MID_Y = -0.30  # ≈ inferior wall of the aortic arch (Brixia upper/middle boundary)
_MID_LOW_Y = 0.10  # ≈ inferior wall of the right inferior pulmonary vein (middle/lower boundary)
_MEDIAL = 0.045
_AIR = 0.40  # attenuation removed by fully aerated lung


class ChestPhantom:
    """Frontal (PA/AP) chest phantom on a ``shape`` grid.

    Attributes (all ``shape`` float arrays unless noted): ``X``, ``Y`` patient coordinates; ``ax`` = |X|;
    ``right`` soft right-side mask; ``u`` medial (0) → lateral (1) position across each hemithorax; ``dome``
    hemidiaphragm height at each column; ``lung`` soft lung mask (heart and mediastinum excluded); ``heart``;
    ``base`` attenuation without lung air; ``px`` one pixel in normalised units.
    """

    def __init__(self, shape: tuple[int, int], params: ChestParams, rng: np.random.Generator) -> None:
        rows, cols = int(shape[0]), int(shape[1])
        self.shape = (rows, cols)
        self.params = p = params
        self.px = 2.0 / min(rows, cols) / p.size
        e = 1.0 * self.px  # anti-aliasing width
        # float32 throughout: half the memory traffic of float64, and far more precision than 16-bit storage needs.
        yy = ((np.arange(rows) + 0.5) / rows * 2.0 - 1.0).astype(np.float32)
        xx = ((np.arange(cols) + 0.5) / cols * 2.0 - 1.0).astype(np.float32)
        theta = math.radians(p.rotation_deg)
        c, s = math.cos(theta), math.sin(theta)
        xs = xx[None, :] - p.offset[0]
        ys = yy[:, None] - p.offset[1]
        X = (c * xs + s * ys) * (1.0 / p.size)
        Y = (-s * xs + c * ys) * (1.0 / p.size)
        self.X, self.Y = X, Y
        ax = np.abs(X)
        self.ax = ax
        self.right = _step(-X, e)

        # Thorax widens towards the bases; u runs medial → lateral in each hemithorax.
        W = 0.70 + 0.06 * np.clip((Y + 0.3) / 0.8, 0.0, 1.0)
        u = (ax - _MEDIAL) / (W - _MEDIAL)
        self.u = u

        # Hemidiaphragm domes: the right sits higher (liver); highest mid-clavicular, falling steeply to the
        # lateral costophrenic angle, which is why a small effusion first blunts that angle.
        base_r = 0.58 - p.inspiration - p.dome_raise[0]
        base_l = 0.62 - p.inspiration - p.dome_raise[1]
        dome_base = np.where(X < 0, np.float32(base_r), np.float32(base_l))
        dome = dome_base - 0.28 * np.exp(-(((u - 0.42) / 0.38) ** 2))
        self.dome = dome
        self.cp_angle_y = (
            base_r - 0.28 * math.exp(-((0.58 / 0.38) ** 2)),
            base_l - 0.28 * math.exp(-((0.58 / 0.38) ** 2)),
        )

        # Lungs: rounded apices (half ellipse), near-vertical lateral walls, dome below.
        yc = -0.28
        q = ((u - 0.5) / 0.5) ** 2 + (np.minimum(Y - yc, 0.0) / (yc - _APEX_Y)) ** 2
        lung = _step((1.0 - np.sqrt(q)) * 0.33, e) * _step(dome - Y, e)

        # Heart: CTR × inner thoracic width (measured at the bases); one third right of midline, two thirds left.
        thoracic = 2.0 * 0.76
        wh = p.ctr * thoracic
        hcx, hcy = wh / 6.0, 0.30 - 0.5 * p.inspiration
        hb = 0.23 + 0.35 * (p.ctr - 0.42)
        r_h = np.sqrt(((X - hcx) / (wh / 2.0)) ** 2 + ((Y - hcy) / hb) ** 2)
        heart = _step((1.0 - r_h) * min(wh / 2.0, hb), e)
        self.heart = heart
        self.heart_box = (hcx - wh / 2.0, hcx + wh / 2.0)  # right and left heart borders (patient X)

        # Upper mediastinum + aortic knob.
        mw = 0.11 + 0.03 * np.clip((Y + 0.6) / 0.6, 0.0, 1.0)
        med = _step(mw - np.abs(X - 0.01), e) * _step(hcy - Y, 0.02)
        knob = _step(0.06 - np.sqrt((X - 0.10) ** 2 + (Y + 0.30) ** 2), e)
        med = np.maximum(med, knob)
        # The heart sits on the left dome: below it, its density merges with the abdomen's.
        central = np.maximum(heart * _step(dome + 0.03 - Y, 0.03), med)
        lung = lung * (1.0 - 0.8 * heart) * (1.0 - med)
        self.lung = lung

        # Body outline: neck widening into shoulders.
        bw = 0.27 + 0.66 * _step(Y + 0.78, 0.06)
        body = _step(bw - ax, e)
        thick = np.sqrt(np.clip(1.0 - (X / np.maximum(bw, 1e-3)) ** 2, 0.0, 1.0))
        base = body * (0.40 + 0.14 * thick) * p.soft_tissue
        base += 0.17 * central

        # Posterior ribs (strong) and anterior ribs (faint, opposite slope), fading at the spine.
        cage = _step(W + 0.06 - ax, e) * _step(Y + 0.86, 0.02) * _step(dome + 0.06 - Y, 0.04) * _step(ax - 0.06, 0.03)
        t_post = Y + 0.05 * ax - 0.55 * (ax - 0.25) ** 2 + 0.9 * np.maximum(ax - 0.55, 0.0) ** 2
        ribs = np.clip((np.cos(2.0 * math.pi * t_post / 0.145 + p.rib_phase) - 0.2) / 0.8, 0.0, 1.0)
        t_ant = Y + 0.30 * ax
        ribs_a = np.clip((np.cos(2.0 * math.pi * t_ant / 0.17 + 1.3 * p.rib_phase) - 0.4) / 0.6, 0.0, 1.0)
        base += cage * (0.085 * ribs + 0.035 * ribs_a)

        # Clavicles: project higher on AP films.
        lift = -0.05 if p.ap else 0.0
        base += 0.13 * _segment_profile(ax, Y, (0.07, -0.70 + lift), (0.62, -0.86 + lift), 0.028)
        # Spine behind the mediastinum, with vertebral bodies.
        base += body * _step(0.065 - ax, e) * (0.035 + 0.015 * np.cos(2.0 * math.pi * Y / 0.11))
        # Breast shadows over the lower zones.
        if p.breast > 0:
            rb = ((ax - 0.47) / 0.34) ** 2 + ((Y - 0.48) / 0.26) ** 2
            base += 0.10 * p.breast * np.exp(-(rb**2))
        # Trachea (air column) and gastric bubble below the left dome.
        base -= 0.10 * _step(0.028 - ax, e) * _step(-0.33 - Y, 0.02) * body
        rg = ((X - 0.36) / 0.12) ** 2 + ((Y - (base_l + 0.02 + 0.08)) / 0.06) ** 2
        base -= 0.12 * _step(1.0 - rg, 0.2) * _step(Y - dome, e)

        # Lung markings (vessels): densest around the hila, fading to the periphery.
        hilar = np.exp(-((ax - 0.17) ** 2 + (Y + 0.02) ** 2) / 0.12)
        vessels = np.exp(-((smooth_field(rng, self.shape, 22) / 0.35) ** 2))
        hila = np.exp(-((ax - 0.16) ** 2 + (Y + 0.02) ** 2) / 0.006)
        base += lung * (0.05 * vessels * (0.35 + 0.65 * hilar) + 0.10 * hila)
        self.base = base
        upper = _step(_UPPER_MID_Y - Y, 0.03)
        lower = _step(Y - _MID_LOW_Y, 0.03)
        self._bands = (upper, np.clip(1.0 - upper - lower, 0.0, 1.0), lower)

    # -- masks ----------------------------------------------------------------------------------------------------
    def zone_mask(self, zone: str) -> np.ndarray:
        """Soft mask of a Brixia zone (A–C right upper→lower, D–F left upper→lower); not restricted to lung."""
        i = ZONES.index(zone)
        side = self.right if i < 3 else 1.0 - self.right
        return side * self._bands[i % 3]

    def side_mask(self, side: str) -> np.ndarray:
        """Soft mask of the "right" or "left" hemithorax (patient sides)."""
        return self.right if side == "right" else 1.0 - self.right

    # -- rendering ------------------------------------------------------------------------------------------------
    def render(self, fill: np.ndarray | None = None, overlay: np.ndarray | None = None) -> np.ndarray:
        """Attenuation image in [0, 1]: soft tissue minus the lung air left after ``fill``, plus ``overlay``."""
        air = self.lung if fill is None else self.lung * (1.0 - np.clip(fill, 0.0, 1.0))
        att = self.base - _AIR * air
        if overlay is not None:
            att = att + overlay
        return np.clip(att, 0.0, 1.0)


def _segment_profile(ax: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float], w: float):
    """Gaussian profile of the distance to segment a–b (bones, tubes)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = np.clip(((ax - a[0]) * dx + (y - a[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    d2 = (ax - a[0] - t * dx) ** 2 + (y - a[1] - t * dy) ** 2
    return np.exp(-d2 / (w * w))


# ----------------------------------------------------------------------------------------------------------------------
# Lesion painters (return lung fill maps in [0, 1])
# ----------------------------------------------------------------------------------------------------------------------


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
    periph = (1.0 - peripheral) + peripheral * _step(ph.u - 0.45, 0.12)
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
        cover = _step(patch - (1.1 - 2.6 * a_eff), 0.35)
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
    fluid = _step(ph.Y - top, 0.025) * (0.80 + 0.20 * _step(ph.Y - top - 0.06, 0.05))
    return fluid * ph.side_mask(side) * _step(ph.u + 0.05, 0.05)


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
    blob = _step(1.0 - r, 0.10)
    if fissure is not None:  # lobar opacities stop sharply at the fissure
        fy, direction = fissure
        blob = blob * _step((ph.Y - fy) if direction > 0 else (fy - ph.Y), 0.012)
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
    kerley *= _step(ph.u - 0.82, 0.04) * _step(ph.Y - 0.15, 0.05) * (0.25 + 0.25 * severity)
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
    x0 = sign * (_MEDIAL + u0 * 0.72)
    dx, dy = ph.X - x0, ph.Y - y0
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    band = np.exp(-((across / width) ** 2)) * _step(length / 2 - np.abs(along), 0.03)
    # A little collapse haze under the band.
    haze = 0.25 * severity * np.exp(-((along / length) ** 2 + ((across - 0.06) / 0.08) ** 2))
    return combine_fill(np.clip(band * (0.75 + 0.2 * severity), 0, 1), haze * ph.side_mask(side))


def draw_support_devices(ph: ChestPhantom, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Radio-opaque support devices as an attenuation overlay: ET tube, NG tube, central line, ECG leads."""
    overlay = np.zeros(ph.shape, dtype=np.float32)
    kinds: list[str] = []
    X, Y = ph.X, ph.Y
    w = max(0.012, 0.8 * ph.px)
    k = rng.random(4)
    if k[0] < 0.55:  # endotracheal tube down the trachea, tip above the carina
        tip = rng.uniform(-0.45, -0.30)
        overlay += 0.30 * np.exp(-(((X - 0.005) / w) ** 2)) * _step(tip - Y, 0.01)
        kinds.append("ett")
    if k[1] < 0.45:  # nasogastric tube: midline, then left under the dome into the stomach
        path = 0.02 + 0.30 * np.clip((Y - 0.45) / 0.25, 0.0, 1.0) ** 2
        overlay += 0.22 * np.exp(-(((X - path) / w) ** 2)) * _step(0.78 - Y, 0.01)
        kinds.append("ngt")
    if k[2] < 0.5 or not kinds:  # right subclavian/jugular central line ending in the SVC
        horiz = (
            np.exp(-(((Y - (-0.62 + 0.25 * (X + 0.08) ** 2)) / w) ** 2))
            * _step(X + 0.55, 0.01)
            * _step(-0.06 - X, 0.01)
        )
        vert = np.exp(-(((X + 0.07) / w) ** 2)) * _step(Y + 0.63, 0.01) * _step(-0.12 - Y, 0.01)
        overlay += 0.28 * np.maximum(horiz, vert)
        kinds.append("cvc")
    if k[3] < 0.6:  # ECG electrodes: small rings
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.6)
            r = np.sqrt((X - cx) ** 2 + (Y - cy) ** 2)
            overlay += 0.30 * np.exp(-(((r - 0.035) / w) ** 2))
        kinds.append("ecg")
    return overlay, kinds


# ----------------------------------------------------------------------------------------------------------------------
# Lateral view (CheXpert has lateral images for some studies)
# ----------------------------------------------------------------------------------------------------------------------


def render_lateral(
    shape: tuple[int, int],
    params: ChestParams,
    rng: np.random.Generator,
    *,
    effusion: float = 0.0,
    edema: float = 0.0,
    consolidation: float = 0.0,
    devices: bool = False,
) -> np.ndarray:
    """Left lateral view: anterior on the image left, spine posterior (right), sternum anterior, heart
    antero-inferior, domes at the bottom with the deep posterior costophrenic sulcus.

    Returns attenuation in [0, 1].
    """
    rows, cols = shape
    p = params
    px = 2.0 / min(rows, cols) / p.size
    e = px
    yy = ((np.arange(rows) + 0.5) / rows * 2.0 - 1.0).astype(np.float32)
    xx = ((np.arange(cols) + 0.5) / cols * 2.0 - 1.0).astype(np.float32)
    theta = math.radians(p.rotation_deg)
    c, s = math.cos(theta), math.sin(theta)
    xs = xx[None, :] - p.offset[0]
    ys = yy[:, None] - p.offset[1]
    X = (c * xs + s * ys) * (1.0 / p.size)
    Y = (-s * xs + c * ys) * (1.0 / p.size)
    body_r = np.sqrt((X / 0.86) ** 2 + (np.minimum(Y + 0.2, 0.0) / 0.9) ** 2)
    body = _step(1.0 - body_r, e / 0.86) * _step(Y + 0.95, 0.05)
    # Lateral views are thicker (the beam crosses both shoulders): denser soft tissue, lower lung contrast.
    base = body * (0.55 + 0.08 * np.sqrt(np.clip(1.0 - X**2, 0.0, 1.0))) * p.soft_tissue
    dome = 0.55 - p.inspiration - 0.16 * np.exp(-(((X + 0.05) / 0.45) ** 2)) + 0.10 * _step(X - 0.35, 0.08)
    lung_r = np.sqrt(((X + 0.02) / 0.56) ** 2 + (np.minimum(Y + 0.05, 0.0) / 0.72) ** 2)
    lung = _step(1.0 - lung_r, e / 0.56) * _step(dome - Y, e)
    hw = 0.24 + 0.8 * (p.ctr - 0.42)
    heart = _step(1.0 - np.sqrt(((X + 0.25) / hw) ** 2 + ((Y - 0.30) / 0.26) ** 2), 0.02)
    lung = lung * (1.0 - 0.75 * heart)
    spine = _step(0.10 - np.abs(X - 0.62), e) * body
    vert = 0.5 + 0.5 * np.cos(2.0 * math.pi * Y / 0.13)
    sternum = _step(0.03 - np.abs(X + 0.70 + 0.08 * Y), e) * _step(0.35 - Y, 0.03) * _step(Y + 0.65, 0.03)
    base += 0.06 * heart + spine * (0.12 + 0.06 * vert) + 0.08 * sternum
    base += 0.04 * lung * np.exp(-((smooth_field(rng, shape, 20) / 0.35) ** 2))
    fill = np.zeros(shape, dtype=np.float32)
    if effusion > 0:  # fluid collects in the posterior sulcus first
        level = 0.45 - 0.35 * effusion
        fill = combine_fill(fill, _step(Y - (level - 0.15 * np.clip(X, 0, 1)), 0.03) * _step(X + 0.1, 0.1))
    if edema > 0:
        fill = combine_fill(fill, edema * 0.5 * np.exp(-((X / 0.3) ** 2 + (Y / 0.35) ** 2)))
    if consolidation > 0:
        cx, cy = rng.uniform(-0.2, 0.3), rng.uniform(-0.3, 0.3)
        blob = _step(0.22 * (0.7 + 0.5 * consolidation) - np.sqrt((X - cx) ** 2 + (Y - cy) ** 2), 0.05)
        fill = combine_fill(fill, blob * 0.85)
    att = base - _AIR * lung * (1.0 - np.clip(fill, 0.0, 1.0))
    if devices:
        att = att + 0.28 * np.exp(-(((X - 0.02 - 0.1 * Y) / max(0.012, 0.8 * px)) ** 2)) * _step(-0.35 - Y, 0.01)
    return np.clip(att, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Acquisition: detector, contrast curve, noise, borders; shifts
# ----------------------------------------------------------------------------------------------------------------------


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


def quantize(disp: np.ndarray, bits: int, *, monochrome1: bool = False) -> np.ndarray:
    """Display image in [0, 1] → unsigned integers of ``bits`` (uint8 for 8, uint16 otherwise); MONOCHROME1
    stores the inverse (air bright) as the standard says."""
    top = (1 << bits) - 1
    v = np.rint(np.clip(disp, 0.0, 1.0) * top)
    if monochrome1:
        v = top - v
    return v.astype(np.uint8 if bits <= 8 else np.uint16)


# ----------------------------------------------------------------------------------------------------------------------
# Writers: DICOM, CSV
# ----------------------------------------------------------------------------------------------------------------------


def make_uid(*parts: object) -> str:
    """Deterministic DICOM UID (hash of ``parts`` under the pydicom root): never random, never time-based."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    bits: int,
    monochrome1: bool,
    modality: str,
    uid_parts: Iterable[object],
    manufacturer: str = "",
    model: str = "",
    patient_id: str = "",
    patient_sex: str = "",
    patient_age: int | None = None,
    study_date: str = "20200101",
    view_position: str = "",
    extra: dict[str, object] | None = None,
) -> None:
    """Write a single-frame uncompressed radiograph (Explicit VR Little Endian, CR or DX storage).

    Every UID is derived from ``uid_parts`` so the same inputs give byte-identical files.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    parts = [str(p) for p in uid_parts]
    sop_class = DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE
    sop_uid = make_uid(*parts, "sop")
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "MEDMLOPS_SIM_1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "120000"
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.PatientName = f"SIM^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientSex = patient_sex
    if patient_age is not None:
        ds.PatientAge = f"{int(patient_age):03d}Y"
    ds.BodyPartExamined = "CHEST"
    if view_position:
        ds.ViewPosition = view_position
    ds.StudyInstanceUID = make_uid(*parts, "study")
    ds.SeriesInstanceUID = make_uid(*parts, "series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits)
    ds.HighBit = int(bits) - 1
    ds.PixelRepresentation = 0
    top = (1 << int(bits)) - 1
    ds.WindowCenter = top // 2
    ds.WindowWidth = top
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(str(path), enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x spelling of the same thing (preamble + complete file meta)
        ds.save_as(str(path), write_like_original=False)


def _csv_field(value: object, sep: str, force_quote: bool) -> str:
    text = "" if value is None else str(value)
    if force_quote or any(ch in text for ch in (sep, '"', "\n", "\r")):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_csv(
    path: str | Path,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    sep: str = ",",
    quote: Iterable[str] = (),
) -> None:
    """Write pre-formatted string cells: ``\\n`` endings, UTF-8 without BOM, RFC-4180 quoting only where needed
    (plus always for the columns in ``quote``, e.g. BrixiaScore so the leading zeros read as text)."""
    forced = {columns.index(c) for c in quote}
    lines = [sep.join(_csv_field(c, sep, False) for c in columns)]
    for row in rows:
        lines.append(sep.join(_csv_field(v, sep, i in forced) for i, v in enumerate(row)))
    Path(path).write_bytes(("\n".join(lines) + "\n").encode("utf-8"))


def fmt(value: float | None, decimals: int) -> str:
    """Fixed float formatting for CSV cells; ``None``/NaN → blank."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{float(value):.{decimals}f}"


# ----------------------------------------------------------------------------------------------------------------------
# Loop helper
# ----------------------------------------------------------------------------------------------------------------------


def single_threaded_blas() -> AbstractContextManager[object]:
    """Limit BLAS to one thread while generating.

    :func:`smooth_field` uses small matrix products; with several BLAS threads they are slower (thread start-up
    dwarfs the work) and the summation order could depend on the thread count. One thread keeps outputs
    identical whatever the machine's core count.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
