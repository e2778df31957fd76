"""Synthetic head-CT simulator in the exact on-disk format of the public ICH prognosis dataset.

The real dataset (261 non-contrast head CTs of spontaneous intracerebral haemorrhage, 162 with poor prognosis)
is laid out as::

    GOOD_PROGNOSIS/{PatientID}.nii.gz     # label 0
    POOR_PROGNOSIS/{PatientID}.nii.gz     # label 1
    CLINICAL_DATA_ICH.csv                 # 44 columns, one row per patient

:func:`generate_ich` writes the same layout from a latent model with real structure (haematoma burden,
intraventricular extension, posterior-fossa location, age-related atrophy, midline shift, GCS) so that
downstream models, explainers and drift monitors have something genuine to learn and detect. The latent ground
truth is returned as a DataFrame and never written to disk.

Determinism: every random draw comes from a generator seeded by ``(seed, patient id, stream)`` so the output of
one patient does not depend on generation order, ``n`` or (for latents and the CSV) the image ``shape``. The
``.nii.gz`` files are gzipped by hand with ``mtime=0`` and an empty embedded file name, because gzip headers
otherwise carry a timestamp that would change DVC hashes between otherwise identical runs.
"""

from __future__ import annotations

import gzip
import io
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from medmlops.data.simulate import CT_LIMITS, SHIFTS

__all__ = ["ICH_CLINICAL_COLUMNS", "ICH_SHIFTS", "generate_ich"]

# Exact header of CLINICAL_DATA_ICH.csv. Quirks of the real file are kept on purpose: "Tº" uses the masculine
# ordinal sign (U+00BA), "Dyastolic_AP" is misspelled, "MH_hematho" too, and the label column has a space.
ICH_CLINICAL_COLUMNS: tuple[str, ...] = (
    "PatientID",
    "Label (poor_prognosis)",
    "Gender",
    "Age",
    "Smoker",
    "Alcohol",
    "HT",
    "DM",
    "Dyslipidemia",
    "MH_ICH",
    "MH_CVD",
    "MH_neuro",
    "MH_dementia",
    "MH_cancer",
    "MH_hematho",
    "MH_others",
    "Anticoagulant",
    "Antiaggregant",
    "Antihypertensive_drugs",
    "Calcium_antag",
    "Alpha_blockers",
    "GCS",
    "Systolic_AP",
    "Dyastolic_AP",
    "OxSat",
    "T\u00ba",
    "HR",
    "RF",
    "PE_neuro",
    "Glucose",
    "Creatinine",
    "Urea",
    "Sodium",
    "Potassium",
    "WBC",
    "Hgb",
    "Platelets",
    "MCV",
    "RCDW",
    "CMHC",
    "MPV",
    "INR",
    "Fibrinogen",
    "Cause_head_trauma",
)

# The package's single list: generate() checks a shift against SHIFTS before it reaches generate_ich, so a
# second spelling here could only drift from it.
ICH_SHIFTS: tuple[str, ...] = SHIFTS

_GOOD_DIR = "GOOD_PROGNOSIS"
_POOR_DIR = "POOR_PROGNOSIS"
_CSV_NAME = "CLINICAL_DATA_ICH.csv"

# Independent random streams per patient: adding draws to one stream never perturbs another, so e.g. the
# "noise" shift changes only the noise and the latents/CSV stay identical to the unshifted run.
_STREAM_LATENT, _STREAM_ANATOMY, _STREAM_NOISE, _STREAM_CLINICAL, _STREAM_ARTEFACT = range(5)

_FOV_MM = 220.0  # in-plane reconstruction field of view (mm)
_Z_COVERAGE_MM = 150.0  # craniocaudal coverage (mm)
_MAX_SLICE_MM = 10.0

# Intercept of the prognosis logit, calibrated once by Monte Carlo (20 000 latent draws of the default
# population, see _calibrate_intercept) so that E[P(poor)] = 162/261 = 0.62 as in the real cohort.
_PROGNOSIS_INTERCEPT = 0.9822

_BINARY_CLINICAL = (
    "Smoker",
    "Alcohol",
    "HT",
    "DM",
    "Dyslipidemia",
    "MH_ICH",
    "MH_CVD",
    "MH_neuro",
    "MH_dementia",
    "MH_cancer",
    "MH_hematho",
    "MH_others",
    "Anticoagulant",
    "Antiaggregant",
    "Antihypertensive_drugs",
    "Calcium_antag",
    "Alpha_blockers",
    "PE_neuro",
    "Cause_head_trauma",
)
# Continuous columns that may be blank (~2 %, as in the real export); never PatientID, Label, Age, GCS, Gender.
_MAY_BE_BLANK = (
    "OxSat",
    "T\u00ba",
    "HR",
    "RF",
    "Glucose",
    "Creatinine",
    "Urea",
    "Sodium",
    "Potassium",
    "WBC",
    "Hgb",
    "Platelets",
    "MCV",
    "RCDW",
    "CMHC",
    "MPV",
    "INR",
    "Fibrinogen",
)
_BLANK_RATE = 0.02


@dataclass(frozen=True)
class _Vendor:
    """Acquisition/reconstruction characteristics of one scanner vendor."""

    name: str
    descrip: bytes  # goes into the NIfTI header `descrip` field (max 80 bytes)
    noise_std: float  # HU, white Gaussian noise after reconstruction
    hu_offset: float  # small calibration offset in HU
    pad_value: int  # value written outside the circular reconstruction field of view
    psf_sigma_mm: float  # in-plane blur of the reconstruction kernel
    sharpen: float  # unsharp-mask gain (edge-enhancing "bone/sharp" kernels)


_VENDORS: dict[str, _Vendor] = {
    "GE": _Vendor("GE", b"GE MEDICAL SYSTEMS", 4.0, 0.0, -1024, 0.7, 0.0),
    "Philips": _Vendor("Philips", b"Philips", 7.0, 3.0, -1000, 0.6, 0.0),
    # Only used by the "scanner" shift: sharper kernel, different noise, offset and padding convention.
    "SIEMENS": _Vendor("SIEMENS", b"SIEMENS", 9.0, -6.0, -2048, 0.4, 0.35),
}

# HU of tissue classes (means); the per-patient anatomy adds smooth variation around them.
_HU_AIR = -1000.0
_HU_SCALP = 30.0
_HU_BONE = 1100.0
_HU_CSF = 8.0
_HU_GREY = 36.0
_HU_WHITE = 28.0
_HU_DEEP_GREY = 35.0
_HU_FALX = 42.0
_HU_OEDEMA = 20.0


# --------------------------------------------------------------------------------------------------------------
# Random streams and latents
# --------------------------------------------------------------------------------------------------------------
def _rng(seed: int, pid: int, stream: int) -> np.random.Generator:
    """Per-patient, per-purpose generator: independent of generation order and of the other streams."""
    return np.random.default_rng(np.random.SeedSequence([seed, pid, stream]))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _prognosis_logit(burden_ml: float, gcs: int, age: int, ivh: bool, pf: bool) -> float:
    """Log-odds of poor prognosis without the intercept (known ICH score ingredients)."""
    return 1.6 * math.log(burden_ml / 20.0) + 0.3 * (13 - gcs) + 0.07 * (age - 72) + 1.0 * float(ivh) + 0.6 * float(pf)


def _draw_latents(seed: int, pid: int, shift: str | None, intercept: float = _PROGNOSIS_INTERCEPT) -> dict:
    """Draw the shape-independent latent ground truth of one patient.

    A fixed block of uniforms/normals is drawn up front and transformed, so the number of draws never depends on
    the shift: the same seed gives the same patient "identity" with and without a population shift.
    """
    rng = _rng(seed, pid, _STREAM_LATENT)
    u = rng.random(24)
    z = rng.standard_normal(24)
    population = shift == "population"

    # Age: skewed old (median ~72, long left tail), 18-99. The population shift moves the median to ~82.
    age_scale = 16.0 if population else 27.5
    age = int(np.clip(round(99.5 - age_scale * math.exp(0.5 * z[0])), 18, 99))
    male = bool(u[0] < 0.55)

    vendor = "GE" if u[1] < 0.5 else "Philips"
    if shift == "scanner":
        vendor = "SIEMENS"

    # Location: posterior fossa ~15 %, otherwise deep (basal ganglia/thalamus) or lobar.
    if u[2] < 0.15:
        location = "posterior_fossa"
    elif u[3] < 0.55:
        location = "deep"
    else:
        location = "lobar"
    pf = location == "posterior_fossa"
    side = -1 if u[4] < 0.5 else 1  # -1 = left, +1 = right (RAS x)

    # Total haematoma burden: lognormal, ~5-100 mL; infratentorial bleeds are smaller (and deadlier).
    median_ml = 36.0 if population else 18.0
    burden = median_ml * math.exp(0.85 * z[1]) * (0.45 if pf else 1.0)
    burden = float(np.clip(burden, 1.5, 150.0))
    n_hem = 1 if u[5] < 0.72 else (2 if u[5] < 0.93 else 3)

    # Intraventricular extension: more likely with larger and deeper bleeds.
    p_ivh = _sigmoid(-1.5 + 1.0 * (location == "deep") + 0.8 * math.log(burden / 20.0) + 0.4 * pf)
    ivh = bool(u[6] < p_ivh)
    ivh_fill = 0.25 + 0.5 * u[7] if ivh else 0.0  # fraction of the ipsilateral ventricle filled with blood

    # Midline shift: proportional to supratentorial burden (mass effect), ~0.11 mm/mL.
    shift_mm = 0.0 if pf else float(np.clip(0.11 * burden * (0.8 + 0.4 * u[8]), 0.0, 18.0))

    # GCS: lowered by burden, IVH, posterior fossa; the real cohort has many 13-15 and a fair share <= 8.
    severity = 3.8 * math.log1p(burden / 12.0) + 2.5 * ivh + 2.5 * pf + 0.02 * (age - 72) + 2.4 * z[2]
    gcs = int(np.clip(round(17.0 - severity), 3, 15))

    logit = intercept + _prognosis_logit(burden, gcs, age, ivh, pf)
    p_poor = _sigmoid(logit)
    label = int(u[9] < p_poor)

    # Atrophy: lateral ventricles and the subarachnoid gap grow with age (plus individual variation).
    years = age - 18
    vent_scale = math.exp(0.12 * z[3])
    vent_axes = (
        (3.5 + 0.11 * years) * vent_scale,  # half-width (mm)
        (24.0 + 0.10 * years) * vent_scale,  # half-length antero-posterior
        (8.0 + 0.07 * years) * vent_scale,  # half-height
    )
    atrophy_gap_mm = float(np.clip(1.0 + 0.07 * years + 0.6 * z[4], 0.5, 9.0))
    head_scale = 1.0 + 0.035 * z[5] + (0.03 if male else 0.0)

    return {
        "PatientID": pid,
        "age": age,
        "male": male,
        "vendor": vendor,
        "location": location,
        "posterior_fossa": pf,
        "side": "left" if side < 0 else "right",
        "_side": side,
        "burden_ml": burden,
        "n_hematomas": n_hem,
        "ivh": ivh,
        "_ivh_fill": ivh_fill,
        "midline_shift_mm": shift_mm,
        "gcs": gcs,
        "p_poor": p_poor,
        "label": label,
        "_vent_axes": vent_axes,
        "atrophy_gap_mm": atrophy_gap_mm,
        "_head_scale": head_scale,
        "_z": z[6:],
    }


def _calibrate_intercept(n: int = 20000, target: float = 162 / 261) -> float:
    """Find the logit intercept with mean P(poor) == target over the default population (used offline)."""
    base = [_draw_latents(10**6, i, None, intercept=0.0) for i in range(n)]
    offsets = np.array(
        [_prognosis_logit(b["burden_ml"], b["gcs"], b["age"], b["ivh"], b["posterior_fossa"]) for b in base]
    )
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        mean = float(np.mean(1.0 / (1.0 + np.exp(-(mid + offsets)))))
        lo, hi = (mid, hi) if mean < target else (lo, mid)
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates in mm. The head frame (u, v, w) is the scanner frame minus the patient's
    positioning offset and in-plane rotation; keeping (u, v) 2-D and w 1-D lets every ellipsoid and plane-wave
    field be built with broadcasting (one full-volume operation each), which keeps generation fast."""

    u: np.ndarray  # (C, R) float32, head-frame left-right
    v: np.ndarray  # (C, R) float32, head-frame posterior-anterior
    w: np.ndarray  # (S,) float32, head-frame inferior-superior
    in_fov: np.ndarray  # (C, R) bool, inside the circular reconstruction field of view
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]  # array shape (C, R, S)


def _spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Voxel spacing (x, y, z) in mm for a (slices, rows, cols) shape: fixed 220 mm FOV, ~150 mm coverage."""
    n_slices, n_rows, n_cols = shape
    return _FOV_MM / n_cols, _FOV_MM / n_rows, min(_Z_COVERAGE_MM / n_slices, _MAX_SLICE_MM)


def _affine(shape: tuple[int, int, int]) -> np.ndarray:
    """Diagonal RAS affine whose origin puts the volume centre at (0, 0, 0) mm, as in scanner coordinates."""
    n_slices, n_rows, n_cols = shape
    spacing = np.array(_spacing(shape))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -0.5 * (np.array([n_cols, n_rows, n_slices]) - 1) * spacing
    return affine


def _make_grid(shape: tuple[int, int, int], offset: np.ndarray, yaw: float) -> _Grid:
    n_slices, n_rows, n_cols = shape
    dx, dy, dz = _spacing(shape)
    x = ((np.arange(n_cols) - 0.5 * (n_cols - 1)) * dx)[:, None]
    y = ((np.arange(n_rows) - 0.5 * (n_rows - 1)) * dy)[None, :]
    z = (np.arange(n_slices) - 0.5 * (n_slices - 1)) * dz
    c, s = math.cos(yaw), math.sin(yaw)
    xs, ys = x - offset[0], y - offset[1]
    u = (c * xs + s * ys).astype(np.float32)
    v = (-s * xs + c * ys).astype(np.float32)
    w = (z - offset[2]).astype(np.float32)
    in_fov = (x * x + y * y) <= (0.5 * _FOV_MM) ** 2
    return _Grid(u, v, w, in_fov, (dx, dy, dz), (n_cols, n_rows, n_slices))


def _r2(g: _Grid, center: tuple[float, float, float], axes: tuple[float, float, float], yaw: float = 0.0) -> np.ndarray:
    """Squared normalised ellipsoid radius (<= 1 inside) over the whole volume, float32."""
    du, dv = g.u - np.float32(center[0]), g.v - np.float32(center[1])
    if yaw:
        c, s = np.float32(math.cos(yaw)), np.float32(math.sin(yaw))
        du, dv = c * du + s * dv, -s * du + c * dv
    plane = (du / np.float32(axes[0])) ** 2 + (dv / np.float32(axes[1])) ** 2
    dw = ((g.w - np.float32(center[2])) / np.float32(axes[2])) ** 2
    return plane[:, :, None] + dw[None, None, :]


def _field(g: _Grid, rng: np.random.Generator, n_terms: int, wavelength_mm: tuple[float, float]) -> np.ndarray:
    """Smooth random field with ~unit std: a sum of random 3-D plane waves.

    cos(a(u, v) + b(w)) is expanded as cos a cos b - sin a sin b so each wave costs two broadcast products.
    """
    out = np.zeros(g.shape, dtype=np.float32)
    tmp = np.empty(g.shape, dtype=np.float32)
    for _ in range(n_terms):
        d = rng.standard_normal(3)
        d /= np.linalg.norm(d)
        k = 2.0 * math.pi / rng.uniform(*wavelength_mm)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        a = (k * (d[0] * g.u + d[1] * g.v) + phase).astype(np.float32)
        b = (k * d[2] * g.w).astype(np.float32)
        np.multiply(np.cos(a)[:, :, None], np.cos(b)[None, None, :], out=tmp)
        out += tmp
        np.multiply(np.sin(a)[:, :, None], np.sin(b)[None, None, :], out=tmp)
        out -= tmp
    out *= np.float32(math.sqrt(2.0 / n_terms))
    return out


def _ellipsoid_ml(axes: tuple[float, float, float]) -> float:
    return 4.0 / 3.0 * math.pi * axes[0] * axes[1] * axes[2] / 1000.0


def _fit_inside(center: np.ndarray, radius: float, brain_axes: np.ndarray, margin: float = 3.0) -> np.ndarray:
    """Pull a lesion centre (relative to the brain centre) inwards so a sphere of `radius` stays in the brain."""
    dist = float(np.linalg.norm(center))
    if dist < 1e-6:
        return center
    surface = dist / math.sqrt(float(np.sum((center / brain_axes) ** 2)))  # brain surface along that direction
    allowed = max(surface - radius - margin, 0.0)
    return center * min(1.0, allowed / dist)


# --------------------------------------------------------------------------------------------------------------
# Image synthesis
# --------------------------------------------------------------------------------------------------------------
def _synth_volume(lat: dict, seed: int, shape: tuple[int, int, int], shift: str | None) -> tuple[np.ndarray, dict]:
    """Render one head CT (int16 HU, array axes x, y, z) and return it with image-level latents."""
    pid = lat["PatientID"]
    rng = _rng(seed, pid, _STREAM_ANATOMY)
    age, side = lat["age"], lat["_side"]
    years = age - 18

    offset = np.array([rng.normal(0, 3.0), rng.normal(0, 4.0), rng.normal(0, 4.0)])
    g = _make_grid(shape, offset, yaw=math.radians(rng.normal(0.0, 4.0)))
    dx = g.spacing[0]
    f_shape = _field(g, rng, 6, (30.0, 80.0))  # boundary irregularity
    f_tone = _field(g, rng, 4, (40.0, 120.0))  # slow intensity variation
    f_fine = _field(g, rng, 6, (9.0, 18.0))  # gyral / lesion-margin scale

    hs = lat["_head_scale"]
    intracranial = np.array([67.0, 86.0, 63.0]) * hs  # inner table of the skull (semi-axes, mm)
    brain_c = (0.0, 0.0, 2.0)
    skull_t = rng.uniform(5.0, 7.0)
    scalp_t = rng.uniform(4.0, 6.0)
    brain_axes = intracranial - lat["atrophy_gap_mm"]

    img = np.full(g.shape, _HU_AIR, dtype=np.float32)
    r_head = _r2(g, brain_c, tuple(intracranial + skull_t + scalp_t))
    img[r_head <= 1.0] = _HU_SCALP
    r_skull = _r2(g, brain_c, tuple(intracranial + skull_t))
    skull = r_skull <= 1.0
    img[skull] = (_HU_BONE + 250.0 * f_tone)[skull]
    r_ic = _r2(g, brain_c, tuple(intracranial))
    inside = r_ic <= 1.0
    img[inside] = _HU_CSF  # subarachnoid CSF; widens with age as the brain envelope shrinks

    # Parenchyma: grey cortex / white matter with an irregular boundary and slow tone variation.
    r_brain = _r2(g, brain_c, tuple(brain_axes)) + 0.03 * f_shape
    brain = r_brain <= 1.0
    white = r_brain <= (0.78 + 0.04 * f_shape) ** 2
    tissue = np.where(white, np.float32(_HU_WHITE), np.float32(_HU_GREY)) + 1.5 * f_tone
    # Sulcal CSF in the cortical ribbon: more sulci open up with age (atrophy).
    sulci = (r_brain > 0.86**2) & (f_fine > 1.45 - 0.012 * years)
    img[brain] = tissue[brain]
    img[brain & sulci] = _HU_CSF
    for sx in (-1.0, 1.0):  # basal ganglia / thalami
        img[_r2(g, (sx * 19.0, 2.0, brain_c[2] + 8.0), (9.0, 18.0, 11.0)) <= 1.0] = _HU_DEEP_GREY

    # Midline: falx and interhemispheric fissure, bowed away from the bleed by the midline shift.
    shift_mm, away = lat["midline_shift_mm"], -side
    vent_w = brain_c[2] + 14.0
    bow = (
        np.exp(-((g.v + 6.0) ** 2) / (2 * 35.0**2))[:, :, None]
        * np.exp(-((g.w - vent_w) ** 2) / (2 * 30.0**2))[None, None, :]
    )
    du_mid = np.abs(g.u[:, :, None] - np.float32(away * shift_mm) * bow)
    supratentorial = (g.w > brain_c[2] - 15.0)[None, None, :]
    fissure = brain & supratentorial & (du_mid < 0.6 + 0.03 * years)
    img[fissure] = _HU_CSF
    img[brain & supratentorial & (du_mid < max(0.6, 0.5 * dx))] = _HU_FALX

    # Ventricles: lateral ventricles next to the septum (size grows with age), plus the third ventricle.
    a, b, c = lat["_vent_axes"]
    vents = []
    for sx in (-1.0, 1.0):
        ipsi = sx == side
        squeeze = max(0.45, 1.0 - 0.035 * shift_mm) if ipsi else 1.0 + 0.01 * shift_mm
        axes = (a * squeeze, b, c)
        center = (sx * (a + 2.0) + away * shift_mm, -6.0, vent_w)
        vents.append((ipsi, center, axes))
    third = ((0.0 + away * shift_mm, -4.0, brain_c[2] - 2.0), (1.2 + 0.035 * years, 11.0, 7.0))
    vent_mask = _r2(g, *third) <= 1.0
    ventricle_ml = _ellipsoid_ml(third[1])
    ivh_ml = 0.0
    blood_hu = rng.uniform(58.0, 76.0)
    ivh_masks = []
    for ipsi, center, axes in vents:
        r_v = _r2(g, center, axes)
        m = r_v <= 1.0
        vent_mask |= m
        ventricle_ml += _ellipsoid_ml(axes)
        # IVH layers in the dependent (posterior, supine patient) part of the ventricle.
        fill = lat["_ivh_fill"] if ipsi else max(0.0, lat["_ivh_fill"] - 0.45)
        if lat["ivh"] and fill > 0:
            t = 2.0 * fill - 1.0
            ivh_ml += _ellipsoid_ml(axes) * (t + 1.0) ** 2 * (2.0 - t) / 4.0  # ellipsoidal cap volume
            level = center[1] - axes[1] + 2.0 * axes[1] * fill
            ivh_masks.append(m & (g.v < level)[:, :, None])
    img[vent_mask] = _HU_CSF

    # Haematomas: 1-3 slightly irregular ellipsoids; the main one at the drawn location.
    zs = lat["_z"]
    weights = np.sort(np.exp(0.8 * zs[: lat["n_hematomas"]]))[::-1]
    volumes = lat["burden_ml"] * weights / weights.sum()
    blood = np.zeros(g.shape, dtype=bool)
    oedema = np.zeros(g.shape, dtype=bool)
    for j, vol in enumerate(volumes):
        r_eq = (3.0 * vol * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
        elong = np.exp(0.2 * rng.standard_normal(3))
        axes_h = r_eq * elong / np.prod(elong) ** (1.0 / 3.0)
        loc = lat["location"] if j == 0 else "lobar"
        hside = side if j == 0 else (side if rng.random() < 0.6 else -side)
        if loc == "deep":
            rel = np.array([hside * rng.uniform(16, 26), rng.uniform(-10, 12), rng.uniform(0, 18)])
        elif loc == "posterior_fossa":
            rel = np.array([hside * rng.uniform(8, 24), -rng.uniform(38, 52), -rng.uniform(30, 40)])
        else:
            d = np.array([hside * rng.uniform(0.5, 1.0), rng.uniform(-1.0, 1.0), rng.uniform(-0.2, 0.8)])
            d /= np.linalg.norm(d)
            surface = 1.0 / math.sqrt(float(np.sum((d / brain_axes) ** 2)))
            rel = d * surface * rng.uniform(0.55, 0.75)
        rel = _fit_inside(rel, float(axes_h.max()), brain_axes)
        center = tuple(rel + np.array(brain_c))
        r_h = _r2(g, center, tuple(axes_h), yaw=rng.uniform(0, math.pi)) + 0.12 * f_fine
        hem = brain & (r_h <= 1.0)
        blood |= hem
        rim = rng.uniform(0.15, 0.35)
        oedema |= brain & (r_h <= (1.0 + rim) ** 2)
    oedema &= ~blood & ~vent_mask
    img[oedema] = (_HU_OEDEMA + 2.0 * f_tone)[oedema]
    img[blood] = (blood_hu + 4.0 * f_fine)[blood]
    for m in ivh_masks:
        img[m] = blood_hu - 4.0
    voxel_ml = g.spacing[0] * g.spacing[1] * g.spacing[2] / 1000.0
    all_blood = blood.copy()
    for m in ivh_masks:
        all_blood |= m
    blood_voxel_ml = float(all_blood.sum()) * voxel_ml

    vendor = _VENDORS[lat["vendor"]]
    # Reconstruction kernel: slight in-plane blur; sharp kernels add an unsharp mask (edge overshoot).
    sig = (vendor.psf_sigma_mm / g.spacing[0], vendor.psf_sigma_mm / g.spacing[1], 0.0)
    blurred = ndimage.gaussian_filter(img, sig, truncate=3.0)
    if vendor.sharpen:
        wide = ndimage.gaussian_filter(img, (1.2 / g.spacing[0], 1.2 / g.spacing[1], 0.0), truncate=3.0)
        blurred += np.float32(vendor.sharpen) * (blurred - wide)
    img = blurred

    artefact = _corrupt(img, g, _rng(seed, pid, _STREAM_ARTEFACT)) if shift == "corruption" else ""

    noise_std = vendor.noise_std * (3.0 if shift == "noise" else 1.0)
    hu_gain, hu_offset = (1.08, 12.0) if shift == "intensity" else (1.0, 0.0)
    noise = _rng(seed, pid, _STREAM_NOISE).standard_normal(g.shape, dtype=np.float32)
    img += np.float32(vendor.hu_offset)
    img *= np.float32(hu_gain)
    img += np.float32(hu_offset)
    img += np.float32(noise_std) * noise
    np.clip(img, -1024.0, 3071.0, out=img)
    img[~g.in_fov] = vendor.pad_value  # vendor-specific padding outside the reconstruction circle
    out = np.rint(img).astype(np.int16)

    extra = {
        "ventricle_volume_ml": ventricle_ml,
        "ivh_volume_ml": ivh_ml,
        "blood_voxel_ml": blood_voxel_ml,
        "noise_std": noise_std,
        "hu_gain": hu_gain,
        "hu_offset": hu_offset,
        "pad_value": vendor.pad_value,
        "kernel": "sharp" if vendor.sharpen else "standard",
        "artefact": artefact,
    }
    return out, extra


def _corrupt(img: np.ndarray, g: _Grid, rng: np.random.Generator) -> str:
    """Add acquisition artefacts in place; returns a short description (e.g. ``"streak+ghost"``)."""
    n_cols, n_rows, n_slices = g.shape
    # Beam-hardening streaks: bright/dark lines through a point in a block of lower slices (petrous bones).
    n_blk = max(1, n_slices // 5)
    start = int(rng.integers(0, max(1, n_slices // 2 - n_blk + 1)))
    px, py = rng.normal(0, 10.0), rng.normal(-20.0, 10.0)
    streaks = np.zeros((n_cols, n_rows), dtype=np.float32)
    width = 0.8 * g.spacing[0]
    for k in range(int(rng.integers(3, 7))):
        theta = rng.uniform(0, math.pi)
        dist = np.abs((g.u - px) * math.sin(theta) - (g.v - py) * math.cos(theta))
        amp = rng.uniform(60.0, 150.0) * (1 if k % 2 == 0 else -1)
        streaks += (amp * np.exp(-(dist**2) / (2 * width**2))).astype(np.float32)
    streaks[~g.in_fov] = 0.0
    img[:, :, start : start + n_blk] += streaks[:, :, None]
    kinds = ["streak"]

    n_blk2 = max(2, n_slices // 4)
    start2 = int(rng.integers(0, n_slices - n_blk2 + 1))
    blk = slice(start2, start2 + n_blk2)
    if rng.random() < 0.5:
        # Motion ghosting: a displaced, attenuated copy of the head along the phase direction.
        ghost = np.roll(img[:, :, blk], max(1, n_rows // 10), axis=1)
        img[:, :, blk] = 0.75 * img[:, :, blk] + 0.25 * ghost
        kinds.append("ghost")
    else:
        # Blurred slices with washed-out grey/white contrast (e.g. motion during a rotation).
        sub = ndimage.gaussian_filter(img[:, :, blk], (2.0, 2.0, 0.0))
        head = sub > -200.0
        sub[head] = 30.0 + 0.4 * (sub[head] - 30.0)
        img[:, :, blk] = sub
        kinds.append("blur")
    return "+".join(kinds)


# --------------------------------------------------------------------------------------------------------------
# Clinical table
# --------------------------------------------------------------------------------------------------------------
def _clinical_row(lat: dict, seed: int) -> dict:
    """Clinical variables correlated with the latents (history with age, INR with anticoagulants, ...)."""
    rng = _rng(seed, lat["PatientID"], _STREAM_CLINICAL)
    age, male, gcs, burden = lat["age"], lat["male"], lat["gcs"], lat["burden_ml"]
    old = (age - 65) / 15.0

    def flag(logit: float) -> int:
        return int(rng.random() < _sigmoid(logit))

    ht = flag(0.6 + 0.6 * old)  # hypertension: the main risk factor of spontaneous ICH
    dm = flag(-1.1 + 0.2 * old)
    dysl = flag(-0.6 + 0.1 * old)
    smoker = flag(-1.6 - 0.6 * old + 0.7 * male)
    alcohol = flag(-2.2 - 0.3 * old + 1.0 * male)
    anticoag = flag(-2.2 + 0.5 * old)
    antiagg = flag(-1.6 + 0.5 * old + 0.5 * dysl)
    row = {
        "PatientID": lat["PatientID"],
        "Label (poor_prognosis)": lat["label"],
        "Gender": int(male),  # 1 = male, 0 = female
        "Age": age,
        "Smoker": smoker,
        "Alcohol": alcohol,
        "HT": ht,
        "DM": dm,
        "Dyslipidemia": dysl,
        "MH_ICH": flag(-2.6 + 0.2 * old),
        "MH_CVD": flag(-1.9 + 0.5 * old + 0.4 * ht),
        "MH_neuro": flag(-2.2 + 0.3 * old),
        "MH_dementia": flag(-3.0 + 1.2 * old),
        "MH_cancer": flag(-2.3 + 0.3 * old),
        "MH_hematho": flag(-3.0),
        "MH_others": flag(-0.9 + 0.2 * old),
        "Anticoagulant": anticoag,
        "Antiaggregant": antiagg,
        "Antihypertensive_drugs": int(ht and rng.random() < 0.8),
        "Calcium_antag": int(ht and rng.random() < 0.25),
        "Alpha_blockers": flag(-3.2 + 1.2 * male + 0.4 * old),
        "GCS": gcs,
    }
    systolic = float(np.clip(rng.normal(150 + 22 * ht + 0.15 * burden, 22), 90, 230))
    row["Systolic_AP"] = round(systolic)
    row["Dyastolic_AP"] = round(float(np.clip(0.45 * systolic + rng.normal(17, 10), 40, 130)))
    row["OxSat"] = round(float(np.clip(rng.normal(97.0 - 0.35 * (15 - gcs), 2.0), 80, 100)))
    row["T\u00ba"] = round(float(np.clip(rng.normal(36.5 + 0.03 * (15 - gcs), 0.45), 35, 40)), 1)
    row["HR"] = round(float(np.clip(rng.normal(80 + 0.8 * (15 - gcs), 15), 40, 150)))
    row["RF"] = round(float(np.clip(rng.normal(17 + 0.4 * (15 - gcs), 3.5), 10, 35)))
    row["PE_neuro"] = flag(-0.5 + 0.35 * (15 - gcs) + 0.6 * lat["posterior_fossa"])  # pathological neuro exam
    row["Glucose"] = round(float(np.clip(rng.normal(125 + 50 * dm + 3.0 * (15 - gcs), 30), 60, 400)))
    creat = float(np.clip(math.exp(rng.normal(-0.1 + 0.12 * old, 0.3)), 0.4, 5.0))
    row["Creatinine"] = round(creat, 2)
    row["Urea"] = round(float(np.clip(30 * creat * math.exp(rng.normal(0.2, 0.3)), 10, 200)))
    row["Sodium"] = round(float(np.clip(rng.normal(139.0, 3.0), 125, 155)))
    row["Potassium"] = round(float(np.clip(rng.normal(4.0, 0.45), 2.8, 6.0)), 1)
    row["WBC"] = round(float(np.clip(rng.normal(8.5 + 0.03 * burden + 0.2 * (15 - gcs), 2.5), 3, 25)), 2)
    row["Hgb"] = round(float(np.clip(rng.normal(14.2 if male else 13.0, 1.5), 8, 18)), 1)
    row["Platelets"] = round(float(np.clip(rng.normal(225, 65), 50, 500)))
    row["MCV"] = round(float(np.clip(rng.normal(90, 5), 75, 105)), 1)
    row["RCDW"] = round(float(np.clip(rng.normal(13.8 + 0.2 * old, 1.1), 11, 18)), 1)
    row["CMHC"] = round(float(np.clip(rng.normal(33.5, 1.0), 30, 37)), 1)
    row["MPV"] = round(float(np.clip(rng.normal(10.0, 1.0), 7, 13)), 1)
    inr = rng.lognormal(math.log(2.3), 0.3) if anticoag else rng.normal(1.04, 0.08)
    row["INR"] = round(float(np.clip(inr, 0.8, 4.0)), 2)
    row["Fibrinogen"] = round(float(np.clip(rng.normal(390 + 20 * old, 80), 150, 600)))
    row["Cause_head_trauma"] = flag(-3.0 + 0.4 * old)
    # Occasional missing labs/vitals, as in the real export (drawn for every column to keep streams aligned).
    blanks = rng.random(len(_MAY_BE_BLANK)) < _BLANK_RATE
    for col, blank in zip(_MAY_BE_BLANK, blanks, strict=True):
        if blank:
            row[col] = None
    return row


def _clinical_frame(rows: list[dict]) -> pd.DataFrame:
    """Build the CSV table with stable dtypes: integers for ids/flags/scores, floats for vitals and labs."""
    df = pd.DataFrame(rows, columns=list(ICH_CLINICAL_COLUMNS)).sort_values("PatientID", kind="stable")
    int_cols = ["PatientID", "Label (poor_prognosis)", "Gender", "Age", "GCS", *_BINARY_CLINICAL]
    for col in ICH_CLINICAL_COLUMNS:
        df[col] = df[col].astype("int64") if col in int_cols else df[col].astype("float64")
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------------
def _nifti_bytes(data: np.ndarray, affine: np.ndarray, descrip: bytes) -> bytes:
    """Serialise an int16 NIfTI-1 image and gzip it reproducibly (mtime=0, no embedded file name)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(np.int16)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)  # 1 = scanner anatomical coordinates
    img.set_sform(affine, code=1)
    img.header["descrip"] = descrip
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(img.to_bytes())
    return buf.getvalue()


def _validate(n: int, shape: tuple[int, int, int], shift: str | None, seed: int) -> tuple[int, int, int]:
    if shift is not None and shift not in ICH_SHIFTS:
        raise ValueError(f"shift must be None or one of {', '.join(ICH_SHIFTS)}, got {shift!r}.")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < CT_LIMITS.min_n:
        raise ValueError(f"n must be an integer >= {CT_LIMITS.min_n}, got {n!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    try:
        dims = tuple(int(d) for d in shape)
    except TypeError:
        raise ValueError(
            f"shape must be a (slices, rows, cols) tuple of 3 ints >= {CT_LIMITS.min_size}, got {shape!r}."
        ) from None
    if len(dims) != CT_LIMITS.dims or min(dims) < CT_LIMITS.min_size:
        raise ValueError(
            f"shape must be a (slices, rows, cols) tuple of 3 ints >= {CT_LIMITS.min_size}, got {shape!r}."
        )
    return dims  # type: ignore[return-value]


_LATENT_COLUMNS = (
    "PatientID",
    "label",
    "p_poor",
    "age",
    "male",
    "gcs",
    "vendor",
    "burden_ml",
    "n_hematomas",
    "location",
    "side",
    "posterior_fossa",
    "ivh",
    "ivh_volume_ml",
    "midline_shift_mm",
    "ventricle_volume_ml",
    "atrophy_gap_mm",
    "blood_voxel_ml",
    "noise_std",
    "hu_gain",
    "hu_offset",
    "pad_value",
    "kernel",
    "artefact",
    "shift",
)


def generate_ich(
    out_dir: str | Path,
    *,
    n: int = 120,
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 128, 128),
    shift: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Write n synthetic head CTs + CLINICAL_DATA_ICH.csv into out_dir; return the latent ground truth.

    The files follow the public ICH prognosis dataset exactly: ``GOOD_PROGNOSIS/{id}.nii.gz`` (label 0),
    ``POOR_PROGNOSIS/{id}.nii.gz`` (label 1) and the 44-column ``CLINICAL_DATA_ICH.csv`` sorted by PatientID
    (ids 1..n). Stale ``*.nii.gz`` files in the two class folders are removed first so a patient can never appear
    under both labels after regenerating with another seed or ``n``.

    Args:
        out_dir: Output folder (created if missing).
        n: Number of patients (>= 2).
        seed: Non-negative seed; the same arguments always give byte-identical files.
        shape: Volume size as (slices, rows, cols); stored on disk as an array of shape (cols, rows, slices).
        shift: None for the default population, or one of :data:`ICH_SHIFTS` for drifted traffic.
        progress: Show a tqdm progress bar.

    Returns:
        One row per patient with the latent ground truth (label, age, gcs, vendor, burden_ml, n_hematomas, ivh,
        posterior_fossa, midline_shift_mm, ventricle_volume_ml and the shift-specific acquisition latents
        noise_std, hu_gain, hu_offset, pad_value, kernel, artefact). Not written to disk.

    Raises:
        ValueError: For an unknown ``shift``, ``n < 2``, a negative ``seed`` or a ``shape`` dimension < 8.
    """
    dims = _validate(n, shape, shift, seed)
    n, seed = int(n), int(seed)
    out = Path(out_dir)
    folders = {0: out / _GOOD_DIR, 1: out / _POOR_DIR}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.nii.gz"):
            stale.unlink()

    affine = _affine(dims)
    latents, rows = [], []
    for pid in tqdm(range(1, n + 1), desc="ICH CTs", unit="scan", disable=not progress):
        lat = _draw_latents(seed, pid, shift)
        vol, extra = _synth_volume(lat, seed, dims, shift)
        lat.update(extra)
        lat["shift"] = shift
        path = folders[lat["label"]] / f"{pid}.nii.gz"
        path.write_bytes(_nifti_bytes(vol, affine, _VENDORS[lat["vendor"]].descrip))
        rows.append(_clinical_row(lat, seed))
        latents.append({k: lat[k] for k in _LATENT_COLUMNS})

    csv = _clinical_frame(rows).to_csv(index=False, lineterminator="\n")
    (out / _CSV_NAME).write_bytes(csv.encode("utf-8"))
    truth = pd.DataFrame(latents, columns=list(_LATENT_COLUMNS))
    return truth.astype({"ivh": bool, "posterior_fossa": bool, "male": bool})
