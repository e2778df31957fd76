"""The GPU check (``make gpu-check``; DEVELOPERS.md): one command, at most ~8 minutes on one GPU, one report.

    python benchmarks/gpu_check.py [--out reports/gpu-check] [--budget-s 480] [--parts a,b] [--steps N] [--cpu]

Parts, in the order they run (each a child process with its own time cap, log file and one console line; the
numbers are the brief's: 1 CUDA tests, 2 one fold per family, 3 benchmarks, 4 serving):

1. ``cuda-tests``: ``pytest tests/training/test_cuda.py`` and every other test file skipped without CUDA;
3. ``bench-training``: ``bench_ich_training.py`` at the paper shape (301×301×40, batch 8: the paper's micro-batch);
3. ``bench-informer``: ``bench_informer.py`` at the INFORMER paper's 320 px, batch 16;
2. ``data``: ``medmlops data get --profile paper`` with simulated data in a work folder (small ``data.*.n``);
2. ``train-cxr``, then 4. ``serving`` (``bench_serving.py`` on that fold's registered model, batching on and off),
   then 2. ``train-ich`` and ``train-covid``: one fold of each family with ``medmlops train EXPERIMENT --profile
   paper`` on that data, the paper's image shapes (``preprocess.*``) and training settings, ImageNet initialisation
   off (``train.pretrained=false``: the device has no weights store) and ``train.max_steps=N``. The command runs in a
   child process with timing hooks: training samples/s over the optimizer steps after the first (data loading,
   forward, backward and the step; validation excluded) and peak GPU memory.

The benchmarks run before the folds, so the figures benchmarks/README.md needs come first if the budget runs short.
A part that would start with less than ``MIN_PART_S`` seconds of the budget left is skipped with a line in the
report; a part that reaches its cap is stopped (SIGINT, then SIGKILL of it and its children) and reported with what
it measured so far; a part whose Python packages are missing is skipped with their names. Without CUDA the check
fails at once, unless ``--cpu``: a dry run of tiny versions of every part on the CPU (to test this script; its
figures are no GPU figures).

Writes ``OUT/report.md``, ``OUT/report.json`` (the same numbers) and ``OUT/logs/NN-part.log``. Uses the Python that
runs it, with the repository's ``src`` on ``PYTHONPATH`` (nothing is installed: the device has no network).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
MIN_PART_S = 20.0  # a part is not started with less of the budget left
DEFAULT_BUDGET_S = 480.0  # 8 minutes: a device command runs at most 10, a session has 15 in all

# Python packages each part imports (top-level module names); a part whose packages are missing is skipped with
# their names instead of failing half-way (the device's image holds torch, timm, pandas, scikit-learn, pytest, ...).
NEEDS = {
    "cuda-tests": ["torch", "torchvision", "timm", "monai", "imblearn", "pandas", "sklearn", "pytest", "yaml", "tqdm"],
    "bench-training": ["torch", "monai", "yaml"],
    "bench-informer": ["torch", "torchvision", "timm", "captum", "PIL", "sklearn", "yaml"],
    "data": ["numpy", "scipy", "pandas", "nibabel", "pydicom", "PIL", "yaml"],
    "train": ["torch", "torchvision", "timm", "monai", "mlflow", "nibabel", "pydicom", "PIL", "imblearn", "pandas",
              "sklearn", "matplotlib", "yaml"],
    "serving": ["torch", "torchvision", "timm", "monai", "mlflow", "bentoml", "PIL", "imblearn", "pandas", "yaml"],
}  # fmt: skip
# (dvc is optional: a run's data version is then tagged unverified, the run goes on)

# One fold per family: the experiment, its dataset key for the report, and the input shape the paper profile gives.
FAMILIES = {
    "ich": {"experiment": "ich-mt-ord", "unit": "volumes", "shape": "301×301×40", "steps": 3},
    "covid": {"experiment": "covid-mdmt", "unit": "images", "shape": "256×256", "steps": 3},
    "cxr": {"experiment": "cxr-findings", "unit": "images", "shape": "320×320", "steps": 4},
}

# Simulated data for the folds: small counts (enough for a full batch of the paper's settings), raw images smaller
# than the real ones (preprocessing resamples them to the paper's shapes), every dataset small (all four are made).
DATA_SETS = {
    "gpu": ["data.ich.n=40", "data.ich.shape=[40,128,128]", "data.aiforcovid.n=90", "data.aiforcovid.shape=[128,128]",
            "data.brixia.n=90", "data.brixia.shape=[128,128]", "data.chexpert.n=64", "data.chexpert.n_valid=8",
            "data.chexpert.shape=[256,256]"],
    "cpu": ["data.ich.n=12", "data.ich.shape=[16,48,48]", "data.aiforcovid.n=12", "data.aiforcovid.shape=[64,64]",
            "data.brixia.n=12", "data.brixia.shape=[64,64]", "data.chexpert.n=24", "data.chexpert.n_valid=4",
            "data.chexpert.shape=[64,64]"],
}  # fmt: skip
# The dry run also shrinks the shapes and the training settings (the GPU run keeps the paper's).
DRY_SETS = ["preprocess.ich.spatial_size=[32,32,32]", "preprocess.covid.size=64", "preprocess.chexpert.size=64",
            "train.batch_size=2", "train.accumulation_steps=1", "train.n_folds=2", "train.folds=[0]",
            "train.n_bootstrap=20", "evaluate.saliency_cases=0", "train.device=cpu"]  # fmt: skip


@dataclass
class Part:
    name: str
    number: int  # the brief's numbering: 1 CUDA tests, 2 folds, 3 benchmarks, 4 serving
    title: str
    cap_s: float
    status: str = "not run"  # passed, failed, timed out, skipped
    reason: str = ""
    seconds: float = 0.0
    log: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    command: str = ""


# ---------------------------------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------------------------------


def child_env(work: Path, cpu: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false",
               DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", BENTOML_DO_NOT_TRACK="true")  # fmt: skip
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'project' / '.medmlops' / 'mlflow.db'}"
    for key in ("MEDMLOPS_PROFILE", "MEDMLOPS_MONITORING_TOKEN", "MEDMLOPS_MONITORING_DB_URL"):
        env.pop(key, None)
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run stays on the CPU on a GPU machine too
    return env


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), also those in sessions of their own (serving's servers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_child(
    command: list[str], *, log: Path, cap_s: float, env: dict[str, str], cwd: Path
) -> tuple[int | None, float]:
    """Run ``command`` with output into ``log``; (exit code or None when stopped at ``cap_s``, seconds)."""
    start = time.monotonic()
    with log.open("w") as out:
        out.write(f"$ {' '.join(command)}\n\n")
        out.flush()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            code: int | None = process.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            code = None
            below = _descendants(process.pid)
            os.killpg(process.pid, signal.SIGINT)  # KeyboardInterrupt: the benchmarks' finally blocks stop servers
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            for pid in [process.pid, *below]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
            out.write(f"\n[gpu-check] stopped at the part's cap of {cap_s:.0f} s\n")
    return code, time.monotonic() - start


def missing_modules(names: list[str]) -> list[str]:
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def _missing_from_log(log: Path) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = sorted(set(re.findall(r"No module named '([\w.]+)'", text)))
    return f"missing Python package(s) {', '.join(found)}" if found else ""


def _tail(log: Path, n: int = 1) -> str:
    lines = [x for x in (log.read_text(errors="replace").splitlines() if log.is_file() else []) if x.strip()]
    return " | ".join(lines[-n:])[-300:]


# ---------------------------------------------------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------------------------------------------------


def cuda_test_files() -> list[str]:
    """test_cuda.py and every test file that skips without CUDA (``skipif(not torch.cuda.is_available()``)."""
    found = {"tests/training/test_cuda.py"}
    needs_cuda = re.compile(r"skipif\(\s*not\s+(torch\.)?cuda\.is_available\(\)")
    for path in (REPO / "tests").rglob("test_*.py"):
        if needs_cuda.search(path.read_text(errors="replace")):
            found.add(str(path.relative_to(REPO)))
    return sorted(found)


def part_cuda_tests(part: Part, ctx: Context) -> None:
    xml = ctx.work / "cuda-tests.xml"
    files = cuda_test_files()
    command = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "-o", "addopts=-ra"]  # fmt: skip
    code = ctx.run(part, command)
    if code is None:
        return
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.is_file():
        for suite in ET.parse(xml).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    part.figures = {"files": files, "passed": passed, "failed": counts["failures"] + counts["errors"],
                    "skipped": counts["skipped"]}  # fmt: skip
    if code != 0 and counts["failures"] + counts["errors"] == 0:
        part.status, part.reason = (
            "failed",
            _missing_from_log(ctx.log_of(part)) or f"pytest exit {code}: {_tail(ctx.log_of(part))}",
        )
    elif counts["failures"] + counts["errors"]:
        part.status, part.reason = "failed", f"{passed} passed, {part.figures['failed']} failed"
    elif ctx.cpu:
        part.status = "passed"
        part.reason = f"{counts['skipped']} collected and skipped: no CUDA in the dry run (run on a GPU)"
    elif counts["skipped"]:
        part.status, part.reason = "failed", f"{counts['skipped']} skipped on a CUDA machine (see the log)"
    else:
        part.status, part.reason = "passed", f"{passed} passed"


def _run_bench(
    part: Part, ctx: Context, script: str, cpu_args: list[str], gpu_args: list[str]
) -> tuple[int | None, Path]:
    """Run one benchmark script with its dry-run or GPU arguments and ``--json``; its exit code (None: not run to
    the end) and the JSON file it was asked to write."""
    out = ctx.work / f"{Path(script).stem}.json"
    args = cpu_args if ctx.cpu else gpu_args
    return ctx.run(part, [sys.executable, str(BENCH / script), *args, "--json", str(out)]), out


def part_bench_training(part: Part, ctx: Context) -> None:
    code, out = _run_bench(part, ctx, "bench_ich_training.py",
                           ["--profiles", "smoke", "--batch", "2", "--steps", "1", "--device", "cpu"],
                           ["--profiles", "paper", "--batch", "8", "--steps", "5", "--device", "cuda"])  # fmt: skip
    if code is None:
        return
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    part.figures = {"rows": rows}
    good = [r for r in rows if "volumes_per_s" in r]
    if code != 0 or not good:
        part.status, part.reason = "failed", _missing_from_log(ctx.log_of(part)) or _tail(ctx.log_of(part))
        return
    bad = [f"{r['model']}: {r.get('error', '')[:120]}" for r in rows if "volumes_per_s" not in r]
    part.status = "failed" if bad else "passed"
    shape = "×".join(map(str, good[0]["shape"]))
    part.reason = "; ".join(
        [f"{r['model']} {r['volumes_per_s']:.2f} vol/s at {shape}, batch {r['batch']}, peak {r['peak_gib']:.2f} GiB"
         for r in good] + bad
    )  # fmt: skip


def part_bench_informer(part: Part, ctx: Context) -> None:
    code, out = _run_bench(part, ctx, "bench_informer.py",
                           ["--size", "32", "--batch", "2", "--repeats", "1", "--device", "cpu"],
                           ["--size", "320", "--batch", "16", "--repeats", "3", "--device", "cuda"])  # fmt: skip
    if code is None:
        return
    if code != 0 or not out.is_file():
        part.status, part.reason = "failed", _missing_from_log(ctx.log_of(part)) or _tail(ctx.log_of(part))
        return
    data = json.loads(out.read_text())
    part.figures = data
    part.status = "passed"
    part.reason = (f"INFORMER {data['informer_images_per_s']:.1f} img/s vs forward {data['forward_images_per_s']:.1f} "
                   f"img/s ({data['informer_over_forward']:.1f}× a forward) at {data['size']} px, batch {data['batch']}")  # fmt: skip


def part_serving(part: Part, ctx: Context) -> None:
    """The train-cxr fold's registered model when there is one (the paper's 320 px), else bench_serving trains a smoke
    cxr-findings at that size first."""
    out = ctx.work / "bench_serving.json"
    args = (["--size", "64", "--requests", "16", "--concurrency", "1,2", "--forward-s", "0.5"] if ctx.cpu
            else ["--size", "320", "--requests", "96", "--concurrency", "1,8,32", "--forward-s", "3"])  # fmt: skip
    fold = ctx.work / "train-cxr.json"
    registered = fold.is_file() and json.loads(fold.read_text()).get("registered")
    if registered:
        args += ["--project", str(ctx.work / "project")]
    code = ctx.run(part, [sys.executable, str(BENCH / "bench_serving.py"), *args, "--json", str(out)])
    if code is None:
        return
    if code != 0 or not out.is_file():
        part.status, part.reason = "failed", _missing_from_log(ctx.log_of(part)) or _tail(ctx.log_of(part))
        return
    data = json.loads(out.read_text())
    data["model"] = ("the train-cxr fold's cxr-findings@candidate (paper profile)" if registered
                     else "a smoke cxr-findings trained by bench_serving")  # fmt: skip
    rows = data["rows"]
    on = {r["concurrency"]: r for r in rows if r["batching"]}
    off = {r["concurrency"]: r for r in rows if not r["batching"]}
    top = max(on)
    data["best_rps_batching_on"] = max(r["rps"] for r in on.values())
    data["best_rps_batching_off"] = max(r["rps"] for r in off.values())
    data["batching_gain_at_top_concurrency"] = on[top]["rps"] / off[top]["rps"]
    data["top_concurrency"] = top
    part.figures = data
    part.status = "passed"
    part.reason = (f"batching on {data['best_rps_batching_on']:.1f} req/s, off {data['best_rps_batching_off']:.1f} "
                   f"req/s; gain at c={top}: {data['batching_gain_at_top_concurrency']:.2f}× ({data['size']} px)")  # fmt: skip


def _train_sets(ctx: Context) -> list[str]:
    sets = ["data.simulated=true", "data.raw_dir=data/raw-check", "data.dvc_file=data-check.dvc", *ctx.data_sets,
            "train.pretrained=false"]  # fmt: skip
    return sets + (DRY_SETS if ctx.cpu else [])


def part_data(part: Part, ctx: Context) -> None:
    project = ctx.work / "project"
    project.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "params.yaml", project / "params.yaml")
    if shutil.which("git") and not (project / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=project, check=False)
    command = [sys.executable, "-m", "medmlops.cli", "data", "get", "--profile", "paper", "--quiet"]
    command += [x for s in _train_sets(ctx) for x in ("--set", s)]
    code = ctx.run(part, command, cwd=project)
    if code is None:
        return
    raw = project / "data" / "raw-check"
    if code != 0 or not raw.is_dir():
        part.status, part.reason = "failed", _missing_from_log(ctx.log_of(part)) or _tail(ctx.log_of(part))
        return
    counts = {d.name: sum(1 for _ in d.rglob("*") if _.is_file()) for d in sorted(raw.iterdir()) if d.is_dir()}
    part.figures = {"raw_dir": str(raw), "files": counts, "sets": ctx.data_sets}
    part.status, part.reason = "passed", "simulated " + ", ".join(f"{k} ({v} files)" for k, v in counts.items())


def part_train(family: str):
    def run(part: Part, ctx: Context) -> None:
        spec = FAMILIES[family]
        project = ctx.work / "project"
        if not (project / "data" / "raw-check").is_dir():
            part.status, part.reason = "skipped", "no simulated data: the data part did not run or failed"
            return
        steps = ctx.steps or (2 if ctx.cpu else spec["steps"])
        sets = [*_train_sets(ctx), f"train.max_steps={steps}"]
        if spec["experiment"] == "covid-mdmt":  # MDMT from scratch: no STL prerequisites (3× the time)
            sets.append("experiments.covid-mdmt.init_from=[]")
        result = ctx.work / f"train-{family}.json"
        child = {"experiment": spec["experiment"], "sets": sets, "max_steps": steps, "result": str(result),
                 "register": family == "cxr"}  # serving serves the cxr fold's model  # fmt: skip
        code = ctx.run(part, [sys.executable, __file__, "--child-train", json.dumps(child)], cwd=project)
        data = json.loads(result.read_text()) if result.is_file() else {}
        data.update(unit=spec["unit"], paper_shape=spec["shape"], sets=sets)
        part.figures = data
        measured = data.get("samples_per_s")
        what = (f"{measured:.2f} {spec['unit']}/s at {data.get('input_shape', spec['shape'])} over "
                f"{data.get('measured_steps', 0)} step(s) after the first, "
                f"peak {data.get('peak_gib', 0):.2f} GiB, batch {data.get('observed_batch')} × "
                f"{data.get('loop', {}).get('accumulation_steps')}" if measured else "")  # fmt: skip
        notes = data.get("notes", [])
        if code is None:
            part.reason = "; ".join(filter(None, [part.reason, what and f"so far: {what}", *notes]))
            return
        if not measured:
            part.status = "failed"
            part.reason = _missing_from_log(ctx.log_of(part)) or f"exit {code}: {_tail(ctx.log_of(part))}"
            return
        part.status = "passed" if code == 0 else "failed"
        part.reason = "; ".join(
            filter(None, [what, *notes, "" if code == 0 else f"exit {code}: {_tail(ctx.log_of(part))}"])
        )

    return run


PARTS = [
    ("cuda-tests", 1, "CUDA tests (pytest)", 90, part_cuda_tests),
    ("bench-training", 3, "ICH training benchmark (bench_ich_training.py)", 120, part_bench_training),
    ("bench-informer", 3, "INFORMER benchmark (bench_informer.py)", 90, part_bench_informer),
    ("data", 2, "simulated data for the folds (medmlops data get --profile paper)", 90, part_data),
    ("train-cxr", 2, "one fold: cxr-findings (DenseNet-121), paper profile, registered", 100, part_train("cxr")),
    ("serving", 4, "serving throughput, batching on/off (bench_serving.py)", 150, part_serving),
    ("train-ich", 2, "one fold: ich-mt-ord (DenseNet-121 3D), paper profile", 150, part_train("ich")),
    ("train-covid", 2, "one fold: covid-mdmt (ResNet-18 MDMT), paper profile", 110, part_train("covid")),
]


@dataclass
class Context:
    out: Path
    work: Path
    cpu: bool
    budget_s: float
    steps: int | None
    started: float
    env: dict[str, str]
    data_sets: list[str]
    started_utc: str = ""

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def log_of(self, part: Part) -> Path:
        return self.out / part.log

    def run(self, part: Part, command: list[str], cwd: Path = REPO) -> int | None:
        cap = min(part.cap_s, self.left())
        part.command = " ".join(command)
        code, part.seconds = run_child(command, log=self.log_of(part), cap_s=cap, env=self.env, cwd=cwd)
        if code is None:
            part.status = "timed out"
            limit = "the budget's end" if cap < part.cap_s else "the part's cap"
            part.reason = f"stopped at {cap:.0f} s ({limit}); see the log"
        return code


# ---------------------------------------------------------------------------------------------------------------------
# The fold child: `medmlops train` in this process with timing hooks
# ---------------------------------------------------------------------------------------------------------------------


class StepCap(BaseException):
    """Raised when the loop trains on after ``train.max_steps`` steps (a BaseException: nothing swallows it)."""


def child_train(spec: dict) -> int:
    """``medmlops train EXPERIMENT --profile paper --set ...`` with hooks: the loop's optimizer steps (GradScaler.step),
    the training forwards (batch sizes), the first training-sample fetch after each step or validation (the start of
    a timed window) and the peak memory. Writes ``spec['result']`` after every step (a timed-out run keeps its
    figures)."""
    sys.path.insert(0, str(REPO / "src"))
    import resource

    import torch

    import medmlops.training.experiment as experiment
    from medmlops.cli import main

    cuda = torch.cuda.is_available()
    max_steps = int(spec["max_steps"])
    result_path = Path(spec["result"])
    state: dict[str, Any] = {
        "experiment": spec["experiment"], "device": "cuda" if cuda else "cpu", "steps": 0, "windows": [],
        "batches": [], "notes": [], "optimizer": None, "loop": {}, "t0": time.perf_counter(),
    }  # fmt: skip
    window = {"start": None, "samples": 0}

    def peak() -> float:
        if cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def write() -> None:
        timed = state["windows"][1:] or state["windows"]
        seconds = sum(w[0] for w in timed)
        out = {k: v for k, v in state.items() if k not in ("t0",)}
        out.update(
            measured_steps=len(timed), samples_per_s=sum(w[1] for w in timed) / seconds if seconds else None,
            first_step_s=state["windows"][0][0] if state["windows"] else None, peak_gib=peak(),
            observed_batch=max(state["batches"]) if state["batches"] else None,
            micro_batches_per_step=round(len(state["batches"]) / state["steps"], 2) if state["steps"] else None,
            elapsed_s=time.perf_counter() - state["t0"],
        )  # fmt: skip
        if len(state["windows"]) == 1:
            out["notes"] = [*out["notes"], "one timed step only: its time includes the warm-up"]
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2, default=str))
        tmp.replace(result_path)

    def opened() -> None:
        if window["start"] is None:
            window["start"] = time.perf_counter()
            state.setdefault("first_fetch_s", window["start"] - state["t0"])

    class Timed(torch.utils.data.Dataset):
        def __init__(self, inner) -> None:
            self.inner = inner

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, i):
            opened()
            return self.inner[i]

        def __getattr__(self, name):
            if name == "inner":
                raise AttributeError(name)
            return getattr(self.inner, name)

    def forward_hook(module, args) -> None:
        if not module.training:
            window["start"], window["samples"] = None, 0  # validation: the next window starts at the next fetch
            return
        if max_steps and state["steps"] >= max_steps:
            state["notes"].append(f"the loop trained on after train.max_steps={max_steps}: stopped by the check")
            write()
            raise StepCap()
        opened()
        n = int(args[0].shape[0]) if args and hasattr(args[0], "shape") else 0
        state["batches"].append(n)
        window["samples"] += n

    original_step = torch.amp.GradScaler.step

    def scaler_step(self, optimizer, *args, **kwargs):
        out = original_step(self, optimizer, *args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        state["steps"] += 1
        state["optimizer"] = type(optimizer).__name__
        if window["start"] is not None and window["samples"]:
            state["windows"].append((now - window["start"], window["samples"]))
        window["start"], window["samples"] = None, 0
        write()
        return out

    torch.amp.GradScaler.step = scaler_step
    original_train_fold = experiment.train_fold

    def train_fold(model, train_ds, val_ds, *args, **kwargs):
        cfg = kwargs.get("cfg")
        keys = ("epochs", "batch_size", "accumulation_steps", "optimizer", "lr", "weight_decay", "amp", "device",
                "max_steps", "pretrained", "warmup_epochs", "patience", "num_workers")  # fmt: skip
        state["loop"] = {k: getattr(cfg, k, None) for k in keys}
        state["train_samples"] = len(train_ds)
        model.register_forward_pre_hook(forward_hook)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        return original_train_fold(model, Timed(train_ds), val_ds, *args, **kwargs)

    experiment.train_fold = train_fold
    register = "--register" if spec.get("register") else "--no-register"
    argv = ["train", spec["experiment"], "--profile", "paper", "--quiet", register, "--restart"]
    argv += [x for s in spec["sets"] for x in ("--set", s)]
    print("medmlops " + " ".join(argv), flush=True)
    try:
        code = main(argv)
    except StepCap:
        code, state["stopped"] = 0, True
    state["exit_code"] = code
    state["registered"] = bool(spec.get("register")) and code == 0 and not state.get("stopped")
    state["paper"] = _paper_settings(spec)
    state["input_shape"] = _input_shape(spec)
    mismatched = [f"{k} {state['loop'].get(k)} (paper settings: {v})" for k, v in state["paper"].items()
                  if k in state["loop"] and state["loop"].get(k) != v]  # fmt: skip
    if mismatched:
        state["notes"].append("the loop trained with " + ", ".join(mismatched))
    if (
        state["optimizer"]
        and state["paper"].get("optimizer")
        and state["optimizer"].lower() != state["paper"]["optimizer"]
    ):
        state["notes"].append(f"optimizer {state['optimizer']} (paper settings: {state['paper']['optimizer']})")
    write()
    return code


def _paper_settings(spec: dict) -> dict:
    """The experiment's training settings as ``Params.for_experiment`` resolves them (when it exists)."""
    from medmlops.config import load_params

    params = load_params("params.yaml", profile="paper", overrides=spec["sets"])
    resolve = getattr(params, "for_experiment", None)
    train = resolve(spec["experiment"]).train if resolve else params.train
    keys = ("batch_size", "accumulation_steps", "optimizer", "lr", "epochs", "max_steps", "pretrained")
    return {k: getattr(train, k) for k in keys if hasattr(train, k)}


def _input_shape(spec: dict) -> str:
    """The input the fold trained on, as the profile and overrides give it (x×y×z, or side×side)."""
    from medmlops.config import load_params

    pre = load_params("params.yaml", profile="paper", overrides=spec["sets"]).preprocess
    if spec["experiment"].startswith("ich"):
        return "×".join(map(str, pre.ich.spatial_size))
    size = pre.covid.size if spec["experiment"].startswith("covid") else pre.chexpert.size
    return f"{size}×{size}"


# ---------------------------------------------------------------------------------------------------------------------
# Machine facts and the report
# ---------------------------------------------------------------------------------------------------------------------


def machine_facts() -> dict:
    facts: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                             "platform": platform.platform(), "cpu_count": os.cpu_count()}  # fmt: skip
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        facts["git_commit"] = commit.stdout.strip() or None
    except OSError:
        facts["git_commit"] = None
    try:
        import torch
    except ImportError:
        facts["torch"] = None
        facts["cuda_available"] = False
        return facts
    facts.update(torch=torch.__version__, cuda_runtime=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                 cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)  # fmt: skip
    if facts["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        facts.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     gpu_count=torch.cuda.device_count(), multiprocessors=props.multi_processor_count,
                     compute_capability=f"{props.major}.{props.minor}")  # fmt: skip
        facts["driver_cuda_version"] = _driver_cuda_version(torch)
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True)  # fmt: skip
            facts["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout else None
    return facts


def _driver_cuda_version(torch) -> str | None:
    """The CUDA version the driver supports: torch.cuda's binding when this build has it, else libcuda itself."""
    version = None
    getter = getattr(torch._C, "_cuda_getDriverVersion", None)
    if getter is not None:
        version = int(getter())
    else:
        import ctypes

        try:
            value = ctypes.c_int()
            if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(value)) == 0:
                version = value.value
        except OSError:
            return None
    return f"{version // 1000}.{version % 1000 // 10}" if version else None


def summary_figures(parts: dict[str, Part]) -> list[tuple[str, str]]:
    """The figures benchmarks/README.md records, each a value or why there is none."""

    def why(name: str) -> str:
        p = parts[name]
        return f"not measured: {p.name} {p.status}" + (f" ({p.reason})" if p.reason else "")

    out = []
    rows = parts["bench-training"].figures.get("rows", [])
    for r in rows:
        if "volumes_per_s" in r:
            shape = "×".join(map(str, r["shape"]))
            out.append((f"training {r['model']}, {shape}, batch {r['batch']} (bench_ich_training)",
                        f"{r['volumes_per_s']:.2f} volumes/s, peak {r['peak_gib']:.2f} GiB"))  # fmt: skip
    if not any("volumes_per_s" in r for r in rows):
        out.append(("training volumes/s at 301×301×40 (bench_ich_training)", why("bench-training")))
    for family in FAMILIES:
        p = parts[f"train-{family}"]
        f = p.figures
        shape = f.get("input_shape") or FAMILIES[family]["shape"]
        label = f"one {family} fold, {shape}, medmlops train (data loading included)"
        if f.get("samples_per_s"):
            out.append((label, f"{f['samples_per_s']:.2f} {f['unit']}/s, peak {f['peak_gib']:.2f} GiB, "
                               f"batch {f.get('observed_batch')} ({p.status})"))  # fmt: skip
        else:
            out.append((label, why(p.name)))
    inf = parts["bench-informer"].figures
    if inf.get("informer_images_per_s"):
        out.append((f"INFORMER vs forward, {inf['size']} px, batch {inf['batch']} (bench_informer)",
                    f"{inf['informer_images_per_s']:.1f} vs {inf['forward_images_per_s']:.1f} images/s "
                    f"({inf['informer_over_forward']:.1f}× a forward)"))  # fmt: skip
    else:
        out.append(("INFORMER images/s vs forward (bench_informer)", why("bench-informer")))
    srv = parts["serving"].figures
    if srv.get("best_rps_batching_on"):
        out.append(
            (
                f"serving cxr-findings {srv['size']} px, best req/s (bench_serving)",
                f"batching on {srv['best_rps_batching_on']:.1f}, off {srv['best_rps_batching_off']:.1f}",
            )
        )
        out.append((f"batching gain at concurrency {srv['top_concurrency']}",
                    f"{srv['batching_gain_at_top_concurrency']:.2f}×"))  # fmt: skip
    else:
        out.append(("serving req/s and batching gain (bench_serving)", why("serving")))
    return out


def write_report(ctx: Context, facts: dict, parts: list[Part], verdict: str) -> Path:
    by_name = {p.name: p for p in parts}
    figures = summary_figures(by_name)
    report = {
        "mode": "cpu-dry-run" if ctx.cpu else "gpu", "verdict": verdict,
        "started_utc": ctx.started_utc, "elapsed_s": round(time.monotonic() - ctx.started, 1),
        "budget_s": ctx.budget_s, "machine": facts, "summary": dict(figures),
        "parts": [asdict(p) for p in parts],
    }  # fmt: skip
    (ctx.out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    mode = ("CPU dry run (--cpu): tiny sizes on the CPU, to test the script; these are no GPU figures"
            if ctx.cpu else "GPU")  # fmt: skip
    lines = [f"# GPU check, {ctx.started_utc}", "", f"Mode: {mode}. Verdict: **{verdict}**. "
             f"{report['elapsed_s']:.0f} s of a {ctx.budget_s:.0f} s budget.", "", "## Machine", "",
             "| | |", "|---|---|"]  # fmt: skip
    names = {"gpu": "GPU", "gpu_memory_gib": "GPU memory (GiB)", "compute_capability": "compute capability",
             "multiprocessors": "multiprocessors", "driver": "driver (nvidia-smi)",
             "driver_cuda_version": "CUDA version the driver supports", "torch": "torch",
             "cuda_runtime": "CUDA runtime of torch", "cudnn": "cuDNN", "cuda_available": "CUDA available",
             "python": "Python", "executable": "interpreter", "cpu_count": "CPU cores", "platform": "platform",
             "git_commit": "commit"}  # fmt: skip
    lines += [f"| {label} | {facts[key]} |" for key, label in names.items() if key in facts]
    lines += ["", "## Figures for benchmarks/README.md", "", "| what | figure |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in figures]
    lines += ["", "## Parts", "", "| # | part | status | s | result or reason | log |", "|---|---|---|---|---|---|"]
    for p in parts:
        reason = p.reason.replace("|", "/").replace("\n", " ")
        lines.append(f"| {p.number} | {p.name}: {p.title} | {p.status} | {p.seconds:.0f} | {reason} | {p.log} |")
    lines += ["", "## Details", ""]
    for p in parts:
        if p.name.startswith("train-") and p.figures.get("loop"):
            f = p.figures
            lines += [f"**{p.name}** ({f.get('experiment')}, {f.get('device')}): loop settings "
                      + ", ".join(f"{k} {v}" for k, v in f["loop"].items())
                      + f"; optimizer {f.get('optimizer')}; paper settings (Params.for_experiment) "
                      + ", ".join(f"{k} {v}" for k, v in (f.get("paper") or {}).items())
                      + f"; {f.get('steps')} step(s), first (warm-up) {f.get('first_step_s') or 0:.1f} s, "
                      f"{f.get('train_samples')} training samples, data ready after {f.get('first_fetch_s') or 0:.0f} s."
                      "", ""]  # fmt: skip
    lines += ["Overrides of the folds (every family): " + " ".join(f"`{s}`" for s in _train_sets(ctx))
              + " plus `train.max_steps=N`; `train.pretrained=false` because the device has no ImageNet weights "
              "store (`train.weights_dir`): the paper's COVID and CheXpert models start from ImageNet, these from "
              "random weights (same cost per step).", ""]  # fmt: skip
    (ctx.out / "report.md").write_text("\n".join(lines) + "\n")
    return ctx.out / "report.md"


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "reports" / "gpu-check"), help="report folder")
    parser.add_argument("--budget-s", type=float, default=None, help=f"whole run (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--parts", default="", help=f"only these, comma-separated: {', '.join(p[0] for p in PARTS)}")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per fold (default 3 ich/covid, 4 cxr)")
    parser.add_argument("--cpu", action="store_true", help="dry run: tiny versions of every part on the CPU")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--child-train", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_train:
        return child_train(json.loads(args.child_train))

    wanted = [p for p in args.parts.split(",") if p]
    unknown = [p for p in wanted if p not in {x[0] for x in PARTS}]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(p[0] for p in PARTS)}")
    if any(p.startswith("train-") for p in wanted) and "data" not in wanted:
        wanted.append("data")  # the folds train on the data part's simulated data
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for old in (out / "logs").glob("*.log"):
        old.unlink()
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s if args.budget_s is not None else DEFAULT_BUDGET_S
    ctx = Context(out=out, work=work, cpu=args.cpu, budget_s=budget, steps=args.steps, started=time.monotonic(),
                  env=child_env(work, args.cpu), data_sets=DATA_SETS["cpu" if args.cpu else "gpu"],
                  started_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))  # fmt: skip

    def say(text: str, end: str = "\n") -> None:
        print(text, end=end, flush=True)

    facts = machine_facts() if not args.cpu else {**machine_facts(), "note": "dry run: CUDA hidden from the parts"}
    device = facts.get("gpu") or "no GPU"
    say(f"[gpu-check] {'CPU dry run' if args.cpu else 'GPU'} on {device}; torch {facts.get('torch')} "
        f"(CUDA {facts.get('cuda_runtime')}); budget {budget:.0f} s; report {out / 'report.md'}")  # fmt: skip
    parts = [Part(name, number, title, cap) for name, number, title, cap, _ in PARTS]
    for i, p in enumerate(parts, 1):
        p.log = f"logs/{i:02d}-{p.name}.log"
    runners = {name: fn for name, _, _, _, fn in PARTS}

    if not args.cpu and not facts.get("cuda_available"):
        for p in parts:
            p.status, p.reason = "not run", "CUDA is not available"
        write_report(ctx, facts, parts, "FAILED: CUDA is not available (use --cpu for a dry run)")
        say(f"[gpu-check] FAILED: CUDA is not available to torch {facts.get('torch')}; report {out / 'report.md'}")
        return 1

    for i, p in enumerate(parts, 1):
        say(f"[gpu-check] {i}/{len(parts)} {p.name:<15}", end=" ")
        missing = missing_modules(NEEDS["train" if p.name.startswith("train-") else p.name])
        if wanted and p.name not in wanted:
            p.status, p.reason = "skipped", "not asked for (--parts)"
        elif missing:
            p.status = "skipped"
            p.reason = f"missing Python package(s) {', '.join(missing)}: this interpreter lacks them (DEVELOPERS.md)"
        elif ctx.left() < MIN_PART_S:
            p.status = "skipped"
            p.reason = f"budget spent: {budget - ctx.left():.0f} s of {budget:.0f} s used before this part"
        else:
            try:
                runners[p.name](p, ctx)
            except Exception as exc:  # a bug in this script's part must not lose the other parts' figures
                p.status, p.reason = "failed", f"the check's own error: {type(exc).__name__}: {exc}"
        say(f"{p.status:<9} {p.seconds:5.0f} s  {p.reason[:160]}" + (f"  ({p.log})" if p.seconds else ""))
        write_report(ctx, facts, parts, "running")

    failed = [p.name for p in parts if p.status in ("failed", "timed out")]
    skipped = [p.name for p in parts if p.status == "skipped"]
    verdict = (f"FAILED: {', '.join(failed)}" if failed else "passed") + (
        f"; skipped: {', '.join(skipped)}" if skipped else ""
    )
    path = write_report(ctx, facts, parts, verdict)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    say(f"[gpu-check] {verdict}; {time.monotonic() - ctx.started:.0f} s; report {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
