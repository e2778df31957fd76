"""Epoch time reading the MONAI PersistentDataset cache vs re-reading and re-transforming NIfTI every epoch.

Same simulated data, same deterministic chain (load → orient → skull strip → window → resize), same DataLoader.
Prints data-only epoch times and a training epoch (forward + backward of the DenseNet121-3D) both ways.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from monai.data import Dataset
from monai.transforms import Compose
from torch.utils.data import DataLoader

from medmlops.config import load_params
from medmlops.data import preprocess as prep
from medmlops.data.simulate import generate
from medmlops.models import build_model

REPO = Path(__file__).resolve().parents[1]


def epoch(loader, model=None, optimizer=None) -> float:
    start = time.perf_counter()
    for batch in loader:
        if model is not None:
            out = model(batch["image"])
            loss = sum(v.float().mean() for v in out.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--shape", default="32,128,128", help="simulated CT: slices,rows,cols")
    parser.add_argument("--spatial", default="64,64,40", help="preprocessed x,y,z")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    spatial = [int(v) for v in args.spatial.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        params = load_params(REPO / "params.yaml", overrides=[f"preprocess.ich.spatial_size={spatial}"])
        generate("ich", repo / params.data.raw_dir / "ich", n=args.n, seed=0, shape=shape, progress=False)
        t0 = time.perf_counter()
        prep.preprocess(params, "ich", repo=repo, progress=False)
        first = time.perf_counter() - t0
        items = prep.items_from_manifest(prep.load_manifest(params, "ich", repo), "ich")
        cached = prep.make_dataset(params, "ich", items, augment=False, repo=repo)
        uncached = Dataset(items, transform=Compose(prep.deterministic_transforms(params, "ich")))
        loaders = {name: DataLoader(ds, batch_size=4) for name, ds in (("uncached", uncached), ("cached", cached))}
        data_times = {name: min(epoch(loader) for _ in range(2)) for name, loader in loaders.items()}
        model = build_model("densenet121_3d", tasks={"prognosis": 1})
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        train_times = {name: epoch(loader, model, optimizer) for name, loader in loaders.items()}
    print(
        f"ICH cache benchmark: {args.n} volumes {shape} → {spatial}, batch 4, torch threads {torch.get_num_threads()}"
    )
    print(f"  first preprocessing pass (fills the cache): {first:.2f} s")
    print(f"  {'':<22}{'uncached':>10}{'cached':>10}{'ratio':>8}")
    for label, times in (("data-only epoch (s)", data_times), ("training epoch (s)", train_times)):
        ratio = times["uncached"] / times["cached"]
        print(f"  {label:<22}{times['uncached']:>10.2f}{times['cached']:>10.2f}{ratio:>7.1f}×")
    print("  target: data-only epoch ≥ 5× faster from the cache")


if __name__ == "__main__":
    main()
