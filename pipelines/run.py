"""Compile, run locally (Kubeflow's local runner) and submit (``kfp.Client``) the pipelines; ``medmlops pipeline``
calls these. Kept beside the pipelines so the core (``medmlops``) never imports kfp."""

import builtins
import contextlib
import importlib
import logging
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from medmlops.errors import UserError
from pipelines import PIPELINES

ROOT = Path(__file__).resolve().parents[1]
FOLD_THREADS = "MEDMLOPS_FOLD_THREADS"  # read by medmlops.pipeline_steps.train_fold_step
COMPILED = ROOT / "pipelines" / "compiled"


def load(name: str):
    if name not in PIPELINES:
        raise UserError(f"unknown pipeline '{name}' (choose from {', '.join(PIPELINES)})")
    return importlib.import_module(f"pipelines.{name}").pipeline


def compile_pipeline(name: str, out: Path | None = None) -> Path:
    """Compile ``name`` to YAML (default ``pipelines/compiled/NAME.yaml``, the checked-in spec)."""
    from kfp import compiler

    out = Path(out) if out else COMPILED / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(load(name), str(out))
    return out


def run_local(name: str, arguments: dict, pipeline_root: Path, log_dir: Path | None = None) -> float:
    """Run ``name`` end to end with Kubeflow's local runner (subprocesses in this environment); return seconds.

    The console gets one line per finished step (``  ich: [3] train-fold done in 42 s``); each step's own output goes
    to ``log_dir/NN-STEP.log`` (default ``pipeline_root/logs/NAME``) and the runner's to ``log_dir/runner.log``.
    A failed step's last lines are printed with its log's path.

    Raises:
        UserError: a task failed (named, with its log).
    """
    from kfp import local

    pipeline = load(name)
    threads = fold_threads(arguments)
    log_dir = Path(log_dir) if log_dir else pipeline_root / "logs" / name
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    started = time.monotonic()
    # The steps run as subprocesses: keep libraries' deprecation chatter out of their output (as the CLI does).
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    steps = _StepLogs(name, log_dir, sys.stdout)
    print(f"{name}: each step's output goes to {log_dir}/NN-STEP.log", flush=True)
    with warnings.catch_warnings(), (log_dir / "runner.log").open("w") as runner_log, steps.installed():
        # The components name the cluster image; locally they run in this environment, which is that image's content.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*local.*(ignore|not supported).*", category=UserWarning)
        saved = os.environ.get(FOLD_THREADS)
        os.environ.setdefault(FOLD_THREADS, str(threads))  # the steps are subprocesses: they inherit it
        # The runner's own chatter (executor inputs, outputs) goes to runner.log: its prints, and its logging, whose
        # handlers it swaps per task from parallel threads (a task's lines can land on whatever handler another
        # thread restored, so every root handler during the run is the file's).
        root, handlers = logging.getLogger(), logging.getLogger().handlers[:]
        root.handlers[:] = [logging.StreamHandler(runner_log)]
        original_print = builtins.print  # kfp indents print per task, from parallel threads: it can stay indented
        try:
            with contextlib.redirect_stdout(runner_log):
                pipeline(**arguments)
        except RuntimeError as err:
            where = f" at step {', '.join(steps.failed)}" if steps.failed else ""
            logs = f"; its log: {', '.join(steps.failed_logs)}" if steps.failed_logs else f"; see {log_dir}"
            raise UserError(f"pipeline {name} failed{where}{logs}") from err
        finally:
            root.handlers[:] = handlers
            builtins.print = original_print
            if saved is None:
                os.environ.pop(FOLD_THREADS, None)
    return time.monotonic() - started


class _StepLogs(logging.Filter):
    """The local runner's console, tamed: each task's subprocess writes to its own log file, and the console gets one
    line per finished task. A logging filter on the root logger learns the task's name in the thread that runs it
    (the runner logs "Executing task 'NAME'" there, then starts the task's subprocess in the same thread)."""

    _START = re.compile(r"Executing task '([^']+)'")
    _ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, pipeline: str, log_dir: Path, console) -> None:
        super().__init__()
        self.pipeline, self.log_dir, self.console = pipeline, log_dir, console
        self.local = threading.local()
        self.lock = threading.Lock()
        self.count = 0
        self.failed: list[str] = []
        self.failed_logs: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        match = self._START.search(self._ANSI.sub("", record.getMessage()))
        if match:
            self.local.task = match.group(1)
        return True

    @contextlib.contextmanager
    def installed(self):
        from kfp.local import subprocess_task_handler

        original = subprocess_task_handler.run_local_subprocess
        subprocess_task_handler.run_local_subprocess = self.run_subprocess
        logging.getLogger().addFilter(self)  # a filter: the runner replaces the root logger's handlers
        try:
            yield self
        finally:
            logging.getLogger().removeFilter(self)
            subprocess_task_handler.run_local_subprocess = original

    def run_subprocess(self, full_command: list[str]) -> int:
        """kfp's ``run_local_subprocess`` with the output in the task's log file."""
        task = getattr(self.local, "task", "step")
        with self.lock:
            self.count += 1
            number = self.count
        log = self.log_dir / f"{number:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', task)}.log"
        started = time.monotonic()
        with log.open("w") as out:
            code = subprocess.call(full_command, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - started
        with self.lock:
            if code == 0:
                self.console.write(f"  {self.pipeline}: [{number}] {task} done in {seconds:.0f} s\n")
            else:
                self.failed.append(task)
                self.failed_logs.append(str(log))
                tail = log.read_text(errors="replace").splitlines()[-20:]
                self.console.write(
                    f"  {self.pipeline}: [{number}] {task} FAILED after {seconds:.0f} s; last lines of {log}:\n"
                )
                self.console.write("".join(f"    {line}\n" for line in tail))
            self.console.flush()
        return code


# kfp's local runner runs at most 2 iterations of a dsl.ParallelFor at once (its ParallelExecutor caps them), and the
# folds loop sits inside the experiments loop: up to 2 x 2 trainings share this machine. Torch's default of one
# thread per core in every process oversubscribes the cores: measured on 2 cores, two concurrent DenseNet-121 3D
# trainings took 3.9 s/step each with torch's 2 threads, 2.4 s/step with 1 (one alone: 1.4 s/step).
def _local_loop_cap() -> int:
    try:
        from kfp.local.orchestrator.enhanced_dag_orchestrator import ParallelExecutor

        return int(ParallelExecutor().conservative_max)
    except (ImportError, AttributeError, TypeError):  # another kfp: its cap as of 2.16
        return 2


def fold_threads(arguments: dict) -> int:
    """CPU threads per training fold in a local run: the cores divided by the trainings that can run at once."""
    from medmlops.config import load_params

    params_file = Path(arguments.get("workdir") or ROOT) / "params.yaml"
    params = load_params(params_file if params_file.is_file() else ROOT / "params.yaml",
                         arguments.get("profile") or None, arguments.get("overrides") or ())  # fmt: skip
    names = [n for n in (arguments.get("experiments") or []) if n in params.experiments]
    trains = [params.train_for(n) for n in names] or [params.train]
    folds = max(len(t.folds) or t.n_folds for t in trains)
    experiments = len(arguments.get("experiments") or [None])
    cap = _local_loop_cap()
    at_once = min(cap, experiments) * min(cap, folds, max(1, params.kubeflow.fold_parallelism))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // at_once)


def submit(
    name: str,
    host: str,
    arguments: dict,
    *,
    experiment: str,
    run_name: str | None = None,
    recurring_cron: str | None = None,
    enable_caching: bool | None = None,
    package: Path | None = None,
) -> str:
    """Submit the compiled ``name`` to the Kubeflow Pipelines API at ``host``; return the run (or recurring run) id.

    The token, when the API needs one, comes from ``KFP_TOKEN`` (never a flag: it would land in shell history).
    """
    import kfp
    import kfp_server_api
    import urllib3

    package = Path(package) if package else COMPILED / f"{name}.yaml"
    if not package.is_file():
        raise UserError(f"{package}: not found; run `medmlops pipeline compile {name}` first")
    logging.getLogger("kfp").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retry warnings precede our one-sentence error
    try:
        return _submit(kfp, package, name, host, arguments, experiment, run_name, recurring_cron, enable_caching)
    except (OSError, urllib3.exceptions.HTTPError, kfp_server_api.exceptions.ApiException) as err:
        detail = " ".join(str(getattr(err, "reason", None) or err).split())[:300]
        raise UserError(f"cannot reach the Kubeflow Pipelines API at {host} or it refused the run: {detail}") from err


def _submit(kfp, package, name, host, arguments, experiment, run_name, recurring_cron, enable_caching) -> str:
    client = kfp.Client(host=host, existing_token=os.environ.get("KFP_TOKEN") or None)
    run_name = run_name or f"{name}-{arguments.get('profile', '')}-{time.strftime('%Y%m%d-%H%M%S')}"
    if recurring_cron:
        exp = client.create_experiment(experiment)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=run_name, cron_expression=recurring_cron,
            pipeline_package_path=str(package), params=arguments, enable_caching=enable_caching,
        )  # fmt: skip
        return job.recurring_run_id
    result = client.create_run_from_pipeline_package(
        str(package), arguments=arguments, run_name=run_name, experiment_name=experiment, enable_caching=enable_caching
    )
    return result.run_id
