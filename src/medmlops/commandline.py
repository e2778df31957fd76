"""What every command line of the project shares: the core's ``medmlops`` and the shells' own entry points
(``python -m pipelines``, ``python -m monitoring``), which ``medmlops`` starts as processes.

- :func:`add_params_args` / :func:`params_from_args`: ``--params``, ``--profile`` and ``--set`` the same way everywhere;
- :func:`run_command`: user mistakes and environment failures end in one sentence and exit 1, Ctrl-C in exit 130,
  bugs keep their traceback;
- :func:`code_root` / :func:`shell_command`: where a shell's code is, and the command that starts it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.metadata
import logging
import math
import os
import re
import signal
import subprocess
import sys
import typing
import warnings
from collections.abc import Callable
from pathlib import Path

from medmlops.config import PROFILES, Params, load_params
from medmlops.errors import UserError, did_you_mean, tracking_unreachable, unknown_name

# A full or read-only disk, a quota, a file size limit, missing permissions: the environment, not a bug.
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM}
_NOISY_LOGGERS = ("great_expectations", "dvc", "urllib3", "matplotlib", "PIL", "monai")


PROFILE_ENV = "MEDMLOPS_PROFILE"  # the profile when --profile is not given (a shell session at one profile)


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless the help text already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or default == []
            or isinstance(action, argparse._VersionAction)
        ):
            return action.help
        return f"{text} (default: %(default)s)".strip()


class ArgumentParser(argparse.ArgumentParser):
    """The parser of every entry point: a usage error is one sentence naming the fix, and exit 1 (the project's
    error contract), not argparse's usage block and exit 2; an invalid choice gets the closest valid one.
    Sub-commands inherit the class (``add_subparsers`` makes its parsers with ``type(self)``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        found = re.search(r"invalid choice: '(.*?)' \(choose from (.*)\)$", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            message = (f"{message[: found.start()]}invalid choice '{found.group(1)}'"
                       f"{did_you_mean(found.group(1), choices)} (choose from {', '.join(choices)})")  # fmt: skip
        if message.startswith("the following arguments are required: "):
            for action in self._actions:  # a missing sub-command: name the commands, not the attribute it fills
                if isinstance(action, argparse._SubParsersAction) and action.metavar is None:
                    commands = f"a command ({', '.join(action.choices)})"
                    message = re.sub(rf"\b{re.escape(action.dest)}\b", commands, message)
        self.exit(1, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def package_version() -> str:
    try:
        return importlib.metadata.version("medmlops")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: an integer within bounds; anything else is a usage error that names the bounds."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"'{text}' is not {_bounds('an integer', minimum, maximum)}")
        return value

    parse.__name__ = "integer"
    return parse


def number(
    minimum: float | None = None, maximum: float | None = None, *, above: bool = False
) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number ``>= minimum`` (``> minimum`` with ``above``) and ``<= maximum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if (
            not math.isfinite(value)
            or (minimum is not None and (value <= minimum if above else value < minimum))
            or (maximum is not None and value > maximum)
        ):
            bounds = f"a number above {minimum:g}" if above else _bounds("a number", minimum, maximum)
            if above and maximum is not None:
                bounds += f" and at most {maximum:g}"
            raise argparse.ArgumentTypeError(f"'{text}' is not {bounds}")
        return value

    parse.__name__ = "number"
    return parse


def _bounds(what: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{what} from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f"{what} of at least {minimum:g}"
    if maximum is not None:
        return f"{what} of at most {maximum:g}"
    return what


PORT = integer(1, 65535)


def folder(text: str) -> str:
    """An argparse ``type=`` for ``--repo`` and the like: a folder that exists."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is not an existing folder")
    return text


def _on_the_way(text: str) -> None:
    """Nothing on the way to ``text`` is a file (so its folders can be made)."""
    for parent in Path(text).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"'{text}' cannot be made: {parent} is a file, not a folder")
            return


def output_folder(text: str) -> str:
    """An argparse ``type=`` for a folder the command writes into (made if absent): not a file, nor under one."""
    if Path(text).is_file():
        raise argparse.ArgumentTypeError(f"'{text}' is a file: give a folder")
    _on_the_way(text)
    return text


def output_file(text: str) -> str:
    """An argparse ``type=`` for a file the command writes: not a folder, nor under a file."""
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"'{text}' is a folder: give a file name")
    _on_the_way(text)
    return text


def add_params_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument(
        "--profile", choices=PROFILES, default=None,
        help=f"profile of overrides (default: ${PROFILE_ENV} when set, else the params file's `profile`)",
    )  # fmt: skip
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. data.ich.n=16 (repeatable; applied after the profile)",
    )


def profile_from_args(args: argparse.Namespace) -> str | None:
    """``--profile``, else ``$MEDMLOPS_PROFILE``, else None (the params file's own ``profile``)."""
    if getattr(args, "profile", None):
        return args.profile
    chosen = os.environ.get(PROFILE_ENV, "").strip()
    if not chosen:
        return None
    if chosen not in PROFILES:
        raise UserError(f"${PROFILE_ENV}: {unknown_name('profile', chosen, PROFILES)}; set it to one or unset it")
    return chosen


def params_from_args(args: argparse.Namespace, root: Path | None = None) -> Params:
    """The params of ``--params`` (relative to ``root`` when given), ``--profile``/``$MEDMLOPS_PROFILE``, ``--set``."""
    path = Path(args.params) if root is None else Path(root) / args.params
    return load_params(path, profile=profile_from_args(args), overrides=args.overrides)


def quiet_third_parties() -> None:
    """Telemetry and per-file download bars off for every tool we drive (from a ``main()``, never at import time).

    Medical sites run offline: a telemetry client would only retry and fail. One tqdm bar per downloaded fold
    artifact drowns the training output. A user's own setting of any of these wins.
    """
    for key, value in {
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }.items():
        os.environ.setdefault(key, value)
    if "MLFLOW_DISABLE_TELEMETRY" not in os.environ:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        if "mlflow" in sys.modules:  # its telemetry client was created at import: re-create it (as None) now
            with contextlib.suppress(Exception):  # internal API; losing it only leaves telemetry on
                from mlflow.telemetry import set_telemetry_client

                set_telemetry_client()


def setup(verbose: bool = False) -> None:
    """Logging, telemetry and warnings as every entry point wants them."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_third_parties()
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library deprecation chatter is for us, not for users of the command line.
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def run_main(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv``, set up logging and telemetry, run the chosen command under :func:`run_command`."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (1: one sentence, already printed)
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    setup(args.verbose)
    return run_command(args.func, args, prog="medmlops")


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, prog: str) -> int:
    """``func(args)`` with the project's error contract; returns the exit code."""
    try:
        return int(func(args) or 0)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: no traceback; what was written is kept (training resumes from checkpoints)
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = environment_error(exc, args)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def environment_error(exc: Exception, args: argparse.Namespace) -> str | None:
    """One sentence for a failure of the environment rather than of the code (a full or read-only disk, an
    unreachable MLflow server); None for anything else (a bug keeps its traceback)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        # A failed write() carries no file name: name what the command was writing to.
        where = exc.filename or getattr(args, "out", None) or getattr(args, "report", None)
        return (f"{f'{where}: ' if where else ''}{exc.strerror or exc}; files already written are kept: make room or "
                "fix the permissions, then run the command again")  # fmt: skip
    unreachable = tracking_unreachable(exc)
    return None if unreachable is None else str(unreachable)


def code_root(repo: Path, marker: str) -> Path:
    """``repo`` when it holds ``marker`` (e.g. ``serving/service.py``), else the checkout medmlops is installed from.

    The shells (pipelines/, serving/, monitoring/) are not part of the installed package: a data project that only
    holds params.yaml and data finds them in the checkout.
    """
    repo = Path(repo).resolve()
    if (repo / marker).is_file():
        return repo
    import medmlops

    source = Path(medmlops.__file__).resolve().parents[2]
    if not (source / marker).is_file():
        raise UserError(f"{repo / marker}: not found; run from the project root or pass --repo")
    return source


def shell_command(repo: Path, package: str, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``python -m PACKAGE ARGV`` (a shell's own entry point) as a process.

    The core starts the shells, it never imports them: they import kfp, FastAPI or BentoML, and they are not
    installed with the package (``PYTHONPATH`` points at the checkout that holds them).
    """
    root = code_root(repo, f"{package}/__main__.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return [sys.executable, "-m", package, *argv], env


def add_shell_parser(sub: argparse._SubParsersAction, command: str, text: str) -> None:
    """A command whose arguments its shell parses (``--help`` included): everything after it is passed on."""
    parser = sub.add_parser(command, help=text, add_help=False, prefix_chars="\0")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(func=cmd_shell, shell_command=command)


def cmd_shell(args: argparse.Namespace) -> int:
    """``medmlops pipeline compile|run`` and ``medmlops monitor serve``: the shell's own command line, as a process.

    Those commands import kfp or FastAPI and live beside their shell (``pipelines/cli.py``, ``monitoring/__main__.py``);
    the core starts them and never imports them. A server (``monitor serve``) replaces this process (exec), so SIGTERM
    and Ctrl-C reach it directly; other commands run as a child whose exit code is ours.
    """
    package, prefix = SHELL_COMMANDS[(args.command, args.shell_command)]
    repo = _repo_option(args.argv)
    command, env = shell_command(repo, package, [*(["-v"] if args.verbose else []), *prefix, *args.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    if args.command == "monitor":
        os.execve(command[0], command, env)
    # The child gets Ctrl-C too (same process group) and reports it in one line; we only wait for its exit code.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call(command, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)


# (group, command) -> (shell package started as `python -m PACKAGE`, leading arguments)
SHELL_COMMANDS = {
    ("pipeline", "compile"): ("pipelines", ["compile"]),
    ("pipeline", "run"): ("pipelines", ["run"]),
    ("monitor", "serve"): ("monitoring", []),
}


def _repo_option(argv: list[str]) -> Path:
    """The ``--repo`` given to a forwarded command (where its shell's code is looked for first)."""
    for i, word in enumerate(argv):
        if word == "--repo" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if word.startswith("--repo="):
            return Path(word.split("=", 1)[1])
    return Path(".")
