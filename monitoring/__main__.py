"""``python -m monitoring [options]``: run the monitoring service (what ``medmlops monitor serve`` starts).

Beside the HTTP app because it imports it (FastAPI, uvicorn); the core never does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from medmlops.commandline import PORT, ArgumentParser, add_version, folder, integer, number, run_main
from medmlops.errors import UserError
from medmlops.monitoring.cli import add_db_url_option, add_worker_options
from medmlops.monitoring.service import DEFAULT_MAX_BODY_BYTES, DEFAULT_SAMPLE_P, READ_TOKEN_ENV, TOKEN_ENV

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="medmlops monitor serve",
        description="HTTP service: ingest prediction records, INFORMER flags, dashboard, /metrics",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging of the command line")
    add_version(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (not loopback: needs --token)")
    parser.add_argument("--port", type=PORT, default=8080, help="port to listen on")
    add_db_url_option(parser)
    parser.add_argument(
        "--token", default=None, help=f"bearer token for posting records and labels (default: ${TOKEN_ENV})"
    )
    parser.add_argument(
        "--read-token", default=None, help=f"bearer token for reads (default: ${READ_TOKEN_ENV}; unset: reads are open)"
    )
    parser.add_argument(
        "--max-body-bytes", type=integer(1), default=DEFAULT_MAX_BODY_BYTES,
        help="largest record body accepted (the upload travels base64-encoded: 4/3 of its size)",
    )  # fmt: skip
    parser.add_argument(
        "--flag-window", default="500", type=_flag_window,
        help="window of medmlops_informer_flag_rate: the last N records per family (500) or hours (24h)",
    )  # fmt: skip
    parser.add_argument(
        "--sample-p", type=number(0, 1), default=DEFAULT_SAMPLE_P,
        help="probability with which a record the logit tier does not flag is drawn into the random sample that "
        "workers analyse before the rest under a backlog (the rate estimates weight by it)",
    )  # fmt: skip
    parser.add_argument(
        "--calibration-source", default=None, metavar="MODULE:CALLABLE",
        help="(family, version) -> (contract, calibration) for the logit tier at ingest (default: the registry's)",
    )  # fmt: skip
    parser.add_argument(
        "--no-worker", action="store_true",
        help="run no INFORMER worker in this process: `medmlops monitor worker` processes analyse the records",
    )  # fmt: skip
    add_worker_options(parser)
    parser.add_argument(
        "--worker-nice", type=integer(0, 19), default=10,
        help="CPU niceness added to the INFORMER worker thread (0: none), so serving on the same node comes first",
    )  # fmt: skip
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="uvicorn's and the service's log level")
    parser.add_argument(
        "--repo", default=".", type=folder, help="project root holding monitoring/ (default: here, else the checkout)"
    )
    parser.set_defaults(func=cmd_serve)
    return parser


def _flag_window(text: str) -> str:
    """``--flag-window``: checked as the service will read it (N records or H hours), so a typo is a usage error."""
    from medmlops.monitoring.metrics import parse_flag_window

    try:
        parse_flag_window(text)
    except (UserError, ValueError):
        raise argparse.ArgumentTypeError(
            f"'{text}' must be a count of records (e.g. 500) or hours (e.g. 24h)"
        ) from None
    return text


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
        analyser_factory=args.analyser_factory, calibration_source=args.calibration_source,
        worker_nice=args.worker_nice, no_worker=args.no_worker, lease_s=args.lease_s, max_attempts=args.max_attempts,
        backlog_bound=args.backlog_bound, sample_p=args.sample_p,
    )  # fmt: skip
    check_exposure(settings.host, settings.token)
    import uvicorn

    from monitoring.app import create_app

    registry = ""
    if settings.analyser_factory is None or settings.calibration_source is None:  # MLflow as every command does it
        from medmlops.config import RegistryConfig
        from medmlops.registry import tracking

        registry = f", models from {tracking.configure(RegistryConfig(), cwd=Path.cwd())}"
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


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
