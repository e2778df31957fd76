"""DistributedDataParallel training on CPU (Gloo): 2 real ranks started by ``launch`` (torchrun), compared with one
process at twice the batch, plus the helpers without a process group."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from medmlops.config import TrainConfig
from medmlops.errors import UserError
from medmlops.training import distributed as ddp
from medmlops.training.loop import _epoch_order, _progress, _shard, oversample_indices
from tests.training.ddp_check import TinyDataset, TinyModel, run

pytestmark = [
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with Gloo"),
    pytest.mark.timeout(300),  # a rank that waits forever in a collective must fail the test, not hang it
]

WORKER = "tests.training.ddp_check"
# The tests that launch ranks are marked slow (the module takes ~90 s on 2 busy cores); the rest are instant.
B = 2  # per-rank batch; the single-process reference uses 2 * B
ONE = TrainConfig(epochs=3, batch_size=2 * B, accumulation_steps=3, lr=0.01, patience=100, augment=False, device="cpu")


def _launch(out, *args: str) -> dict:
    ddp.launch([WORKER, str(out), "--batch-size", str(B), *args], nproc=2, env={"OMP_NUM_THREADS": "1"})
    return json.loads((out / "result.json").read_text())


def _assert_same_training(ddp_out, ddp_result: dict, single_result, single_model) -> None:
    """Same weights (float32 all-reduce vs one batch: ~1e-8 apart) and the same history (train loss up to rounding)."""
    weights = torch.load(ddp_out / "final.pt", weights_only=True)
    for key, value in single_model.state_dict().items():
        assert torch.allclose(weights[key], value, atol=1e-5, rtol=0), key
    assert ddp_result["best_epoch"] == single_result.best_epoch
    assert len(ddp_result["history"]) == len(single_result.history)
    for got, want in zip(ddp_result["history"], single_result.history, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


@pytest.fixture(scope="module")
def oversampled(tmp_path_factory):
    """2 ranks × batch 2 over the oversampled fold: 1 epoch, then (done.json removed, as if killed) resumed to 3;
    and one process × batch 4 for 3 epochs straight. 23 samples oversample to 32, a multiple of 2 ranks × batch 2,
    so the shards are exact halves, no batch is short, and the comparison is exact up to float rounding."""
    root = tmp_path_factory.mktemp("ddp")
    first = _launch(root / "ddp", "--epochs", "1", "--accumulation-steps", "3", "--n-train", "23")
    (root / "ddp" / "fold-0" / "done.json").unlink()
    resumed = _launch(root / "ddp", "--epochs", "3", "--accumulation-steps", "3", "--n-train", "23")
    single_result, single_model = run(root / "single", replace(ONE, oversample=True), n_train=23, sampler="oversample")
    return {"root": root, "first": first, "resumed": resumed, "single": (single_result, single_model)}


@pytest.mark.slow  # real torchrun launches: ~10-20 s each
def test_two_ranks_train_the_same_weights_as_one_process_with_twice_the_batch(oversampled):
    """Disjoint interleaved shards of the same global order, gradients all-reduced once per accumulation group,
    rank 0's validation deciding for both: the trained weights and history of 1 process at batch 2b."""
    _assert_same_training(oversampled["root"] / "ddp", oversampled["resumed"], *oversampled["single"])
    assert oversampled["resumed"]["world_size"] == 2
    assert [h["optimizer_steps"] for h in oversampled["resumed"]["history"]] == [
        h["optimizer_steps"] for h in oversampled["single"][0].history
    ]


@pytest.mark.slow  # real torchrun launches: ~10-20 s each
def test_ddp_resumes_from_the_last_checkpoint(oversampled):
    assert [h["epoch"] for h in oversampled["first"]["history"]] == [0]
    assert oversampled["resumed"]["resumed_from"] == 0
    assert oversampled["resumed"]["history"][:1] == oversampled["first"]["history"]


@pytest.mark.slow  # real torchrun launches: ~10-20 s each
def test_rank0_checkpoints_load_into_the_plain_model(oversampled):
    fold = oversampled["root"] / "ddp" / "fold-0"
    assert sorted(p.name for p in fold.iterdir()) == ["best.pt", "done.json", "last.pt"]
    best = torch.load(fold / "best.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in best)
    model = TinyModel()
    model.load_state_dict(best)  # strict: the unwrapped module's keys
    model.load_state_dict(torch.load(fold / "last.pt", weights_only=False)["model"])
    single_best = torch.load(oversampled["root"] / "single" / "fold-0" / "best.pt", weights_only=True)
    assert all(torch.allclose(best[k], single_best[k], atol=1e-5, rtol=0) for k in single_best)


@pytest.mark.slow  # real torchrun launches: ~10-20 s each
def test_weighted_sampler_shards_the_same_draw(tmp_path):
    """The WeightedRandomSampler path (MDMT mixing): one draw per epoch, sharded across ranks."""
    result = _launch(tmp_path / "ddp", "--sampler", "weights", "--epochs", "2", "--accumulation-steps", "2")
    cfg = replace(ONE, epochs=2, accumulation_steps=2, oversample=False)
    _assert_same_training(tmp_path / "ddp", result, *run(tmp_path / "single", cfg, sampler="weights"))


@pytest.mark.slow  # real torchrun launches: ~10-20 s each
def test_uneven_epoch_is_padded_so_no_rank_waits_forever(tmp_path):
    """25 samples on 2 ranks: padded to 26, 13 per rank: 6 batches of 2 on each (the lone 13th sample is dropped on
    both ranks, as BatchNorm cannot train on a batch of one); the run finishes."""
    result = _launch(
        tmp_path / "ddp", "--sampler", "shuffle", "--n-train", "25", "--epochs", "1", "--accumulation-steps", "2"
    )
    assert result["history"][0]["optimizer_steps"] == 3  # 6 batches / accumulation 2 on every rank


@pytest.mark.slow  # real torchrun launches: ~10-20 s each
def test_a_failing_rank_fails_the_launch_with_its_error(tmp_path):
    # Exit code 1, or -15 when torchrun stops the failing rank before its own exit is recorded (seen under load).
    with pytest.raises(
        UserError, match=r"rank 1 failed \(exit code (1|-15)\) with RuntimeError: rank 1 fails on purpose"
    ):
        ddp.launch([WORKER, str(tmp_path), "--fail-rank", "1"], nproc=2, env={"OMP_NUM_THREADS": "1"})
    assert not (tmp_path / "result.json").exists()


# Without a process group (no torchrun): cheap checks of the pieces.


def test_helpers_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (ddp.is_distributed(), ddp.rank(), ddp.world_size(), ddp.is_main()) == (False, 0, 1, True)
    assert ddp.setup_from_env().type in ("cpu", "cuda") and not dist.is_initialized()
    assert ddp.broadcast_object({"a": 1}) == {"a": 1}
    assert ddp.all_reduce_sum([1.5, 2]) == [1.5, 2]
    ddp.barrier()
    ddp.cleanup()


def test_torchrun_command_is_standalone_single_node():
    assert ddp.torchrun_command(["medmlops.cli", "train", "x"], 4) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "medmlops.cli", "train", "x",
    ]  # fmt: skip
    with pytest.raises(UserError, match="nproc"):
        ddp.torchrun_command(["m"], 0)


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 2), (7, 4), (1, 3)])
def test_shards_are_interleaved_equal_sized_and_cover_the_order(n, world):
    order = list(range(100, 100 + n))
    shards = [_shard(order, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert sorted(set().union(*shards)) == order
    assert sum(len(s) for s in shards) - n == (-n) % world  # only the padding repeats samples
    padded = (order * world)[: n + (-n) % world]  # padded with the order's own first entries
    assert shards == [padded[r::world] for r in range(world)]


@pytest.mark.parametrize("sampler", ["oversample", "weights"])
def test_epoch_order_is_the_order_the_single_process_loop_visits(sampler):
    """``_epoch_order`` draws from the loader's generator exactly as the loop's progress-bar iteration does."""
    ds = TinyDataset(24)

    def loader():
        generator = torch.Generator().manual_seed(5)
        if sampler == "weights":
            weights = np.where(ds.labels == 1, 3.0, 1.0).tolist()
            draw = torch.utils.data.WeightedRandomSampler(weights, len(ds), replacement=True, generator=generator)
            return DataLoader(ds, batch_size=4, sampler=draw)
        indices = oversample_indices(ds.labels.tolist(), 5).tolist()
        return DataLoader(Subset(ds, indices), batch_size=4, shuffle=True, generator=generator)

    visited = [int(i) for batch in _progress(loader(), "", False) for i in batch["sample_id"]]
    probe = loader()
    positions = _epoch_order(probe)
    dataset = probe.dataset
    ids = [dataset.indices[p] for p in positions] if isinstance(dataset, Subset) else positions
    assert ids == visited
