"""``medmlops demo``: the front door, run by ``make demo``. The whole platform on one machine:

0. a check that every port it needs is free (or held by the servers of an earlier demo run);
1. the profile's datasets (``data.raw_dir``): reused when they match the profile's record (``data.dvc_file``), else
   pulled from the DVC remote, else generated (``medmlops.data.provision``);
2. Great Expectations validation of each;
3. a real MLflow server on 127.0.0.1 (SQLite + local artifacts under ``demo.workdir``);
4. the Kubeflow pipelines of ``demo.pipelines`` with Kubeflow's local runner (validate → preprocess → train folds →
   aggregate → evaluate → register → INFORMER calibration → promotion gates), skipped for a family whose calibrated
   candidate already matches the data version (``--fresh`` re-runs them);
5. the monitoring service and one BentoML service per family (serving forwards every prediction to monitoring);
6. simulated production traffic: clean, then shifted with the simulator's ``demo.shift`` knob; INFORMER flags;
7. an Evidently drift report of each window into the Evidently workspace;
8. a summary: the champions' metrics, flag rates, drift, and the URLs and files to open.

The servers keep running after the demo so their UIs can be browsed; ``medmlops demo --stop`` (``make demo-stop``)
or Ctrl-C during the demo stops every process it started. A second run reuses running servers and finished
pipelines. Everything it writes lives under ``demo.workdir`` (logs in ``logs/``: one per server, and one per
pipeline step in ``logs/PIPELINE/NN-STEP.log``; the console shows one line per step).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from argparse import Namespace
from pathlib import Path

from medmlops.commandline import shell_command
from medmlops.config import Params
from medmlops.data import versioning
from medmlops.data.provision import ensure_raw_data
from medmlops.data.simulate import DATASETS
from medmlops.errors import UserError

FAMILY_DATASET = {"ich-prognosis": "ich", "cxr-findings": "chexpert", "covid-prognosis": "aiforcovid"}


def _step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _port_holder(port: int) -> str:
    """Who listens on ``port``: ``" by process PID (COMMAND)"`` when it can be seen (psutil), else ``""``."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                command = " ".join(psutil.Process(conn.pid).cmdline()) or psutil.Process(conn.pid).name()
                return f" by process {conn.pid} ({command[:80]})"
    except Exception:  # noqa: BLE001 - best effort: another user's process, a platform without it
        return ""
    return ""


def check_ports(params: Params, workdir: Path, families: list[str]) -> None:
    """Before anything starts: every port the demo needs is free, or held by that server of an earlier demo run.

    Raises:
        UserError: a port is held by another process (named when visible) or a family has no serving port; the
            message names the ``--set`` that moves it.
    """
    cfg = params.demo
    ports = {"mlflow": ("demo.mlflow_port", cfg.mlflow_port),
             "monitoring": ("demo.monitoring_port", cfg.monitoring_port)}  # fmt: skip
    for family in families:
        if family not in cfg.serving_ports:
            raise UserError(f"params.yaml demo.serving_ports has no port for {family}: add one (`--set "
                            f"demo.serving_ports.{family}=PORT`)")  # fmt: skip
        ports[f"serve-{family}"] = (f"demo.serving_ports.{family}", cfg.serving_ports[family])
    procs = Processes(workdir)
    for name, (key, port) in ports.items():
        if procs.running(name) or _port_free(cfg.host, port):
            continue
        raise UserError(
            f"port {port} on {cfg.host}, which the demo's {name} needs, is already in use{_port_holder(port)}: stop "
            f"that process or give the demo another port with `--set {key}=PORT`"
        )


# ---------------------------------------------------------------------------------------------------------------
# Processes: started in their own session, pid files under workdir/pids, reused when alive and healthy
# ---------------------------------------------------------------------------------------------------------------


def _http_status(url: str, timeout_s: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class Processes:
    """The demo's long-running servers."""

    def __init__(self, workdir: Path) -> None:
        self.pids = workdir / "pids"
        self.logs = workdir / "logs"
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started: list[str] = []

    def _pid(self, name: str) -> int | None:
        path = self.pids / f"{name}.pid"
        try:
            pid = int(path.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def running(self, name: str) -> bool:
        """Whether this demo (an earlier run of it) started ``name`` and it is still alive."""
        return self._pid(name) is not None

    def ensure(self, name: str, command: list[str], health: str, *, env: dict, cwd: Path, timeout_s: float = 240.0):
        """Start ``command`` unless ``name`` already runs and ``health`` answers 200; wait until it does."""
        if self._pid(name) is not None and _http_status(health) == 200:
            print(f"{name}: reused (already running, {health})")
            return
        if _http_status(health) == 200:
            raise UserError(f"{name}: {health} is answered by a process this demo did not start; free the port "
                            "or set another in params.yaml demo:")  # fmt: skip
        log = self.logs / f"{name}.log"
        with log.open("a") as out:
            process = subprocess.Popen(
                command, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        (self.pids / f"{name}.pid").write_text(str(process.pid))
        self.started.append(name)
        started = time.monotonic()
        while _http_status(health) != 200:
            if process.poll() is not None or time.monotonic() - started > timeout_s:
                self.stop(name)
                tail = log.read_text(errors="replace")[-2000:]
                raise UserError(f"{name} did not start (see {log}):\n{tail}")
            time.sleep(1.0)
        print(f"{name}: started in {time.monotonic() - started:.0f} s ({health}; log {log})")

    def stop(self, name: str, timeout_s: float = 30.0) -> bool:
        """SIGTERM the process group, SIGKILL after ``timeout_s``; True when it was running."""
        pid = self._pid(name)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.3)
        os.killpg(pid, signal.SIGKILL)
        return True

    def stop_all(self) -> list[str]:
        names = sorted(p.stem for p in self.pids.glob("*.pid"))
        return [n for n in names if self.stop(n)]


def stop_demo(params: Params, repo: Path = Path(".")) -> int:
    stopped = Processes((repo / params.demo.workdir).resolve()).stop_all()
    print(f"stopped: {', '.join(stopped)}" if stopped else "no demo process was running")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------


def _mlflow(procs: Processes, params: Params, workdir: Path, repo: Path) -> str:
    cfg = params.demo
    url = f"http://{cfg.host}:{cfg.mlflow_port}"
    exe = Path(sys.executable).with_name("mlflow")
    command = [
        str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "mlflow"]), "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}", "--artifacts-destination",
        str(workdir / "mlartifacts"), "--serve-artifacts", "--host", cfg.host, "--port", str(cfg.mlflow_port),
        "--workers", "1", "--allowed-hosts", f"{cfg.host}:{cfg.mlflow_port},localhost:{cfg.mlflow_port}",
    ]  # fmt: skip
    procs.ensure("mlflow", command, f"{url}/health", env={"MLFLOW_DISABLE_TELEMETRY": "true"}, cwd=workdir)
    return url


def _ready_family(family: str, data_version: str) -> str | None:
    """The version of ``family@candidate`` when it is calibrated and trained on ``data_version``, else None."""
    from medmlops.registry.tracking import ModelNotFoundError, load_contract, resolve_version

    try:
        version = str(resolve_version(family, "candidate").version)
        contract = load_contract(family, version)
    except ModelNotFoundError:
        return None
    return version if contract.informer and contract.data_version == data_version else None


def _pipelines(params: Params, repo: Path, workdir: Path, mlflow_url: str, fresh: bool) -> None:
    """Each pipeline of ``demo.pipelines`` as a user runs it: ``medmlops pipeline run NAME --local`` (a process)."""
    from medmlops.pipeline_steps import PIPELINE_FAMILY

    data_version = versioning.recorded_hash(repo, params.data.dvc_file)
    for name in params.demo.pipelines:
        family = PIPELINE_FAMILY[name]
        ready = None if fresh else _ready_family(family, data_version)
        if ready:
            print(f"{name}: reused ({family} version {ready} is calibrated on data version {data_version})")
            continue
        overrides = list(params.demo.overrides.get(name, ()))
        print(f"{name}: Kubeflow local run, profile {params.profile}, overrides {overrides}", flush=True)
        log_dir = workdir / "logs" / name
        argv = ["run", name, "--local", "--profile", params.profile, "--repo", str(repo), "--log-dir", str(log_dir),
                *(f"--set={o}" for o in overrides)]  # fmt: skip
        command, env = shell_command(repo, "pipelines", argv)
        code = subprocess.call(command, cwd=repo, env={**env, "MLFLOW_TRACKING_URI": mlflow_url})
        if code != 0:
            raise UserError(f"pipeline {name} failed (exit {code}; the failed step and its log are named above)")


def _served_alias(family: str) -> str:
    from medmlops.registry.tracking import ModelNotFoundError, resolve_version

    try:
        resolve_version(family, "champion")
        return "champion"
    except ModelNotFoundError:
        return "candidate"


def _services(procs: Processes, params: Params, workdir: Path, repo: Path, mlflow_url: str, families: list[str]):
    cfg = params.demo
    token_file = workdir / "monitoring-token"
    if not token_file.is_file():
        token_file.write_text(secrets.token_urlsafe(24))
        token_file.chmod(0o600)
    env = {"MLFLOW_TRACKING_URI": mlflow_url, "MEDMLOPS_MONITORING_TOKEN": token_file.read_text().strip()}
    monitoring = f"http://{cfg.host}:{cfg.monitoring_port}"
    cli = [sys.executable, "-m", "medmlops.cli"]
    procs.ensure(
        "monitoring",
        [*cli, "monitor", "serve", "--host", cfg.host, "--port", str(cfg.monitoring_port), "--db-url",
         f"sqlite:///{workdir / 'monitoring.db'}", "--repo", str(repo)],
        f"{monitoring}/healthz", env=env, cwd=repo,
    )  # fmt: skip
    urls = {}
    for family in families:
        port = cfg.serving_ports.get(family)
        if port is None:
            raise UserError(f"params.yaml demo.serving_ports has no port for {family}")
        alias = _served_alias(family)
        url = f"http://{cfg.host}:{port}"
        procs.ensure(
            f"serve-{family}",
            [*cli, "serve", family, "--alias", alias, "--host", cfg.host, "--port", str(port), "--monitoring-url",
             monitoring, "--spool-dir", str(workdir / "spool"), "--repo", str(repo), "--params",
             str(repo / "params.yaml")],
            f"{url}/readyz", env=env, cwd=repo,
        )  # fmt: skip
        urls[family] = (url, alias)
    return monitoring, urls


def _traffic_files(params: Params, family: str, n: int, shift: str | None, seed: int, out: Path) -> list[Path]:
    """``n`` fresh simulated uploads for ``family`` (the profile's image size), optionally shifted."""
    from medmlops.data.readers import read_manifest
    from medmlops.data.simulate import generate

    dataset = FAMILY_DATASET[family]
    cfg = getattr(params.data, dataset)
    extra = {"n_valid": 1} if dataset == "chexpert" else {}
    generate(dataset, out, n=n + 2, seed=seed, shape=cfg.shape, shift=shift, progress=False, **extra)
    return [Path(p) for p in read_manifest(dataset, out, params)["image_path"]][:n]


def _predict(url: str, path: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def _replay(url: str, monitoring: str, files: list[Path], progress: bool) -> list[str]:
    """POST every file to serving (4 clients), then wait until monitoring has processed every record."""
    from tqdm.auto import tqdm

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(tqdm(pool.map(lambda p: _predict(url, p), files), total=len(files), desc="requests",
                            disable=not progress, unit="req"))  # fmt: skip
    ids = [a["request_id"] for a in answers]
    pending = set(ids)
    bar = tqdm(total=len(ids), desc="INFORMER (monitoring)", disable=not progress, unit="rec")
    deadline = time.monotonic() + 1800
    while pending and time.monotonic() < deadline:
        for request_id in list(pending):
            try:
                with urllib.request.urlopen(f"{monitoring}/v1/records/{request_id}", timeout=10) as response:
                    state = json.loads(response.read()).get("status")
            except (urllib.error.HTTPError, OSError):
                state = None
            if state in ("done", "failed"):
                pending.discard(request_id)
                bar.update(1)
        time.sleep(1.0)
    bar.close()
    if pending:
        raise UserError(f"monitoring did not process {len(pending)} of {len(ids)} records within 30 min")
    return ids


def _report(params: Params, workdir: Path, family: str, n: int, mlflow_url: str) -> dict:
    from medmlops.monitoring.drift import report_command
    from medmlops.monitoring.store import Store

    db_url = f"sqlite:///{workdir / 'monitoring.db'}"
    # The window's summary is logged to the demo's MLflow server, against the version that served it.
    registry = dataclasses.replace(params.registry, tracking_uri=mlflow_url)
    args = Namespace(family=family, workspace=str(workdir / "evidently"), db_url=db_url, version=None,
                     since_hours=None, last=n, out=None, registry=registry)  # fmt: skip
    report_command(args)
    store = Store(db_url)
    try:
        return store.latest_drift(family) or {}
    finally:
        store.close()


def _flag_rate(workdir: Path, family: str, n: int) -> float:
    from medmlops.monitoring.store import Store

    store = Store(f"sqlite:///{workdir / 'monitoring.db'}")
    try:
        frame = store.results_frame(family, limit=n)
    finally:
        store.close()
    return float(frame["flagged"].mean()) if len(frame) else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------------------------


def run_demo(params: Params, repo: Path = Path("."), progress: bool = True, *, fresh: bool = False) -> int:
    from medmlops.pipeline_steps import PIPELINE_FAMILY
    from medmlops.validation import validate_dataset

    repo = repo.resolve()
    for key, names in (("demo.pipelines", params.demo.pipelines), ("demo.overrides", params.demo.overrides)):
        unknown = [n for n in names if n not in PIPELINE_FAMILY]
        if unknown:
            raise UserError(
                f"{key} names '{unknown[0]}', not a pipeline (expected one of: {', '.join(PIPELINE_FAMILY)})"
            )
    workdir = (repo / params.demo.workdir).resolve()
    check_ports(params, workdir, [PIPELINE_FAMILY[name] for name in params.demo.pipelines])
    started = time.monotonic()
    total = 8
    _step(f"1/{total} demo data ({params.profile} profile) in {params.data.raw_dir}, version {params.data.dvc_file}")
    if ensure_raw_data(params, repo, progress=progress, verify=True).startswith("present"):
        print(f"data: reused (matches {params.data.dvc_file})")

    _step(f"2/{total} validating with Great Expectations")
    reports_dir = repo / params.validation.reports_dir
    results = {}
    for dataset in DATASETS:
        report = validate_dataset(dataset, repo / params.data.raw_dir / dataset, params, progress=progress)
        report.write(reports_dir / f"{dataset}.json")
        report.write(reports_dir / f"{dataset}.html")
        results[dataset] = report
        print(report.summary())
    if not all(r.success for r in results.values()):
        raise UserError(f"validation failed; see {reports_dir}/<dataset>.html")

    workdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(workdir)
    try:
        return _platform(params, repo, workdir, procs, progress, fresh, started, total)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the demo's processes", file=sys.stderr)
        procs.stop_all()
        return 130


def _platform(params, repo, workdir, procs, progress, fresh, started, total) -> int:
    from medmlops.pipeline_steps import PIPELINE_FAMILY
    from medmlops.registry import tracking
    from medmlops.registry.tracking import load_contract, resolve_version

    _step(f"3/{total} MLflow server")
    mlflow_url = _mlflow(procs, params, workdir, repo)
    tracking.configure(params.registry, cwd=repo, uri=mlflow_url)

    _step(f"4/{total} Kubeflow pipelines (local runner): {', '.join(params.demo.pipelines)}")
    _pipelines(params, repo, workdir, mlflow_url, fresh)
    families = [PIPELINE_FAMILY[name] for name in params.demo.pipelines]

    _step(f"5/{total} monitoring and serving")
    monitoring, serving = _services(procs, params, workdir, repo, mlflow_url, families)

    cfg = params.demo
    windows: dict[str, dict[str, dict]] = {}
    for step, (label, shift, seed) in ((6, ("clean", None, 1001)), (7, ("shifted", cfg.shift, 2002))):
        _step(
            f"{step}/{total} {label} traffic: {cfg.traffic} requests per family"
            + (f" (shift: {shift})" if shift else "")
        )
        for family in families:
            with tempfile.TemporaryDirectory(prefix=f"medmlops-demo-{family}-") as tmp:
                files = _traffic_files(params, family, cfg.traffic, shift, seed, Path(tmp))
                _replay(serving[family][0], monitoring, files, progress)
            drift = _report(params, workdir, family, cfg.traffic, mlflow_url)
            windows.setdefault(family, {})[label] = {
                "drift": drift,
                "flag_rate": _flag_rate(workdir, family, cfg.traffic),
            }

    _step(f"8/{total} summary")
    print(f"{'family':<16}{'served':>14}{'primary metric':>36}{'flag rate':>22}{'drift detected':>24}")
    notes = []
    for family in families:
        url, alias = serving[family]
        version = str(resolve_version(family, alias).version)
        contract = load_contract(family, version)
        gates = params.registry.gates.get(family)
        metric = gates.primary_metric if gates else ""
        value = contract.metrics.get(metric, float("nan"))
        clean, shifted = windows[family]["clean"], windows[family]["shifted"]
        drift = " / ".join("yes" if w["drift"].get("detected") else "no" for w in (clean, shifted))
        flags = " / ".join(f"{w['flag_rate']:.0%}" for w in (clean, shifted))
        informer = contract.informer or {}
        if not any(tau is not None for tau in informer.get("tau", {}).values()):
            flags = "no tau *"
            notes.append(
                f"* {family}: INFORMER fitted no threshold on its {informer.get('n_validation', 0)} validation images "
                f"(a class needs informer.min_per_class = {params.informer.min_per_class} positives and negatives, "
                "or a threshold that improves its F1), so it flags nothing"
            )
        served, primary = f"v{version} @{alias}", f"{metric} {value:.3f}"
        print(f"{family:<16}{served:>14}{primary:>36}{flags:>22}{drift:>24}")
    print("(flag rate and drift: clean / shifted traffic)")
    for note in notes:
        print(note)
    print(
        "flag rate: the share of answers the deployed confidence scoring function flagged as likely wrong (any "
        "class) and sent for review; its operating point flags about informer.review_budget = "
        f"{params.informer.review_budget} of each class's answers on the calibration split, so an answer with "
        "several classes is flagged more often; "
        + ("on the smoke profile's tiny models it is high and not an alarm" if params.profile == "smoke"
           else "a confidence score can go quiet on shifted inputs the model is sure of: read it beside drift")
    )  # fmt: skip
    ungated = [f for f in families if (g := params.registry.gates.get(f)) is not None and not g.min_metrics]
    if ungated:
        print(
            f"promotion gates were OFF for {', '.join(ungated)} (the {params.profile} profile sets "
            "registry.gates.<family>.min_metrics: {}): any candidate became @champion, whatever its metrics"
        )
    print("\nopen:")
    print(f"  MLflow UI            {mlflow_url}")
    print(f"  monitoring dashboard {monitoring}/dashboard")
    for family in families:
        print(f"  serving              {serving[family][0]}/predict  ({family}; API docs at /docs)")
    for family in families:
        print(f"  drift report         {windows[family]['shifted']['drift'].get('html_path', '-')}")
    print(f"  Evidently UI         evidently ui --workspace {workdir / 'evidently'} --host 127.0.0.1 --port 8000")
    print(f"  logs                 {workdir / 'logs'}  (one per server)")
    for name in params.demo.pipelines:
        print(f"  pipeline step logs   {workdir / 'logs' / name}/NN-STEP.log")
    print(f"\nfinished in {time.monotonic() - started:.0f} s; the servers keep running: `make demo-stop` stops them")
    return 0
