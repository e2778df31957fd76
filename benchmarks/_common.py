"""Shared by the benchmark scripts: timed AdamW training steps with peak memory (CPU RSS or CUDA allocation)."""

from __future__ import annotations

import resource
import time


def measure_training(model, x, steps: int) -> dict:
    """One warm-up step, then ``steps`` timed AdamW steps on the fixed batch ``x`` (AMP on CUDA).

    Returns ``device``, ``samples_per_s`` and ``peak_gib`` (run one configuration per process so the peak is its own).
    """
    import torch

    device = x.device
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
            loss = sum(v.float().mean() for v in model(x).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {"device": str(device), "samples_per_s": x.shape[0] * steps / elapsed, "peak_gib": peak}
