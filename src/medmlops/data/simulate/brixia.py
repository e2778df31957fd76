"""Synthetic BRIXIA (COVID-19 severity: the six-zone Brixia score on CXR, Brescia 2020).

Layout written, as in the public release::

    metadata_global_v2.csv   # SEMICOLON-separated (columns: BRIXIA_COLUMNS)
    dicom_clean/1012345678.dcm

``BrixiaScore`` is a 6-character string of zone scores 0–3 in the order A, B, C (right lung, upper → lower) and
D, E, F (left lung, upper → lower); the leading zeros matter ("001200"), so it is written quoted and readers must
read it as text (``dtype={"BrixiaScore": str}``). ``BrixiaScoreGlobal`` is the digit sum (0–18).

Zone appearance follows the score definition (Borghesi & Maroldi 2020): 0 no lung abnormality; 1 interstitial
infiltrates; 2 interstitial and alveolar infiltrates, interstitial predominant; 3 interstitial and alveolar,
alveolar predominant. DICOM PhotometricInterpretation depends on the manufacturer (CR readers of some vendors
write MONOCHROME1) and the stored pixels match it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medmlops.data.simulate._chest_common import CXR_SHIFTS, check_args, rng_for, single_threaded_blas
from medmlops.data.simulate.chest_acquisition import NOISE_SHIFT_FACTOR, Acquisition, acquire, apply_display_shift
from medmlops.data.simulate.chest_findings import paint_zone_pneumonia
from medmlops.data.simulate.chest_phantom import ZONES, ChestPhantom, sample_chest_params
from medmlops.data.simulate.chest_writers import quantize, write_csv, write_dicom

__all__ = ["BRIXIA_COLUMNS", "BRIXIA_MANUFACTURERS", "CXR_SHIFTS", "generate_brixia"]

BRIXIA_COLUMNS: tuple[str, ...] = (
    "Filename", "StudyId", "Subject", "Sex", "AgeAtStudyDateFiveYear", "StudyDate", "BrixiaScore",
    "BrixiaScoreGlobal", "ConsensusTestset", "Modality", "Manufacturer", "ManufacturerModelName",
    "PhotometricInterpretation",
)  # fmt: skip

BRIXIA_MANUFACTURERS: dict[str, Acquisition] = {
    "Carestream Health": Acquisition("Carestream Health", gamma=0.80, gain=0.95, offset=0.04, noise_std=0.015, blur=0.8,
                                     bits=12, monochrome1=True, border=(0.03, 0.03, 0.03, 0.03), border_value=1.0,
                                     manufacturer="Carestream Health", model="CR 975", modality="CR"),
    "GE Healthcare": Acquisition("GE Healthcare", gamma=0.90, gain=1.00, offset=0.00, noise_std=0.010, blur=0.6,
                                 bits=12, manufacturer="GE Healthcare", model="Thunder Platform", modality="DX"),
    "Philips Medical Systems": Acquisition("Philips Medical Systems", gamma=1.05, gain=1.05, offset=-0.03,
                                           noise_std=0.008, blur=0.5, bits=16, manufacturer="Philips Medical Systems",
                                           model="DigitalDiagnost", modality="DX", size_mean=1.04),
    "Agfa": Acquisition("Agfa", gamma=0.70, gain=0.92, offset=0.06, noise_std=0.018, blur=0.9, bits=12,
                        monochrome1=True, border=(0.05, 0.05, 0.0, 0.0), border_value=0.0,
                        manufacturer="Agfa", model="ADC_5146", modality="CR", size_mean=0.95),
    "KODAK": Acquisition("KODAK", gamma=0.85, gain=0.90, offset=0.05, noise_std=0.020, blur=1.0, bits=12,
                         border=(0.0, 0.0, 0.05, 0.05), border_value=0.0,
                         manufacturer="KODAK", model="CR 850", modality="CR", size_mean=0.97),
}  # fmt: skip
_MANUFACTURER_WEIGHTS = (0.30, 0.25, 0.20, 0.15, 0.10)
# Scanner shift: a vendor never seen in training, with its own contrast curve, noise and collimation.
_SHIFT_MANUFACTURER = Acquisition(
    "FUJIFILM Corporation", gamma=1.45, gain=1.12, offset=-0.07, noise_std=0.028, blur=1.2, bits=16,
    border=(0.08, 0.08, 0.08, 0.08), border_value=1.0,
    manufacturer="FUJIFILM Corporation", model="FDR D-EVO II", modality="DX", size_mean=0.88,
)  # fmt: skip

# Score model: zone latent = patient severity + zone bias (lower zones more often involved) + zone noise,
# cut at thresholds into 0..3. Tuned so the global score has mean ≈ 7.5 and spans 0–18 (as reported).
_ZONE_BIAS = np.array([-0.45, 0.0, 0.35, -0.5, -0.05, 0.30])
_CUTS = np.array([-0.45, 0.35, 1.15])
# Visual grammar of a zone score: (interstitial amount, alveolar amount).
_SCORE_LOOK = {0: (0.0, 0.0), 1: (0.65, 0.0), 2: (0.85, 0.35), 3: (0.55, 0.92)}


def _zone_scores(rng: np.random.Generator, population_shift: bool) -> tuple[np.ndarray, float]:
    sev = float(rng.normal()) + (1.1 if population_shift else 0.0)
    side = np.repeat(rng.normal(0.0, 0.25, size=2), 3)
    latent = 0.75 * sev + _ZONE_BIAS + side + 0.6 * rng.standard_normal(6) + 0.15
    return np.digitize(latent, _CUTS).astype(int), sev


def generate_brixia(
    out_dir: str | Path,
    *,
    n: int = 240,
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    shift: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Write a synthetic BRIXIA release into ``out_dir``.

    Args:
        out_dir: destination folder (created).
        n: number of studies (one DICOM each), ≥ 4.
        seed: master seed; same arguments → byte-identical files.
        shape: image (rows, cols), each ≥ 32.
        shift: None or one of :data:`CXR_SHIFTS`; "scanner" acquires every study on a new vendor
            ("FUJIFILM Corporation"), "population" raises the scores.
        progress: show a tqdm bar.

    Returns:
        Latent ground truth, one row per study (not written to disk): ids, zone scores ``zone_A`` … ``zone_F``,
        global score, latent severity, acquisition parameters and applied artefacts.

    Raises:
        ValueError: bad ``shift``, ``n`` or ``shape``.
    """
    rows_cols = check_args(n, shape, shift)
    out = Path(out_dir)
    (out / "dicom_clean").mkdir(parents=True, exist_ok=True)
    # Unique 10-digit file ids and 8-digit study ids from one table-level stream.
    ids_rng = rng_for(seed, "brixia/ids", n)
    file_ids = 1_000_000_000 + ids_rng.choice(8_999_999_999, size=n, replace=False)
    study_ids = 10_000_000 + ids_rng.choice(89_999_999, size=n, replace=False)
    vendors = list(BRIXIA_MANUFACTURERS)
    table_rows: list[list[str]] = []
    latents: list[dict[str, object]] = []
    subject = sex = age = None
    with single_threaded_blas():
        for i in tqdm(range(n), desc="BRIXIA", disable=not progress, unit="img"):
            rng = rng_for(seed, "brixia", i, 0)
            # ~10 % of studies are a follow-up of the previous subject (same sex, same age bin).
            if subject is None or rng.random() >= 0.10:
                subject = int(rng.integers(1_000_000, 9_999_999))
                sex = "M" if rng.random() < 0.66 else "F"
                age = int(np.clip(round(rng.normal(66.0, 14.0)), 18, 99))
            else:
                rng.random(2)
            scores, sev = _zone_scores(rng, shift == "population")
            vendor = vendors[int(rng.choice(len(vendors), p=_MANUFACTURER_WEIGHTS))]
            acq = _SHIFT_MANUFACTURER if shift == "scanner" else BRIXIA_MANUFACTURERS[vendor]
            if shift == "noise":
                acq = acq.with_noise(NOISE_SHIFT_FACTOR)
            day = int(rng.integers(0, 61))  # March–April 2020, the first Lombardy wave
            date = pd.Timestamp("2020-03-01") + pd.Timedelta(days=day)
            study_date = date.strftime("%Y%m%d")
            consensus = int(rng.random() < 0.03)
            ap = bool(rng.random() < 0.55 + 0.05 * scores.sum() / 3)

            rng_img = rng_for(seed, "brixia", i, 1)
            params = sample_chest_params(rng_img, sex=sex, age=age, size_mean=acq.size_mean, ap=ap)
            ph = ChestPhantom(rows_cols, params, rng_img)
            inter = [_SCORE_LOOK[int(s)][0] for s in scores]
            alv = [_SCORE_LOOK[int(s)][1] for s in scores]
            # Brixia scores the whole zone: weak peripheral preference only, so the opacity covers the third.
            fill = paint_zone_pneumonia(ph, rng_img, inter, alv, peripheral=0.3)
            disp = acquire(ph.render(fill), acq, rng_for(seed, "brixia", i, 2))
            disp, artefacts = apply_display_shift(disp, shift, rng_for(seed, "brixia", i, 3))
            pixels = quantize(disp, acq.bits, monochrome1=acq.monochrome1)
            filename = f"{int(file_ids[i]):010d}.dcm"
            photometric = "MONOCHROME1" if acq.monochrome1 else "MONOCHROME2"
            age_bin = int(age // 5 * 5)
            write_dicom(
                out / "dicom_clean" / filename, pixels, bits=acq.bits, monochrome1=acq.monochrome1,
                modality=acq.modality, uid_parts=("brixia", seed, i, shift or "none"), manufacturer=acq.manufacturer,
                model=acq.model, patient_id=str(subject), patient_sex=sex, patient_age=age_bin,
                study_date=study_date, view_position="AP" if ap else "PA",
            )  # fmt: skip
            score_str = "".join(str(int(s)) for s in scores)
            table_rows.append(
                [
                    filename, str(int(study_ids[i])), str(subject), sex, str(age_bin), study_date, score_str,
                    str(int(scores.sum())), str(consensus), acq.modality, acq.manufacturer, acq.model, photometric,
                ]
            )  # fmt: skip
            latents.append(
                {
                    "Filename": filename,
                    "image_path": f"dicom_clean/{filename}",
                    "Subject": subject,
                    "BrixiaScore": score_str,
                    "global": int(scores.sum()),
                    **{f"zone_{z}": int(s) for z, s in zip(ZONES, scores, strict=True)},
                    "severity": sev,
                    "age": age,
                    "sex": sex,
                    "position": "AP" if ap else "PA",
                    "manufacturer": acq.manufacturer,
                    "modality": acq.modality,
                    "photometric": photometric,
                    "bits": acq.bits,
                    "gamma": acq.gamma,
                    "noise_std": acq.noise_std,
                    "border": max(acq.border),
                    "ctr": params.ctr,
                    "shift": shift or "none",
                    "artefacts": "+".join(artefacts),
                }
            )
    write_csv(out / "metadata_global_v2.csv", BRIXIA_COLUMNS, table_rows, sep=";", quote=("BrixiaScore",))
    return pd.DataFrame(latents)
