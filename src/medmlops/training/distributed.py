"""Data-parallel training on every GPU of one node: torch.distributed helpers and a torchrun launcher.

``launch(["medmlops.cli", ...], nproc=4)`` starts ``nproc`` copies of a module with torchrun (standalone,
single-node rendezvous); each copy calls ``setup_from_env()`` and then trains with ``train_fold`` as usual:
the loop notices the process group (``is_distributed()``), wraps the model in DistributedDataParallel and
gives each rank its share of every epoch. Without torchrun (``WORLD_SIZE`` unset or 1) everything here is a
no-op: rank 0 of a world of 1.
"""

from __future__ import annotations

import collections
import datetime
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist

from medmlops.errors import UserError

# Rank 0 validates and writes checkpoints while the others wait in a collective: allow for a long validation.
DEFAULT_TIMEOUT_S = 3600.0


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0: the one that validates, writes files, logs and reports."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup_from_env(backend: str | None = None, timeout_s: float | None = None) -> torch.device:
    """Join the process group torchrun describes in the environment (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) when ``WORLD_SIZE`` > 1; return the device this process should train on.

    The backend is NCCL with this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else Gloo on CPU.
    ``timeout_s`` bounds every collective (default ``MEDMLOPS_DIST_TIMEOUT_S`` or one hour).
    """
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return torch.device("cuda" if cuda else "cpu")
    if cuda:
        if local_rank() >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank()} but only {torch.cuda.device_count()} GPU(s) are visible")
        torch.cuda.set_device(local_rank())
    device = torch.device("cuda", local_rank()) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        timeout = (
            timeout_s if timeout_s is not None else float(os.environ.get("MEDMLOPS_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        )
        dist.init_process_group(
            backend=backend or ("nccl" if cuda else "gloo"),
            init_method="env://",
            timeout=datetime.timedelta(seconds=timeout),
        )
    return device


def cleanup() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Pin a bare ``cuda`` device to this rank's GPU (``cuda:LOCAL_RANK``) under DDP; other devices as given."""
    if device.type == "cuda" and device.index is None and is_distributed():
        index = local_rank() if local_rank() < torch.cuda.device_count() else torch.cuda.current_device()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` as rank ``src`` has it, on every rank (picklable objects; the object itself without DDP)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64; the values themselves without DDP)."""
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def torchrun_command(module_argv: Sequence[str], nproc: int) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m <module> <args...>``."""
    if nproc < 1:
        raise UserError(f"nproc must be at least 1, got {nproc}")
    if not module_argv:
        raise UserError("launch needs a module to run (module_argv is empty)")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        *module_argv,
    ]


# torchrun's failure report: "rank : 1 (local_rank: 1)" then "exitcode : 1 (pid: ...)" for each failed rank.
_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)
# A rank's exception as torch prints it once the process group exists: "[rank1]: RuntimeError: ...".
_RANK_ERROR = re.compile(r"^\[rank(\d+)\]:\s*(\w*(?:Error|Exception|Interrupt|Exit)\b.*)$", re.MULTILINE)
# Errors a rank gets because another one died (its peers vanish mid-collective, or torchrun stops it).
_KNOCK_ON = re.compile(r"by peer|remote worker|DistBackendError|DistNetworkError|NCCL|SIGTERM|Signal 15", re.IGNORECASE)


def _failure_summary(output: str) -> str:
    """Which rank failed and why, from torchrun's report and the ranks' output: the first failed rank whose error
    is its own (not a knock-on communication error), else torchrun's root cause, with exit code and error line."""
    codes: dict[int, int] = {}
    for r, code in _FAILED_RANK.findall(output):
        codes.setdefault(int(r), int(code))
    errors: dict[int, str] = {}
    for r, error in _RANK_ERROR.findall(output):
        errors[int(r)] = error.strip()
    if not codes:
        return "a rank failed"
    reported_root = _FAILED_RANK.search(output.split("Root Cause", 1)[-1])
    own = [r for r in codes if r in errors and not _KNOCK_ON.search(errors[r])]
    root = own[0] if own else int(reported_root.group(1)) if reported_root else next(iter(codes))
    summary = f"rank {root} failed (exit code {codes[root]})"
    if root in errors:
        summary += f" with {errors[root]}"
    others = sorted(r for r in codes if r != root)
    if others:
        summary += f"; rank(s) {', '.join(map(str, others))} stopped with it"
    return summary


def launch(module_argv: Sequence[str], nproc: int, env: Mapping[str, str] | None = None) -> int:
    """Run ``module_argv`` (a module and its arguments) on ``nproc`` ranks of this node with torchrun and wait.

    The ranks' output is streamed to this process's stdout. ``env`` adds to (overrides) this process's
    environment. Returns 0; when any rank fails (torchrun then stops the others), raises ``UserError`` naming
    the rank that failed first, its exit code and its last error line.
    """
    command = torchrun_command(module_argv, nproc)
    full_env = {**os.environ, **(env or {})}
    tail: collections.deque[str] = collections.deque(maxlen=400)
    with subprocess.Popen(
        command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line)
        sys.stdout.flush()
        returncode = proc.wait()
    if returncode != 0:
        raise UserError(
            f"distributed run of {' '.join(module_argv)} on {nproc} process(es) failed (torchrun exit code "
            f"{returncode}): {_failure_summary(''.join(tail))}; see the output above"
        )
    return returncode
