"""Compile, run locally (Kubeflow's local runner) and submit (``kfp.Client``) the pipelines; ``medmlops pipeline``
calls these. Kept beside the pipelines so the core (``medmlops``) never imports kfp."""

import importlib
import logging
import os
import re
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


def run_local(name: str, arguments: dict, pipeline_root: Path) -> float:
    """Run ``name`` end to end with Kubeflow's local runner (subprocesses in this environment); return seconds.

    Raises:
        UserError: a task failed (kfp names it; its output is above).
    """
    from kfp import local

    pipeline = load(name)
    threads = fold_threads(arguments)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    started = time.monotonic()
    # The steps run as subprocesses: keep libraries' deprecation chatter out of their output (as the CLI does).
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    with warnings.catch_warnings():
        # The components name the cluster image; locally they run in this environment, which is that image's content.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        warnings.filterwarnings("ignore", message=".*local.*(ignore|not supported).*", category=UserWarning)
        failed = _FailedTasks()
        logging.getLogger().addFilter(failed)  # a filter: the runner replaces the root logger's handlers
        saved = os.environ.get(FOLD_THREADS)
        os.environ.setdefault(FOLD_THREADS, str(threads))  # the steps are subprocesses: they inherit it
        try:
            pipeline(**arguments)
        except RuntimeError as err:
            where = f" at step {', '.join(failed.names)}" if failed.names else ""
            raise UserError(f"pipeline {name} failed{where} (its error is in the step's output above)") from err
        finally:
            logging.getLogger().removeFilter(failed)
            if saved is None:
                os.environ.pop(FOLD_THREADS, None)
    return time.monotonic() - started


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
    folds = len(params.train.folds) or params.train.n_folds
    experiments = len(arguments.get("experiments") or [None])
    cap = _local_loop_cap()
    at_once = min(cap, experiments) * min(cap, folds, max(1, params.kubeflow.fold_parallelism))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // at_once)


class _FailedTasks(logging.Filter):
    """Collects the tasks the local runner reports as failed (its exception names only the enclosing loop)."""

    _FAILED = re.compile(r"Task '([^']+)' finished with status FAILURE")
    _ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        match = self._FAILED.search(self._ANSI.sub("", record.getMessage()))
        if match and match.group(1) not in self.names and not match.group(1).startswith("for-loop"):
            self.names.append(match.group(1))
        return True


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
