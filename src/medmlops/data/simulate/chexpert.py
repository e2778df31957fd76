"""Synthetic CheXpert (Stanford, 14 report-derived observations; the 5 competition findings are the targets).

Layout written, as in CheXpert-v1.0-small::

    CheXpert-v1.0-small/train.csv
    CheXpert-v1.0-small/valid.csv
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
    CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg     # ~15 % of studies
    CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg     # valid patients follow the train ones

``Path`` is relative to ``out_dir`` and starts with "CheXpert-v1.0-small/" exactly like the real csv. Label codes
in train.csv follow the labeller: 1.0 positive, 0.0 negative, -1.0 uncertain, blank = not mentioned; valid.csv is
radiologist consensus and holds only 0.0/1.0. Labels are per study (a lateral row repeats its frontal's labels).

Each competition finding has a localised geometric signature (so classifiers and saliency methods have
something real to find): Cardiomegaly = cardiothoracic ratio > 0.5; Pleural Effusion = basal meniscus blunting the
costophrenic angle; Consolidation = dense lobar opacity with air bronchograms; Edema = perihilar bat-wing haze +
interstitial/Kerley lines; Atelectasis = plate-like lower-zone band with an elevated hemidiaphragm. Findings are
correlated (cardiomegaly → oedema → effusion), uncertain labels are drawn mostly for mild findings and ~5 % of
the mentioned labels are flipped (report/labeller noise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medmlops.data.simulate._chest_common import CXR_SHIFTS, check_args, rng_for, sigmoid, single_threaded_blas
from medmlops.data.simulate.chest_acquisition import NOISE_SHIFT_FACTOR, Acquisition, acquire, apply_display_shift
from medmlops.data.simulate.chest_findings import (
    draw_support_devices,
    paint_atelectasis,
    paint_edema,
    paint_effusion,
    paint_lobar_consolidation,
)
from medmlops.data.simulate.chest_phantom import ChestPhantom, combine_fill, render_lateral, sample_chest_params
from medmlops.data.simulate.chest_writers import quantize, write_csv, write_jpeg

__all__ = [
    "CHEXPERT_COLUMNS",
    "CHEXPERT_COMPETITION",
    "CHEXPERT_DIR",
    "CHEXPERT_OBSERVATIONS",
    "CXR_SHIFTS",
    "generate_chexpert",
]

CHEXPERT_DIR = "CheXpert-v1.0-small"
CHEXPERT_COLUMNS: tuple[str, ...] = (
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip
CHEXPERT_OBSERVATIONS: tuple[str, ...] = CHEXPERT_COLUMNS[5:]
CHEXPERT_COMPETITION = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
_PATHOLOGIES = tuple(o for o in CHEXPERT_OBSERVATIONS if o not in ("No Finding", "Support Devices"))
VALID_FIRST_PATIENT = 64541  # real CheXpert: train patients 00001–64540, valid 64541–64740
JPEG_QUALITY = 90
LABEL_FLIP_RATE = 0.05

# Stanford's fixed rooms and portable units; portable (AP, ICU) films are noisier and flatter.
_PROFILES: dict[str, Acquisition] = {
    "room-dx-1": Acquisition("room-dx-1", gamma=0.80, gain=1.00, offset=0.02, noise_std=0.010, blur=0.6, bits=8),
    "room-dx-2": Acquisition("room-dx-2", gamma=0.90, gain=0.96, offset=0.04, noise_std=0.013, blur=0.7, bits=8,
                             border=(0.02, 0.02, 0.0, 0.0)),
    "portable-cr": Acquisition("portable-cr", gamma=0.72, gain=0.90, offset=0.07, noise_std=0.020, blur=0.9, bits=8,
                               border=(0.0, 0.0, 0.03, 0.03), size_mean=0.96),
}  # fmt: skip
_SHIFT_PROFILE = Acquisition(
    "new-vendor-dx", gamma=1.5, gain=1.15, offset=-0.08, noise_std=0.03, blur=1.2, bits=8,
    border=(0.08, 0.08, 0.08, 0.08), border_value=1.0, size_mean=0.88,
)  # fmt: skip
_LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")
_LOBE_P = (0.15, 0.15, 0.30, 0.15, 0.25)


def _study_latents(rng: np.random.Generator, age: int, population_shift: bool) -> dict[str, object]:
    """Latent findings of one study (truth, severity in [0.2, 1], geometry)."""
    pop = 1.0 if population_shift else 0.0
    sev = {o: float(rng.uniform(0.2, 1.0)) for o in _PATHOLOGIES + ("Support Devices",)}
    u = rng.random(16)
    truth: dict[str, bool] = {}
    truth["Cardiomegaly"] = bool(u[0] < sigmoid(-1.4 + 0.03 * (age - 60) + pop))
    truth["Edema"] = bool(u[1] < sigmoid(-2.0 + 1.6 * truth["Cardiomegaly"] + pop))
    truth["Pleural Effusion"] = bool(u[2] < sigmoid(-1.8 + 1.1 * truth["Cardiomegaly"] + 1.6 * truth["Edema"] + pop))
    truth["Consolidation"] = bool(u[3] < sigmoid(-1.9 + 0.7 * pop))
    truth["Atelectasis"] = bool(u[4] < sigmoid(-1.7 + 0.8 * truth["Pleural Effusion"] + pop))
    truth["Enlarged Cardiomediastinum"] = bool((truth["Cardiomegaly"] and u[5] < 0.35) or u[5] > 0.95)
    truth["Pneumonia"] = bool((truth["Consolidation"] and u[6] < 0.6) or u[6] > 0.97)
    truth["Lung Opacity"] = bool(truth["Consolidation"] or truth["Edema"] or truth["Atelectasis"] or u[7] < 0.08)
    truth["Lung Lesion"] = bool(u[8] < 0.04)
    truth["Pneumothorax"] = bool(u[9] < 0.05 + 0.03 * pop)
    truth["Pleural Other"] = bool(u[10] < 0.02)
    truth["Fracture"] = bool(u[11] < 0.04)
    sick = truth["Edema"] or truth["Pleural Effusion"] or truth["Consolidation"]
    truth["Support Devices"] = bool(u[12] < sigmoid(-1.2 + 0.8 * sick + 0.5 * pop))
    ap = bool(u[13] < (0.85 if truth["Support Devices"] else 0.6))
    # Effusion laterality: bilateral with oedema (cardiac failure), else mostly right-sided.
    side_u = rng.random(3)
    if (truth["Edema"] and side_u[0] < 0.6) or side_u[0] < 0.25:
        eff_sides = ("right", "left")
    else:
        eff_sides = ("right",) if side_u[1] < 0.6 else ("left",)
    lobe = str(_LOBES[int(rng.choice(len(_LOBES), p=_LOBE_P))])
    atel_side = "left" if side_u[2] < 0.5 else "right"
    return {
        "truth": truth, "severity": sev, "ap": ap, "effusion_sides": eff_sides, "lobe": lobe,
        "atelectasis_side": atel_side, "has_lateral": bool(u[14] < 0.15), "u_profile": float(u[15]),
    }  # fmt: skip


def _train_labels(rng: np.random.Generator, lat: dict[str, object]) -> dict[str, str]:
    """Labeller output: uncertain mostly for mild findings, blanks for unmentioned negatives, ~5 % flips."""
    truth, sev = lat["truth"], lat["severity"]
    labels: dict[str, str] = {}
    for obs in (*_PATHOLOGIES, "Support Devices"):
        r = rng.random(3)
        if truth[obs]:
            value = "-1.0" if sev[obs] < 0.4 and r[0] < 0.6 else "1.0"
        else:
            value = "-1.0" if r[0] < 0.04 else ("0.0" if r[0] < 0.45 else "")
        # Labeller/report noise: flip mentioned labels only (a blank stays "not mentioned").
        if r[1] < LABEL_FLIP_RATE and value in ("0.0", "1.0"):
            value = "0.0" if value == "1.0" else "1.0"
        labels[obs] = value
    mentioned = any(labels[o] in ("1.0", "-1.0") for o in _PATHOLOGIES)
    labels["No Finding"] = "" if mentioned else "1.0"
    return labels


def _valid_labels(lat: dict[str, object]) -> dict[str, str]:
    truth = lat["truth"]
    labels = {o: "1.0" if truth[o] else "0.0" for o in (*_PATHOLOGIES, "Support Devices")}
    labels["No Finding"] = "0.0" if any(truth[o] for o in _PATHOLOGIES) else "1.0"
    return labels


def _frontal(
    shape: tuple[int, int], lat: dict[str, object], rng: np.random.Generator, sex: str, age: int, acq: Acquisition
) -> tuple[np.ndarray, dict[str, object]]:
    truth, sev = lat["truth"], lat["severity"]
    ctr = 0.50 + 0.17 * sev["Cardiomegaly"] if truth["Cardiomegaly"] else None
    raise_amount = (0.04 + 0.06 * sev["Atelectasis"]) if truth["Atelectasis"] else 0.0
    dome_raise = (raise_amount, 0.0) if lat["atelectasis_side"] == "right" else (0.0, raise_amount)
    params = sample_chest_params(
        rng, sex=sex, age=age, size_mean=acq.size_mean, ap=bool(lat["ap"]), ctr=ctr, dome_raise=dome_raise
    )
    ph = ChestPhantom(shape, params, rng)
    fills = []
    if truth["Pleural Effusion"]:
        amount = 0.15 + 0.7 * sev["Pleural Effusion"]
        fills += [paint_effusion(ph, side, amount) for side in lat["effusion_sides"]]
    if truth["Consolidation"]:
        fills.append(paint_lobar_consolidation(ph, rng, str(lat["lobe"]), sev["Consolidation"]))
    if truth["Edema"]:
        fills.append(paint_edema(ph, rng, sev["Edema"]))
    if truth["Atelectasis"]:
        fills.append(paint_atelectasis(ph, rng, str(lat["atelectasis_side"]), sev["Atelectasis"]))
    overlay, devices = draw_support_devices(ph, rng) if truth["Support Devices"] else (None, [])
    return ph.render(combine_fill(*fills), overlay), {"ctr": params.ctr, "devices": "+".join(devices)}


def _lateral(
    shape: tuple[int, int], lat: dict[str, object], rng: np.random.Generator, sex: str, age: int, acq: Acquisition
) -> np.ndarray:
    truth, sev = lat["truth"], lat["severity"]
    ctr = 0.50 + 0.17 * sev["Cardiomegaly"] if truth["Cardiomegaly"] else None
    params = sample_chest_params(rng, sex=sex, age=age, size_mean=acq.size_mean, ctr=ctr)
    return render_lateral(
        shape, params, rng,
        effusion=(0.15 + 0.7 * sev["Pleural Effusion"]) if truth["Pleural Effusion"] else 0.0,
        edema=sev["Edema"] if truth["Edema"] else 0.0,
        consolidation=sev["Consolidation"] if truth["Consolidation"] else 0.0,
        devices=bool(truth["Support Devices"]),
    )  # fmt: skip


def generate_chexpert(
    out_dir: str | Path,
    *,
    n: int = 600,
    seed: int = 0,
    shape: tuple[int, int] = (256, 256),
    shift: str | None = None,
    progress: bool = True,
    n_valid: int | None = None,
) -> pd.DataFrame:
    """Write a synthetic CheXpert-v1.0-small into ``out_dir``.

    Args:
        out_dir: destination folder; the dataset goes to ``out_dir/CheXpert-v1.0-small``.
        n: number of frontal TRAIN images (= train studies), ≥ 4; ~15 % of studies add a lateral image.
        seed: master seed; same arguments → byte-identical files.
        shape: image (rows, cols), each ≥ 32.
        shift: None or one of :data:`CXR_SHIFTS` ("scanner": a new vendor's detector for every image,
            "population": higher prevalence of every finding).
        progress: show a tqdm bar.
        n_valid: number of valid studies (one patient each); default ``max(8, n // 6)``.

    Returns:
        Latent ground truth, one row per image (train and valid, frontal and lateral; not written to disk):
        ``Path``, ``split``, ``view``, ``patient``, ``study``, true findings ``true_<observation>`` (0/1),
        severities ``severity_<finding>`` for the competition findings, ``ctr``, devices drawn, acquisition
        profile, ``shift`` and applied ``artefacts``.

    Raises:
        ValueError: bad ``shift``, ``n``, ``n_valid`` or ``shape``.
    """
    rows_cols = check_args(n, shape, shift)
    n_valid = max(8, n // 6) if n_valid is None else n_valid
    if isinstance(n_valid, bool) or not isinstance(n_valid, (int, np.integer)) or n_valid < 1:
        raise ValueError(f"n_valid must be a positive integer, got {n_valid!r}.")
    out = Path(out_dir)
    base = out / CHEXPERT_DIR
    base.mkdir(parents=True, exist_ok=True)
    profiles = list(_PROFILES)

    # Study plan: (split, index, patient number, study number). Train patients have 1–4 studies.
    plan: list[tuple[str, int, int, int]] = []
    patient, study = 0, 0
    for j in range(n):
        if patient == 0 or study >= 4 or rng_for(seed, "chexpert/plan", j).random() >= 0.25:
            patient, study = patient + 1, 1
        else:
            study += 1
        plan.append(("train", j, patient, study))
    first_valid = max(VALID_FIRST_PATIENT, patient + 1)
    plan += [("valid", k, first_valid + k, 1) for k in range(n_valid)]

    tables: dict[str, list[list[str]]] = {"train": [], "valid": []}
    latents: list[dict[str, object]] = []
    demo: dict[tuple[str, int], tuple[str, int]] = {}
    with single_threaded_blas():
        for split, idx, pnum, snum in tqdm(plan, desc="CheXpert", disable=not progress, unit="study"):
            stream = f"chexpert/{split}"
            rng = rng_for(seed, stream, idx, 0)
            sex_draw, age_draw = rng.random(), int(np.clip(round(rng.normal(61.0, 17.0)), 18, 90))
            if (split, pnum) not in demo:  # patient-level demographics from the first study
                demo[(split, pnum)] = ("Female" if sex_draw < 0.41 else "Male", age_draw)
            sex, age0 = demo[(split, pnum)]
            age = min(90, age0 + (snum - 1))
            lat = _study_latents(rng, age, shift == "population")
            labels = _valid_labels(lat) if split == "valid" else _train_labels(rng_for(seed, stream, idx, 4), lat)
            if shift == "scanner":
                acq = _SHIFT_PROFILE
            elif lat["ap"] and lat["u_profile"] < 0.7:
                acq = _PROFILES["portable-cr"]
            else:
                acq = _PROFILES[profiles[int(lat["u_profile"] * 10) % 2]]
            if shift == "noise":
                acq = acq.with_noise(NOISE_SHIFT_FACTOR)

            views = [("frontal", 1)] + ([("lateral", 2)] if lat["has_lateral"] else [])
            for view, vnum in views:
                rel = f"{CHEXPERT_DIR}/{split}/patient{pnum:05d}/study{snum}/view{vnum}_{view}.jpg"
                rng_img = rng_for(seed, stream, idx, 1 if view == "frontal" else 5)
                sex_code = "F" if sex == "Female" else "M"
                if view == "frontal":
                    att, extra = _frontal(rows_cols, lat, rng_img, sex_code, age, acq)
                else:
                    att, extra = _lateral(rows_cols, lat, rng_img, sex_code, age, acq), {"ctr": np.nan, "devices": ""}
                disp = acquire(att, acq, rng_for(seed, stream, idx, 2 if view == "frontal" else 6))
                corruption_rng = rng_for(seed, stream, idx, 3 if view == "frontal" else 7)
                disp, artefacts = apply_display_shift(disp, shift, corruption_rng)
                path = out / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                write_jpeg(path, quantize(disp, 8), quality=JPEG_QUALITY)

                frontal = view == "frontal"
                cells = {
                    "Path": rel, "Sex": sex, "Age": str(age), "Frontal/Lateral": "Frontal" if frontal else "Lateral",
                    "AP/PA": ("AP" if lat["ap"] else "PA") if frontal else "", **labels,
                }  # fmt: skip
                tables[split].append([cells[c] for c in CHEXPERT_COLUMNS])
                truth, sev = lat["truth"], lat["severity"]
                latents.append(
                    {
                        "Path": rel,
                        "split": split,
                        "view": "Frontal" if frontal else "Lateral",
                        "patient": f"patient{pnum:05d}",
                        "study": snum,
                        "sex": sex,
                        "age": age,
                        "ap_pa": ("AP" if lat["ap"] else "PA") if frontal else "",
                        **{f"true_{o}": int(truth[o]) for o in (*_PATHOLOGIES, "Support Devices")},
                        **{f"severity_{f}": sev[f] if truth[f] else 0.0 for f in CHEXPERT_COMPETITION},
                        "n_findings": int(sum(truth[f] for f in CHEXPERT_COMPETITION)),
                        "ctr": extra["ctr"],
                        "effusion_sides": "+".join(lat["effusion_sides"]) if truth["Pleural Effusion"] else "",
                        "consolidation_lobe": lat["lobe"] if truth["Consolidation"] else "",
                        "atelectasis_side": lat["atelectasis_side"] if truth["Atelectasis"] else "",
                        "devices": extra["devices"],
                        "scanner": acq.name,
                        "gamma": acq.gamma,
                        "noise_std": acq.noise_std,
                        "shift": shift or "none",
                        "artefacts": "+".join(artefacts),
                    }
                )
    write_csv(base / "train.csv", CHEXPERT_COLUMNS, tables["train"])
    write_csv(base / "valid.csv", CHEXPERT_COLUMNS, tables["valid"])
    return pd.DataFrame(latents)
