"""Serving throughput: requests/s and p50/p99 latency at concurrency 1, 8 and 32 for cxr-findings, with BentoML's
adaptive batching on vs off, next to the same model's in-process forward (batch 1 vs batch 16). One run, one table.

    .venv/bin/python benchmarks/bench_serving.py [--project DIR] [--requests 96] [--size 128] [--concurrency 1,8,32]
        [--forward-s 3] [--json F]

Without ``--project`` it trains and registers a smoke ``cxr-findings`` (``--size`` px) in a temporary project.
Servers listen on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (benchmarks run as scripts)
    load,
    multipart_image,
    post,
    start_serving,
    stop_process,
    tracking_uri,
    train_smoke_cxr,
)


def _predict(url: str, data: bytes) -> float:
    return post(f"{url}/predict", *multipart_image(data))


def _load(url: str, payloads: list[bytes], concurrency: int) -> dict:
    for data in payloads[:4]:
        _predict(url, data)  # warm-up
    return load(lambda d: _predict(url, d), payloads, concurrency)


def _in_process(project: Path, payloads: list[bytes], seconds: float = 3.0) -> dict:
    import mlflow
    import torch

    from medmlops.inference.predict import Predictor

    uri = tracking_uri(project)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    predictor = Predictor.from_registry("cxr-findings", "candidate")
    tensors = torch.stack([predictor.preprocess(d) for d in payloads[:16]])
    out = {}
    for batch in (1, 16):
        predictor.forward(tensors[:batch])
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            predictor.forward(tensors[:batch])
            n += len(tensors[:batch])  # fewer than 16 when fewer payloads
        out[batch] = n / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=None, help="project with cxr-findings@candidate registered (SQLite)")
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--size", type=int, default=128, help="image side when training the smoke model")
    parser.add_argument("--concurrency", default="1,8,32", help="client concurrencies, comma-separated")
    parser.add_argument("--forward-s", type=float, default=3.0, help="seconds of in-process forward per batch size")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    tmp = None
    if args.project:
        project = Path(args.project).resolve()
    else:
        tmp = tempfile.mkdtemp(prefix="bench-serving-")
        print(f"training a smoke cxr-findings at {args.size} px in {tmp} ...", flush=True)
        project = train_smoke_cxr(Path(tmp), args.size)
    # The project's CheXpert uploads, wherever its data.raw_dir is (data/raw here, another folder in gpu_check.py's).
    files = sorted(p for p in (project / "data").rglob("*frontal.jpg") if "chexpert" in p.parts)
    payloads = [files[i % len(files)].read_bytes() for i in range(args.requests)]
    rows = []
    for batching in (True, False):
        process, url = start_serving(
            project, Path(tmp or project) / f"serve-{'on' if batching else 'off'}.log", batching=batching
        )
        try:
            for concurrency in levels:
                result = _load(url, payloads, concurrency)
                rows.append((batching, concurrency, result))
                print(f"  batching {'on ' if batching else 'off'} c={concurrency:<3} {result['rps']:7.1f} req/s  "
                      f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms", flush=True)  # fmt: skip
        finally:
            stop_process(process)
    forward = _in_process(project, payloads, args.forward_s)
    print("\nserving cxr-findings over HTTP (127.0.0.1), one process each")
    print(
        f"{'concurrency':>11} | {'batching on req/s':>17} {'p50 ms':>8} {'p99 ms':>8} | {'off req/s':>9} {'p50 ms':>8} {'p99 ms':>8} | on/off"
    )
    for concurrency in levels:
        on = next(r for b, c, r in rows if b and c == concurrency)
        off = next(r for b, c, r in rows if not b and c == concurrency)
        print(f"{concurrency:>11} | {on['rps']:>17.1f} {on['p50_ms']:>8.1f} {on['p99_ms']:>8.1f} | {off['rps']:>9.1f} "
              f"{off['p50_ms']:>8.1f} {off['p99_ms']:>8.1f} | {on['rps'] / off['rps']:.2f}x")  # fmt: skip
    best = max(r["rps"] for _, _, r in rows)
    print(f"\nin-process forward: batch 1 {forward[1]:.1f} img/s, batch 16 {forward[16]:.1f} img/s "
          f"({forward[16] / forward[1]:.2f}x); best HTTP {best:.1f} req/s = {best / forward[16]:.2f} of batched in-process")  # fmt: skip
    if args.json:
        import torch

        Path(args.json).write_text(json.dumps({
            "size": args.size, "requests": args.requests, "cuda": torch.cuda.is_available(),
            "rows": [{"batching": b, "concurrency": c, **r} for b, c, r in rows],
            "in_process_images_per_s": {str(k): v for k, v in forward.items()},
        }, indent=2))  # fmt: skip
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
