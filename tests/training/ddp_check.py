"""A tiny DDP training run for checking ``train_fold`` under torchrun (the tests launch it on CPU with Gloo).

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.training.ddp_check OUT_DIR

Every rank builds the same tiny model and synthetic dataset and calls ``train_fold``; rank 0 writes
``OUT_DIR/final.pt`` (the trained state dict) and ``OUT_DIR/result.json`` (the FoldResult). ``--fail-rank R``
makes rank R raise right after joining the process group (to check that a failed rank fails the launch).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.elastic.multiprocessing.errors import record

from medmlops.config import TrainConfig
from medmlops.training import distributed as ddp
from medmlops.training.loop import FoldResult, train_fold
from medmlops.training.tasks import ICH_TASKS

TASKS = {"prognosis": ICH_TASKS["prognosis"]}


class TinyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0, positive_share: float = 0.25) -> None:
        rng = np.random.default_rng(seed)
        self.labels = (rng.random(n) < positive_share).astype(int)
        self.images = (rng.normal(size=(n, 1, 4, 4, 4)) + self.labels[:, None, None, None, None]).astype(np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.from_numpy(self.images[i]), "sample_id": str(i), "prognosis": int(self.labels[i])}


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return {"prognosis": self.head(torch.tanh(self.hidden(x.flatten(1))))}


def run(
    out_dir: Path, cfg: TrainConfig, *, n_train: int = 24, sampler: str = "oversample", seed: int = 0
) -> tuple[FoldResult, nn.Module]:
    """Train the tiny model on the synthetic fold (the same on every rank, and in a single process); the result
    and the trained (plain) model."""
    train, val = TinyDataset(n_train, 0), TinyDataset(8, 1, 0.5)
    torch.manual_seed(seed)  # the initial weights; train_fold seeds everything after construction
    sample_weights = np.where(train.labels == 1, 3.0, 1.0).tolist() if sampler == "weights" else None
    model = TinyModel()
    result = train_fold(
        model, train, val, tasks=TASKS, weights={"prognosis": 1.0}, primary_task="prognosis", cfg=cfg,
        out_dir=out_dir / "fold-0", seed=seed, train_labels=train.labels.tolist(), sample_weights=sample_weights,
        progress=False,
    )  # fmt: skip
    return result, model


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


@record  # torchrun then reports the rank that failed first as the root cause (error file with a timestamp)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--accumulation-steps", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=24)
    parser.add_argument("--sampler", choices=("oversample", "weights", "shuffle"), default="oversample")
    parser.add_argument("--fail-rank", type=int, default=None)
    args = parser.parse_args(argv)
    device = ddp.setup_from_env()
    try:
        if args.fail_rank is not None and ddp.rank() == args.fail_rank:
            raise RuntimeError(f"rank {ddp.rank()} fails on purpose (--fail-rank)")
        cfg = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, accumulation_steps=args.accumulation_steps, lr=0.01,
            patience=100, oversample=args.sampler == "oversample", augment=False, device=device.type,
        )  # fmt: skip
        result, model = run(args.out_dir, cfg, n_train=args.n_train, sampler=args.sampler)
        if ddp.is_main():
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, args.out_dir / "final.pt")
            summary = {"world_size": ddp.world_size(), "best_epoch": result.best_epoch, "history": result.history,
                       "resumed_from": result.resumed_from}  # fmt: skip
            (args.out_dir / "result.json").write_text(json.dumps(summary, default=_plain))
    finally:
        ddp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
