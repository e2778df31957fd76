"""Chest X-ray models and data: training throughput per backbone, and cached vs uncached epochs.

1. Training throughput (images/s) and peak memory of the MDMT model (both heads: prognosis 2, severity 4) for each
   backbone, plus the CheXpert findings DenseNet-121, at the demo input size (params.yaml ``preprocess.covid.size``),
   batch 16, AdamW steps after one warm-up step. Each configuration runs in a fresh subprocess so its peak RSS
   (or CUDA peak allocation) is its own; throughput is also printed relative to resnet18.
2. Epoch time reading the MONAI PersistentDataset cache vs re-running the full deterministic CXR chain (load
   DICOM/JPEG → percentile scaling → lung crop → resize → 3 channels → normalise) every epoch, on the same simulated
   images and the same DataLoader: a data-only epoch and a training epoch of densenet121_findings both ways.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import measure_training  # noqa: E402  (benchmarks run as scripts)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BACKBONES = "resnet18,mobilenet_v2,shufflenet_v2_x1_0,densenet121,efficientnet_b0"
MODELS = {"mdmt": {"prognosis": 2, "severity": 4}, "densenet121_findings": {"findings": 5}}


def run_one(model_name: str, backbone: str | None, size: int, batch: int, steps: int) -> dict:
    import torch

    from medmlops.models import build_model
    from medmlops.training.loop import resolve_device

    device = resolve_device("auto")
    kwargs = {"backbone": backbone} if backbone else {}
    model = build_model(model_name, tasks=MODELS[model_name], **kwargs)
    result = measure_training(model, torch.rand(batch, 3, size, size, device=device), steps)
    return {"device": result["device"], "images_per_s": result["samples_per_s"], "peak_gib": result["peak_gib"]}


def training_table(backbones: list[str], size: int, batch: int, steps: int) -> None:
    configs = [("mdmt", b) for b in backbones] + [("densenet121_findings", None)]
    rows = []
    for model, backbone in configs:
        spec = json.dumps({"model": model, "backbone": backbone, "size": size, "batch": batch, "steps": steps})
        out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True)
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
            rows.append((model, backbone or "densenet121", None, f"failed: {last[:60]}"))
            continue
        rows.append((model, backbone or "densenet121", json.loads(out.stdout.strip().splitlines()[-1]), ""))
    base = next((r for m, b, r, _ in rows if m == "mdmt" and b == "resnet18" and r), None)
    shape = f"3×{size}×{size}"
    print(f"CXR training benchmark: batch {batch}, {steps} AdamW steps after 1 warm-up, input {shape}")
    print(
        f"{'model':<22}{'backbone':<20}{'input':<12}{'batch':>6}{'device':>8}"
        f"{'img/s':>9}{'peak GiB':>10}{'vs resnet18':>13}"
    )
    for model, backbone, result, note in rows:
        if result is None:
            print(f"{model:<22}{backbone:<20}{shape:<12}{batch:>6}  {note}")
            continue
        ratio = f"{result['images_per_s'] / base['images_per_s']:.2f}×" if base else "—"
        print(
            f"{model:<22}{backbone:<20}{shape:<12}{batch:>6}{result['device']:>8}"
            f"{result['images_per_s']:>9.2f}{result['peak_gib']:>10.2f}{ratio:>13}"
        )


def epoch(loader, device, model=None, optimizer=None) -> float:
    import torch

    start = time.perf_counter()
    for batch in loader:
        if model is not None:
            out = model(batch["image"].to(device))
            loss = sum(v.float().mean() for v in out.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def cache_table(params_path: Path, profile: str, dataset: str, n: int, shape: tuple[int, int], batch: int) -> None:
    import torch
    from monai.data import Dataset
    from monai.transforms import Compose
    from torch.utils.data import DataLoader

    from medmlops.config import load_params
    from medmlops.data import preprocess as prep
    from medmlops.data.simulate import generate
    from medmlops.models import build_model
    from medmlops.training.loop import resolve_device

    device = resolve_device("auto")
    params = load_params(params_path, profile=profile)
    size = prep.preprocess_config(params, dataset).size
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        generate(dataset, repo / params.data.raw_dir / dataset, n=n, seed=0, shape=shape, progress=False)
        t0 = time.perf_counter()
        prep.preprocess(params, dataset, repo=repo, progress=False)
        first = time.perf_counter() - t0
        items = prep.items_from_manifest(prep.load_manifest(params, dataset, repo), dataset)
        cached = prep.make_dataset(params, dataset, items, augment=False, repo=repo)
        uncached = Dataset(items, transform=Compose(prep.deterministic_transforms(params, dataset)))
        loaders = {name: DataLoader(ds, batch_size=batch) for name, ds in (("uncached", uncached), ("cached", cached))}
        data_times = {name: min(epoch(loader, device) for _ in range(2)) for name, loader in loaders.items()}
        model = build_model("densenet121_findings", tasks=MODELS["densenet121_findings"]).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        warm = DataLoader(torch.utils.data.Subset(cached, range(min(batch, len(cached)))), batch_size=batch)
        epoch(warm, device, model, optimizer)  # one warm-up step: first-call allocations (cuDNN autotuning on GPU)
        train_times = {name: epoch(loader, device, model, optimizer) for name, loader in loaders.items()}
    print(
        f"CXR cache benchmark ({dataset}): {len(items)} images {shape[0]}×{shape[1]} → 3×{size}×{size}, batch {batch}, "
        f"device {device}, torch threads {torch.get_num_threads()}"
    )
    print(f"  first preprocessing pass (fills the cache): {first:.2f} s")
    print(f"  {'':<22}{'uncached':>10}{'cached':>10}{'ratio':>8}")
    for label, times in (("data-only epoch (s)", data_times), ("training epoch (s)", train_times)):
        ratio = times["uncached"] / times["cached"]
        print(f"  {label:<22}{times['uncached']:>10.2f}{times['cached']:>10.2f}{ratio:>7.1f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="training,cache", help="comma-separated: training, cache")
    parser.add_argument("--backbones", default=DEFAULT_BACKBONES, help="MDMT backbones (keys of BACKBONES)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="timed AdamW steps per configuration")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--profile", default="demo", help="params.yaml profile giving the input size")
    parser.add_argument("--size", type=int, default=None, help="input side (default: preprocess.covid.size)")
    parser.add_argument("--dataset", default="chexpert", choices=("chexpert", "aiforcovid"), help="cache benchmark")
    parser.add_argument("--n", type=int, default=64, help="simulated images for the cache benchmark")
    parser.add_argument("--shape", default="256,256", help="simulated CXR: rows,cols")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_one(spec["model"], spec["backbone"], spec["size"], spec["batch"], spec["steps"])))
        return
    parts = args.parts.split(",")
    if "training" in parts:
        size = args.size
        if size is None:
            from medmlops.config import load_params

            size = load_params(args.params, profile=args.profile).preprocess.covid.size
        training_table(args.backbones.split(","), size, args.batch, args.steps)
    if "cache" in parts:
        if "training" in parts:
            print()
        shape = tuple(int(v) for v in args.shape.split(","))
        cache_table(args.params, args.profile, args.dataset, args.n, shape, args.batch)


if __name__ == "__main__":
    main()
