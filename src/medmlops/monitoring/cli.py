"""``medmlops monitor serve|worker|report``: argument parsing only; ``serve`` starts the HTTP shell (``python -m
monitoring``), ``worker`` the core's saliency workers (:mod:`medmlops.monitoring.pool`), ``report`` the core's drift
report."""

from __future__ import annotations

import argparse
from pathlib import Path

from medmlops.commandline import (
    add_params_args,
    add_shell_parser,
    integer,
    number,
    output_folder,
    params_from_args,
)


def add_db_url_option(parser: argparse.ArgumentParser) -> None:
    """``--db-url``, as every command on the monitoring database takes it (serve, worker, report)."""
    from medmlops.monitoring.store import DB_URL_ENV, DEFAULT_DB_URL

    parser.add_argument(
        "--db-url", default=None, type=_db_url,
        help=f"SQLAlchemy URL of the monitoring database (default: ${DB_URL_ENV}, else {DEFAULT_DB_URL})",
    )  # fmt: skip


def _db_url(text: str) -> str:
    """``--db-url``: a URL SQLAlchemy reads, whose driver is installed (checked before anything is opened)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(text)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise argparse.ArgumentTypeError(
            "not a database URL SQLAlchemy can read: give e.g. sqlite:///monitoring.db or "
            "postgresql+psycopg://user@host/db"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise argparse.ArgumentTypeError(
            f"{url.drivername} needs the Python driver '{exc.name}', which is not installed: install it "
            "(e.g. pip install 'psycopg[binary]') or give another URL"
        ) from None
    return text


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    """The worker's options, shared by ``monitor worker`` and the in-process worker of ``monitor serve``."""
    from medmlops.monitoring.worker import DEFAULT_BACKLOG_BOUND, DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS

    parser.add_argument(
        "--batch-size", type=integer(1), default=8, help="records per claim and INFORMER pass (one version)"
    )
    parser.add_argument(
        "--lease-s", type=number(0, above=True), default=DEFAULT_LEASE_S,
        help="seconds a claim holds its records without renewal (renewed every third while a batch runs); a dead "
        "worker's records go to another after this",
    )  # fmt: skip
    parser.add_argument(
        "--max-attempts", type=integer(1), default=DEFAULT_MAX_ATTEMPTS,
        help="claims of a record (model not loadable, analyser errors, worker deaths) before it is marked failed",
    )  # fmt: skip
    parser.add_argument(
        "--backlog-bound", type=integer(0), default=DEFAULT_BACKLOG_BOUND,
        help="more pending records than this: claim logit-flagged records first, then the random sample, then the "
        "rest (each oldest first)",
    )  # fmt: skip
    parser.add_argument(
        "--analyser-factory", default=None, metavar="MODULE:CALLABLE",
        help="(family, version) -> analyser (default: medmlops.informer.analyser.Analyser.from_registry)",
    )  # fmt: skip


def add_monitor_parser(sub: argparse._SubParsersAction) -> None:

    monitor = sub.add_parser("monitor", help="INFORMER monitoring service and Evidently drift reports")
    msub = monitor.add_subparsers(dest="monitor_command", required=True)
    # The HTTP service's options are parsed by the shell that runs it (monitoring/__main__.py).
    add_shell_parser(msub, "serve", "HTTP service: ingest prediction records, INFORMER flags, dashboard, /metrics")

    worker = msub.add_parser(
        "worker", help="INFORMER (saliency tier) workers: claim pending records from the database and analyse them"
    )
    worker.add_argument("--workers", type=integer(1), default=1, help="worker processes on this machine")
    add_db_url_option(worker)
    add_worker_options(worker)
    worker.add_argument("--device", default=None, help="torch device of the analysers, e.g. cuda (default: cpu)")
    worker.add_argument(
        "--poll-s", type=number(0, above=True), default=1.0, help="seconds between looks at an empty queue"
    )
    worker.add_argument(
        "--nice",
        type=integer(0, 19),
        default=0,
        help="CPU niceness added to the workers (on a node shared with serving)",
    )
    worker.set_defaults(func=cmd_worker)

    report = msub.add_parser("report", help="Evidently drift report of production features vs the reference set")
    report.add_argument(
        "--family", required=True, help="registered model: ich-prognosis, covid-prognosis, cxr-findings"
    )
    report.add_argument(
        "--workspace",
        required=True,
        type=output_folder,
        help="Evidently workspace folder (snapshots for `evidently ui`)",
    )
    add_db_url_option(report)
    report.add_argument("--version", default=None, help="only records predicted by this model version")
    report.add_argument(
        "--since-hours", type=number(0, above=True), default=None, help="only records of the last H hours"
    )
    report.add_argument(
        "--last", type=integer(1), default=None, metavar="N", help="only the newest N processed records"
    )
    report.add_argument(
        "--out", default=None, type=output_folder, metavar="DIR", help="also write the HTML/JSON report files here"
    )
    report.add_argument(
        "--wait-s", type=number(0), default=0.0, metavar="SECONDS",
        help="first wait up to this long for the family's records still pending analysis (default: 0, report "
        "on what is analysed now)",
    )  # fmt: skip
    add_params_args(report)
    report.set_defaults(func=cmd_report)


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    from medmlops.errors import UserError
    from medmlops.monitoring.pool import WorkerOptions, run_pool
    from medmlops.monitoring.store import resolve_db_url
    from medmlops.monitoring.worker import HEARTBEAT_ENV

    if args.workers < 1:
        raise UserError(f"--workers {args.workers} must be at least 1")
    uri = None
    if args.analyser_factory is None:  # the registry's analysers: MLflow resolved as every medmlops command does
        from medmlops.config import RegistryConfig
        from medmlops.registry import tracking

        uri = tracking.configure(RegistryConfig(), cwd=Path.cwd())
    options = WorkerOptions(
        db_url=resolve_db_url(args.db_url), batch_size=args.batch_size, lease_s=args.lease_s,
        max_attempts=args.max_attempts, backlog_bound=args.backlog_bound, poll_s=args.poll_s, nice=args.nice,
        analyser_factory=args.analyser_factory, device=args.device, tracking_uri=uri,
        heartbeat=os.environ.get(HEARTBEAT_ENV) or None, verbose=args.verbose,
    )  # fmt: skip
    return run_pool(options, args.workers)


def cmd_report(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    # The family is checked against the params (the experiments' families and the registry gates), before the
    # monitoring database, the workspace or MLflow is touched: a misspelled name creates nothing. (The registry's
    # contract list would need MLflow reached first, and would call a family without versions yet unknown.)
    params.check_family(args.family)
    from medmlops.monitoring.drift import report_command  # Evidently: imported once the arguments are known good
    from medmlops.registry import tracking

    tracking.configure(params.registry)  # the reference features live with the model version in MLflow
    args.registry = params.registry  # the window's summary is logged against its model version in MLflow
    return int(report_command(args) or 0)
