"""The ``medmlops`` command line.

User mistakes (a bad key, a missing file, a failed validation) end with one sentence on stderr and a non-zero
exit code; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from medmlops.commandline import (
    PORT,
    ArgumentParser,
    add_params_args,
    add_shell_parser,
    add_version,
    code_root,
    folder,
    integer,
    number,
    output_file,
    output_folder,
    params_from_args,
    profile_from_args,
    run_main,
)
from medmlops.config import Params, save_resolved
from medmlops.data.simulate import LIMITS, SHIFTS
from medmlops.errors import UserError
from medmlops.inference.forwarding import DEFAULT_SPOOL_DIR
from medmlops.paths import state_path

log = logging.getLogger("medmlops")

DATASET_CHOICES = ("ich", "aiforcovid", "brixia", "chexpert")


def _shape(text: str) -> tuple[int, ...]:
    """``--shape``: positive integers separated by commas or ``x`` (32,128,128 or 32x128x128)."""
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be positive integers separated by commas, e.g. 32,128,128")
    return shape


def _check_generate_args(dataset: str, args: argparse.Namespace, params) -> None:
    """One sentence naming the flag (or the param) when the sample count or the shape is outside what ``dataset``'s
    simulator accepts: checked for every dataset before any is written."""
    limits = LIMITS[dataset]
    least, dims, size, example = limits.min_n, limits.dims, limits.min_size, limits.example
    cfg = getattr(params.data, dataset)
    n, n_from = (args.n, "--n") if args.n is not None else (cfg.n, f"params data.{dataset}.n")
    shape, shape_from = (
        (args.shape, "--shape") if args.shape is not None else (cfg.shape, f"params data.{dataset}.shape")
    )
    if n < least:
        raise UserError(f"{n_from} {n}: the {dataset} simulator needs at least {least} samples")
    if len(shape) != dims or min(shape) < size:
        raise UserError(
            f"{shape_from} {'x'.join(map(str, shape))}: {dataset} images need {dims} sizes of at least {size}, "
            f"e.g. {example}"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------------


def cmd_data_generate(args: argparse.Namespace) -> int:
    from medmlops.data.simulate import generate

    params = params_from_args(args)
    targets = DATASET_CHOICES if args.dataset == "all" else (args.dataset,)
    if args.dataset == "all" and args.shape is not None:
        raise UserError("--shape cannot apply to 'all' (CT volumes and X-rays differ): generate one dataset at a time")
    for dataset in targets:  # every dataset checked before any is written
        _check_generate_args(dataset, args, params)
    for dataset in targets:
        cfg = getattr(params.data, dataset)
        out = Path(args.out) / dataset if args.dataset == "all" else Path(args.out)
        shape = args.shape or cfg.shape
        extra = {"n_valid": cfg.n_valid} if dataset == "chexpert" else {}
        n = args.n if args.n is not None else cfg.n
        seed = args.seed if args.seed is not None else params.data.seed
        generate(dataset, out, n=n, seed=seed, shape=shape, shift=args.shift, progress=not args.quiet, **extra)
        print(f"{dataset}: wrote {n} samples to {out}" + (f" (shift: {args.shift})" if args.shift else ""))
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from medmlops.validation import validate_dataset

    params = params_from_args(args)
    report = validate_dataset(args.dataset, args.dir, params, progress=not args.quiet)
    print(report.summary())
    reports = [Path(args.report)] if args.report else []
    if args.report and Path(args.report).suffix == ".json":
        reports.append(Path(args.report).with_suffix(".html"))
    for path in reports:
        report.write(path)
        print(f"report: {path}")
    return 0 if report.success else 1


def cmd_data_get(args: argparse.Namespace) -> int:
    """Make the profile's data.raw_dir hold its data (what train, preprocess and the demo do first)."""
    from medmlops.data.provision import ensure_raw_data

    params = params_from_args(args)
    how = ensure_raw_data(params, Path(args.repo).resolve(), progress=not args.quiet, verify=args.verify)
    if how.startswith("present"):
        print(f"data: {params.data.raw_dir} {how}")
    return 0


def cmd_data_track(args: argparse.Namespace) -> int:
    from medmlops.data import versioning

    params = params_from_args(args)
    repo = Path(args.repo).resolve()
    record = versioning.track(repo, params.data.raw_dir, params.data.dvc_file)
    md5 = versioning.recorded_hash(repo, params.data.dvc_file)
    print(f"tracked {params.data.raw_dir} in {record.name} (md5 {md5}); commit it with git")
    if args.push:
        remote = versioning.ensure_remote(repo)
        versioning.push(repo, params.data.dvc_file)
        print(f"pushed to the DVC remote '{remote}'")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from medmlops.data.preprocess import preprocess
    from medmlops.data.provision import ensure_raw_data

    params = params_from_args(args)
    if not args.raw:
        ensure_raw_data(params, progress=not args.quiet)
    path = preprocess(params, args.dataset, raw_root=Path(args.raw) if args.raw else None, progress=not args.quiet)
    print(f"{args.dataset}: preprocessed; manifest {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from medmlops.data.provision import ensure_raw_data
    from medmlops.registry import tracking
    from medmlops.training.experiment import run_experiment

    params = params_from_args(args)
    exp = params.experiment(args.experiment)  # first: a misspelled name must not create anything
    tracking.configure(params.registry)
    ensure_raw_data(params, progress=not args.quiet)
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
    from medmlops.data.provision import ensure_raw_data
    from medmlops.registry import tracking

    params = params_from_args(args)
    for name in args.experiments:  # first: a misspelled name must not create anything
        params.experiment(name)
    if args.protocol == "covid" and args.experiments:
        raise UserError("name experiments or give --protocol covid, not both")
    if args.protocol != "covid" and not args.experiments:
        raise UserError("name the experiments to compare (keys of params experiments), or give --protocol covid")
    tracking.configure(params.registry)
    ensure_raw_data(params, progress=not args.quiet)  # the test sets are read from the raw data
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

    params = params_from_args(args)
    params.check_family(args.family)  # first: a misspelled family must not create an MLflow database
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


def cmd_pipeline_step(args: argparse.Namespace) -> int:
    """One step of a pipeline outside Kubeflow (what torchrun starts on every rank of a multi-GPU fold)."""
    from medmlops.pipeline_steps import StepContext, train_fold_step

    ctx = StepContext(
        args.workdir,
        profile_from_args(args) or "",
        tuple(args.overrides),
        os.environ.get("MLFLOW_TRACKING_URI", ""),
        args.params,
    )
    values = train_fold_step(ctx, args.experiment, args.fold, args.job_id, nproc=1)
    if values:
        print(json.dumps(values))
    return 0


def cmd_weights_check(args: argparse.Namespace) -> int:
    """Where each backbone's ImageNet weights are (the store, a library cache, missing) and who needs them."""
    from medmlops.models.backbones import check_loads
    from medmlops.models.weights import make_command, weights_plan

    params = params_from_args(args)
    names = args.experiments or list(params.experiments)
    for name in names:  # first: a misspelled name answers 'did you mean' before anything is read
        params.experiment(name)
    entries, skipped = weights_plan(params, names, repo=Path(args.repo))
    if args.load:
        check_loads(entries)
    for entry in entries:
        source = entry.source
        if entry.problem:
            state = "DOES NOT FIT"
        elif source.found:
            state = f"present ({source.origin})"
        else:
            state = "MISSING" if entry.needed_by else "missing"
        shown = source.path if source.found else source.expected
        users = ", ".join(entry.needed_by) or f"not needed (pretrained off for {', '.join(entry.unused_by)})"
        print(f"{source.name:<24} {state:<34} {shown}\n{'':<24} used by: {users}")
        if entry.problem:
            print(f"{'':<24} {entry.problem}")
        elif not source.found and not entry.explicit:
            print(f"{'':<24} make it: {make_command(source.name)}, then copy it to {source.expected}")
    for why in dict.fromkeys(skipped.values()):
        print(f"no ImageNet file ({why}): {', '.join(n for n, w in skipped.items() if w == why)}")
    bad = [e.source.name for e in entries if e.missing]
    if bad:
        raise UserError(
            f"the ImageNet weights of {len(bad)} backbone{'s' if len(bad) > 1 else ''} that training loads are "
            f"missing or do not fit ({', '.join(bad)}): make them with the commands above on a machine with internet "
            "access (docs/models.md), or set train.pretrained to false"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Resolve ``FAMILY@ALIAS`` once, check its model and contract, then run the BentoML server in the foreground."""
    from medmlops import registry
    from medmlops.inference.forwarding import prepare_spool
    from medmlops.registry import tracking

    params = params_from_args(args)
    params.check_family(args.family)  # before any side effect: a misspelled family creates no spool, no database
    monitoring_url = args.monitoring_url or os.environ.get("MONITORING_URL", "")
    spool = (Path(args.spool_dir) / args.family).resolve()
    if monitoring_url:  # next: a spool the server's worker cannot use makes it restart forever, answering nothing
        prepare_spool(spool)
    uri = registry.configure(params.registry)
    version = str(tracking.resolve_version(args.family, args.alias).version)  # one sentence if missing
    tracking.load_model(args.family, version)  # refuses a missing or inconsistent model/contract in one sentence
    root = code_root(Path(args.repo), "serving/service.py")
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": uri, "MEDMLOPS_FAMILY": args.family, "MEDMLOPS_MODEL_VERSION": version,
        "MEDMLOPS_MAX_UPLOAD_BYTES": str(args.max_upload_bytes), "MEDMLOPS_BATCHING": "0" if args.no_batching else "1",
        "MEDMLOPS_MAX_BATCH_SIZE": str(args.max_batch_size), "MEDMLOPS_MAX_LATENCY_MS": str(args.max_latency_ms),
        "BENTOML_DO_NOT_TRACK": "true", "MONITORING_URL": monitoring_url, "MEDMLOPS_SPOOL_DIR": str(spool),
        "MEDMLOPS_ALIAS": "" if args.alias.isdigit() else args.alias, "MEDMLOPS_RELOAD_S": str(args.reload_s),
        "MEDMLOPS_BODY_TIMEOUT_S": str(params.serving.body_timeout_s),
        "MEDMLOPS_MAX_DECODING": str(params.serving.max_concurrent_preprocessing),
        "MEDMLOPS_MAX_ZIP_ENTRIES": str(params.serving.max_zip_entries),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }  # fmt: skip
    bentoml = Path(sys.executable).with_name("bentoml")
    command = [str(bentoml), "serve", "serving.service:Gateway", "--host", args.host, "--port", str(args.port)]
    print(f"serving {args.family} version {version} (alias {args.alias}) on http://{args.host}:{args.port}", flush=True)
    # Become the BentoML server (exec): SIGTERM / Ctrl-C reach its process manager, which stops every worker.
    # (A parent that waits would die on SIGTERM and leave the workers running.)
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(root)
    os.execve(command[0], command, env)


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    params = params_from_args(args)
    if args.experiment:
        params.experiment(args.experiment)  # an unknown name is a one-line error with the closest name
        print(experiment_config_yaml(params, args.experiment), end="")
        if args.out:
            save_resolved(params.for_experiment(args.experiment), args.out)
        return 0
    if args.out:
        save_resolved(params, args.out)
    print(yaml.safe_dump(params.to_dict(), sort_keys=False), end="")
    return 0


def experiment_config_yaml(params: Params, name: str) -> str:
    """What experiment ``name`` runs with, as YAML: its ``experiments:`` entry, its resolved ``train:`` settings with
    the layer each value comes from as a comment, and the data and preprocessing of its dataset."""
    import dataclasses

    import yaml

    def flow(value: object) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()

    exp = params.experiment(name)
    train, sources = params.train_for(name), params.train_sources(name)
    lines = [
        f"# experiment {name} (profile {params.profile}): train: keys, then train.families.{exp.family}, then "
        f"experiments.{name}.train; a --set train.KEY is the last word",
        yaml.safe_dump(
            {"experiments": {name: dataclasses.asdict(exp) | {"loss": exp.loss_reduction}}}, sort_keys=False
        ).rstrip(),  # fmt: skip
        "train:",
    ]
    for field in dataclasses.fields(train):
        if field.name == "families":
            continue
        text = f"  {field.name}: {flow(getattr(train, field.name))}"
        where = sources[field.name]
        lines.append(f"{text:<40}# {where}" if where != "train" else text)
    dataset = "chexpert" if exp.dataset == "chexpert" else exp.dataset
    section = {"preprocess": {dataset: dataclasses.asdict(getattr(params.preprocess, dataset))}}
    lines.append(yaml.safe_dump(section, sort_keys=False).rstrip())
    return "\n".join(lines) + "\n"


def cmd_demo(args: argparse.Namespace) -> int:
    from medmlops.demo import run_demo, stop_demo

    if args.stop:
        return stop_demo(params_from_args(args), repo=Path(args.repo))
    progress = not args.quiet and sys.stderr.isatty()  # progress bars only where a terminal shows them
    return run_demo(params_from_args(args), repo=Path(args.repo), progress=progress, fresh=args.fresh)


# ----------------------------------------------------------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="medmlops", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="simulate and validate datasets").add_subparsers(
        dest="data_command", required=True
    )
    gen = data.add_parser("generate", help="write a simulated dataset in its public on-disk format")
    gen.add_argument("dataset", choices=(*DATASET_CHOICES, "all"))
    gen.add_argument(
        "--out", required=True, type=output_folder, help="output folder (for 'all': one subfolder per dataset)"
    )
    gen.add_argument("--n", type=integer(1), default=None, help="number of samples (default: params data.DATASET.n)")
    gen.add_argument("--seed", type=integer(0), default=None, help="simulator seed (default: params data.seed)")
    gen.add_argument(
        "--shape", type=_shape, default=None,
        help="image shape, e.g. 32,128,128 (CT) or 256,256 (X-ray) (default: params data.DATASET.shape)",
    )  # fmt: skip
    gen.add_argument(
        "--shift", default=None, choices=SHIFTS,
        help="simulate drifted production data (default: none)",
    )  # fmt: skip
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    add_params_args(gen)
    gen.set_defaults(func=cmd_data_generate)

    val = data.add_parser(
        "validate", help="Great Expectations checks of a dataset's table and images; exit 1 on failure"
    )
    val.add_argument("dataset", choices=DATASET_CHOICES)
    val.add_argument("dir", help="dataset folder")
    val.add_argument(
        "--report", default=None, type=output_file, help="write the report here (.json also writes .html beside it)"
    )
    val.add_argument("--quiet", action="store_true", help="no progress bars")
    add_params_args(val)
    val.set_defaults(func=cmd_data_validate)

    get = data.add_parser(
        "get",
        help="make the profile's data.raw_dir hold its data: kept when there, else pulled from the DVC remote, else "
        "generated (simulated profiles only), checked against the profile's record",
    )  # fmt: skip
    get.add_argument("--repo", default=".", type=folder, help="project root")
    get.add_argument("--verify", action="store_true", help="also check data already there against the profile's record")
    get.add_argument("--quiet", action="store_true", help="no progress bars")
    add_params_args(get)
    get.set_defaults(func=cmd_data_get)

    trk = data.add_parser(
        "track", help="dvc add the profile's data.raw_dir and keep its record (data.dvc_file) at the project root"
    )
    trk.add_argument("--repo", default=".", type=folder, help="project root")
    trk.add_argument(
        "--push", action="store_true", help="also push to the DVC remote (a local one is configured if none)"
    )
    add_params_args(trk)
    trk.set_defaults(func=cmd_data_track)

    pre = sub.add_parser("preprocess", help="MONAI preprocessing into the on-disk cache (+ manifest)")
    pre.add_argument("dataset", choices=DATASET_CHOICES)
    pre.add_argument("--raw", default=None, help="dataset folder (default: data.raw_dir/DATASET)")
    pre.add_argument("--quiet", action="store_true", help="no progress bars")
    add_params_args(pre)
    pre.set_defaults(func=cmd_preprocess)

    train = sub.add_parser("train", help="train and evaluate an experiment over CV folds, tracked in MLflow")
    train.add_argument("experiment", help="a key of params.yaml experiments (e.g. ich-mt-ord)")
    reg = train.add_mutually_exclusive_group()
    reg.add_argument("--register", dest="register", action="store_true", default=None, help="register as @candidate")
    reg.add_argument("--no-register", dest="register", action="store_false", help="do not register")
    train.add_argument("--restart", action="store_true", help="ignore checkpoints of an earlier run")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    add_params_args(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="tables and figures across trained experiments (the papers' tables)")
    ev.add_argument("experiments", nargs="*", help="experiment names (trained with the same profile)")
    ev.add_argument(
        "--protocol",
        choices=("covid",),
        default=None,
        help="covid: the MDMT paper's protocol over covid_protocol.backbones × {cv, loco} (trains what is missing)",
    )
    ev.add_argument(
        "--out", default=None, type=output_folder, help="report folder (default: reports/<family>/<profile>)"
    )
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    add_params_args(ev)
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
        add_params_args(rp)
        rp.set_defaults(func=cmd_registry)

    pipeline = sub.add_parser("pipeline", help="Kubeflow pipelines: compile, run locally, submit to a cluster")
    psub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    for command, text in (
        ("compile", "compile to pipelines/compiled/NAME.yaml (checked in)"),
        ("run", "run with Kubeflow's local runner (--local) or submit to a KFP API (--host)"),
    ):
        add_shell_parser(psub, command, text)
    ps = psub.add_parser("step", help="run one pipeline step here (used by torchrun for multi-GPU folds)")
    ps.add_argument("step", choices=("train-fold",))
    ps.add_argument("experiment")
    ps.add_argument("--fold", type=integer(0), required=True, help="fold index, from 0")
    ps.add_argument("--job-id", required=True, help="the Kubeflow job id whose MLflow runs to use")
    ps.add_argument("--workdir", default=".", type=folder, help="project root the step works in")
    add_params_args(ps)
    ps.set_defaults(func=cmd_pipeline_step)

    serve = sub.add_parser("serve", help="BentoML HTTP server for FAMILY@ALIAS (POST /predict)")
    serve.add_argument("family", help="registered model: ich-prognosis, covid-prognosis or cxr-findings")
    serve.add_argument("--alias", default="champion", help="alias or version number to serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=PORT, default=3000, help="port to listen on")
    serve.add_argument("--max-upload-bytes", type=integer(1), default=64 * 1024 * 1024, help="largest upload accepted")
    serve.add_argument("--no-batching", action="store_true", help="turn BentoML's adaptive batching off")
    serve.add_argument("--max-batch-size", type=integer(1), default=16, help="largest adaptive batch")
    serve.add_argument(
        "--max-latency-ms", type=integer(1), default=60_000,
        help="BentoML sheds (503, retry) requests it predicts to wait longer than this; the batching window adapts "
        "far below it",
    )  # fmt: skip
    serve.add_argument(
        "--reload-s", type=number(0), default=30.0, help="poll the alias this often, in seconds; 0 = never switch"
    )
    serve.add_argument("--monitoring-url", default=None, help="forward predictions here (default: $MONITORING_URL)")
    # --spool-dir: checked by prepare_spool, which names the file in the way and the fix
    serve.add_argument(
        "--spool-dir", default=state_path(DEFAULT_SPOOL_DIR), help="records waiting for monitoring (per family)"
    )
    serve.add_argument("--repo", default=".", type=folder, help="project root (holds serving/)")
    add_params_args(serve)
    serve.set_defaults(func=cmd_serve)

    weights = sub.add_parser(
        "weights", help="the local ImageNet weights store of the 2D backbones (train.weights_dir, docs/models.md)"
    ).add_subparsers(dest="weights_command", required=True)
    wcheck = weights.add_parser(
        "check",
        help="for every backbone the experiments (and covid_protocol) would load: the file expected, whether it is "
        "in the store or a library cache; exit 1 when one that train.pretrained needs is missing",
    )  # fmt: skip
    wcheck.add_argument(
        "--experiment", dest="experiments", action="append", default=[], metavar="NAME",
        help="only this experiment (repeatable; default: all of params experiments)",
    )  # fmt: skip
    wcheck.add_argument("--load", action="store_true", help="also load every file found into its backbone (slower)")
    wcheck.add_argument("--repo", default=".", type=folder, help="project root (relative weights paths are under it)")
    add_params_args(wcheck)
    wcheck.set_defaults(func=cmd_weights_check)

    from medmlops.informer.cli import add_informer_parser
    from medmlops.monitoring.cli import add_monitor_parser

    add_informer_parser(sub)
    add_monitor_parser(sub)

    config = sub.add_parser("config", help="inspect the configuration").add_subparsers(
        dest="config_command", required=True
    )
    show = config.add_parser("show", help="print the resolved params (after profile and --set)")
    show.add_argument("--out", default=None, type=output_file, help="also write them to this YAML file")
    show.add_argument(
        "--experiment", default=None, metavar="NAME",
        help="show what this experiment runs with: its entry, its training settings and where each comes from",
    )  # fmt: skip
    add_params_args(show)
    show.set_defaults(func=cmd_config_show)

    demo = sub.add_parser(
        "demo", help="the whole platform here: data, validation, MLflow, pipelines, serving, monitoring, drift"
    )
    demo.add_argument(
        "--repo", default=".", type=folder, help="project root holding params.yaml, the data records, dvc.yaml"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--stop", action="store_true", help="stop every process a demo started")
    demo.add_argument("--fresh", action="store_true", help="re-run the pipelines even when their models are there")
    add_params_args(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
