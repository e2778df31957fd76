"""The training loop on tiny tensors: accumulation, oversampling, early stopping, checkpoints and resume."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from medmlops.config import TrainConfig
from medmlops.training.loop import _accumulation_groups, oversample_indices, train_fold
from medmlops.training.tasks import ICH_TASKS
from tests.training.ddp_check import TinyDataset


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 1)

    def forward(self, x):
        return {"prognosis": self.linear(x.flatten(1))}


CFG = TrainConfig(epochs=4, batch_size=4, accumulation_steps=3, patience=10, device="cpu", lr=0.01)
TASKS = {"prognosis": ICH_TASKS["prognosis"]}


def _train(tmp_path, cfg=CFG, n=20, **kwargs):
    train, val = TinyDataset(n, 0), TinyDataset(8, 1, 0.5)
    torch.manual_seed(0)  # the model's initial weights; train_fold seeds everything after construction
    return train_fold(
        TinyModel(), train, val, tasks=TASKS, weights={"prognosis": 1.0}, primary_task="prognosis", cfg=cfg,
        out_dir=tmp_path / "fold-0", seed=0, train_labels=train.labels.tolist(), progress=False, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("n_batches", "steps", "expected"),
    [(7, 3, [3, 3, 3, 3, 3, 3, 1]), (6, 3, [3] * 6), (2, 4, [2, 2]), (3, 1, [1, 1, 1])],
)
def test_accumulation_groups_cover_every_batch_once(n_batches, steps, expected):
    assert _accumulation_groups(n_batches, steps) == expected


def test_optimizer_steps_follow_accumulation(tmp_path):
    result = _train(tmp_path, cfg=replace(CFG, oversample=False, epochs=1), n=20)  # 20 → 5 batches of 4
    assert result.history[0]["optimizer_steps"] == math.ceil(5 / 3)


def test_accumulated_gradient_equals_the_large_batch_gradient():
    """3 batches of 4 accumulated with loss / group size give the gradient of one batch of 12 (mean reduction)."""
    torch.manual_seed(0)
    model, x, y = nn.Linear(5, 1), torch.randn(12, 5), torch.randint(0, 2, (12, 1)).float()
    loss_fn = nn.BCEWithLogitsLoss()
    loss_fn(model(x), y).backward()
    full = model.weight.grad.clone()
    model.zero_grad()
    groups = _accumulation_groups(3, 3)
    for i in range(3):
        (loss_fn(model(x[4 * i : 4 * i + 4]), y[4 * i : 4 * i + 4]) / groups[i]).backward()
    assert torch.allclose(model.weight.grad, full, atol=1e-6)


def test_oversampling_balances_the_training_split_only():
    labels = [0] * 15 + [1] * 5
    idx = oversample_indices(labels, seed=0)
    resampled = np.asarray(labels)[idx]
    assert (resampled == 0).sum() == (resampled == 1).sum() == 15
    assert set(idx[np.asarray(labels)[idx] == 0]) == set(range(15))  # the majority is kept as is
    assert len(oversample_indices([1, 1, 1], seed=0)) == 3


def test_oversampling_leaves_unlabelled_rows_out_of_the_balance():
    """A single-task GCS model on patients of whom one has no GCS (-1): -1 is not a third class to oversample."""
    labels = np.asarray([0] * 12 + [1] * 4 + [-1] * 2)
    idx = oversample_indices(labels, seed=0)
    resampled = labels[idx]
    assert (resampled == 0).sum() == (resampled == 1).sum() == 12
    assert (resampled == -1).sum() == 2 and sorted(idx[resampled == -1]) == [16, 17]
    assert np.array_equal(oversample_indices(labels[:16], seed=0), oversample_indices(list(labels[:16]), seed=0))


def test_best_checkpoint_kept_and_early_stopping(tmp_path):
    result = _train(tmp_path, cfg=replace(CFG, epochs=30, patience=2, lr=0.0))  # lr 0: the score never improves
    assert len(result.history) == 3  # the first epoch is best, then 2 stale epochs
    assert result.best_epoch == 0 and (tmp_path / "fold-0" / "best.pt").is_file()
    assert json.loads((tmp_path / "fold-0" / "done.json").read_text())["best_epoch"] == 0


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    first = _train(tmp_path, cfg=replace(CFG, epochs=2))
    assert len(first.history) == 2
    (tmp_path / "fold-0" / "done.json").unlink()  # as if the process died after epoch 2 of 4
    resumed = _train(tmp_path, cfg=replace(CFG, epochs=4))
    assert resumed.resumed_from == 1
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert resumed.history[:2] == first.history
    # Finished folds are not trained again.
    again = _train(tmp_path, cfg=replace(CFG, epochs=4))
    assert again.history == resumed.history


def test_resumed_training_matches_uninterrupted_training(tmp_path):
    straight = _train(tmp_path / "a", cfg=replace(CFG, epochs=3))
    _train(tmp_path / "b", cfg=replace(CFG, epochs=1))
    (tmp_path / "b" / "fold-0" / "done.json").unlink()
    resumed = _train(tmp_path / "b", cfg=replace(CFG, epochs=3))
    a = torch.load(tmp_path / "a" / "fold-0" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "fold-0" / "last.pt", weights_only=False)["model"]
    assert [h["train_loss"] for h in straight.history] == pytest.approx([h["train_loss"] for h in resumed.history])
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_warmup_defers_early_stopping_and_best_selection(tmp_path):
    """Ruffini et al.: a 40-epoch warm-up before early stopping. With lr 0 the score never improves: without warm-up
    the run stops after 1 + patience epochs; with a 3-epoch warm-up it runs 3 + 1 + patience, and the best epoch is
    the first one after the warm-up (selection starts there), not epoch 0."""
    plain = _train(tmp_path / "plain", cfg=replace(CFG, epochs=30, patience=2, lr=0.0))
    warm = _train(tmp_path / "warm", cfg=replace(CFG, epochs=30, patience=2, lr=0.0, warmup_epochs=3))
    assert len(plain.history) == 3 and plain.best_epoch == 0
    assert len(warm.history) == 6 and warm.best_epoch == 3


def test_max_steps_stops_the_run_after_that_many_optimizer_steps(tmp_path):
    cfg = replace(CFG, oversample=False, epochs=10, accumulation_steps=1, max_steps=7)  # 20 samples → 5 steps/epoch
    result = _train(tmp_path, cfg=cfg, n=20)
    assert sum(r["optimizer_steps"] for r in result.history) == 7
    assert [r["optimizer_steps"] for r in result.history] == [5, 2]


@pytest.mark.parametrize(("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_the_optimizer_is_the_configured_one(name, kind):
    from medmlops.training.loop import make_optimizer

    cfg = replace(CFG, optimizer=name, lr=0.001, betas=(0.8, 0.99), weight_decay=1e-4)
    opt = make_optimizer(nn.Linear(2, 1).parameters(), cfg)
    assert type(opt) is kind
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.001, (0.8, 0.99), 1e-4)
