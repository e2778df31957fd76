"""The training loop on a GPU: each family's real model and losses train a fold with CUDA and automatic mixed
precision, and the trained weights predict the same on CUDA (fp16 autocast) as on the CPU (fp32).

CI has no GPU, so these are skipped there with the reason shown; run them on a GPU node with
``pytest tests/training/test_cuda.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from medmlops.config import TrainConfig
from medmlops.models import build_model
from medmlops.training.loop import predict, task_probs, train_fold
from medmlops.training.tasks import CHEXPERT_TASKS, COVID_TASKS, ICH_TASKS

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: run on a GPU node (pytest tests/training/test_cuda.py)"
)


class Synthetic(Dataset):
    """Images whose mean carries the first task's label, so a few steps learn something; ``labels`` per column."""

    def __init__(self, n: int, shape: tuple[int, ...], labels: dict[str, np.ndarray], seed: int) -> None:
        rng = np.random.default_rng(seed)
        signal = next(iter(labels.values()))
        signal = np.nan_to_num(signal if signal.ndim == 1 else signal[:, 0], nan=0.0).clip(min=0)
        self.images = (rng.normal(size=(n, *shape)) + signal.reshape(-1, *[1] * len(shape))).astype(np.float32)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        item = {"image": torch.from_numpy(self.images[i]), "sample_id": f"s{i}"}
        for column, values in self.labels.items():
            item[column] = torch.as_tensor(values[i], dtype=torch.float32) if values.ndim > 1 else int(values[i])
        return item


def _ich(n: int, seed: int):
    rng = np.random.default_rng(seed)
    tasks = {t: ICH_TASKS[t] for t in ("prognosis", "gcs_ordinal", "age_binary")}
    labels = {
        "prognosis": np.tile([0, 1], n // 2),
        "gcs_ordinal": rng.integers(0, 3, n),
        "age_binary": rng.integers(0, 2, n),
    }
    model = build_model("densenet121_3d", tasks={t: d.out_features for t, d in tasks.items()})
    return model, tasks, {"prognosis": 0.4, "gcs_ordinal": 0.3, "age_binary": 0.3}, (1, 32, 32, 32), labels


def _covid(n: int, seed: int):
    """MDMT's mixed batches: AIforCOVID rows have no severity label and BRIXIA rows no prognosis (-1)."""
    rng = np.random.default_rng(seed)
    tasks = dict(COVID_TASKS)
    half = n // 2
    labels = {
        "prognosis": np.concatenate([np.tile([0, 1], half // 2), -np.ones(n - half, dtype=int)]),
        "severity": np.concatenate([-np.ones(half, dtype=int), rng.integers(0, 4, n - half)]),
    }
    model = build_model("mdmt", tasks={t: d.out_features for t, d in tasks.items()}, backbone="resnet18")
    return model, tasks, {"prognosis": 1.0, "severity": 1.0}, (3, 64, 64), labels


def _cxr(n: int, seed: int):
    """Five findings with U-Ignore gaps (NaN), as the CheXpert loader gives them."""
    rng = np.random.default_rng(seed)
    findings = rng.integers(0, 2, (n, 5)).astype(np.float32)
    findings[rng.random((n, 5)) < 0.2] = np.nan
    findings[:, 0] = np.tile([0, 1], n // 2)  # the first finding stays labelled: it carries the image signal
    tasks = dict(CHEXPERT_TASKS)
    model = build_model("densenet121_findings", tasks={t: d.out_features for t, d in tasks.items()})
    return model, tasks, {"findings": 1.0}, (3, 64, 64), {"findings": findings}


CASES = {"ich": _ich, "covid": _covid, "cxr": _cxr}


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_fold_trains_on_cuda_with_mixed_precision_and_predicts_as_on_the_cpu(family, tmp_path):
    torch.manual_seed(0)
    model, tasks, weights, shape, train_labels = CASES[family](16, 0)
    _, _, _, _, val_labels = CASES[family](8, 1)
    train_ds, val_ds = Synthetic(16, shape, train_labels, 0), Synthetic(8, shape, val_labels, 1)
    primary = next(iter(tasks))
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    dtypes: list[torch.dtype] = []
    first_conv = next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    first_conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) if m.training else None)

    cfg = TrainConfig(epochs=2, batch_size=4, accumulation_steps=2, patience=5, device="cuda", amp=True)
    result = train_fold(
        model, train_ds, val_ds, tasks=tasks, weights=weights, primary_task=primary, cfg=cfg,
        out_dir=tmp_path / "fold-0", seed=0, progress=False,
        train_labels=train_labels["prognosis"].tolist() if family == "ich" else None,
    )  # fmt: skip

    assert len(result.history) == 2 and all(np.isfinite(h["train_loss"]) for h in result.history)
    assert result.history[0]["optimizer_steps"] == 2  # 4 batches of 4, accumulated in pairs
    assert next(model.parameters()).device.type == "cuda"
    assert torch.float16 in dtypes, "autocast did not run the convolutions in half precision"
    best = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert any(not torch.equal(before[k], best[k]) for k in before), "training left every weight unchanged"

    model.load_state_dict(best)
    loader = DataLoader(val_ds, batch_size=4)
    on_gpu = predict(model, loader, tasks, torch.device("cuda"), amp=True)
    on_cpu = predict(copy.deepcopy(model).cpu(), loader, tasks, torch.device("cpu"))
    for task in tasks.values():
        gpu, cpu = task_probs(on_gpu, task), task_probs(on_cpu, task)
        assert np.isfinite(gpu).all() and ((gpu >= 0) & (gpu <= 1)).all()
        np.testing.assert_allclose(gpu, cpu, atol=0.02, err_msg=f"{family} {task.name}: CUDA fp16 vs CPU fp32")
