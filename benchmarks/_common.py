"""Shared by the benchmark scripts: timed AdamW training steps with peak memory (CPU RSS or CUDA allocation); a smoke
cxr-findings project, real servers on 127.0.0.1 (serving, monitoring, a throwaway PostgreSQL) and a concurrent load
client (``bench_monitoring.py``). Public names only: the architecture test forbids importing ``_private`` ones."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def measure_training(model, x, steps: int) -> dict:
    """One warm-up step, then ``steps`` timed AdamW steps on the fixed batch ``x`` (AMP on CUDA).

    Returns ``device``, ``samples_per_s`` and ``peak_gib`` (run one configuration per process so the peak is its own).
    """
    import torch

    device = x.device
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
            loss = sum(v.float().mean() for v in model(x).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {"device": str(device), "samples_per_s": x.shape[0] * steps / elapsed, "peak_gib": peak}


# ---- real servers on 127.0.0.1 (bench_serving.py's way of starting them, shared with bench_monitoring.py) ---------

REPO = Path(__file__).resolve().parents[1]
# Monitoring settings a child must not inherit from the shell the benchmark runs in.
MONITORING_ENV = ("MEDMLOPS_MONITORING_TOKEN", "MEDMLOPS_MONITORING_READ_TOKEN", "MEDMLOPS_MONITORING_DB_URL",
                  "MEDMLOPS_WORKER_HEARTBEAT")  # fmt: skip


def train_smoke_cxr(root: Path, size: int, *, calibrate: bool = False) -> Path:
    """A project in ``root`` with a smoke ``cxr-findings`` at ``size`` px registered as @candidate (SQLite
    registry in ``root/.medmlops``); with ``calibrate``, INFORMER-calibrated too (ixg, no TTA baseline), so its
    contract carries the ``logit_tier`` section. Changes the working directory to ``root``."""
    from medmlops.cli import main
    from medmlops.data.simulate import generate

    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    generate(
        "chexpert", root / "data" / "raw" / "chexpert", n=32, n_valid=8, seed=0, shape=(size, size), progress=False
    )
    os.chdir(root)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    sets = ["--set", f"preprocess.chexpert.size={size}"]
    assert main(["train", "cxr-findings", "--profile", "smoke", "--quiet", "--register", *sets]) == 0
    if calibrate:
        command = ["informer", "calibrate", "cxr-findings", "--alias", "candidate", "--method", "ixg", "--tta", "0"]
        assert main([*command, "--quiet", *sets]) == 0
    return root


def tracking_uri(project: Path) -> str:
    return f"sqlite:///{project / '.medmlops' / 'mlflow.db'}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(project: Path | None = None, **extra: str) -> dict[str, str]:
    """This environment for a ``medmlops`` child: MLflow at ``project``'s registry, no monitoring settings."""
    env = {k: v for k, v in os.environ.items() if k not in MONITORING_ENV}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if project is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri(project)
    return {**env, **extra}


def start_process(command: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``command`` in its own session (so :func:`stop_process` can end its children), output in ``log``."""
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 240.0) -> None:
    """Until ``url`` answers 200; RuntimeError with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    stop_process(process)
    raise RuntimeError(f"{url} did not answer:\n{log.read_text(errors='replace')[-3000:]}")


def start_serving(project: Path, log: Path, *, batching: bool = True) -> tuple[subprocess.Popen, str]:
    """``medmlops serve cxr-findings --alias candidate`` on a free port; (process, base URL) once /readyz is 200."""
    port = free_port()
    command = [sys.executable, "-m", "medmlops.cli", "serve", "cxr-findings", "--alias", "candidate", "--port", str(port),
               "--repo", str(REPO), "--reload-s", "0", *([] if batching else ["--no-batching"])]  # fmt: skip
    process = start_process(command, cwd=project, env=child_env(project), log=log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, f"{url}/readyz", log)
    return process, url


def stop_process(process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """SIGTERM, then SIGKILL to its whole session after ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def post(url: str, body: bytes, content_type: str) -> float:
    """One POST on a new connection (as a client without keep-alive); its latency in seconds; raises unless 2xx."""
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - start


def multipart_image(data: bytes) -> tuple[bytes, str]:
    """(body, content type) of serving's ``/predict`` upload form."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n\r\n'.encode() + data
            + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    return body, f"multipart/form-data; boundary={boundary}"


def load(send: Callable[[Any], float], items: list[Any], concurrency: int) -> dict:
    """``send(item)`` for every item from ``concurrency`` threads: rate (items/s), p50 and p99 latency (ms)."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        latencies = sorted(pool.map(send, items))
    elapsed = time.perf_counter() - start
    return {
        "rps": len(items) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 (also the monitoring tests' one; ``runuser -u
    postgres`` when root); yields ``postgresql+psycopg2://monitoring@127.0.0.1:PORT``, no database. RuntimeError
    when the server binaries are not on PATH."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("the PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")

    def as_postgres(command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    root.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    try:
        subprocess.run(as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "monitoring", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w",
                                    "start"]), check=True, capture_output=True, timeout=120)  # fmt: skip
        yield f"postgresql+psycopg2://monitoring@127.0.0.1:{port}"
    finally:
        if data.exists():
            subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True,
                           timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def create_database(server: str, name: str) -> str:
    """A new database ``name`` on a :func:`postgres_server`; its SQLAlchemy URL."""
    import psycopg2

    connection = psycopg2.connect(server.replace("postgresql+psycopg2://", "postgresql://") + "/postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        connection.cursor().execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()
    return f"{server}/{name}"
