"""The MDMT paper's protocol (Ruffini et al.): every backbone × {STL τ1, STL τ2, FT, MDMT} × {5-fold CV, LOCO},
then its tables and figure on whatever data it is given:

- Table S1: per backbone, experiment and validation, ACC / F1 / G-mean on τ1 (mean ± SD over test folds).
- Table 1: the same averaged over backbones.
- Table 2: MDMT vs STL τ1 and MDMT vs FT across backbones — one-sided paired t-test and Wilcoxon on the mean
  (is MDMT higher?) and on the SD over folds (is MDMT lower?), with the paper's stars.
It reports what it measures; on the simulator it says whether MDMT beat STL and FT, it does not assert it.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from medmlops.config import Params
from medmlops.evaluation.stats import paired_tests, stars

EXPERIMENTS = ("covid-stl-prognosis", "covid-stl-severity", "covid-ft", "covid-mdmt")
LABELS = {"covid-stl-prognosis": "STL τ1", "covid-stl-severity": "STL τ2", "covid-ft": "FT", "covid-mdmt": "MDMT"}
METRICS = ("accuracy", "f1", "gmean")


def variant_params(params: Params, backbone: str, validation: str) -> Params:
    """``params`` with every COVID experiment on ``backbone`` and the given validation strategy."""
    experiments = {
        name: dataclasses.replace(exp, backbone=backbone) if exp.dataset == "covid" else exp
        for name, exp in params.experiments.items()
    }
    return dataclasses.replace(params, experiments=experiments).with_train(validation=validation)


def run_protocol(params: Params, *, repo: Path = Path("."), progress: bool = True) -> pd.DataFrame:
    """Train whatever is missing (finished folds are reused) and collect τ1 metrics per variant."""
    from medmlops.training.experiment import run_dir_for, run_experiment

    rows = []
    for backbone in params.covid_protocol.backbones:
        for validation in params.covid_protocol.validations:
            variant = variant_params(params, backbone, validation)
            for name in EXPERIMENTS:  # order matters: FT and MDMT start from the STL checkpoints
                summary_path = run_dir_for(variant, name, repo) / "summary.json"
                if not summary_path.is_file():
                    print(f"== {name} · {backbone} · {validation}", flush=True)
                    run_experiment(name, variant, repo=repo, progress=progress)
                summary = json.loads(summary_path.read_text())
                for metric in METRICS:
                    task = "severity" if name == "covid-stl-severity" else "prognosis"
                    rows.append({
                        "backbone": backbone, "validation": validation, "experiment": name, "task": task,
                        "metric": metric, "mean": summary.get(f"{task}_{metric}_mean", np.nan),
                        "sd": summary.get(f"{task}_{metric}_sd", np.nan),
                    })  # fmt: skip
    return pd.DataFrame(rows)


def _cell(mean: float, sd: float) -> str:
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(mean) else "—"


def table_s1(results: pd.DataFrame) -> pd.DataFrame:
    frame = results.assign(cell=[_cell(m, s) for m, s in zip(results["mean"], results["sd"], strict=True)])
    table = frame.pivot_table(
        index=["backbone", "experiment"], columns=["validation", "metric"], values="cell", aggfunc="first"
    )
    return table.reindex(columns=[(v, m) for v in ("cv", "loco") for m in METRICS if (v, m) in table.columns])


def table_1(results: pd.DataFrame) -> pd.DataFrame:
    tau1 = results[results["task"] == "prognosis"]
    grouped = tau1.groupby(["experiment", "validation", "metric"])["mean"].agg(["mean", "std"]).reset_index()
    grouped["cell"] = [
        _cell(m, s if np.isfinite(s) else 0.0) for m, s in zip(grouped["mean"], grouped["std"], strict=True)
    ]
    table = grouped.pivot_table(index="experiment", columns=["validation", "metric"], values="cell", aggfunc="first")
    return table.rename(index=LABELS)


def table_2(results: pd.DataFrame) -> pd.DataFrame:
    """MDMT vs STL τ1 and vs FT, paired across backbones (one-sided: μ higher, σ lower for MDMT)."""
    rows = []
    tau1 = results[results["task"] == "prognosis"]
    for validation in sorted(tau1["validation"].unique()):
        for other in ("covid-stl-prognosis", "covid-ft"):
            for metric in METRICS:
                a = tau1[(tau1.experiment == "covid-mdmt") & (tau1.validation == validation) & (tau1.metric == metric)]
                b = tau1[(tau1.experiment == other) & (tau1.validation == validation) & (tau1.metric == metric)]
                merged = a.merge(b, on="backbone", suffixes=("_mdmt", "_other"))
                for stat, alternative in (("mean", "greater"), ("sd", "less")):
                    x, y = merged[f"{stat}_mdmt"].to_numpy(), merged[f"{stat}_other"].to_numpy()
                    keep = np.isfinite(x) & np.isfinite(y)
                    test = (
                        paired_tests(x[keep], y[keep], alternative=alternative)
                        if keep.sum() >= 2
                        else {"t_pvalue": np.nan, "wilcoxon_pvalue": np.nan}
                    )
                    rows.append({
                        "validation": validation, "comparison": f"MDMT vs {LABELS[other]}", "metric": metric,
                        "statistic": f"{'μ' if stat == 'mean' else 'σ'} ({alternative})", "n_backbones": int(keep.sum()),
                        "t_p": test["t_pvalue"], "t": stars(test["t_pvalue"]) if np.isfinite(test["t_pvalue"]) else "not tested",
                        "wilcoxon_p": test["wilcoxon_pvalue"],
                        "wilcoxon": stars(test["wilcoxon_pvalue"]) if np.isfinite(test["wilcoxon_pvalue"]) else "not tested",
                    })  # fmt: skip
    return pd.DataFrame(rows)


def verdict(results: pd.DataFrame) -> str:
    """Plain words: mean τ1 F1 / G-mean over backbones of MDMT vs STL τ1 and FT, per validation strategy."""
    parts = []
    tau1 = results[results["task"] == "prognosis"]
    for validation in sorted(tau1["validation"].unique()):
        means = tau1[tau1.validation == validation].groupby(["experiment", "metric"])["mean"].mean()
        for metric in ("f1", "gmean"):
            try:
                m, s, f = (means[(e, metric)] for e in ("covid-mdmt", "covid-stl-prognosis", "covid-ft"))
            except KeyError:
                continue
            parts.append(
                f"{validation} {metric}: MDMT {m:.3f} vs STL {s:.3f} ({'higher' if m > s else 'not higher'}), "
                f"vs FT {f:.3f} ({'higher' if m > f else 'not higher'})"
            )
    return "; ".join(parts) or "no comparable results"


def figure(results: pd.DataFrame, path: Path) -> Path:
    from medmlops.evaluation.figures import pyplot, save_figure

    plt = pyplot()

    tau1 = results[(results["task"] == "prognosis")]
    validations = sorted(tau1["validation"].unique())
    fig, axes = plt.subplots(1, len(validations), figsize=(5.5 * len(validations), 3.6), squeeze=False)
    order = [e for e in EXPERIMENTS if e != "covid-stl-severity"]
    for ax, validation in zip(axes[0], validations, strict=True):
        sub = tau1[tau1.validation == validation]
        for j, metric in enumerate(METRICS):
            for i, name in enumerate(order):
                values = sub[(sub.experiment == name) & (sub.metric == metric)]["mean"].to_numpy()
                x = j * (len(order) + 1) + i
                ax.bar(
                    x, np.nanmean(values) if len(values) else 0, color=f"C{i}", label=LABELS[name] if j == 0 else None
                )
                ax.scatter(np.full(len(values), x), values, color="k", s=8, zorder=3)
        ax.set_xticks(
            [j * (len(order) + 1) + (len(order) - 1) / 2 for j in range(len(METRICS))], [m.upper() for m in METRICS]
        )
        ax.set_ylim(0, 1)
        ax.set_title(
            f"τ1 on AIforCOVID — {validation.upper()} (bars: mean over backbones; dots: backbones)", fontsize=8
        )
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def covid_protocol_report(
    params: Params, *, repo: Path = Path("."), out_dir: Path | None = None, progress: bool = True
) -> Path:
    results = run_protocol(params, repo=repo, progress=progress)
    out = out_dir or repo / "reports" / "covid-prognosis" / params.profile
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "results_long.csv", index=False)
    s1, t1, t2 = table_s1(results), table_1(results), table_2(results)
    s1.to_csv(out / "table_s1.csv")
    t1.to_csv(out / "table_1.csv")
    t2.to_csv(out / "table_2.csv", index=False)
    figure(results, out / "figure_tau1.png")
    text = verdict(results)
    (out / "verdict.txt").write_text(text + "\n")
    index = out / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>MDMT protocol</title><style>body{font-family:sans-serif;"
        "margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}</style></head><body>"
        f"<h1>covid-prognosis — profile {html.escape(params.profile)}</h1><p><b>{html.escape(text)}</b></p>"
        f"<p>Backbones: {html.escape(', '.join(params.covid_protocol.backbones))}</p>"
        "<h2>Table 1 (mean over backbones)</h2>" + t1.to_html()
        + "<h2>Table 2 (paired tests across backbones)</h2>" + t2.to_html(index=False, float_format=lambda v: f"{v:.3g}")
        + "<h2>Table S1</h2>" + s1.to_html() + "<img src='figure_tau1.png' style='max-width:100%'></body></html>",
        encoding="utf-8",
    )  # fmt: skip
    print(text)
    from medmlops.evaluation.ich_report import log_report_to_mlflow

    log_report_to_mlflow(out, params, "covid-prognosis")
    return index
