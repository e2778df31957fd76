"""``medmlops pipeline compile|run``: the pipelines' own command line, beside them (it imports kfp; the core does
not). ``medmlops pipeline ...`` starts it as ``python -m pipelines ...``; it can also be run that way directly."""

from __future__ import annotations

import argparse
from pathlib import Path

from medmlops.commandline import (
    ArgumentParser,
    add_params_args,
    add_version,
    folder,
    output_folder,
    params_from_args,
    run_main,
)
from medmlops.errors import UserError
from medmlops.paths import state_path
from pipelines import PIPELINES


def cmd_compile(args: argparse.Namespace) -> int:
    from pipelines.run import compile_pipeline

    for name in PIPELINES if args.pipeline == "all" else (args.pipeline,):
        out = compile_pipeline(name, Path(args.out) / f"{name}.yaml" if args.out else None)
        print(f"{name}: compiled to {out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from medmlops.pipeline_steps import PIPELINE_EXPERIMENTS, pipeline_summary
    from pipelines.run import run_local, submit

    repo = Path(args.repo).resolve()
    params = params_from_args(args, root=repo)
    for name in args.experiments or ():  # before anything runs or is submitted
        params.experiment(name)
    common = {
        "profile": params.profile,
        "experiments": list(args.experiments or PIPELINE_EXPERIMENTS[args.pipeline]),
        "data_rev": args.data_rev,
        "data_remote": args.data_remote,
    }
    if args.containers and not args.local:
        raise UserError("--containers runs the steps here, in the train image: add --local (a cluster always does)")
    image = params.images.ref("train") if not args.tag else f"{params.images.registry}/{params.images.train}:{args.tag}"
    if args.host or (not args.local and params.kubeflow.host):
        host = args.host or params.kubeflow.host
        arguments = {**common, "image": image, "overrides": [*params.kubeflow.overrides, *args.overrides]}
        run_id = submit(
            args.pipeline, host, arguments, experiment=args.experiment_name or params.kubeflow.experiment,
            run_name=args.run_name, recurring_cron=args.recurring, enable_caching=False if args.no_cache else None,
        )  # fmt: skip
        kind = "recurring run" if args.recurring else "run"
        print(f"{args.pipeline}: submitted to {host} as {kind} {run_id}")
        return 0
    if args.recurring:
        raise UserError(
            "--recurring schedules runs on a cluster: give --host URL (a Kubeflow Pipelines API), not --local"
        )
    if not args.local:
        raise UserError(
            "say where to run: --local (Kubeflow's local runner here) or --host URL (a Kubeflow Pipelines API)"
        )
    from medmlops.data.provision import ensure_raw_data
    from medmlops.registry import tracking

    if not args.data_rev and not args.data_remote:  # the profile's own data version: made here when absent
        ensure_raw_data(params, repo)
    uri = tracking.configure(params.registry, cwd=repo)
    arguments = {**common, "mlflow_uri": uri, "workdir": str(repo), "overrides": list(args.overrides), "nproc": 1}
    if args.containers:
        arguments["image"] = image
    print(
        f"{args.pipeline}: running locally (Kubeflow local runner{', every step in ' + image if args.containers else ''}), "
        f"profile {params.profile}, MLflow {uri}",
        flush=True,
    )
    seconds = run_local(
        args.pipeline,
        arguments,
        repo / state_path(".medmlops/kfp"),
        Path(args.log_dir) if args.log_dir else None,
        containers=args.containers,
    )
    print(f"\n{args.pipeline}: pipeline finished in {seconds:.0f} s")
    for line in pipeline_summary(params, args.pipeline, repo):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="medmlops pipeline", description="Kubeflow pipelines: compile, run, submit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_version(parser)
    psub = parser.add_subparsers(dest="pipeline_command", required=True)
    pc = psub.add_parser("compile", help="compile to pipelines/compiled/NAME.yaml (checked in)")
    pc.add_argument("pipeline", choices=(*PIPELINES, "all"), help="pipeline to compile")
    pc.add_argument("--out", default=None, type=output_folder, help="folder for the YAML (default: pipelines/compiled)")
    pc.add_argument("--repo", default=".", type=folder, help="project root (holds pipelines/ and params.yaml)")
    pc.set_defaults(func=cmd_compile)
    pr = psub.add_parser("run", help="run with Kubeflow's local runner (--local) or submit to a KFP API (--host)")
    pr.add_argument("pipeline", choices=PIPELINES, help="pipeline to run")
    where = pr.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run here, end to end (Kubeflow local runner)")
    where.add_argument("--host", default=None, help="Kubeflow Pipelines API URL (default: params kubeflow.host)")
    pr.add_argument(
        "--experiments", nargs="+", default=None, help="experiments to train (default: the paper's proposed one)"
    )
    pr.add_argument(
        "--data-rev", default="", help="DVC data version: md5, a git revision, or empty for the profile's data.dvc_file"
    )
    pr.add_argument("--data-remote", default="", help="DVC remote (URL or path) to pull that version from")
    pr.add_argument("--tag", default=None, help="train image tag (cluster, --containers; default: params images.tag)")
    pr.add_argument("--experiment-name", default=None, help="KFP experiment (default: params kubeflow.experiment)")
    pr.add_argument("--run-name", default=None, help="KFP run name (default: KFP's)")
    pr.add_argument("--recurring", default=None, metavar="CRON", help="create a recurring run with this cron schedule")
    pr.add_argument(
        "--log-dir", default=None, help="--local: one log file per step here (default .medmlops/kfp/logs/NAME)"
    )
    pr.add_argument(
        "--containers",
        action="store_true",
        help="--local: run every step in the train image (Docker, or podman's Docker API; `make images` first)",
    )
    pr.add_argument("--no-cache", action="store_true", help="disable Kubeflow's step cache for this run")
    pr.add_argument("--repo", default=".", type=folder, help="project root (holds pipelines/ and params.yaml)")
    add_params_args(pr)
    pr.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), argv)
