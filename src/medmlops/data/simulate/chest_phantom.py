"""Frontal and lateral chest-radiograph phantoms: the patient's anatomy and positioning, before any finding or
detector is applied.

Everything here works on a normalised coordinate grid with plain vectorised numpy (no per-pixel loops), so a
256 × 256 radiograph costs a few milliseconds. The phantom returns float "attenuation" images in [0, 1]: 0 is
direct exposure (air outside the patient), 1 is dense (bone, metal). Display polarity is MONOCHROME2 (air dark);
each dataset maps that to its storage (DICOM 12/16-bit MONOCHROME1/2, 16-bit PNG, 8-bit JPEG).

Conventions (radiological, as on a real PA film):

* image left = patient's RIGHT. ``X < 0`` is the right hemithorax, ``X > 0`` the left (heart side).
* Brixia zones: A, B, C = right lung upper → lower; D, E, F = left lung upper → lower (``ZONES``).
* Lung "fill" maps in [0, 1] say which fraction of the lung air a lesion displaces (0 = aerated, 1 = as dense
  as soft tissue). The painters in :mod:`~medmlops.data.simulate.chest_findings` return fill maps;
  :meth:`ChestPhantom.render` turns them into attenuation.

Where the rest lives: findings (lesion painters, support devices) in ``chest_findings``; detector, noise and
the drift shifts in ``chest_acquisition``; pixel storage and file formats in ``chest_writers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "MEDIAL",
    "ZONES",
    "ChestParams",
    "ChestPhantom",
    "combine_fill",
    "render_lateral",
    "sample_chest_params",
    "smooth_field",
    "soft_step",
]

ZONES = ("A", "B", "C", "D", "E", "F")


# ----------------------------------------------------------------------------------------------------------------------
# Small numeric helpers (also used by the lesion painters)
# ----------------------------------------------------------------------------------------------------------------------


def soft_step(d: np.ndarray, w: float) -> np.ndarray:
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
# Patient parameters and the frontal (PA/AP) phantom
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
MEDIAL = 0.045  # |X| of each lung's medial edge: the hemithorax coordinate ``u`` is 0 there
_AIR = 0.40  # attenuation removed by fully aerated lung


def _patient_grid(shape: tuple[int, int], p: ChestParams) -> tuple[np.ndarray, np.ndarray, float]:
    """Patient coordinates ``(X, Y)`` of every pixel after positioning (offset, rotation, body scale), and one
    pixel in normalised units. Shared by the frontal and the lateral phantom."""
    rows, cols = int(shape[0]), int(shape[1])
    px = 2.0 / min(rows, cols) / p.size
    # float32 throughout: half the memory traffic of float64, and far more precision than 16-bit storage needs.
    yy = ((np.arange(rows) + 0.5) / rows * 2.0 - 1.0).astype(np.float32)
    xx = ((np.arange(cols) + 0.5) / cols * 2.0 - 1.0).astype(np.float32)
    theta = math.radians(p.rotation_deg)
    c, s = math.cos(theta), math.sin(theta)
    xs = xx[None, :] - p.offset[0]
    ys = yy[:, None] - p.offset[1]
    X = (c * xs + s * ys) * (1.0 / p.size)
    Y = (-s * xs + c * ys) * (1.0 / p.size)
    return X, Y, px


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
        X, Y, self.px = _patient_grid(self.shape, p)
        e = self.px  # anti-aliasing width
        self.X, self.Y = X, Y
        ax = np.abs(X)
        self.ax = ax
        self.right = soft_step(-X, e)

        # Thorax widens towards the bases; u runs medial → lateral in each hemithorax.
        W = 0.70 + 0.06 * np.clip((Y + 0.3) / 0.8, 0.0, 1.0)
        u = (ax - MEDIAL) / (W - MEDIAL)
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
        lung = soft_step((1.0 - np.sqrt(q)) * 0.33, e) * soft_step(dome - Y, e)

        # Heart: CTR × inner thoracic width (measured at the bases); one third right of midline, two thirds left.
        thoracic = 2.0 * 0.76
        wh = p.ctr * thoracic
        hcx, hcy = wh / 6.0, 0.30 - 0.5 * p.inspiration
        hb = 0.23 + 0.35 * (p.ctr - 0.42)
        r_h = np.sqrt(((X - hcx) / (wh / 2.0)) ** 2 + ((Y - hcy) / hb) ** 2)
        heart = soft_step((1.0 - r_h) * min(wh / 2.0, hb), e)
        self.heart = heart

        # Upper mediastinum + aortic knob.
        mw = 0.11 + 0.03 * np.clip((Y + 0.6) / 0.6, 0.0, 1.0)
        med = soft_step(mw - np.abs(X - 0.01), e) * soft_step(hcy - Y, 0.02)
        knob = soft_step(0.06 - np.sqrt((X - 0.10) ** 2 + (Y + 0.30) ** 2), e)
        med = np.maximum(med, knob)
        # The heart sits on the left dome: below it, its density merges with the abdomen's.
        central = np.maximum(heart * soft_step(dome + 0.03 - Y, 0.03), med)
        lung = lung * (1.0 - 0.8 * heart) * (1.0 - med)
        self.lung = lung

        # Body outline: neck widening into shoulders.
        bw = 0.27 + 0.66 * soft_step(Y + 0.78, 0.06)
        body = soft_step(bw - ax, e)
        thick = np.sqrt(np.clip(1.0 - (X / np.maximum(bw, 1e-3)) ** 2, 0.0, 1.0))
        base = body * (0.40 + 0.14 * thick) * p.soft_tissue
        base += 0.17 * central

        # Posterior ribs (strong) and anterior ribs (faint, opposite slope), fading at the spine.
        cage = (
            soft_step(W + 0.06 - ax, e)
            * soft_step(Y + 0.86, 0.02)
            * soft_step(dome + 0.06 - Y, 0.04)
            * soft_step(ax - 0.06, 0.03)
        )
        t_post = Y + 0.05 * ax - 0.55 * (ax - 0.25) ** 2 + 0.9 * np.maximum(ax - 0.55, 0.0) ** 2
        ribs = np.clip((np.cos(2.0 * math.pi * t_post / 0.145 + p.rib_phase) - 0.2) / 0.8, 0.0, 1.0)
        t_ant = Y + 0.30 * ax
        ribs_a = np.clip((np.cos(2.0 * math.pi * t_ant / 0.17 + 1.3 * p.rib_phase) - 0.4) / 0.6, 0.0, 1.0)
        base += cage * (0.085 * ribs + 0.035 * ribs_a)

        # Clavicles: project higher on AP films.
        lift = -0.05 if p.ap else 0.0
        base += 0.13 * _segment_profile(ax, Y, (0.07, -0.70 + lift), (0.62, -0.86 + lift), 0.028)
        # Spine behind the mediastinum, with vertebral bodies.
        base += body * soft_step(0.065 - ax, e) * (0.035 + 0.015 * np.cos(2.0 * math.pi * Y / 0.11))
        # Breast shadows over the lower zones.
        if p.breast > 0:
            rb = ((ax - 0.47) / 0.34) ** 2 + ((Y - 0.48) / 0.26) ** 2
            base += 0.10 * p.breast * np.exp(-(rb**2))
        # Trachea (air column) and gastric bubble below the left dome.
        base -= 0.10 * soft_step(0.028 - ax, e) * soft_step(-0.33 - Y, 0.02) * body
        rg = ((X - 0.36) / 0.12) ** 2 + ((Y - (base_l + 0.02 + 0.08)) / 0.06) ** 2
        base -= 0.12 * soft_step(1.0 - rg, 0.2) * soft_step(Y - dome, e)

        # Lung markings (vessels): densest around the hila, fading to the periphery.
        hilar = np.exp(-((ax - 0.17) ** 2 + (Y + 0.02) ** 2) / 0.12)
        vessels = np.exp(-((smooth_field(rng, self.shape, 22) / 0.35) ** 2))
        hila = np.exp(-((ax - 0.16) ** 2 + (Y + 0.02) ** 2) / 0.006)
        base += lung * (0.05 * vessels * (0.35 + 0.65 * hilar) + 0.10 * hila)
        self.base = base
        upper = soft_step(_UPPER_MID_Y - Y, 0.03)
        lower = soft_step(Y - _MID_LOW_Y, 0.03)
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
    p = params
    X, Y, px = _patient_grid(shape, p)
    e = px
    body_r = np.sqrt((X / 0.86) ** 2 + (np.minimum(Y + 0.2, 0.0) / 0.9) ** 2)
    body = soft_step(1.0 - body_r, e / 0.86) * soft_step(Y + 0.95, 0.05)
    # Lateral views are thicker (the beam crosses both shoulders): denser soft tissue, lower lung contrast.
    base = body * (0.55 + 0.08 * np.sqrt(np.clip(1.0 - X**2, 0.0, 1.0))) * p.soft_tissue
    dome = 0.55 - p.inspiration - 0.16 * np.exp(-(((X + 0.05) / 0.45) ** 2)) + 0.10 * soft_step(X - 0.35, 0.08)
    lung_r = np.sqrt(((X + 0.02) / 0.56) ** 2 + (np.minimum(Y + 0.05, 0.0) / 0.72) ** 2)
    lung = soft_step(1.0 - lung_r, e / 0.56) * soft_step(dome - Y, e)
    hw = 0.24 + 0.8 * (p.ctr - 0.42)
    heart = soft_step(1.0 - np.sqrt(((X + 0.25) / hw) ** 2 + ((Y - 0.30) / 0.26) ** 2), 0.02)
    lung = lung * (1.0 - 0.75 * heart)
    spine = soft_step(0.10 - np.abs(X - 0.62), e) * body
    vert = 0.5 + 0.5 * np.cos(2.0 * math.pi * Y / 0.13)
    sternum = soft_step(0.03 - np.abs(X + 0.70 + 0.08 * Y), e) * soft_step(0.35 - Y, 0.03) * soft_step(Y + 0.65, 0.03)
    base += 0.06 * heart + spine * (0.12 + 0.06 * vert) + 0.08 * sternum
    base += 0.04 * lung * np.exp(-((smooth_field(rng, shape, 20) / 0.35) ** 2))
    fill = np.zeros(shape, dtype=np.float32)
    if effusion > 0:  # fluid collects in the posterior sulcus first
        level = 0.45 - 0.35 * effusion
        fill = combine_fill(fill, soft_step(Y - (level - 0.15 * np.clip(X, 0, 1)), 0.03) * soft_step(X + 0.1, 0.1))
    if edema > 0:
        fill = combine_fill(fill, edema * 0.5 * np.exp(-((X / 0.3) ** 2 + (Y / 0.35) ** 2)))
    if consolidation > 0:
        cx, cy = rng.uniform(-0.2, 0.3), rng.uniform(-0.3, 0.3)
        blob = soft_step(0.22 * (0.7 + 0.5 * consolidation) - np.sqrt((X - cx) ** 2 + (Y - cy) ** 2), 0.05)
        fill = combine_fill(fill, blob * 0.85)
    att = base - _AIR * lung * (1.0 - np.clip(fill, 0.0, 1.0))
    if devices:
        att = att + 0.28 * np.exp(-(((X - 0.02 - 0.1 * Y) / max(0.012, 0.8 * px)) ** 2)) * soft_step(-0.35 - Y, 0.01)
    return np.clip(att, 0.0, 1.0)
