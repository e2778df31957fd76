"""``medmlops informer calibrate|evaluate``: argument parsing only; the work is in the core modules."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medmlops.commandline import add_params_args, folder, integer, output_folder, params_from_args
from medmlops.data.simulate import SHIFTS


def _add_common(parser: argparse.ArgumentParser, default_alias: str, *, several: bool = False) -> None:
    parser.add_argument("family", help="registered model: cxr-findings, ich-prognosis or covid-prognosis")
    if several:
        parser.add_argument(
            "--alias", "--version", dest="alias", action="append", default=None,
            help=f"alias or version number, repeatable: one version per training seed (default: {default_alias})",
        )  # fmt: skip
    else:
        parser.add_argument(
            "--alias", default=default_alias, help=f"alias or version number (default: {default_alias})"
        )
    parser.add_argument(
        "--method", dest="methods", action="append", default=None, choices=("ixg", "lrp", "gradcam", "ig"),
        help="saliency method (repeatable; the first is the one monitoring uses; default: params informer.methods)",
    )  # fmt: skip
    parser.add_argument("--direction", choices=("low", "high"), default=None, help="which side of tau is uncertain")
    parser.add_argument(
        "--tta", type=integer(0), default=None, help="test-time augmentations of the TTA baseline (0 = off)"
    )
    parser.add_argument("--repo", default=".", type=folder, help="project root (params, preprocessed data)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _settings(args: argparse.Namespace, params) -> dict:
    """Command-line values over params.yaml ``informer:``."""
    cfg = params.informer
    return {
        "methods": tuple(args.methods or cfg.methods),
        "direction": args.direction or cfg.direction,
        "tta_samples": cfg.tta_samples if args.tta is None else args.tta,
    }


def cmd_calibrate(args: argparse.Namespace) -> int:
    from medmlops.informer.calibrate import calibrate_version
    from medmlops.registry import tracking

    params = params_from_args(args)
    params.check_family(args.family)  # first: a misspelled family must not create an MLflow database
    tracking.configure(params.registry, cwd=Path(args.repo))
    calibration = calibrate_version(
        params, args.family, args.alias, **_settings(args, params), step=params.informer.step, repo=Path(args.repo),
        progress=not args.quiet,
    )  # fmt: skip
    method = calibration["method"]
    fit = calibration["methods"][method]
    print(calibration["trained_params_summary"])
    split = calibration["splits"]["calibration"]
    print(f"{args.family} v{calibration['version']}: calibrated on {calibration['n_validation']} images of the "
          f"{split['source']}")  # fmt: skip
    _print_cohort(calibration["splits"])
    print(f"INFORMER-{method} (the paper's flag-and-swap thresholds):")
    for cls, tau in fit["tau"].items():
        print(f"  {cls:<32} tau {'-' if tau is None else f'{tau:.3f}':>7}  val F1 {fit['f1_before'][cls]:.3f} -> "
              f"{fit['f1_after'][cls]:.3f}")  # fmt: skip
    section = calibration["csf"]
    print("confidence scoring functions, validation AUGRC x1000 (cross-fitted where fitted; lower is better):")
    for name, value in sorted(section["augrc"].items(), key=lambda kv: (kv[1] is None, kv[1] or 0.0)):
        mark = "  <- deployed" if name == section["selected"] else ""
        print(f"  {name:<18} {'-' if value is None else f'{value:7.1f}'}{mark}")
    for name, why in section["unavailable"].items():
        print(f"  {name:<18} not ranked: {why}")
    point = section["operating_point"]
    rule = (f"review budget {point['review_budget']:.0%}" if point.get("review_budget") is not None
            else f"target risk {point['target_risk']:.0%}")  # fmt: skip
    coverage = [c for c in point["coverage"] if c is not None]
    risk = [r for r in point["risk"] if r is not None]
    print(f"deployed: {section['selected']} ({section['reason']}); {rule}: validation coverage "
          f"{sum(coverage) / max(len(coverage), 1):.2f}, selective risk {sum(risk) / max(len(risk), 1):.3f} "
          f"(class means); logit tier at ingest: {calibration['logit_tier']['score']}")  # fmt: skip
    return 0


def _print_cohort(splits: dict) -> None:
    """The paper cohort's counts after each exclusion and why a split is not the one the cohort asks for."""
    from medmlops.data.readers import selection_lines

    selection = next((v["selection"] for v in splits.values() if v.get("selection")), None)
    if selection:
        print("CheXpert paper cohort, images left after each exclusion (the paper: 90,839 train, 128 valid, 284 test):")
        for line in selection_lines(selection):
            print(f"  {line}")
    for value in splits.values():
        if value.get("note"):
            print(value["note"])


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medmlops.informer.evaluate import evaluate_versions
    from medmlops.registry import tracking

    params = params_from_args(args)
    params.check_family(args.family)  # first: a misspelled family must not create an MLflow database
    tracking.configure(params.registry, cwd=Path(args.repo))
    summary = evaluate_versions(
        params, args.family, args.alias or ["champion"], **_settings(args, params),
        n_bootstrap=params.informer.n_bootstrap if args.bootstrap is None else args.bootstrap,
        shifts=tuple(params.informer.shifts if args.shift is None else args.shift), out_dir=Path(args.out),
        repo=Path(args.repo), progress=not args.quiet,
    )  # fmt: skip
    for version, one in summary["per_version"].items():
        print(one["trained_params_summary"])
        _print_cohort(one["splits"])
        print(f"{args.family} v{version}: tau from the {one['splits']['calibration']['source']}, tested on the "
              f"{one['splits']['test']['source']} ({one['n_test']} images)")  # fmt: skip
        if one["shifts_absent"]:
            print(f"shifted test sets: {one['shifts_absent']}")
        print(f"{args.family} v{version} (seed {one['seed']}): mean F1 after flag-and-swap on test")
        print(json.dumps(one["mean_f1"], indent=2))
        print(f"INFORMER vs baselines (mean F1 on test): {one['informer_vs_baselines_mean_f1']}")
        print(f"deployed CSF: {one['csf']['selected']} ({one['csf']['reason']}); report: {one['report']}")
    for row in summary["beats_msr"]:
        if row["comparison"] == "selected - MSR":
            print(f"  {row['test_set']:<12} deployed CSF below MSR's AUGRC in {row['n_lower']} of {row['n_versions']} "
                  f"versions ({row['n_lower_ci']} with the CI below 0); mean difference x1000 "
                  f"{row['difference_mean']:+.2f}")  # fmt: skip
    print(f"report: {summary['report']}")
    return 0


def add_informer_parser(sub: argparse._SubParsersAction) -> None:
    informer = sub.add_parser("informer", help="failure detection: calibrate the flags, evaluate them (FD-Shifts)")
    isub = informer.add_subparsers(dest="informer_command", required=True)
    cal = isub.add_parser(
        "calibrate", help="on the validation split: rank the failure scores (CSFs) by AUGRC, set the deployed flag "
        "and the paper's thresholds; store them with the version",
    )  # fmt: skip
    _add_common(cal, "candidate")
    add_params_args(cal)
    cal.set_defaults(func=cmd_calibrate)
    ev = isub.add_parser(
        "evaluate", help="FD-Shifts (AURC, E-AURC, AUGRC of every CSF, i.i.d. and shifted) and the paper's F1 tables"
    )
    _add_common(ev, "champion", several=True)
    ev.add_argument(
        "--bootstrap", type=integer(0), default=None, help="bootstrap test sets (default: params; the paper: 30)"
    )
    ev.add_argument(
        "--shift", action="append", default=None, choices=SHIFTS,
        help="shifted test set from the simulator (repeatable; default: params informer.shifts)",
    )  # fmt: skip
    ev.add_argument("--out", default="reports/informer", type=output_folder, help="output folder")
    add_params_args(ev)
    ev.set_defaults(func=cmd_evaluate)
