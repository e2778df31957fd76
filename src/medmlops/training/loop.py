"""One training loop for every experiment: multi-task losses, oversampling, gradient accumulation, early stopping,
checkpoints, resume, CUDA + AMP when present, DistributedDataParallel under torchrun (``training.distributed``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from medmlops.config import TrainConfig
from medmlops.training import distributed as ddp
from medmlops.training.tasks import TaskDef

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    set_determinism(seed=seed)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def oversample_indices(labels: Sequence[int], seed: int) -> np.ndarray:
    """Indices with the minority class(es) resampled up to the majority (imblearn's RandomOverSampler on indices,
    so images are never copied). Training split only: validation and test keep their true prevalence."""
    from imblearn.over_sampling import RandomOverSampler

    labels = np.asarray(labels)
    # Rows without a label for the task (-1: a patient with no GCS, say) are not a class: they are kept once each and
    # the labelled rows are balanced among themselves.
    labelled, unlabelled = np.flatnonzero(labels >= 0), np.flatnonzero(labels < 0)
    if len(np.unique(labels[labelled])) < 2:
        return np.arange(len(labels))
    idx, _ = RandomOverSampler(random_state=seed).fit_resample(labelled.reshape(-1, 1), labels[labelled])
    return np.concatenate([idx[:, 0], unlabelled])


def multitask_loss(
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    tasks: Mapping[str, TaskDef],
    weights: Mapping[str, float],
    reduction: str = "task_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The batch loss of every task together.

    ``task_mean``: L = Σ_t λ_t · L_t, each L_t the mean loss over the batch rows labelled for task t (Cobo et al.,
    Eq. 1). ``indicator_sum``: L = (1/|X|) Σ_i Σ_t I(X_i, τ_t) · λ_t · L_t(X_i) (Ruffini et al., Eq. 2, whose sum runs
    over the batch without a 1/|X|; dividing by the batch size is a constant factor that Adam's update ignores and
    keeps the loss comparable across batch sizes). The two differ when a task labels only part of the batch: in a
    batch of 2 AIforCOVID and 6 BRIXIA images, ``task_mean`` gives each AIforCOVID image 1/2 of τ1's weight and each
    BRIXIA image 1/6 of τ2's (3× more per image for the minority dataset), Eq. 2 weighs every image the same.
    """
    if reduction not in ("task_mean", "indicator_sum"):
        raise ValueError(f"unknown loss reduction {reduction!r} (expected task_mean or indicator_sum)")
    total = None
    parts = {}
    size = len(next(iter(outputs.values())))
    for name, task in tasks.items():
        labels = batch[task.column].to(outputs[name].device)
        if reduction == "task_mean":
            loss = task.loss(outputs[name], labels)
        else:
            loss = task.row_losses(outputs[name], labels).sum() / max(1, size)
        parts[name] = float(loss.detach())
        total = weights[name] * loss if total is None else total + weights[name] * loss
    return total, parts


def make_optimizer(parameters, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay; Cobo et al.) or Adam (L2 weight decay in the gradient, β1 the "momentum";
    Ruffini et al., Shu et al.), as ``cfg.optimizer`` says."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (expected adamw or adam)")


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: DataLoader, tasks: Mapping[str, TaskDef], device: torch.device, amp: bool = False
) -> pd.DataFrame:
    """Probabilities of every task for every sample: columns ``sample_id``, ``<task>_p<k>`` and the labels."""
    model.eval()
    rows: dict[str, list] = {"sample_id": []}
    for batch in loader:
        with torch.autocast(device_type=device.type, enabled=amp and device.type == "cuda"):
            outputs = model(batch["image"].to(device))
        rows["sample_id"].extend(batch["sample_id"])
        for name, task in tasks.items():
            probs = task.probabilities(outputs[name])
            for k in range(probs.shape[1]):
                rows.setdefault(f"{name}_p{k}", []).extend(probs[:, k].tolist())
            if task.column in batch:
                values = batch[task.column]
                if task.kind == "multilabel":
                    for k in range(task.out_features):
                        rows.setdefault(f"{task.column}_y{k}", []).extend(values[:, k].tolist())
                else:
                    rows.setdefault(task.column, []).extend(values.tolist())
    return pd.DataFrame(rows)


def task_probs(frame: pd.DataFrame, task: TaskDef) -> np.ndarray:
    return frame[[f"{task.name}_p{k}" for k in range(task.out_features)]].to_numpy()


def task_labels(frame: pd.DataFrame, task: TaskDef) -> np.ndarray:
    """Labels of ``task`` from a prediction frame: (N,) integers, or (N, K) floats with NaN for multilabel."""
    if task.kind == "multilabel":
        return frame[[f"{task.column}_y{k}" for k in range(task.out_features)]].to_numpy(dtype=np.float64)
    return frame[task.column].to_numpy()


def primary_score(frame: pd.DataFrame, task: TaskDef) -> float:
    """The early-stopping criterion: validation balanced accuracy at 0.5 / argmax (Cobo et al.), or the mean
    validation AUROC over labels for multilabel tasks (the CheXpert classifier)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    labels = task_labels(frame, task)
    probs = task_probs(frame, task)
    if task.kind == "multilabel":
        aucs = []
        for k in range(labels.shape[1]):
            keep = ~np.isnan(labels[:, k])
            if keep.sum() and len(np.unique(labels[keep, k])) == 2:
                aucs.append(roc_auc_score(labels[keep, k], probs[keep, k]))
        return float(np.mean(aucs)) if aucs else float("nan")
    keep = labels >= 0
    if keep.sum() == 0:
        return float("nan")
    return float(balanced_accuracy_score(labels[keep], task.predict(probs)[keep]))


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best_score: float
    checkpoint: Path
    history: list[dict] = field(default_factory=list)
    resumed_from: int | None = None


def _accumulation_groups(n_batches: int, steps: int) -> list[int]:
    """Size of the accumulation group each batch belongs to: the last group may be short and its loss is
    divided by its own size, so every optimizer step sees the mean gradient of the batches it used."""
    sizes = []
    for start in range(0, n_batches, steps):
        size = min(steps, n_batches - start)
        sizes += [size] * size
    return sizes


def _lone_last(n: int, batch_size: int) -> bool:
    """Drop the last training batch when it would hold a single sample: BatchNorm cannot normalise a batch of one in
    training mode (every model here has BatchNorm). That sample is seen in the next epoch's order. Under DDP every
    rank has the same shard length, so all ranks drop it together."""
    return batch_size > 1 and n > 1 and n % batch_size == 1


def _progress(loader: DataLoader, desc: str, enabled: bool) -> tqdm:
    """How the training loop iterates its loader (also used by ``_epoch_order``, which must consume the loader's
    generator the same way: tqdm.auto's constructor calls ``iter()`` once more, and every ``iter()`` of a
    DataLoader draws a seed from its generator before the sampler draws the order)."""
    return tqdm(loader, desc=desc, leave=False, disable=not enabled)


def _epoch_order(loader: DataLoader) -> list[int]:
    """The positions in ``loader.dataset`` that one pass over ``loader`` in the training loop visits, in order,
    drawn exactly as that pass would draw them (same sampler, same generator, iterated the same way; ``loader``
    itself is not iterated and no sample is loaded). The samplers are seeded by the epoch, so every rank gets
    the same global order: the one a single process trains on."""
    probe = DataLoader(
        range(len(loader.dataset)), batch_size=4096, sampler=loader.sampler,
        generator=loader.generator if loader.generator is not None else torch.Generator(),
    )  # fmt: skip
    return [int(i) for batch in _progress(probe, "", False) for i in batch.tolist()]


def _shard(order: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share of the global order: every ``world``-th position starting at ``rank``, after padding the
    order (with its own first entries, as DistributedSampler does) to a multiple of ``world`` so that every rank
    runs the same number of batches (DDP's collectives would otherwise wait forever)."""
    order = list(order)
    if order and len(order) % world:
        pad = world - len(order) % world
        order += (order * math.ceil(pad / len(order)))[:pad]
    return order[rank::world]


def train_fold(
    model: torch.nn.Module,
    train_ds,
    val_ds,
    *,
    tasks: Mapping[str, TaskDef],
    weights: Mapping[str, float],
    primary_task: str,
    cfg: TrainConfig,
    out_dir: Path,
    seed: int,
    loss_reduction: str = "task_mean",
    train_labels: Sequence[int] | None = None,
    sample_weights: Sequence[float] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    resume: bool = True,
) -> FoldResult:
    """Train one fold; keeps ``best.pt`` (best validation balanced accuracy) and ``last.pt`` (for resume).

    A fold whose ``done.json`` exists is not trained again; a fold with ``last.pt`` continues from it (model,
    optimizer, scaler, epoch, best score, patience and RNG states), so an interrupted run picks up where it stopped.

    Under torch.distributed (torchrun + ``distributed.setup_from_env()``, more than one rank) the model is wrapped
    in DistributedDataParallel (on ``cuda:LOCAL_RANK`` or CPU/Gloo) and every rank calls ``train_fold`` with the
    same arguments:

    - each epoch's global sample order (oversampled or weighted-sampled, shuffled, seeded by the epoch) is the
      one a single process would use; rank r trains on positions r, r + W, r + 2W, ... (padded to a multiple
      of W). ``cfg.batch_size`` is the batch of one rank, so one step sees ``batch_size × W`` samples (times
      ``accumulation_steps`` per optimizer step) and an epoch has about 1/W as many steps; the learning rate is
      not rescaled. With W dividing the epoch's sample count and every row labelled for every task, W ranks at
      batch b train the same weights as one process at batch W·b;
    - gradient accumulation all-reduces gradients once per optimizer step (``no_sync`` on the other micro-batches);
    - rank 0 validates (the whole validation set, on the unwrapped model) and broadcasts the score, so the
      best epoch, patience and early stopping are the same on every rank; rank 0 alone writes ``best.pt``,
      ``last.pt`` and ``done.json`` (state dicts of the unwrapped model, no ``module.`` prefix), calls
      ``on_epoch`` and shows progress; ``train_loss`` is the mean over all ranks' samples;
    - on resume every rank loads the same ``last.pt``; every rank returns the same ``FoldResult`` once the files
      are written. BatchNorm statistics stay per rank (no SyncBatchNorm).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    done, last, best = out_dir / "done.json", out_dir / "last.pt", out_dir / "best.pt"
    distributed, rank, world = ddp.is_distributed(), ddp.rank(), ddp.world_size()
    main = rank == 0
    device = ddp.local_device(resolve_device(cfg.device))
    use_amp = cfg.amp and device.type == "cuda"
    if resume and ddp.broadcast_object(done.is_file()):  # rank 0's view decides, so every rank takes the same path
        info = json.loads(done.read_text())
        return FoldResult(
            info["fold"], info["best_epoch"], info["best_score"], best, info["history"], resumed_from=info["best_epoch"]
        )

    seed_everything(seed)
    model.to(device)
    optimizer = make_optimizer(model.parameters(), cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    start_epoch, best_score, best_epoch, stale, history, resumed_from = 0, -math.inf, -1, 0, [], None
    total_steps = 0  # optimizer steps over all epochs (cfg.max_steps stops the run there)
    if resume and ddp.broadcast_object(last.is_file()):
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_score, best_epoch, stale, history = (
            state["epoch"] + 1, state["best_score"], state["best_epoch"], state["stale"], state["history"],
        )  # fmt: skip
        total_steps = int(state.get("total_steps", sum(r.get("optimizer_steps", 0) for r in history)))
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        resumed_from = state["epoch"]
        if main:
            log.info("fold %s: resuming after epoch %d", out_dir.name, state["epoch"])
    # ``model`` stays the plain module (validation, state dicts); ``net`` is what trains (DDP-wrapped under torchrun).
    net = model
    if distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    primary = tasks[primary_task]
    fold_index = int(out_dir.name.split("-")[-1]) if "-" in out_dir.name else 0
    for epoch in range(start_epoch, cfg.epochs):
        # Early stopping waits for the warm-up (Ruffini et al.: 40 epochs, then patience 40); ``stale`` only counts
        # after it anyway. A run that reached max_steps stops too.
        if (stale >= cfg.patience and epoch >= cfg.warmup_epochs) or (cfg.max_steps and total_steps >= cfg.max_steps):
            break
        net.train()
        generator = torch.Generator().manual_seed(seed + epoch)
        if sample_weights is not None:
            # Fixed-ratio mixing of datasets (MDMT): each batch draws the configured share of each dataset.
            sampler = torch.utils.data.WeightedRandomSampler(
                sample_weights, len(train_ds), replacement=True, generator=generator
            )
            loader = DataLoader(
                train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                drop_last=_lone_last(len(train_ds), cfg.batch_size),
            )  # fmt: skip
        else:
            if cfg.oversample and train_labels is not None:
                indices = oversample_indices(train_labels, seed + epoch)
            else:
                indices = np.arange(len(train_ds))
            loader = DataLoader(
                Subset(train_ds, indices.tolist()), batch_size=cfg.batch_size, shuffle=True, generator=generator,
                num_workers=cfg.num_workers, drop_last=_lone_last(len(indices), cfg.batch_size),
            )  # fmt: skip
        if distributed:
            # The same global order on every rank (the one the loader above would visit); this rank's share of it.
            workers_seed = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
            shard = _shard(_epoch_order(loader), rank, world)
            loader = DataLoader(
                Subset(loader.dataset, shard), batch_size=cfg.batch_size,
                shuffle=False, num_workers=cfg.num_workers, drop_last=_lone_last(len(shard), cfg.batch_size),
                generator=torch.Generator().manual_seed(workers_seed),
            )  # fmt: skip
        groups = _accumulation_groups(len(loader), max(1, cfg.accumulation_steps))
        optimizer.zero_grad(set_to_none=True)
        running, seen, steps = 0.0, 0, 0
        bar = _progress(loader, f"{out_dir.name} epoch {epoch + 1}/{cfg.epochs}", progress and main)
        for i, batch in enumerate(bar):
            step_now = (i + 1) % max(1, cfg.accumulation_steps) == 0 or (i + 1) == len(loader)
            # DDP all-reduces gradients in backward: only on the micro-batch that ends an accumulation group.
            with net.no_sync() if distributed and not step_now else contextlib.nullcontext():
                with torch.autocast(device_type=device.type, enabled=use_amp):
                    outputs = net(batch["image"].to(device))
                    loss, _ = multitask_loss(outputs, batch, tasks, weights, loss_reduction)
                scaler.scale(loss / groups[i]).backward()
            if step_now:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
                total_steps += 1
            running += float(loss.detach()) * len(batch["sample_id"])
            seen += len(batch["sample_id"])
            bar.set_postfix(loss=f"{running / max(1, seen):.4f}")
            if cfg.max_steps and total_steps >= cfg.max_steps and step_now:
                break  # every rank counts the same steps, so all leave the epoch together
        if distributed:
            running, seen = ddp.all_reduce_sum([running, seen])
        # Rank 0 validates; every rank takes its score, so best epoch, patience and early stopping agree.
        outcome = None
        if main:
            val_frame = predict(model, val_loader, tasks, device, amp=use_amp)
            outcome = (primary_score(val_frame, primary), _frame_loss(val_frame, tasks, weights, loss_reduction))
        score, val_loss = ddp.broadcast_object(outcome)
        # During the warm-up the latest epoch is the best (selection starts after it, as early stopping does: a
        # model from the first epochs of a 300-epoch run is not a candidate); without warm-up, the best score wins.
        in_warmup = epoch < cfg.warmup_epochs or (cfg.warmup_epochs > 0 and epoch == cfg.warmup_epochs)
        improved = in_warmup or (np.isfinite(score) and score > best_score) or best_epoch < 0
        if improved:
            best_score, best_epoch, stale = score, epoch, 0
            if main:
                torch.save(model.state_dict(), best)
        else:
            stale += 1
        score_name = "mean_auroc" if primary.kind == "multilabel" else "balanced_accuracy"
        record = {
            "epoch": epoch, "train_loss": running / max(1, seen), "val_loss": val_loss,
            f"val_{primary_task}_{score_name}": score, "optimizer_steps": steps, "best": improved,
        }  # fmt: skip
        history.append(record)
        if not main:
            continue
        if on_epoch is not None:
            on_epoch(record)
        torch.save(
            {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "best_score": best_score, "best_epoch": best_epoch, "stale": stale,
                "total_steps": total_steps,
                "history": history, "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
            },
            last,
        )  # fmt: skip
        log.info(
            "%s epoch %d: train_loss %.4f val_bacc %.3f%s",
            out_dir.name,
            epoch + 1,
            record["train_loss"],
            score,
            " *" if improved else "",
        )
    if main:
        done.write_text(
            json.dumps({"fold": fold_index, "best_epoch": best_epoch, "best_score": best_score, "history": history})
        )
    if distributed:
        del net  # releases DDP's gradient hooks on the caller's model
        ddp.barrier()  # the checkpoints and done.json exist before any rank returns (callers load best.pt)
    return FoldResult(fold_index, best_epoch, best_score, best, history, resumed_from)


def _frame_loss(
    frame: pd.DataFrame, tasks: Mapping[str, TaskDef], weights: Mapping[str, float], reduction: str = "task_mean"
) -> float:
    """The weighted validation loss recomputed from stored probabilities (logits = log-odds / log-probabilities),
    reduced as in training."""
    total = 0.0
    for name, task in tasks.items():
        probs = torch.as_tensor(task_probs(frame, task), dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
        labels = torch.as_tensor(task_labels(frame, task))
        logits = torch.log(probs) if task.kind == "multiclass" else torch.log(probs / (1 - probs))
        if bool(task.labelled(labels).any()):
            if reduction == "indicator_sum":
                loss = float(task.row_losses(logits, labels).sum()) / max(1, len(frame))
            else:
                loss = float(task.loss(logits, labels))
            total += weights[name] * loss
    return total
