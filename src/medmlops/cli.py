"""The ``medmlops`` command line.

User mistakes (a bad key, a missing file, a failed validation) end with one sentence on stderr and a non-zero
exit code; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from medmlops.config import PROFILES, load_params, save_resolved
from medmlops.errors import UserError, tracking_unreachable

log = logging.getLogger("medmlops")

DATASET_CHOICES = ("ich", "aiforcovid", "brixia", "chexpert")


def _quiet_third_parties() -> None:
    # Telemetry off for every tool we drive (set here, in main(), never at import time).
    for key, value in {
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }.items():
        os.environ.setdefault(key, value)


def _add_params_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--profile", choices=PROFILES, default=None, help="profile of overrides (default: the file's)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param (repeatable)",
    )


def _params(args: argparse.Namespace):
    return load_params(args.params, profile=args.profile, overrides=args.overrides)


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as exc:
        raise UserError(f"--shape '{text}' must be integers separated by commas, e.g. 32,128,128") from exc
    return shape


# ----------------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------------


def cmd_data_generate(args: argparse.Namespace) -> int:
    from medmlops.data.simulate import generate

    params = _params(args)
    targets = DATASET_CHOICES if args.dataset == "all" else (args.dataset,)
    for dataset in targets:
        cfg = getattr(params.data, dataset)
        out = Path(args.out) / dataset if args.dataset == "all" else Path(args.out)
        shape = _parse_shape(args.shape) or cfg.shape
        extra = {"n_valid": cfg.n_valid} if dataset == "chexpert" else {}
        n = args.n if args.n is not None else cfg.n
        seed = args.seed if args.seed is not None else params.data.seed
        generate(dataset, out, n=n, seed=seed, shape=shape, shift=args.shift, progress=not args.quiet, **extra)
        print(f"{dataset}: wrote {n} samples to {out}" + (f" (shift: {args.shift})" if args.shift else ""))
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from medmlops.validation import validate_dataset

    params = _params(args)
    report = validate_dataset(args.dataset, args.dir, params, progress=not args.quiet)
    print(report.summary())
    reports = [Path(args.report)] if args.report else []
    if args.report and Path(args.report).suffix == ".json":
        reports.append(Path(args.report).with_suffix(".html"))
    for path in reports:
        report.write(path)
        print(f"report: {path}")
    return 0 if report.success else 1


def cmd_data_track(args: argparse.Namespace) -> int:
    from medmlops.data import versioning

    params = _params(args)
    repo = Path(args.repo).resolve()
    record = versioning.track(repo, params.data.raw_dir)
    print(f"tracked {params.data.raw_dir} in {record.name} (md5 {versioning.recorded_hash(repo)}); commit it with git")
    if args.push:
        remote = versioning.ensure_remote(repo)
        versioning.push(repo)
        print(f"pushed to the DVC remote '{remote}'")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from medmlops.data.preprocess import preprocess

    params = _params(args)
    path = preprocess(params, args.dataset, raw_root=Path(args.raw) if args.raw else None, progress=not args.quiet)
    print(f"{args.dataset}: preprocessed; manifest {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from medmlops.training.experiment import run_experiment

    params = _params(args)
    exp = params.experiment(args.experiment)
    result = run_experiment(args.experiment, params, progress=not args.quiet, resume=not args.restart)
    print(f"\n{args.experiment}: MLflow run {result.run_id}; outputs in {result.run_dir}")
    for key in sorted(k for k in result.summary if k.endswith("_mean")):
        print(f"  {key[:-5]:<40} {result.summary[key]:.3f} ± {result.summary.get(key[:-5] + '_sd', float('nan')):.3f}")
    register = exp.register if args.register is None else args.register
    if register:
        from medmlops.registry.register import register_experiment

        version = register_experiment(result, params)
        print(f"registered {exp.family} version {version} as @candidate")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    params = _params(args)
    out_dir = Path(args.out) if args.out else None
    if args.protocol == "covid":
        from medmlops.evaluation.covid_report import covid_protocol_report

        out = covid_protocol_report(params, out_dir=out_dir, progress=not args.quiet)
    elif args.experiments:
        from medmlops.evaluation.ich_report import evaluate_experiments

        out = evaluate_experiments(args.experiments, params, out_dir=out_dir, progress=not args.quiet)
    else:
        raise UserError("name the experiments to compare, or --protocol covid")
    print(f"report: {out}")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from medmlops import registry

    params = _params(args)
    registry.configure(params.registry)
    if args.registry_command == "list":
        rows = registry.list_versions(args.family)
        for row in rows:
            print(json.dumps(row, default=str))
        if not rows:
            print(f"{args.family}: no registered versions")
        return 0
    if args.registry_command == "promote":
        gates = params.registry.gates.get(args.family)
        if gates is None:
            raise UserError(f"params.yaml has no registry.gates.{args.family}")
        result = registry.promote(args.family, gates)
    else:
        result = registry.rollback(args.family)
    print(result.message)
    return 0 if result.promoted or args.registry_command == "rollback" else 1


def _pipelines_module(repo: Path):
    """``pipelines/run.py`` of the project at ``repo`` (it lives beside the pipelines: the core never imports kfp)."""
    root = _code_root(repo, "pipelines/run.py")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib

    return importlib.import_module("pipelines.run")


def cmd_pipeline_compile(args: argparse.Namespace) -> int:
    runner = _pipelines_module(Path(args.repo).resolve())
    for name in runner.PIPELINES if args.pipeline == "all" else (args.pipeline,):
        out = runner.compile_pipeline(name, Path(args.out) / f"{name}.yaml" if args.out else None)
        print(f"{name}: compiled to {out}")
    return 0


def cmd_pipeline_run(args: argparse.Namespace) -> int:
    from medmlops.pipeline_steps import PIPELINE_EXPERIMENTS

    repo = Path(args.repo).resolve()
    runner = _pipelines_module(repo)
    params = load_params(repo / args.params, profile=args.profile, overrides=args.overrides)
    common = {
        "profile": params.profile,
        "experiments": list(args.experiments or PIPELINE_EXPERIMENTS[args.pipeline]),
        "data_rev": args.data_rev,
        "data_remote": args.data_remote,
    }
    if args.host or (not args.local and params.kubeflow.host):
        host = args.host or params.kubeflow.host
        image = (
            params.images.ref("train") if not args.tag else f"{params.images.registry}/{params.images.train}:{args.tag}"
        )
        arguments = {**common, "image": image, "overrides": [*params.kubeflow.overrides, *args.overrides]}
        run_id = runner.submit(
            args.pipeline, host, arguments, experiment=args.experiment_name or params.kubeflow.experiment,
            run_name=args.run_name, recurring_cron=args.recurring, enable_caching=False if args.no_cache else None,
        )  # fmt: skip
        kind = "recurring run" if args.recurring else "run"
        print(f"{args.pipeline}: submitted to {host} as {kind} {run_id}")
        return 0
    if not args.local:
        raise UserError(
            "say where to run: --local (Kubeflow's local runner here) or --host URL (a Kubeflow Pipelines API)"
        )
    from medmlops.registry import tracking

    uri = tracking.configure(params.registry, cwd=repo)
    arguments = {**common, "mlflow_uri": uri, "workdir": str(repo), "overrides": list(args.overrides), "nproc": 1}
    print(
        f"{args.pipeline}: running locally (Kubeflow local runner), profile {params.profile}, MLflow {uri}", flush=True
    )
    seconds = runner.run_local(args.pipeline, arguments, repo / ".medmlops" / "kfp")
    print(f"\n{args.pipeline}: pipeline finished in {seconds:.0f} s")
    for line in _pipeline_summary(params, args.pipeline, repo):
        print(line)
    return 0


def _pipeline_summary(params, pipeline: str, repo: Path) -> list[str]:
    """What the newest MLflow pipeline run of ``pipeline`` registered and promoted."""
    from mlflow import MlflowClient

    from medmlops.pipeline_steps import KIND_TAG, PIPELINE_FAMILY
    from medmlops.training.experiment import _experiment_id

    experiment_id = _experiment_id(params, PIPELINE_FAMILY[pipeline], repo)
    runs = MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'pipeline' and tags.pipeline = '{pipeline}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    if not runs:
        return ["no MLflow pipeline run found"]
    tags = runs[0].data.tags
    lines = [f"MLflow pipeline run {runs[0].info.run_id} (data version {tags.get('data_version', '?')})"]
    for key, version in sorted(tags.items()):
        if key.startswith("registered."):
            family = key.split(".", 1)[1]
            promoted = tags.get(f"promoted.{family}") == "true"
            lines.append(
                f"registered {family} version {version} as @candidate"
                + ("; promoted to @champion" if promoted else "; not promoted (gates)")
            )
    return lines


def cmd_pipeline_step(args: argparse.Namespace) -> int:
    """One step of a pipeline outside Kubeflow (what torchrun starts on every rank of a multi-GPU fold)."""
    from medmlops.pipeline_steps import StepContext, train_fold_step

    ctx = StepContext(
        args.workdir, args.profile or "", tuple(args.overrides), os.environ.get("MLFLOW_TRACKING_URI", ""), args.params
    )
    values = train_fold_step(ctx, args.experiment, args.fold, args.job_id, nproc=1)
    if values:
        print(json.dumps(values))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Resolve ``FAMILY@ALIAS`` once, check its model and contract, then run the BentoML server in the foreground."""
    from medmlops import registry
    from medmlops.registry import tracking

    params = _params(args)
    uri = registry.configure(params.registry)
    version = str(tracking.resolve_version(args.family, args.alias).version)  # one sentence if missing
    tracking.load_model(args.family, version)  # refuses a missing or inconsistent model/contract in one sentence
    code_root = _code_root(Path(args.repo).resolve(), "serving/service.py")
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": uri, "MEDMLOPS_FAMILY": args.family, "MEDMLOPS_MODEL_VERSION": version,
        "MEDMLOPS_MAX_UPLOAD_BYTES": str(args.max_upload_bytes), "MEDMLOPS_BATCHING": "0" if args.no_batching else "1",
        "MEDMLOPS_MAX_BATCH_SIZE": str(args.max_batch_size), "MEDMLOPS_MAX_LATENCY_MS": str(args.max_latency_ms),
        "BENTOML_DO_NOT_TRACK": "true", "MONITORING_URL": args.monitoring_url or os.environ.get("MONITORING_URL", ""),
        "MEDMLOPS_SPOOL_DIR": str((Path(args.spool_dir) / args.family).resolve()),
        "MEDMLOPS_ALIAS": "" if args.alias.isdigit() else args.alias, "MEDMLOPS_RELOAD_S": str(args.reload_s),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(code_root), os.environ.get("PYTHONPATH")])),
    }  # fmt: skip
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", "serving.service:Gateway", "--host", args.host, "--port", str(args.port)]
    print(f"serving {args.family} version {version} (alias {args.alias}) on http://{args.host}:{args.port}", flush=True)
    # Become the BentoML server (exec): SIGTERM / Ctrl-C reach its process manager, which stops every worker.
    # (A parent that waits would die on SIGTERM and leave the workers running.)
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(code_root)
    os.execve(command[0], command, env)


def _code_root(repo: Path, marker: str) -> Path:
    """``repo`` when it holds ``marker``, else the checkout medmlops is installed from."""
    if (repo / marker).is_file():
        return repo
    import medmlops

    source = Path(medmlops.__file__).resolve().parents[2]
    if not (source / marker).is_file():
        raise UserError(f"{repo / marker}: not found; run from the project root or pass --repo")
    return source


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    params = _params(args)
    if args.out:
        save_resolved(params, args.out)
    print(yaml.safe_dump(params.to_dict(), sort_keys=False), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medmlops.demo import run_demo, stop_demo

    if args.stop:
        return stop_demo(_params(args), repo=Path(args.repo))
    return run_demo(_params(args), repo=Path(args.repo), progress=not args.quiet, fresh=args.fresh)


# ----------------------------------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medmlops", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="simulate and validate datasets").add_subparsers(
        dest="data_command", required=True
    )
    gen = data.add_parser("generate", help="write a simulated dataset in its public on-disk format")
    gen.add_argument("dataset", choices=(*DATASET_CHOICES, "all"))
    gen.add_argument("--out", required=True, help="output folder (for 'all': one subfolder per dataset)")
    gen.add_argument("--n", type=int, default=None, help="number of samples (default: from params)")
    gen.add_argument("--seed", type=int, default=None, help="seed (default: data.seed)")
    gen.add_argument("--shape", default=None, help="image shape, e.g. 32,128,128 (CT) or 256,256 (X-ray)")
    gen.add_argument("--shift", default=None, choices=("scanner", "intensity", "noise", "population", "corruption"))
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_params_args(gen)
    gen.set_defaults(func=cmd_data_generate)

    val = data.add_parser(
        "validate", help="Great Expectations checks of a dataset's table and images; exit 1 on failure"
    )
    val.add_argument("dataset", choices=DATASET_CHOICES)
    val.add_argument("dir", help="dataset folder")
    val.add_argument("--report", default=None, help="write the report here (.json also writes .html beside it)")
    val.add_argument("--quiet", action="store_true")
    _add_params_args(val)
    val.set_defaults(func=cmd_data_validate)

    trk = data.add_parser("track", help="dvc add data/raw and keep the record as data.dvc at the project root")
    trk.add_argument("--repo", default=".", help="project root")
    trk.add_argument(
        "--push", action="store_true", help="also push to the DVC remote (a local one is configured if none)"
    )
    _add_params_args(trk)
    trk.set_defaults(func=cmd_data_track)

    pre = sub.add_parser("preprocess", help="MONAI preprocessing into the on-disk cache (+ manifest)")
    pre.add_argument("dataset", choices=("ich", "aiforcovid", "brixia", "chexpert"))
    pre.add_argument("--raw", default=None, help="dataset folder (default: data.raw_dir/DATASET)")
    pre.add_argument("--quiet", action="store_true")
    _add_params_args(pre)
    pre.set_defaults(func=cmd_preprocess)

    train = sub.add_parser("train", help="train and evaluate an experiment over CV folds, tracked in MLflow")
    train.add_argument("experiment", help="a key of params.yaml experiments (e.g. ich-mt-ord)")
    reg = train.add_mutually_exclusive_group()
    reg.add_argument("--register", dest="register", action="store_true", default=None, help="register as @candidate")
    reg.add_argument("--no-register", dest="register", action="store_false", help="do not register")
    train.add_argument("--restart", action="store_true", help="ignore checkpoints of an earlier run")
    train.add_argument("--quiet", action="store_true")
    _add_params_args(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="tables and figures across trained experiments (the papers' tables)")
    ev.add_argument("experiments", nargs="*", help="experiment names (trained with the same profile)")
    ev.add_argument(
        "--protocol",
        choices=("covid",),
        default=None,
        help="covid: the MDMT paper's protocol over covid_protocol.backbones × {cv, loco} (trains what is missing)",
    )
    ev.add_argument("--out", default=None, help="report folder (default: reports/<family>/<profile>)")
    ev.add_argument("--quiet", action="store_true")
    _add_params_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    registry = sub.add_parser("registry", help="MLflow model registry: list, promote through the gates, roll back")
    rsub = registry.add_subparsers(dest="registry_command", required=True)
    for command, text in (
        ("list", "versions and aliases"),
        ("promote", "move @champion if the gates pass"),
        ("rollback", "restore the previous champion"),
    ):
        rp = rsub.add_parser(command, help=text)
        rp.add_argument("family", help="registered model name, e.g. ich-prognosis")
        _add_params_args(rp)
        rp.set_defaults(func=cmd_registry)

    pipeline = sub.add_parser("pipeline", help="Kubeflow pipelines: compile, run locally, submit to a cluster")
    psub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    pc = psub.add_parser("compile", help="compile to pipelines/compiled/NAME.yaml (checked in)")
    pc.add_argument("pipeline", choices=("ich", "covid", "cxr", "all"))
    pc.add_argument("--out", default=None, help="folder for the YAML (default: pipelines/compiled)")
    pc.add_argument("--repo", default=".", help="project root (holds pipelines/ and params.yaml)")
    pc.set_defaults(func=cmd_pipeline_compile)
    pr = psub.add_parser("run", help="run with Kubeflow's local runner (--local) or submit to a KFP API (--host)")
    pr.add_argument("pipeline", choices=("ich", "covid", "cxr"))
    where = pr.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run here, end to end (Kubeflow local runner)")
    where.add_argument("--host", default=None, help="Kubeflow Pipelines API URL (default: params kubeflow.host)")
    pr.add_argument(
        "--experiments", nargs="+", default=None, help="experiments to train (default: the paper's proposed one)"
    )
    pr.add_argument("--data-rev", default="", help="DVC data version: md5, a git revision, or empty for data.dvc")
    pr.add_argument("--data-remote", default="", help="DVC remote (URL or path) to pull that version from")
    pr.add_argument("--tag", default=None, help="image tag (cluster; default: params images.tag)")
    pr.add_argument("--experiment-name", default=None, help="KFP experiment (default: params kubeflow.experiment)")
    pr.add_argument("--run-name", default=None)
    pr.add_argument("--recurring", default=None, metavar="CRON", help="create a recurring run with this cron schedule")
    pr.add_argument("--no-cache", action="store_true", help="disable Kubeflow's step cache for this run")
    pr.add_argument("--repo", default=".", help="project root (holds pipelines/ and params.yaml)")
    _add_params_args(pr)
    pr.set_defaults(func=cmd_pipeline_run)
    ps = psub.add_parser("step", help="run one pipeline step here (used by torchrun for multi-GPU folds)")
    ps.add_argument("step", choices=("train-fold",))
    ps.add_argument("experiment")
    ps.add_argument("--fold", type=int, required=True)
    ps.add_argument("--job-id", required=True, help="the Kubeflow job id whose MLflow runs to use")
    ps.add_argument("--workdir", default=".")
    _add_params_args(ps)
    ps.set_defaults(func=cmd_pipeline_step)

    serve = sub.add_parser("serve", help="BentoML HTTP server for FAMILY@ALIAS (POST /predict)")
    serve.add_argument("family", help="registered model: ich-prognosis, covid-prognosis or cxr-findings")
    serve.add_argument("--alias", default="champion")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--max-upload-bytes", type=int, default=64 * 1024 * 1024)
    serve.add_argument("--no-batching", action="store_true", help="turn BentoML's adaptive batching off")
    serve.add_argument("--max-batch-size", type=int, default=16, help="largest adaptive batch")
    serve.add_argument(
        "--max-latency-ms", type=int, default=60_000,
        help="BentoML sheds (503, retry) requests it predicts to wait longer than this; the batching window adapts "
        "far below it",
    )  # fmt: skip
    serve.add_argument("--reload-s", type=float, default=30.0, help="poll the alias this often; 0 = never switch")
    serve.add_argument("--monitoring-url", default=None, help="forward predictions here (default: $MONITORING_URL)")
    serve.add_argument("--spool-dir", default=".medmlops/spool", help="records waiting for monitoring (per family)")
    serve.add_argument("--repo", default=".", help="project root (holds serving/)")
    _add_params_args(serve)
    serve.set_defaults(func=cmd_serve)

    from medmlops.informer.cli import add_informer_parser
    from medmlops.monitoring.cli import add_monitor_parser

    add_informer_parser(sub, _add_params_args)
    add_monitor_parser(sub, _add_params_args)

    config = sub.add_parser("config", help="inspect the configuration").add_subparsers(
        dest="config_command", required=True
    )
    show = config.add_parser("show", help="print the resolved params (after profile and --set)")
    show.add_argument("--out", default=None, help="also write them to this YAML file")
    _add_params_args(show)
    show.set_defaults(func=cmd_config_show)

    demo = sub.add_parser(
        "demo", help="the whole platform here: data, validation, MLflow, pipelines, serving, monitoring, drift"
    )
    demo.add_argument("--repo", default=".", help="project root holding params.yaml, data.dvc, dvc.yaml")
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--stop", action="store_true", help="stop every process a demo started")
    demo.add_argument("--fresh", action="store_true", help="re-run the pipelines even when their models are there")
    _add_params_args(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _quiet_third_parties()
    for noisy in ("great_expectations", "dvc", "urllib3", "matplotlib", "PIL", "monai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library deprecation chatter is for us, not for users of the command line.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"medmlops: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: no traceback; what was written is kept (training resumes from checkpoints)
        print("medmlops: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _environment_error(exc, args)
        if message is None:
            raise
        print(f"medmlops: error: {message}", file=sys.stderr)
        return 1


def _environment_error(exc: Exception, args: argparse.Namespace) -> str | None:
    """One sentence for a failure of the environment rather than of the code (a full or read-only disk, an
    unreachable MLflow server); None for anything else (a bug keeps its traceback)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        # A failed write() carries no file name: name what the command was writing to.
        where = exc.filename or getattr(args, "out", None) or getattr(args, "report", None)
        return (f"{f'{where}: ' if where else ''}{exc.strerror or exc}; files already written are kept: make room or "
                "fix the permissions, then run the command again")  # fmt: skip
    unreachable = tracking_unreachable(exc)
    return None if unreachable is None else str(unreachable)


# A full or read-only disk, a quota, a file size limit, missing permissions: the environment, not a bug.
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM}


if __name__ == "__main__":
    raise SystemExit(main())
