"""Synthetic AIforCOVID (COVID-19 prognosis from admission CXR, six Italian hospitals A–F).

Layout written, as in the public release::

    AIforCOVID.csv          # one row per patient, comma-separated (columns: AIFORCOVID_COLUMNS)
    imgs/P_A_12.dcm         # hospitals A–D: DICOM (B and D stored MONOCHROME1, i.e. air bright)
    imgs/P_E_3.png          # hospitals E–F: 16-bit grayscale PNG (E holds 12-bit values, max 4095)

``ImageFile`` carries no extension (the reader resolves ``.dcm``/``.png``). Latent model: a severity score drives
bilateral, peripheral, lower-zone-predominant opacities per lung zone, the labs (CRP, LDH, D-dimer up; SpO2,
PaO2 down), AP positioning (sicker patients are imaged supine/portable) and Prognosis (logistic on severity +
age, ≈ 50/50 MILD/SEVERE). Death only occurs among SEVERE. The centres differ in acquisition (contrast curve,
noise, bit depth, borders, patient size, photometric interpretation) — the multi-centre shift that makes the
real dataset hard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medmlops.data.simulate._chest_common import CXR_SHIFTS, check_args, rng_for, sigmoid, single_threaded_blas
from medmlops.data.simulate.chest_acquisition import NOISE_SHIFT_FACTOR, Acquisition, acquire, apply_display_shift
from medmlops.data.simulate.chest_findings import paint_zone_pneumonia
from medmlops.data.simulate.chest_phantom import ZONES, ChestPhantom, sample_chest_params
from medmlops.data.simulate.chest_writers import fmt, quantize, write_csv, write_dicom, write_png

__all__ = ["AIFORCOVID_COLUMNS", "AIFORCOVID_HOSPITALS", "CXR_SHIFTS", "generate_aiforcovid"]

AIFORCOVID_COLUMNS: tuple[str, ...] = (
    "ImageFile", "Hospital", "Age", "Sex", "Positivity at admission", "Temp_C", "DaysFever", "Cough",
    "DifficultyInBreathing", "WBC", "RBC", "CRP", "Fibrinogen", "Glucose", "PCT", "LDH", "INR", "D_dimer",
    "Ox_percentage", "PaO2", "SaO2", "PaCO2", "pH", "CardiovascularDisease", "IschemicHeartDisease",
    "AtrialFibrillation", "HeartFailure", "Ictus", "HighBloodPressure", "Diabetes", "Dementia", "BPCO", "Cancer",
    "Chronic Kidney disease", "RespiratoryFailure", "Obesity", "Position", "Prognosis", "Death",
)  # fmt: skip

# Per-centre acquisition. Storage quirks of the release: A–D DICOM, E–F PNG; B and D MONOCHROME1; mixed 12/16-bit;
# E writes 12-bit values into 16-bit PNGs (max 4095), so readers must not assume the full 16-bit range.
AIFORCOVID_HOSPITALS: dict[str, Acquisition] = {
    "A": Acquisition("A", gamma=0.85, gain=1.00, offset=0.00, noise_std=0.010, blur=0.6, bits=12,
                     manufacturer="GE Healthcare", model="Definium 6000", modality="DX", size_mean=1.00),
    "B": Acquisition("B", gamma=0.75, gain=0.95, offset=0.05, noise_std=0.016, blur=0.8, bits=12, monochrome1=True,
                     border=(0.04, 0.04, 0.03, 0.03), border_value=1.0,
                     manufacturer="Carestream Health", model="CR 975", modality="CR", size_mean=0.95),
    "C": Acquisition("C", gamma=1.00, gain=1.05, offset=-0.03, noise_std=0.008, blur=0.5, bits=16,
                     manufacturer="Philips Medical Systems", model="DigitalDiagnost", modality="DX", size_mean=1.05),
    "D": Acquisition("D", gamma=0.90, gain=0.90, offset=0.06, noise_std=0.020, blur=0.9, bits=16, monochrome1=True,
                     border=(0.06, 0.06, 0.06, 0.06), border_value=0.0,
                     manufacturer="Agfa", model="CR 85-X", modality="CR", size_mean=0.92),
    "E": Acquisition("E", gamma=0.70, gain=1.00, offset=0.02, noise_std=0.014, blur=0.7, bits=12,
                     border=(0.0, 0.0, 0.08, 0.08), border_value=0.0, size_mean=1.00),
    "F": Acquisition("F", gamma=1.10, gain=0.95, offset=0.03, noise_std=0.012, blur=0.6, bits=16,
                     border=(0.03, 0.03, 0.0, 0.0), border_value=0.0, size_mean=1.08),
}  # fmt: skip
_HOSPITAL_WEIGHTS = {"A": 0.26, "B": 0.22, "C": 0.18, "D": 0.13, "E": 0.12, "F": 0.09}
_PNG_HOSPITALS = ("E", "F")
# Scanner shift: a seventh centre with a new detector (harsher contrast, noisier, wide bright collimation).
_SHIFT_CENTRE = Acquisition(
    "G", gamma=1.5, gain=1.15, offset=-0.08, noise_std=0.03, blur=1.2, bits=16,
    border=(0.10, 0.02, 0.10, 0.10), border_value=1.0,
    manufacturer="Siemens Healthineers", model="Ysio Max", modality="DX", size_mean=0.88,
)  # fmt: skip

_LABS = ("WBC", "RBC", "CRP", "Fibrinogen", "Glucose", "PCT", "LDH", "INR", "D_dimer", "Ox_percentage", "PaO2",
         "SaO2", "PaCO2", "pH", "Temp_C", "DaysFever")  # fmt: skip
# Comorbidity prevalence: logit intercept at age 65 and per-year slope.
_COMORBIDITIES = {
    "CardiovascularDisease": (-0.6, 0.05), "IschemicHeartDisease": (-2.0, 0.05), "AtrialFibrillation": (-2.3, 0.06),
    "HeartFailure": (-2.6, 0.06), "Ictus": (-3.0, 0.05), "HighBloodPressure": (-0.1, 0.05),
    "Diabetes": (-1.6, 0.03), "Dementia": (-3.2, 0.09), "BPCO": (-2.4, 0.04), "Cancer": (-2.2, 0.04),
    "Chronic Kidney disease": (-2.6, 0.05), "Obesity": (-1.7, -0.01),
}  # fmt: skip
_BLANK_RATE = 0.05


def _hospital_sequence(n: int, seed: int) -> list[str]:
    """Unequal centre sizes (largest-remainder allocation, every centre present when n ≥ 6), shuffled."""
    letters = list(_HOSPITAL_WEIGHTS)
    w = np.array([_HOSPITAL_WEIGHTS[h] for h in letters])
    counts = np.floor(w * n).astype(int)
    if n >= len(letters):
        counts = np.maximum(counts, 1)
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    remainders = w * n - np.floor(w * n)
    for j in np.argsort(-remainders, kind="stable"):
        if counts.sum() >= n:
            break
        counts[j] += 1
    seq = np.repeat(np.array(letters), counts)
    rng_for(seed, "aiforcovid/hospitals", n).shuffle(seq)
    return [str(h) for h in seq]


def _patient(rng: np.random.Generator, population_shift: bool) -> dict[str, object]:
    """Latent severity → clinical table row (strings already formatted) and image-level latents."""
    sev = float(rng.normal()) + (1.0 if population_shift else 0.0)
    age = int(np.clip(round(64 + 6.0 * sev + 13.0 * rng.normal()), 20, 100))
    sex = "M" if rng.random() < 0.63 else "F"
    severe = bool(rng.random() < sigmoid(2.4 * sev + 0.045 * (age - 64)))
    death = bool(severe and rng.random() < sigmoid(-1.0 + 0.9 * sev + 0.06 * (age - 70)))
    ap = bool(rng.random() < sigmoid(-0.3 + 1.4 * sev))

    # Per-zone involvement: bilateral, lower zones first (COVID-19 spreads from the bases and the periphery).
    zone_bias = np.array([-0.9, -0.1, 0.5, -0.9, -0.1, 0.5])
    side = np.repeat(rng.normal(0.0, 0.3, size=2), 3)
    z = sigmoid(1.7 * sev + zone_bias + side + 0.5 * rng.standard_normal(6) - 0.2)
    extent = np.clip((z - 0.15) / 0.85, 0.0, 1.0)

    n = rng.standard_normal(20)
    labs: dict[str, str] = {
        "Temp_C": fmt(np.clip(37.2 + 0.5 * sev + 0.6 * n[0], 35.5, 41.0), 1),
        "DaysFever": str(int(np.clip(round(4 + 1.5 * sev + 3 * n[1]), 0, 30))),
        "WBC": fmt(np.exp(np.log(7.0) + 0.15 * sev + 0.35 * n[2]), 2),
        "RBC": fmt(np.clip(4.6 - 0.1 * sev + 0.5 * n[3], 2.5, 6.5), 2),
        "CRP": fmt(np.exp(np.log(40.0) + 0.8 * sev + 0.8 * n[4]), 1),
        "Fibrinogen": fmt(np.clip(480 + 90 * sev + 110 * n[5], 150, 1100), 0),
        "Glucose": fmt(np.clip(115 + 15 * sev + 30 * n[6], 60, 400), 0),
        "PCT": fmt(np.exp(np.log(0.12) + 0.6 * sev + 0.9 * n[7]), 2),
        "LDH": fmt(np.clip(290 + 90 * sev + 80 * n[8], 120, 1500), 0),
        "INR": fmt(np.clip(1.1 + 0.05 * sev + 0.12 * n[9], 0.8, 3.0), 2),
        "D_dimer": fmt(np.exp(np.log(800.0) + 0.6 * sev + 0.8 * n[10]), 0),
        "Ox_percentage": fmt(np.clip(94 - 3 * sev + 2.5 * n[11], 60, 100), 0),
        "PaO2": fmt(np.clip(72 - 12 * sev + 12 * n[12], 30, 140), 0),
        "SaO2": fmt(np.clip(94 - 3 * sev + 2.5 * n[13], 60, 100), 1),
        "PaCO2": fmt(np.clip(35 - 1.5 * sev + 5 * n[14], 20, 70), 1),
        "pH": fmt(np.clip(7.45 + 0.01 * sev + 0.04 * n[15], 7.1, 7.7), 2),
    }
    blanks = rng.random(len(_LABS)) < _BLANK_RATE  # real tables miss labs that were not ordered at admission
    for name, blank in zip(_LABS, blanks, strict=True):
        if blank:
            labs[name] = ""
    flags = {name: int(rng.random() < sigmoid(b0 + slope * (age - 65))) for name, (b0, slope) in _COMORBIDITIES.items()}
    flags["RespiratoryFailure"] = int(rng.random() < sigmoid(-1.5 + 1.6 * sev))
    flags["Cough"] = int(rng.random() < 0.55)
    flags["DifficultyInBreathing"] = int(rng.random() < sigmoid(-0.5 + 1.5 * sev))
    flags["Positivity at admission"] = int(rng.random() < 0.92)
    return {
        "severity": sev, "age": age, "sex": sex, "severe": severe, "death": death, "ap": ap, "extent": extent,
        "labs": labs, "flags": flags,
    }  # fmt: skip


def generate_aiforcovid(
    out_dir: str | Path,
    *,
    n: int = 240,
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    shift: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Write a synthetic AIforCOVID release into ``out_dir``.

    Args:
        out_dir: destination folder (created).
        n: number of patients (one image each), ≥ 4.
        seed: master seed; same arguments → byte-identical files.
        shape: image (rows, cols), each ≥ 32.
        shift: None or one of :data:`CXR_SHIFTS` (drifted production traffic). "scanner" moves every patient
            to a new centre "G" (Siemens detector, different contrast/noise/border).
        progress: show a tqdm bar.

    Returns:
        Latent ground truth, one row per patient (not written to disk): table ids, image path/format, severity,
        per-zone opacity extent (``extent_A`` … ``extent_F``), acquisition parameters and applied artefacts.

    Raises:
        ValueError: bad ``shift``, ``n`` or ``shape``.
    """
    rows_cols = check_args(n, shape, shift)
    out = Path(out_dir)
    (out / "imgs").mkdir(parents=True, exist_ok=True)
    hospitals = ["G"] * n if shift == "scanner" else _hospital_sequence(n, seed)
    counters: dict[str, int] = {}
    table_rows: list[list[str]] = []
    latents: list[dict[str, object]] = []
    with single_threaded_blas():
        for i in tqdm(range(n), desc="AIforCOVID", disable=not progress, unit="img"):
            hospital = hospitals[i]
            counters[hospital] = counters.get(hospital, 0) + 1
            image_file = f"P_{hospital}_{counters[hospital]}"
            pt = _patient(rng_for(seed, "aiforcovid", i, 0), shift == "population")
            acq = _SHIFT_CENTRE if hospital == "G" else AIFORCOVID_HOSPITALS[hospital]
            if shift == "noise":
                acq = acq.with_noise(NOISE_SHIFT_FACTOR)

            rng_img = rng_for(seed, "aiforcovid", i, 1)
            params = sample_chest_params(rng_img, sex=pt["sex"], age=pt["age"], size_mean=acq.size_mean, ap=pt["ap"])
            ph = ChestPhantom(rows_cols, params, rng_img)
            extent = pt["extent"]
            fill = paint_zone_pneumonia(ph, rng_img, np.clip(0.25 + 0.5 * extent, 0, 1) * (extent > 0.05), extent)
            disp = acquire(ph.render(fill), acq, rng_for(seed, "aiforcovid", i, 2))
            disp, artefacts = apply_display_shift(disp, shift, rng_for(seed, "aiforcovid", i, 3))

            png = hospital in _PNG_HOSPITALS
            pixels = quantize(disp, acq.bits, monochrome1=acq.monochrome1 and not png)
            if png:
                path = out / "imgs" / f"{image_file}.png"
                write_png(path, pixels)
            else:
                path = out / "imgs" / f"{image_file}.dcm"
                write_dicom(
                    path, pixels, bits=acq.bits, monochrome1=acq.monochrome1, modality=acq.modality,
                    uid_parts=("aiforcovid", seed, i, shift or "none"), manufacturer=acq.manufacturer,
                    model=acq.model, patient_id=image_file, patient_sex=str(pt["sex"]), patient_age=int(pt["age"]),
                    study_date=f"2020{3 + i % 3:02d}{1 + (i * 7) % 28:02d}", view_position="AP" if pt["ap"] else "PA",
                )  # fmt: skip

            labs, flags = pt["labs"], pt["flags"]
            row = {
                "ImageFile": image_file, "Hospital": hospital, "Age": str(pt["age"]), "Sex": pt["sex"],
                "Position": "AP" if pt["ap"] else "PA", "Prognosis": "SEVERE" if pt["severe"] else "MILD",
                "Death": str(int(pt["death"])), **labs, **{k: str(v) for k, v in flags.items()},
            }  # fmt: skip
            table_rows.append([row[c] for c in AIFORCOVID_COLUMNS])
            latents.append(
                {
                    "ImageFile": image_file,
                    "Hospital": hospital,
                    "image_path": str(path.relative_to(out)),
                    "format": "png" if png else "dcm",
                    "photometric": "MONOCHROME1" if acq.monochrome1 and not png else "MONOCHROME2",
                    "bits": acq.bits,
                    "manufacturer": acq.manufacturer,
                    "severity": float(pt["severity"]),
                    "prognosis": int(pt["severe"]),
                    "death": int(pt["death"]),
                    "age": int(pt["age"]),
                    "sex": pt["sex"],
                    "position": "AP" if pt["ap"] else "PA",
                    **{f"extent_{z}": float(v) for z, v in zip(ZONES, extent, strict=True)},
                    "opacity_mean": float(np.mean(extent)),
                    "ctr": params.ctr,
                    "gamma": acq.gamma,
                    "noise_std": acq.noise_std,
                    "border": max(acq.border),
                    "shift": shift or "none",
                    "artefacts": "+".join(artefacts),
                }
            )
    write_csv(out / "AIforCOVID.csv", AIFORCOVID_COLUMNS, table_rows)
    return pd.DataFrame(latents)
