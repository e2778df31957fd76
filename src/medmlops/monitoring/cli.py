"""``medmlops monitor serve|report``: argument parsing only; ``serve`` starts the HTTP shell (``python -m monitoring``),
``report`` calls the core's drift report."""

from __future__ import annotations

import argparse

from medmlops.commandline import add_params_args, add_shell_parser, params_from_args


def add_monitor_parser(sub: argparse._SubParsersAction) -> None:
    from medmlops.monitoring.store import DB_URL_ENV, DEFAULT_DB_URL

    monitor = sub.add_parser("monitor", help="INFORMER monitoring service and Evidently drift reports")
    msub = monitor.add_subparsers(dest="monitor_command", required=True)
    db_help = f"SQLAlchemy URL of the monitoring database (default: ${DB_URL_ENV}, else {DEFAULT_DB_URL})"
    # The HTTP service's options are parsed by the shell that runs it (monitoring/__main__.py).
    add_shell_parser(msub, "serve", "HTTP service: ingest prediction records, INFORMER flags, dashboard, /metrics")

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


def cmd_report(args: argparse.Namespace) -> int:
    from medmlops.monitoring.drift import report_command
    from medmlops.registry import tracking

    tracking.configure(params_from_args(args).registry)  # the reference features live with the model version in MLflow
    return int(report_command(args) or 0)
