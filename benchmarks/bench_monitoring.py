"""Monitoring's two tiers against serving, side by side in one run (ratios, never asserted in tests):

1. logit tier at ingest: records/s that ``medmlops monitor serve --no-worker`` stores (``POST /v1/records`` at
   concurrency 8 and 16, each record scored by the logit tier from the registered version's real contract) against
   serving's peak req/s for the same model (``medmlops serve``, batching on, concurrency 8/16/32), same cores;
   target >= 1.0x (ingest keeps up with everything serving can answer);
2. saliency tier: time to drain M pending records with ``medmlops monitor worker --workers k`` (k = 1, 2, 3, the
   real INFORMER analyser of the registered version, one SQLite database; ``--postgres``: PostgreSQL too) and the
   scale-out efficiency throughput(k) / (k x throughput(1)); target >= 0.8 while each worker has a free core;
3. on a GPU: INFORMER images/s on the device against the model's forward pass there.

    .venv/bin/python benchmarks/bench_monitoring.py [--project DIR] [--size 128] [--requests 96] [--ingest 400]
        [--records 48] [--batch-size 8] [--postgres]

Without ``--project`` it trains, registers and INFORMER-calibrates a smoke ``cxr-findings`` (``--size`` px) in a
temporary project (about a minute); with it, ``cxr-findings@candidate`` there must be calibrated. Every server
listens on 127.0.0.1 only. Saliency workers run one torch thread each (``OMP_NUM_THREADS=1``: a worker per core);
one more row gives one worker torch's default threads, for reference.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (benchmarks run as scripts)
    REPO,
    child_env,
    create_database,
    free_port,
    load,
    multipart_image,
    post,
    postgres_server,
    start_process,
    start_serving,
    stop_process,
    train_smoke_cxr,
    wait_ready,
)

FAMILY = "cxr-findings"
STARTED = re.compile(r"monitoring worker \S+ started \(")  # each worker's first line, before its first claim
JSON = "application/json"


def start_monitor(project: Path, db_url: str, log: Path) -> tuple[object, str]:
    """``medmlops monitor serve --no-worker``, the logit tier's contract from the project's registry."""
    port = free_port()
    command = [sys.executable, "-m", "medmlops.cli", "monitor", "serve", "--no-worker", "--port", str(port),
               "--db-url", db_url, "--repo", str(REPO), "--log-level", "warning"]  # fmt: skip
    process = start_process(command, cwd=project, env=child_env(project), log=log)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, f"{url}/healthz", log)
    return process, url


def served_records(project: Path, payloads: list[bytes]) -> tuple[str, list[dict]]:
    """(version, one record per distinct payload as serving builds it: the model's prediction and logits)."""
    import mlflow

    from medmlops.inference.predict import Predictor
    from medmlops.inference.record import PredictionRecord

    uri = child_env(project)["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    predictor = Predictor.from_registry(FAMILY, "candidate", device="cpu")
    records = []
    for data in dict.fromkeys(payloads):
        image = predictor.preprocess(data)
        prediction = predictor.predict_tensors([image])[0]
        logits = predictor.forward(image[None])[0].tolist()
        record = PredictionRecord.build(request_id="x", family=FAMILY, version=str(predictor.version), upload=data,
                                        predictions=prediction, logits=logits)  # fmt: skip
        records.append(record.to_json())
    return str(predictor.version), records


def bodies(records: list[dict], n: int, prefix: str) -> list[bytes]:
    """``n`` record bodies cycling over ``records``, each with a request id of its own."""
    out = []
    for i in range(n):
        record = dict(records[i % len(records)], request_id=f"{prefix}{i:05d}-{uuid.uuid4().hex[:8]}")
        out.append(json.dumps(record).encode())
    return out


def post_all(url: str, items: list[bytes], concurrency: int) -> dict:
    return load(lambda body: post(f"{url}/v1/records", body, JSON), items, concurrency)


class Queue:
    """Read-only look at the monitoring database: how many records of a prefix are done, and when the last was."""

    def __init__(self, db_url: str) -> None:
        import sqlalchemy as sa

        self.sa, self.engine = sa, sa.create_engine(db_url)

    def state(self, prefix: str) -> tuple[int, int, float | None]:
        """(done, failed, latest processed_at) of the records whose request id starts with ``prefix``."""
        like = {"p": f"{prefix}%"}
        with self.engine.connect() as connection:
            done, last = connection.execute(
                self.sa.text("SELECT count(*), max(processed_at) FROM results WHERE request_id LIKE :p"), like
            ).one()
            failed = connection.execute(
                self.sa.text("SELECT count(*) FROM records WHERE status = 'failed' AND request_id LIKE :p"), like
            ).scalar_one()
        return int(done), int(failed), last

    def scored(self, prefix: str) -> tuple[int, int]:
        """(stored, scored by the logit tier) among the records whose request id starts with ``prefix``."""
        query = "SELECT count(*), count(logit_at) FROM records WHERE request_id LIKE :p"
        with self.engine.connect() as connection:
            stored, scored = connection.execute(self.sa.text(query), {"p": f"{prefix}%"}).one()
        return int(stored), int(scored)

    def wait(self, prefix: str, n: int, timeout_s: float, worker_log: Path) -> float:
        """Until ``n`` records of ``prefix`` are done; the latest processed_at (Unix seconds)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done, failed, last = self.state(prefix)
            if failed:
                raise RuntimeError(f"{failed} records failed:\n{worker_log.read_text(errors='replace')[-3000:]}")
            if done >= n:
                return float(last)
            time.sleep(0.2)
        raise RuntimeError(
            f"{prefix}: not drained in {timeout_s:.0f} s:\n{worker_log.read_text(errors='replace')[-3000:]}"
        )

    def close(self) -> None:
        self.engine.dispose()


def drain(project: Path, url: str, db_url: str, records: list[dict], args, workers: int, threads: int | None,
          tag: str, logs: Path) -> dict:  # fmt: skip
    """``monitor worker --workers k`` on ``db_url``: one warm-up batch per worker (model loaded, first call paid),
    then ``args.records`` records posted at once; drain time from the first post to the last result."""
    env = child_env(project, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    log = logs / f"worker-{tag}.log"
    command = [sys.executable, "-m", "medmlops.cli", "monitor", "worker", "--workers", str(workers), "--db-url", db_url,
               "--batch-size", str(args.batch_size), "--poll-s", "0.2"]  # fmt: skip
    process = start_process(command, cwd=project, env=env, log=log)
    queue = Queue(db_url)
    try:
        deadline = time.monotonic() + 240
        while len(STARTED.findall(log.read_text(errors="replace"))) < workers:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        warm = bodies(records, workers * args.batch_size, f"w{tag}-")
        post_all(url, warm, 4)
        queue.wait(f"w{tag}-", len(warm), 600, log)
        items = bodies(records, args.records, f"m{tag}-")
        start = time.time()
        post_all(url, items, 4)
        last = queue.wait(f"m{tag}-", len(items), 900, log)
    finally:
        stop_process(process)
        queue.close()
    seconds = last - start
    return {"workers": workers, "threads": threads, "seconds": seconds, "rate": args.records / seconds}


def gpu_rates(project: Path, payloads: list[bytes], batch: int) -> tuple[float, float] | None:
    """(INFORMER images/s, forward images/s) of the registered version on CUDA at ``batch``; None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    from medmlops.inference.predict import Predictor
    from medmlops.informer.analyser import Analyser

    predictor = Predictor.from_registry(FAMILY, "candidate", device="cuda")
    analyser = Analyser.from_registry(FAMILY, str(predictor.version), device="cuda")
    x = torch.stack([predictor.preprocess(d) for d in payloads[:batch]]).to("cuda")

    def rate(fn) -> float:
        fn()
        torch.cuda.synchronize()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 3.0:
            fn()
            torch.cuda.synchronize()
            n += batch
        return n / (time.perf_counter() - start)

    with torch.no_grad():
        forward = rate(lambda: predictor.forward(x))
    return rate(lambda: analyser.analyse_tensors(x)), forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=None, help="project with a calibrated cxr-findings@candidate (SQLite)")
    parser.add_argument("--size", type=int, default=128, help="image side when training the smoke model")
    parser.add_argument("--requests", type=int, default=96, help="serving requests per concurrency")
    parser.add_argument("--ingest", type=int, default=400, help="records posted per ingest concurrency")
    parser.add_argument("--records", type=int, default=48, help="M: records drained per worker count")
    parser.add_argument("--batch-size", type=int, default=8, help="the workers' --batch-size")
    parser.add_argument("--postgres", action="store_true", help="also drain on a throwaway PostgreSQL server")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    began = time.monotonic()
    print(f"{dt.date.today()}, {os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    if args.project:
        project = Path(args.project).resolve()
    else:
        print(f"training, registering and calibrating a smoke {FAMILY} at {args.size} px in {tmp} ...", flush=True)
        (tmp / "project").mkdir()
        project = train_smoke_cxr(tmp / "project", args.size, calibrate=True)
    logs = tmp / "logs"
    logs.mkdir()
    files = sorted((project / "data" / "raw" / "chexpert").rglob("*frontal.jpg"))
    payloads = [files[i % len(files)].read_bytes() for i in range(args.requests)]
    version, records = served_records(project, payloads)
    from medmlops.informer.logit_tier import LogitTier
    from medmlops.registry.tracking import load_contract

    tier = LogitTier.from_calibration(load_contract(FAMILY, version).informer)
    if tier is None:
        raise SystemExit(f"{FAMILY} v{version} has no logit_tier section: calibrate it (medmlops informer calibrate)")
    flagging = sum(t is not None for t in tier.tau)
    print(f"{FAMILY} v{version}: logit tier {tier.score}, {flagging} of {len(tier.tau)} classes with a tau; "
          f"{len(records)} distinct uploads of {min(map(len, payloads))}-{max(map(len, payloads))} bytes", flush=True)  # fmt: skip

    # 1. serving's peak, then the logit tier at ingest, on the same cores, one after the other
    serving = {}
    process, url = start_serving(project, logs / "serving.log")
    try:
        for data in payloads[:4]:
            post(f"{url}/predict", *multipart_image(data))  # warm-up
        for concurrency in (8, 16, 32):
            serving[concurrency] = load(lambda d: post(f"{url}/predict", *multipart_image(d)), payloads, concurrency)
            print(f"  serving   c={concurrency:<3} {serving[concurrency]['rps']:7.1f} req/s", flush=True)
    finally:
        stop_process(process)
    ingest = {}
    process, url = start_monitor(project, f"sqlite:///{tmp / 'ingest.db'}", logs / "monitor-ingest.log")
    try:
        post_all(url, bodies(records, 32, "warm-"), 4)  # the contract fetched once, connections warm
        for concurrency in (8, 16):
            ingest[concurrency] = post_all(url, bodies(records, args.ingest, f"i{concurrency}-"), concurrency)
            print(f"  ingest    c={concurrency:<3} {ingest[concurrency]['rps']:7.1f} records/s", flush=True)
    finally:
        stop_process(process)
    queue = Queue(f"sqlite:///{tmp / 'ingest.db'}")
    stored, scored = queue.scored("i")
    queue.close()

    # 2. the saliency tier's workers draining one queue
    databases = [("sqlite", lambda name: f"sqlite:///{tmp / f'{name}.db'}")]
    drains: dict[str, list[dict]] = {}
    with postgres_server() if args.postgres else contextlib.nullcontext() as pg:
        if pg:
            databases.append(("postgresql", lambda name: create_database(pg, name)))
        for kind, make in databases:
            db_url = make("saliency")
            process, url = start_monitor(project, db_url, logs / f"monitor-{kind}.log")
            rows = drains[kind] = []
            try:
                plan = [(1, None), (1, 1), (2, 1), (3, 1)] if kind == "sqlite" else [(1, 1), (2, 1), (3, 1)]
                for workers, threads in plan:
                    tag = f"{kind[0]}{workers}{threads or 'd'}"
                    rows.append(drain(project, url, db_url, records, args, workers, threads, tag, logs))
                    print(f"  saliency  {kind:<10} workers {workers} threads {threads or 'default'}: "
                          f"{rows[-1]['rate']:.2f} records/s", flush=True)  # fmt: skip
            finally:
                stop_process(process)

    # 3. the GPU
    gpu = gpu_rates(project, payloads, args.batch_size)

    peak_serving = max(r["rps"] for r in serving.values())
    peak_ingest = max(r["rps"] for r in ingest.values())
    print(f"\n1. logit tier at ingest vs serving, {FAMILY} v{version} (HTTP on 127.0.0.1, new connection per request)")
    print(f"{'concurrency':>11} | {'serving req/s':>13} {'p50 ms':>8} {'p99 ms':>8} | {'ingest rec/s':>12} "
          f"{'p50 ms':>8} {'p99 ms':>8} | ingest/serving")  # fmt: skip
    for concurrency in (8, 16, 32):
        s, i = serving[concurrency], ingest.get(concurrency)
        right = (f"{i['rps']:>12.1f} {i['p50_ms']:>8.1f} {i['p99_ms']:>8.1f} | {i['rps'] / s['rps']:.2f}x" if i
                 else f"{'-':>12} {'-':>8} {'-':>8} |")  # fmt: skip
        print(f"{concurrency:>11} | {s['rps']:>13.1f} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} | {right}")
    print(f"{'peak':>11} | {peak_serving:>13.1f} {'':>8} {'':>8} | {peak_ingest:>12.1f} {'':>8} {'':>8} | "
          f"{peak_ingest / peak_serving:.2f}x   (target >= 1.0x)")  # fmt: skip
    print(f"  scored by the logit tier at ingest: {scored} of the {stored} records posted in the timed runs")

    print(f"\n2. saliency tier: {args.records} records drained by `monitor worker --workers k` (real INFORMER, "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs)")  # fmt: skip
    print(f"{'database':<11}{'workers':>8}{'threads':>9}{'drain s':>9}{'records/s':>11}{'efficiency':>12}"
          f"{'of serving peak':>17}")  # fmt: skip
    for kind, rows in drains.items():
        base = next(r for r in rows if r["workers"] == 1 and r["threads"] == 1)
        for r in rows:
            efficiency = r["rate"] / (r["workers"] * base["rate"]) if r["threads"] == 1 else None
            note = "" if r["workers"] <= (os.cpu_count() or 1) else "  oversubscribed"
            print(f"{kind:<11}{r['workers']:>8}{r['threads'] or 'default':>9}{r['seconds']:>9.1f}{r['rate']:>11.2f}"
                  f"{'' if efficiency is None else f'{efficiency:.2f}':>12}"
                  f"{r['rate'] / peak_serving:>16.1%}{note}")  # fmt: skip
    print("  efficiency = throughput(k) / (k x throughput(1)), one torch thread per worker; target >= 0.8 with a free "
          "core per worker")  # fmt: skip

    print("\n3. GPU")
    if gpu is None:
        print("  no GPU")
    else:
        informer, forward = gpu
        print(f"  batch {args.batch_size}: INFORMER {informer:.1f} img/s, forward {forward:.1f} img/s, "
              f"INFORMER / forward = {informer / forward:.2f}")  # fmt: skip
    print(f"\ntotal {time.monotonic() - began:.0f} s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
