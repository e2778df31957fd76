"""The images, built and run: docker/serve.Dockerfile and docker/train.Dockerfile built with buildah (the same code
path as `make images`, docker/build_image.py), then `medmlops monitor serve` and `medmlops serve` as containers on
127.0.0.1, the way the Kubernetes pods run them: uid 10001, read-only root filesystem, writable /tmp and /home/app
only (the emptyDirs), the MLflow store mounted. A good and a bad image over HTTP, the record in the monitoring
service, the HEALTHCHECK, SIGTERM and a clean exit. Then the ich smoke pipeline with every step in the train image
(`medmlops pipeline run ich --local --containers`: kfp's DockerRunner against podman's Docker API).

Marked slow. Skipped, with the reason in pytest's summary, when buildah/podman/runc/mmdebstrap are missing (`make
test` installs them on Debian: the Makefile's `containers` target), when not root, or when the disk holding the
container storage has less free space than the build needs (:data:`NEED_GB`). ``MEDMLOPS_TEST_SERVE_IMAGE=NAME``
tests a serve image built beforehand instead of building one. The base image (docker/build_image.py --base,
mmdebstrap) is made when missing. Everything the test made (images, cached build layers, the base image if it
made it) is removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import REPO, _free_port, _get

pytestmark = pytest.mark.slow

# Peak free-disk use of the serve image build (CUDA torch from the lock), measured here with margin; see k8s/README.md.
NEED_GB = 22
TOOLS = ("buildah", "podman", "runc", "mmdebstrap")
# Set to an image name to test that image instead of building one (e.g. a CI job that built it in an earlier step).
REUSE_ENV = "MEDMLOPS_TEST_SERVE_IMAGE"
RUNTIME = ["podman", "--runtime", "runc"]
# The host's limits are below podman's defaults; as in the pods: non-root, read-only root, emptyDir-like tmpfs.
RUN_FLAGS = [
    "--network", "host", "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
    "--user", "10001:10001", "--read-only", "--read-only-tmpfs=false",
    "--tmpfs", "/tmp:rw,mode=1777", "--tmpfs", "/home/app:rw,U",  # U: owned by the container's user
]  # fmt: skip


def _storage_root() -> Path:
    out = subprocess.run(
        ["podman", "info", "--format", "{{.Store.GraphRoot}}"], capture_output=True, text=True, timeout=120
    )
    root = Path(out.stdout.strip() or "/var/lib/containers/storage")
    while not root.exists():
        root = root.parent
    return root


def _why_not() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed (`make containers` installs Debian's buildah podman runc mmdebstrap)"
        )
    if os.geteuid() != 0:
        return "the container test builds with `buildah --isolation chroot` as root; not root here"
    root = _storage_root()
    free_gb = shutil.disk_usage(root).free / 1e9
    if free_gb < NEED_GB:
        return f"{free_gb:.1f} GB free on {root}; the serve image build needs {NEED_GB} GB"
    return None


def _run(*command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=check)


class DiskWatch:
    """The lowest free space seen on the container storage's disk, sampled every 2 s in a thread."""

    def __init__(self, path: Path) -> None:
        import threading

        self.path, self.start = path, shutil.disk_usage(path).free
        self.low, self._stop = self.start, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(2.0):
            self.low = min(self.low, shutil.disk_usage(self.path).free)

    def peak_gb(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.start - self.low) / 1e9


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    """The serve image and the train image, built with buildah as `make images` builds them (the base image made
    first when missing). The train image is named as params.yaml names it, with a test tag; its build reuses the
    serve build's cached layers (base, CUDA wheels, torch, dependencies), so it adds seconds and ~0.2 GB."""
    from medmlops.config import load_params

    reason = _why_not()
    if reason:
        print(f"\ncontainer test skipped: {reason}", file=sys.stderr)
        pytest.skip(reason)
    builder = [sys.executable, str(REPO / "docker" / "build_image.py"), "--tool", "buildah"]
    names = load_params(REPO / "params.yaml").images
    train_tag = f"test-{uuid.uuid4().hex[:8]}"
    train = f"{names.registry}/{names.train}:{train_tag}"
    serve = os.environ.get(REUSE_ENV) or f"localhost/medmlops-serve:{train_tag}"
    before = set(_run("podman", "images", "--all", "--quiet", "--no-trunc").stdout.split())
    watch = DiskWatch(_storage_root())
    try:
        started = time.monotonic()
        base = subprocess.run([*builder, "--base", "--dry-run"], capture_output=True, text=True, check=True)
        base_name = base.stdout.strip().splitlines()[-1].split()[-1]
        if _run("podman", "image", "exists", base_name, check=False).returncode != 0:
            subprocess.run([*builder, "--base"], check=True, timeout=900, capture_output=True)
        times = {"base": time.monotonic() - started}
        for kind, name, wanted in (("serve", serve, not os.environ.get(REUSE_ENV)), ("train", train, True)):
            if wanted:
                started = time.monotonic()
                built = subprocess.run(
                    [*builder, "-f", f"docker/{kind}.Dockerfile", "-t", name],
                    cwd=REPO, capture_output=True, text=True, timeout=1800,
                )  # fmt: skip
                assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
                times[kind] = time.monotonic() - started
        sizes = {
            kind: int(_run("podman", "image", "inspect", name, "--format", "{{.Size}}").stdout.strip()) / 1e9
            for kind, name in (("serve", serve), ("train", train))
        }
        print(
            "\nimages: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
            + f"; serve {sizes['serve']:.2f} GB, train {sizes['train']:.2f} GB (sharing all but their last layers); "
            f"peak disk {watch.peak_gb():.1f} GB",
            file=sys.stderr,
        )  # fmt: skip
        yield {"serve": serve, "train": train, "train_tag": train_tag}
    finally:
        _run("buildah", "rm", "--all", check=False)
        made = [train] if os.environ.get(REUSE_ENV) else [serve, train]
        _run("podman", "rmi", "--force", *made, check=False, timeout=300)
        # the builds' cached steps (buildah --layers), none older than this fixture
        cached = set(_run("podman", "images", "--all", "--quiet", "--no-trunc").stdout.split()) - before
        if cached:
            _run("podman", "rmi", "--force", *cached, check=False, timeout=300)


def _http(url: str, data: bytes | None = None, content_type: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _upload(url: str, data: bytes) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="case.jpg"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return _http(f"{url}/predict", body, f"multipart/form-data; boundary={boundary}")


class Container:
    """One `podman run -d` of the image; :meth:`stop` sends SIGTERM and returns the exit code."""

    def __init__(self, image: str, *command: str, env: dict[str, str], mounts: tuple[str, ...] = ()) -> None:
        self.name = f"medmlops-test-{uuid.uuid4().hex[:8]}"
        flags = [*RUN_FLAGS, *(f"--env={k}={v}" for k, v in env.items()), *(f"--volume={m}" for m in mounts)]
        _run(*RUNTIME, "run", "--detach", "--name", self.name, *flags, image, *command, timeout=300)

    def running(self) -> bool:
        state = _run("podman", "inspect", self.name, "--format", "{{.State.Running}}", check=False)
        return state.stdout.strip() == "true"

    def logs(self) -> str:
        out = _run("podman", "logs", self.name, check=False)
        return (out.stdout + out.stderr)[-4000:]

    def wait_ready(self, url: str, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _get(url) == 200:
                return
            if not self.running():
                break
            time.sleep(1)
        raise AssertionError(f"{self.name} never answered {url}:\n{self.logs()}")

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then the exit code once it stopped on its own (podman's own SIGKILL only after ``timeout_s``)."""
        _run(*RUNTIME, "kill", "--signal", "TERM", self.name, check=False)
        waited = _run("podman", "wait", self.name, timeout=timeout_s, check=False)
        return int(waited.stdout.strip() or -1)

    def remove(self) -> None:
        _run(*RUNTIME, "rm", "--force", "--time", "5", self.name, check=False)


def test_image_keeps_its_healthcheck_and_runs_as_10001(images):
    serve_image = images["serve"]
    config = json.loads(_run("podman", "image", "inspect", serve_image).stdout)[0]
    assert config["Config"]["User"] == "10001:10001"
    assert config["Config"]["Env"] and any(
        e.startswith("MEDMLOPS_STATE_DIR=/home/app/") for e in config["Config"]["Env"]
    )
    health = _run("podman", "image", "inspect", serve_image, "--format", "{{json .HealthCheck}}").stdout
    assert "HEALTHCHECK_PORT" in health, f"HEALTHCHECK lost (an OCI-format build drops it): {health}"


def test_serve_and_monitor_as_containers(images, registered_project, tmp_path):
    """Monitoring and serving as non-root containers on a read-only root: a good x-ray is answered and its record
    reaches monitoring, a bad one is a 4xx JSON answer; SIGTERM stops both with exit code 0."""
    serve_image = images["serve"]
    # The MLflow store (SQLite + artifacts) mounted at the path its runs recorded, owned by the container's user.
    store = tmp_path / "store"
    shutil.copytree(registered_project / ".medmlops", store, ignore=shutil.ignore_patterns("runs", "spool", "kfp"))
    shutil.chown(tmp_path, 10001, 10001)
    subprocess.run(["chown", "-R", "10001:10001", str(store)], check=True)
    mount = f"{store}:{registered_project / '.medmlops'}"
    mlflow_uri = f"sqlite:///{registered_project / '.medmlops' / 'mlflow.db'}"
    monitor_port, serve_port = _free_port(), _free_port()
    monitor_url, serve_url = f"http://127.0.0.1:{monitor_port}", f"http://127.0.0.1:{serve_port}"
    containers = []
    try:
        monitor = Container(
            serve_image, "medmlops", "monitor", "serve", "--host", "127.0.0.1", "--port", str(monitor_port),
            "--no-worker", env={"HEALTHCHECK_PORT": str(monitor_port), "HEALTHCHECK_PATH": "/healthz"},
        )  # fmt: skip
        containers.append(monitor)
        monitor.wait_ready(f"{monitor_url}/healthz")
        serve = Container(
            serve_image, "medmlops", "serve", "cxr-findings", "--alias", "candidate", "--host", "127.0.0.1",
            "--port", str(serve_port), "--monitoring-url", monitor_url,
            env={"MLFLOW_TRACKING_URI": mlflow_uri, "HEALTHCHECK_PORT": str(serve_port)}, mounts=(mount,),
        )  # fmt: skip
        containers.append(serve)
        serve.wait_ready(f"{serve_url}/readyz")
        for container in (monitor, serve):  # the image's HEALTHCHECK, run by podman, passes
            health = _run("podman", "healthcheck", "run", container.name, check=False)
            assert health.returncode == 0, f"{container.name}: {health.stdout} {health.stderr}"

        good = next((registered_project / "data" / "raw-smoke" / "chexpert").rglob("*frontal.jpg")).read_bytes()
        status, body = _upload(serve_url, good)
        assert status == 200, body
        assert body["model"] == "cxr-findings" and len(body["predictions"]["findings"]["probabilities"]) == 5
        status, bad = _upload(serve_url, good[:200])  # a truncated JPEG
        assert 400 <= status < 500 and set(bad) == {"error", "detail"}, (status, bad)

        deadline = time.monotonic() + 60
        while (record := _http(f"{monitor_url}/v1/records/{body['request_id']}"))[0] != 200:
            assert time.monotonic() < deadline, f"record never reached monitoring: {record}\n{serve.logs()}"
            time.sleep(1)
        assert record[1]["model"] == "cxr-findings" and record[1]["version"] == body["version"]

        assert serve.stop() == 0, serve.logs()  # serving first: it drains its spool into monitoring
        assert monitor.stop() == 0, monitor.logs()
    finally:
        for container in containers:
            container.remove()


def test_the_local_pipeline_runs_every_step_in_the_train_image(images, tmp_path, monkeypatch):
    """`medmlops pipeline run ich --local --containers`: kfp's DockerRunner against podman's Docker API (started by
    the command), every step a container of the train image over the mounted project, as a cluster runs them."""
    from medmlops.cli import main

    from .pipelines.test_pipeline_local import _client, _project

    project = _project(tmp_path / "project", ("ich",))
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    argv = ["pipeline", "run", "ich", "--local", "--containers", "--profile", "smoke", "--repo", str(project)]
    assert main([*argv, "--tag", images["train_tag"]]) == 0
    logs = sorted(p.name for p in (project / ".medmlops" / "kfp" / "logs" / "ich").glob("[0-9]*.log"))
    assert len(logs) == 10 and logs[0] == "01-validate-data.log" and logs[-1] == "10-promote.log"
    client = _client(f"sqlite:///{project / '.medmlops' / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("ich-prognosis", "candidate").version) == "1"
    left = _run("podman", "ps", "--all", "--quiet", "--filter", f"ancestor={images['train']}").stdout.split()
    assert not left, f"step containers left behind: {left}"
