"""Compile, run locally (Kubeflow's local runner) and submit (``kfp.Client``) the pipelines; ``medmlops pipeline``
calls these. Kept beside the pipelines so the core (``medmlops``) never imports kfp."""

import builtins
import contextlib
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


def run_local(
    name: str, arguments: dict, pipeline_root: Path, log_dir: Path | None = None, containers: bool = False
) -> float:
    """Run ``name`` end to end with Kubeflow's local runner (subprocesses in this environment); return seconds.

    The console gets one line per finished step (``  ich: [3] train-fold done in 42 s``); each step's own output goes
    to ``log_dir/NN-STEP.log`` (default ``pipeline_root/logs/NAME``) and the runner's to ``log_dir/runner.log``.
    A failed step's last lines are printed with its log's path. ``containers``: every step runs in the train image
    (kfp's DockerRunner; Docker's socket, or podman's Docker-compatible API started for the run: :func:`docker_api`),
    as a cluster would run it; the image must exist here (``make images``, nothing is pulled from a registry).

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
    stack = contextlib.ExitStack()
    if containers:
        runner = stack.enter_context(container_runner(Path(arguments["workdir"]), threads))
    else:
        runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=str(Path(pipeline_root).resolve()), raise_on_error=True)
    started = time.monotonic()
    # The steps run as subprocesses: keep libraries' deprecation chatter out of their output (as the CLI does).
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    steps = _StepLogs(name, log_dir, sys.stdout)
    print(f"{name}: each step's output goes to {log_dir}/NN-STEP.log", flush=True)
    image = (arguments.get("image") or _default_image()) if containers else None
    with stack, warnings.catch_warnings(), (log_dir / "runner.log").open("w") as runner_log, steps.installed(image):
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


# podman's default limits exceed what some hosts allow; the same values as `podman run --ulimit` in k8s/README.md.
CONTAINER_ULIMITS = {"nofile": 20000, "nproc": 32768}


@contextlib.contextmanager
def docker_api():
    """A Docker API for kfp's DockerRunner (the docker SDK reads ``DOCKER_HOST``): ``$DOCKER_HOST`` or Docker's own
    socket when it answers, else podman's Docker-compatible service, started here (runtime runc) for the duration.

    Raises:
        UserError: neither Docker nor podman is here.
    """
    import docker

    def answers() -> bool:
        try:
            client = docker.from_env(timeout=10)
        except docker.errors.DockerException:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()

    if answers():
        yield os.environ.get("DOCKER_HOST", "the Docker socket")
        return
    podman = shutil.which("podman")
    if podman is None:
        raise UserError("--containers needs Docker or podman: neither answers here (k8s/README.md, 'Images')")
    with tempfile.TemporaryDirectory(prefix="medmlops-podman-") as tmp:
        url = f"unix://{tmp}/podman.sock"
        service = subprocess.Popen(
            [podman, "--runtime", "runc", "system", "service", "--time", "0", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        saved = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = url
        try:
            deadline = time.monotonic() + 30
            while not answers():
                if service.poll() is not None or time.monotonic() > deadline:
                    raise UserError(f"podman system service did not answer on {url}")
                time.sleep(0.5)
            yield url
        finally:
            if saved is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = saved
            service.terminate()
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()


def _default_image() -> str:
    from components._image import BASE_IMAGE

    return BASE_IMAGE


# How a pipeline parameter reaches a task's image (`task.set_container_image(image)` with the pipeline input
# `image`): kfp 2.16's local runner hands the placeholder itself to the Docker handler, unresolved.
_IMAGE_PLACEHOLDER = re.compile(r"^\{\{\$\.inputs\.parameters\['pipelinechannel--image'\]\}\}$")


@contextlib.contextmanager
def container_runner(workdir: Path, threads: int):
    """kfp's DockerRunner for the train image: the project folder mounted at its own path (data, MLflow store and
    runs stay where a subprocess run keeps them), host network (MLflow on 127.0.0.1), this user's uid (the files
    stay this user's), the state folder in the project (``MEDMLOPS_STATE_DIR``: the image's default is a folder that
    dies with each step's container)."""
    from docker.types import Mount, Ulimit
    from kfp import local

    workdir = Path(workdir).resolve()
    with docker_api():
        yield local.DockerRunner(
            mounts=[Mount(target=str(workdir), source=str(workdir), type="bind")],
            network_mode="host",
            ulimits=[Ulimit(name=k, soft=v, hard=v) for k, v in CONTAINER_ULIMITS.items()],
            user=f"{os.getuid()}:{os.getgid()}",
            environment={
                FOLD_THREADS: str(threads),
                "MEDMLOPS_STATE_DIR": str(workdir / ".medmlops"),
                "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
            },
        )


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
        self.image: str | None = None  # the containerized run's image (installed)

    def filter(self, record: logging.LogRecord) -> bool:
        match = self._START.search(self._ANSI.sub("", record.getMessage()))
        if match:
            self.local.task = match.group(1)
        return True

    @contextlib.contextmanager
    def installed(self, image: str | None = None):
        """The runner's task starters replaced by :meth:`run_subprocess` and, with ``image`` (the train image the
        containerized run uses), :meth:`run_container`."""
        from kfp.local import docker_task_handler, subprocess_task_handler

        originals = subprocess_task_handler.run_local_subprocess, docker_task_handler.run_docker_container
        subprocess_task_handler.run_local_subprocess = self.run_subprocess
        self.image = image
        docker_task_handler.run_docker_container = self.run_container
        logging.getLogger().addFilter(self)  # a filter: the runner replaces the root logger's handlers
        try:
            yield self
        finally:
            logging.getLogger().removeFilter(self)
            subprocess_task_handler.run_local_subprocess, docker_task_handler.run_docker_container = originals

    def run_subprocess(self, full_command: list[str]) -> int:
        """kfp's ``run_local_subprocess`` with the output in the task's log file."""
        return self._logged(lambda out: subprocess.call(full_command, stdout=out, stderr=subprocess.STDOUT))

    def run_container(self, client, image: str, command: list[str], volumes: dict, **run_args) -> int:
        """kfp's ``run_docker_container`` with the output in the task's log file; the image is never pulled (none is
        reachable from a workstation's build), and the pipeline's ``image`` input, which kfp 2.16's local runner
        hands over unresolved (``{{$.inputs.parameters['pipelinechannel--image']}}``), is the run's image."""
        import docker

        image = self.image if _IMAGE_PLACEHOLDER.match(image) and self.image else image

        def run(out) -> int:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                out.write(f"image {image} is not here: build it first (make images; k8s/README.md, 'Images')\n")
                return 125
            container = client.containers.run(image=image, command=command, detach=True, volumes=volumes, **run_args)
            try:
                for chunk in container.logs(stream=True, follow=True):
                    out.write(chunk.decode(errors="replace"))
                    out.flush()
                return int(container.wait()["StatusCode"])
            finally:
                container.remove(force=True)

        return self._logged(run)

    def _logged(self, run) -> int:
        """``run(log file)`` for the current task: numbered log file, one console line, the tail when it failed."""
        task = getattr(self.local, "task", "step")
        with self.lock:
            self.count += 1
            number = self.count
        log = self.log_dir / f"{number:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', task)}.log"
        started = time.monotonic()
        with log.open("w") as out:
            code = run(out)
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
