"""Prediction records as serving sends them (tiny uploads), a real ``medmlops monitor serve`` on 127.0.0.1 and real
``medmlops monitor worker`` processes."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmlops.inference.record import PredictionRecord

from ..conftest import REPO, _free_port

FAKE_FACTORY = "tests.monitoring.fake_analyser:factory"
FAKE_SOURCE = "tests.monitoring.fake_analyser:calibration_source"
CONFIDENT = (2.0, -2.0)  # MSR 0.88: the fake logit tier (τ 0.6) flags neither class
UNSURE = (0.1, -0.1)  # MSR 0.52: it flags both


def make_record(
    request_id: str, *, data: bytes | None = None, family: str = "cxr-findings", version: str = "3",
    created_at: float | None = None, logits: tuple[float, ...] = CONFIDENT,
) -> dict[str, Any]:  # fmt: skip
    data = f"image-{request_id}".encode() if data is None else data
    moment = dt.datetime.fromtimestamp(time.time() if created_at is None else created_at, dt.UTC)
    return {
        "request_id": request_id, "model": family, "version": version,
        "created_at": moment.isoformat(timespec="milliseconds"),
        "predictions": {"findings": {"probabilities": {"Atelectasis": 0.3}, "labels": []}}, "logits": list(logits),
        "input": {"sha256": hashlib.sha256(data).hexdigest(), "bytes_b64": base64.b64encode(data).decode()},
    }  # fmt: skip


def prediction_record(request_id: str, **kwargs: Any) -> PredictionRecord:
    """:func:`make_record` as the store takes it: parsed as monitoring parses a post."""
    return PredictionRecord.parse(make_record(request_id, **kwargs))


def call(
    url: str, *, method: str = "GET", body: Any = None, token: str | None = None, raw: bytes | None = None,
    content_type: str | None = "application/json",
) -> tuple[int, Any, dict[str, str]]:  # fmt: skip
    """(status, JSON or bytes, headers) of one request."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None and content_type:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        status, payload, headers = err.code, err.read(), dict(err.headers)
    if headers.get("content-type", "").startswith("application/json"):
        return status, json.loads(payload), headers
    return status, payload, headers


def wait_for(condition, timeout_s: float = 30.0, every_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return bool(condition())


def _environment(env: dict[str, str] | None) -> dict[str, str]:
    """The test's environment for a child, with the repository importable and no monitoring settings leaking in."""
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    for key in ("MEDMLOPS_MONITORING_TOKEN", "MEDMLOPS_MONITORING_READ_TOKEN", "MEDMLOPS_MONITORING_DB_URL",
                "MEDMLOPS_WORKER_HEARTBEAT"):  # fmt: skip
        if key not in (env or {}):
            environment.pop(key, None)
    return environment


@dataclass
class Child:
    """A ``medmlops`` command running as a process, its output in ``log``."""

    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM; the exit code (killed after ``timeout_s``: -9)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


@dataclass
class Served(Child):
    url: str
    db_url: str


def start_monitor(
    workdir: Path, *args: str, db_url: str | None = None, env: dict[str, str] | None = None,
    factory: str | None = FAKE_FACTORY, timeout_s: float = 90.0, name: str = "monitor", cwd: Path | None = None,
    port: int | None = None, source: str | None = None,
) -> Served:  # fmt: skip
    """``medmlops monitor serve`` as a subprocess on ``port`` or a free one (log and default database in
    ``workdir``, run in ``cwd`` or ``workdir``); returns once /healthz answers 200. ``factory`` and ``source``: the
    analyser and logit-tier source (None: the registry's; the fake analyser comes with the fake source)."""
    port = port or _free_port()
    source = source or (FAKE_SOURCE if factory == FAKE_FACTORY else None)
    db_url = db_url or f"sqlite:///{workdir / 'monitoring.db'}"
    log = workdir / f"{name}-{port}.log"
    command = [sys.executable, "-m", "medmlops.cli", "monitor", "serve", "--port", str(port), "--db-url", db_url,
               "--repo", str(REPO), *(["--analyser-factory", factory] if factory else []),
               *(["--calibration-source", source] if source else []), *args]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=cwd or workdir, env=_environment(env), stdout=out, stderr=subprocess.STDOUT
        )
    served = Served(process, log, f"http://127.0.0.1:{port}", db_url)
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{served.url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return served
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() - started > timeout_s:
            served.stop()
            raise RuntimeError(f"medmlops monitor serve did not start:\n{served.log_text()[-3000:]}")
        time.sleep(0.3)


def start_worker(
    workdir: Path, *args: str, db_url: str, env: dict[str, str] | None = None, factory: str = FAKE_FACTORY,
    name: str = "worker", cwd: Path | None = None,
) -> Child:  # fmt: skip
    """``medmlops monitor worker`` as a subprocess (fake analyser by default), its log ``workdir/<name>.log``."""
    log = workdir / f"{name}.log"
    command = [sys.executable, "-m", "medmlops.cli", "monitor", "worker", "--db-url", db_url,
               "--analyser-factory", factory, *args]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(
            command, cwd=cwd or workdir, env=_environment(env), stdout=out, stderr=subprocess.STDOUT
        )
    return Child(process, log)
