"""``medmlops monitor serve|report``: argument parsing only; the work is in the core modules."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from medmlops.errors import UserError

log = logging.getLogger("medmlops.monitoring")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def add_monitor_parser(sub: argparse._SubParsersAction, add_params_args: Callable) -> None:
    from medmlops.monitoring.service import DEFAULT_MAX_BODY_BYTES, READ_TOKEN_ENV, TOKEN_ENV
    from medmlops.monitoring.store import DB_URL_ENV, DEFAULT_DB_URL

    monitor = sub.add_parser("monitor", help="INFORMER monitoring service and Evidently drift reports")
    msub = monitor.add_subparsers(dest="monitor_command", required=True)
    db_help = f"SQLAlchemy URL of the monitoring database (default: ${DB_URL_ENV}, else {DEFAULT_DB_URL})"

    serve = msub.add_parser(
        "serve", help="HTTP service: ingest prediction records, INFORMER flags, dashboard, /metrics"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (not loopback: needs --token)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--db-url", default=None, help=db_help)
    serve.add_argument(
        "--token", default=None, help=f"bearer token for posting records and labels (default: ${TOKEN_ENV})"
    )
    serve.add_argument(
        "--read-token", default=None, help=f"bearer token for reads (default: ${READ_TOKEN_ENV}; unset: reads are open)"
    )
    serve.add_argument("--batch-size", type=int, default=8, help="records per INFORMER pass (one model version)")
    serve.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
        help="largest record body accepted (the upload travels base64-encoded: 4/3 of its size)",
    )  # fmt: skip
    serve.add_argument(
        "--flag-window", default="500",
        help="window of medmlops_informer_flag_rate: the last N records per family (500) or hours (24h)",
    )  # fmt: skip
    serve.add_argument(
        "--worker-nice", type=int, default=10,
        help="CPU niceness added to the INFORMER worker thread (0: none), so serving on the same node comes first",
    )  # fmt: skip
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    serve.add_argument(
        "--analyser-factory", default=None, metavar="MODULE:CALLABLE",
        help="(family, version) -> analyser (default: medmlops.informer.analyser.Analyser.from_registry)",
    )  # fmt: skip
    serve.add_argument(
        "--repo", default=".", help="project root holding monitoring/ (default: here, else the checkout)"
    )
    serve.set_defaults(func=cmd_serve)

    report = msub.add_parser("report", help="Evidently drift report of production features vs the reference set")
    report.add_argument(
        "--family", required=True, help="registered model: ich-prognosis, covid-prognosis, cxr-findings"
    )
    report.add_argument("--workspace", required=True, help="Evidently workspace folder (snapshots for `evidently ui`)")
    report.add_argument("--db-url", default=None, help=db_help)
    report.add_argument("--version", default=None, help="only records predicted by this model version")
    report.add_argument("--since-hours", type=float, default=None, help="only records of the last H hours")
    report.add_argument("--last", type=int, default=None, metavar="N", help="only the newest N processed records")
    report.add_argument("--out", default=None, metavar="DIR", help="also write the HTML/JSON report files here")
    add_params_args(report)
    report.set_defaults(func=cmd_report)


class _Stopped(Exception):
    """SIGTERM after uvicorn's graceful shutdown (it re-raises the signal once it has finished)."""


def _stopped(_signum: int, _frame: object) -> None:
    raise _Stopped


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the monitoring service in the foreground until SIGTERM or Ctrl-C (worker stopped, database closed)."""
    from sqlalchemy.engine import make_url

    from medmlops.monitoring.service import READ_TOKEN_ENV, TOKEN_ENV, Monitor, Settings, check_exposure
    from medmlops.monitoring.store import resolve_db_url

    settings = Settings(
        db_url=resolve_db_url(args.db_url), host=args.host, port=args.port,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        read_token=args.read_token or os.environ.get(READ_TOKEN_ENV) or None,
        batch_size=args.batch_size, max_body_bytes=args.max_body_bytes, flag_window=args.flag_window,
        analyser_factory=args.analyser_factory, worker_nice=args.worker_nice,
    )  # fmt: skip
    check_exposure(settings.host, settings.token)
    from medmlops.cli import _code_root

    root = _code_root(Path(args.repo).resolve(), "monitoring/app.py")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import uvicorn

    from monitoring.app import create_app

    if settings.analyser_factory is None:  # the registry's analyser: MLflow as `medmlops` resolves it elsewhere
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / '.medmlops' / 'mlflow.db'}")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("medmlops").setLevel(args.log_level.upper())
    monitor = Monitor(settings)
    app = create_app(monitor)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=args.log_level, log_config=None,
        access_log=args.log_level == "debug", timeout_graceful_shutdown=30, server_header=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    database = make_url(settings.db_url).render_as_string(hide_password=True)
    registry = "" if settings.analyser_factory else f", models from {os.environ['MLFLOW_TRACKING_URI']}"
    print(
        f"monitoring on http://{host}:{settings.port} (dashboard /dashboard, database {database}{registry})", flush=True
    )
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run()
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise UserError(f"the monitoring service could not listen on {host}:{settings.port} (see the log above)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from medmlops.cli import _params
    from medmlops.monitoring.drift import report_command
    from medmlops.registry import tracking

    tracking.configure(_params(args).registry)  # the reference features live with the model version in MLflow
    return int(report_command(args) or 0)
