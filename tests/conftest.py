"""Shared fixtures: tiny simulated datasets (smoke sizes), generated once per session."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Before mlflow is imported anywhere: its telemetry client starts at import time.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
SERVER_START_TIMEOUT_S = 120.0

SMOKE = {
    "ich": {"n": 12, "shape": (16, 64, 64)},
    "aiforcovid": {"n": 12, "shape": (64, 64)},
    "brixia": {"n": 12, "shape": (64, 64)},
    "chexpert": {"n": 12, "shape": (64, 64), "n_valid": 8},
}


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """``smoke_data("ich")``: that dataset at smoke size, generated once per session on first use.

    Shared between tests: copy before modifying (see ``smoke_copy``).
    """
    from medmlops.data.simulate import generate

    root = tmp_path_factory.mktemp("smoke")

    def get(dataset: str) -> Path:
        target = root / dataset
        if not target.exists():
            generate(dataset, target, seed=7, progress=False, **SMOKE[dataset])
        return target

    return get


@pytest.fixture
def smoke_copy(smoke_data, tmp_path):
    """A private, modifiable copy of one smoke dataset: ``smoke_copy("ich")``."""

    def copy(dataset: str) -> Path:
        target = tmp_path / dataset
        shutil.copytree(smoke_data(dataset), target)
        return target

    return copy


@pytest.fixture(scope="session")
def params_file() -> Path:
    return REPO / "params.yaml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def start_mlflow_server(root: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on 127.0.0.1 (SQLite backend and proxied artifacts under ``root``, log in
    ``root/server.log``), on ``port`` or a free one; returns once its REST API answers. Restarting on the same root
    and port brings the same store back."""
    port = port or _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    log_path = root / "server.log"
    # MLflow 3.17's security middleware answers 403 "Invalid Host header" to hosts outside --allowed-hosts. The
    # default (localhost and private IPs) covers 127.0.0.1, but passing the list replaces it, so name both forms.
    args = [
        *command,
        "server",
        "--backend-store-uri", f"sqlite:///{root}/db.sqlite",
        "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    with log_path.open("a") as log_file:
        # Its own process group: `mlflow server` runs uvicorn as a child, which must go down with it.
        process = subprocess.Popen(
            args, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        while _get(f"{uri}/health") != 200:
            if process.poll() is not None or time.monotonic() - started > SERVER_START_TIMEOUT_S:
                raise RuntimeError(f"mlflow server did not start; its log:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        # /health skips the Host check; an API call proves the allowed-hosts setting too.
        status = _get(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1")
        if status != 200:
            raise RuntimeError(
                f"mlflow server answers {status} to the REST API; its log:\n{log_path.read_text()[-3000:]}"
            )
    except BaseException:
        stop_process(process)
        raise
    print(f"\nmlflow server ready in {time.monotonic() - started:.1f} s at {uri}")
    return process, uri


def stop_process(process: subprocess.Popen, timeout_s: float = 15, sig: int = signal.SIGTERM) -> None:
    """Signal the process group ``process`` leads (started with ``start_new_session``); SIGKILL it after
    ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


@pytest.fixture(autouse=True)
def _keep_the_working_directory() -> Iterator[None]:
    """Pipeline steps called in-process enter their workdir (``StepContext.enter``: a component owns its process),
    and a passing test's ``tmp_path`` is deleted (tmp_path_retention_policy = "failed"): put the cwd back, so no
    later test runs in a deleted directory."""
    cwd = os.getcwd()
    yield
    try:
        unchanged = os.getcwd() == cwd
    except FileNotFoundError:  # the directory it moved to is gone already
        unchanged = False
    if not unchanged:
        os.chdir(cwd)


@pytest.fixture(autouse=True)
def _our_loggers_enabled() -> None:
    """A library called in-process by an earlier test may have run ``logging.config.dictConfig`` with
    ``disable_existing_loggers: True`` (BentoML's CLI logging does), which disables every logger that existed then,
    ours included, for the rest of the session: a later test's ``caplog`` would see none of our warnings. Enable
    ours again before each test."""
    import logging

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.split(".")[0] in ("medmlops", "pipelines", "monitoring",
                                                                         "serving", "components"):  # fmt: skip
            logger.disabled = False


@contextlib.contextmanager
def small_disk(path: Path, size: str = "64k") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path``: writes past it fail with ENOSPC, and after
    :func:`make_read_only` with EROFS, as a full or read-only disk does, even for root (whom file modes do not
    stop). Mounting needs root, which CI has; elsewhere the test is skipped with that reason."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def make_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts); yields its http:// URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    process, uri = start_mlflow_server(root)
    try:
        yield uri
    finally:
        stop_process(process)
        shutil.rmtree(root / "artifacts", ignore_errors=True)


@pytest.fixture(scope="session")
def registered_project(tmp_path_factory):
    """Smoke ich-mt-ord, cxr-findings and covid-mdmt (from its two STL backbones) trained and registered as
    @candidate (SQLite registry): one model per served family."""
    from medmlops.cli import main
    from medmlops.data.simulate import generate

    root = tmp_path_factory.mktemp("inference")
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    generate("ich", root / "data" / "raw-smoke" / "ich", n=16, seed=0, shape=(16, 64, 64), progress=False)
    generate(
        "chexpert", root / "data" / "raw-smoke" / "chexpert", n=32, n_valid=8, seed=0, shape=(64, 64), progress=False
    )
    generate("aiforcovid", root / "data" / "raw-smoke" / "aiforcovid", n=24, seed=0, shape=(64, 64), progress=False)
    generate("brixia", root / "data" / "raw-smoke" / "brixia", n=24, seed=0, shape=(64, 64), progress=False)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        for experiment in ("ich-mt-ord", "cxr-findings", "covid-stl-prognosis", "covid-stl-severity", "covid-mdmt"):
            register = (
                ["--register"] if experiment in ("ich-mt-ord", "cxr-findings", "covid-mdmt") else ["--no-register"]
            )
            assert main(["train", experiment, "--profile", "smoke", "--quiet", *register]) == 0
    finally:
        mp.undo()
    return root


@contextlib.contextmanager
def project_registry(root: Path) -> Iterator[str]:
    """Point this process's MLflow tracking and registry at ``root``'s SQLite registry, then put them back."""
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{root / '.medmlops' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


# ---- the system-reliability table (tests/reliability.py) --------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-table", default=None, metavar="PATH",
        help="also write the system-reliability table (tests marked reliability) here as Markdown",
    )  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    from tests.reliability import Table

    config.stash[_TABLE] = Table()


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_TABLE].collect(session.items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    item.config.stash[_TABLE].record(item, report)
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    table = config.stash[_TABLE]
    if not table.rows:
        return
    terminalreporter.section("system reliability: what was tried, what held")
    terminalreporter.write(table.markdown())
    terminalreporter.write_line(table.summary())
    path = config.getoption("--reliability-table")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(table.markdown(), encoding="utf-8")
        terminalreporter.write_line(f"written to {path}")


_TABLE = pytest.StashKey["object"]()
