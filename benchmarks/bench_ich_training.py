"""Training throughput (volumes/s) and peak memory of the ICH models at the demo and paper input shapes.

Each configuration runs in a fresh subprocess so its peak RSS (or CUDA peak allocation) is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from _common import measure_training  # noqa: E402  (benchmarks run as scripts)

SHAPES = {"smoke": (40, 40, 40), "demo": (64, 64, 40), "paper": (301, 301, 40)}


def run_one(model_name: str, shape: tuple[int, int, int], batch: int, steps: int, device_name: str = "auto") -> dict:
    import torch

    from medmlops.models import build_model
    from medmlops.training.loop import resolve_device

    device = resolve_device(device_name)
    model = build_model(model_name, tasks={"prognosis": 1, "gcs_ordinal": 2, "age_binary": 1})
    result = measure_training(model, torch.rand(batch, 1, *shape, device=device), steps)
    return {"device": result["device"], "volumes_per_s": result["samples_per_s"], "peak_gib": result["peak_gib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profiles", default="demo,paper")
    parser.add_argument("--models", default="densenet121_3d,perez_cnn3d")
    parser.add_argument("--batch", type=int, default=None, help="volumes per step (default: 4 demo, 1 paper)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 4 demo, 2 paper; more on a GPU)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        result = run_one(spec["model"], tuple(spec["shape"]), spec["batch"], spec["steps"], spec["device"])
        print(json.dumps(result))
        return
    rows, records = [], []
    for profile in args.profiles.split(","):
        shape = SHAPES[profile]
        batch, steps = (1, 2) if profile == "paper" else (4, 4)
        batch, steps = args.batch or batch, args.steps or steps
        for model in args.models.split(","):
            spec = json.dumps({"model": model, "shape": shape, "batch": batch, "steps": steps, "device": args.device})
            out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True)
            record = {"profile": profile, "model": model, "shape": list(shape), "batch": batch, "steps": steps}
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)  # the child's traceback, for the caller's log
                last = (out.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append((profile, model, shape, batch, None, f"failed: {last[:60]}"))
                records.append({**record, "error": last[:300]})
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append((profile, model, shape, batch, result, ""))
            records.append({**record, **result})
    print(f"{'profile':<8}{'model':<16}{'input (x,y,z)':<18}{'batch':>6}{'device':>8}{'vol/s':>9}{'peak GiB':>10}")
    for profile, model, shape, batch, result, note in rows:
        if result is None:
            print(f"{profile:<8}{model:<16}{str(shape):<18}{batch:>6}  {note}")
        else:
            print(
                f"{profile:<8}{model:<16}{str(shape):<18}{batch:>6}{result['device']:>8}{result['volumes_per_s']:>9.2f}{result['peak_gib']:>10.2f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": records}, indent=2))
    base = {(p, m): r for p, m, _, _, r, _ in rows if r}
    for model in args.models.split(","):
        if ("demo", model) in base and ("paper", model) in base:
            ratio = base[("demo", model)]["volumes_per_s"] / base[("paper", model)]["volumes_per_s"]
            print(f"{model}: demo shape trains {ratio:.1f}× faster than the paper shape")


if __name__ == "__main__":
    main()
