"""Offline checks of the image recipes (docker/) and of where the programs write at run time.

The container test (tests/shells/test_containers.py, slow) builds and runs the serve image; these checks pin the
three faults that building it found, without a build: the torch step that reached an unreachable index (no index
is hard-coded; torch comes from the lock unless a build argument names one), the state folder under the
root-owned /app (everything under ``.medmlops/`` follows ``$MEDMLOPS_STATE_DIR``, which the images set to a folder
the pods mount writable), and the HEALTHCHECK that an OCI-format build drops (buildah builds in Docker format).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from medmlops.paths import STATE_DIR_ENV, state_path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((REPO / "docker").glob("*.Dockerfile"))
sys.path.insert(0, str(REPO / "docker"))
import build_image  # noqa: E402  (docker/build_image.py: a script, not a package)


def _instructions(path: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    return [line.strip() for line in text.splitlines() if line.strip()]


def _env(path: Path) -> dict[str, str]:
    env = {}
    for line in _instructions(path):
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def test_two_dockerfiles():
    assert [p.name for p in DOCKERFILES] == ["serve.Dockerfile", "train.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_index_is_hard_coded_and_torch_comes_from_the_lock(dockerfile):
    lines = _instructions(dockerfile)
    urls = [url for line in lines for url in re.findall(r"https?://[^\s'\"]+", line) if "127.0.0.1" not in url]
    assert not urls, "a URL in the recipe"
    assert not [line for line in lines if re.search(r"torch==\S*\+cpu", line)], "a CPU wheel the lock does not pin"
    args = dict(re.findall(r"^ARG (\w+)(?:=(.*))?$", "\n".join(lines), re.MULTILINE))
    assert args.get("TORCH_INDEX_URL", '""') in ('""', ""), "torch's index is chosen by a build argument, empty"
    assert lines[0] == "FROM python:3.11-slim-bookworm"  # `make base-image` makes it where no registry is reachable
    assert sum(line.startswith("FROM ") for line in lines) == 1, "one stage: no second copy of the virtualenv"
    install = next(line for line in lines if "-c requirements.lock" in line)
    assert "-r docker/requirements-cluster.txt" in install


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_10001_and_writes_only_where_the_pods_mount_emptydirs(dockerfile):
    lines, env = _instructions(dockerfile), _env(dockerfile)
    assert "USER 10001:10001" in lines
    writable = ("/home/app/", "/tmp/")
    assert env["HOME"] == "/home/app" and env[STATE_DIR_ENV].startswith(writable)
    for key in ("XDG_CACHE_HOME", "MPLCONFIGDIR", "BENTOML_HOME"):
        assert key not in env or env[key].startswith(writable), key
    for manifest in ("serving-cxr-findings.yaml", "monitoring.yaml", "monitoring-worker.yaml"):
        text = (REPO / "k8s" / "base" / manifest).read_text()
        assert "readOnlyRootFilesystem: true" in text and "mountPath: /home/app}" in text, manifest


def test_the_serve_image_keeps_its_healthcheck_and_buildah_builds_docker_format(tmp_path, monkeypatch):
    lines = _instructions(REPO / "docker" / "serve.Dockerfile")
    assert [line for line in lines if line.startswith("HEALTHCHECK --")], "the serve image lost its HEALTHCHECK"
    monkeypatch.setattr(build_image, "pip_settings", lambda: {"extra-index-url": f"file://{tmp_path}/simple"})
    (tmp_path / "simple").mkdir()
    command = build_image.build_command("buildah", "docker/serve.Dockerfile", "x:1", ["A=b"], tmp_path)
    joined = " ".join(command)
    assert command[:2] == ["buildah", "bud"] and "--format docker" in joined and "--isolation chroot" in joined
    assert "--layers" in command and "--pull=never" in command
    assert f"-v {tmp_path / 'pip.conf'}:/etc/pip.conf:ro" in joined and f"-v {tmp_path}:{tmp_path}:ro" in joined
    assert "--build-arg A=b" in joined and command[-1] == "."
    assert (tmp_path / "pip.conf").read_text() == f"[global]\nextra-index-url = file://{tmp_path}/simple\n"
    docker = build_image.build_command("docker", "docker/serve.Dockerfile", "x:1", [])
    assert docker == ["docker", "build", "-f", "docker/serve.Dockerfile", "-t", "x:1", "."]


def test_train_and_serve_share_their_layers_up_to_the_dependencies():
    """Word for word up to the lock's install: a cached build (buildah --layers, Docker) makes that layer once, and
    the disk holds one copy of the virtualenv for both images."""
    serve, train = (_instructions(REPO / "docker" / name) for name in ("serve.Dockerfile", "train.Dockerfile"))
    cut = next(i for i, line in enumerate(serve) if "-c requirements.lock" in line) + 1
    assert train[:cut] == serve[:cut]


def test_pip_paths_to_mount(tmp_path):
    (tmp_path / "idx" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "c.txt").write_text("torch<=2.14.1\n")
    settings = {
        "extra-index-url": f"file://{tmp_path}/idx/simple https://pypi.org/simple",
        "find-links": f"{tmp_path}/wheels {tmp_path}/missing",
        "constraint": str(tmp_path / "c.txt"),
        "timeout": "180",
    }
    assert build_image.local_paths(settings) == sorted([tmp_path / "idx", tmp_path / "wheels", tmp_path / "c.txt"])


def test_base_image_is_the_name_the_dockerfiles_build_on(capsys):
    assert build_image.main(["--base", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("+ mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates")
    assert out[1].endswith(" docker.io/library/python:3.11-slim-bookworm")
    assert build_image.qualified("ghcr.io/x/y:1") == "ghcr.io/x/y:1"
    assert build_image.qualified("x/y:1") == "docker.io/x/y:1"


def test_image_names_come_from_params():
    """`make images` tags with params.yaml's names (the one place they are named), whichever tool builds."""
    makefile = (REPO / "Makefile").read_text()
    images = yaml.safe_load((REPO / "params.yaml").read_text())["images"]
    assert "docker/build_image.py" in makefile and images["train"] in ("medmlops-train",)
    for target in ("images:", "base-image:"):
        assert re.search(rf"^{target}", makefile, re.MULTILINE), target


# ---- $MEDMLOPS_STATE_DIR: every `.medmlops/` default follows it; unset, nothing changes ----------------------------


def test_state_path_moves_only_the_state_folder(monkeypatch):
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    assert state_path(".medmlops/spool") == ".medmlops/spool"
    monkeypatch.setenv(STATE_DIR_ENV, "/home/app/.medmlops")
    assert state_path(".medmlops/spool") == "/home/app/.medmlops/spool"
    assert state_path(".medmlops") == "/home/app/.medmlops"
    assert state_path("data/runs") == "data/runs" and state_path("/abs/.medmlops/x") == "/abs/.medmlops/x"
    assert state_path(".medmlopsx/y") == ".medmlopsx/y"


def test_every_run_time_default_follows_the_state_dir(monkeypatch, tmp_path):
    from medmlops.cli import build_parser
    from medmlops.config import load_params
    from medmlops.monitoring.store import resolve_db_url
    from medmlops.registry.tracking import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDMLOPS_MONITORING_DB_URL", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def defaults() -> dict[str, str]:
        params = load_params(REPO / "params.yaml")
        return {
            "mlflow": resolve_tracking_uri(params.registry, cwd=work),
            "monitoring": resolve_db_url(),
            "spool": build_parser().parse_args(["serve", "cxr-findings"]).spool_dir,
            "runs": params.train.runs_dir,
            "weights": params.train.weights_dir,
            "artifacts": params.registry.artifact_dir,
            "demo": params.demo.workdir,
        }

    state = tmp_path / "state"
    monkeypatch.setenv(STATE_DIR_ENV, str(state))
    assert defaults() == {
        "mlflow": f"sqlite:///{state}/mlflow.db", "monitoring": f"sqlite:///{state}/monitoring.db",
        "spool": f"{state}/spool", "runs": f"{state}/runs", "weights": f"{state}/weights",
        "artifacts": f"{state}/mlartifacts", "demo": f"{state}/demo",
    }  # fmt: skip
    assert not (work / ".medmlops").exists()  # nothing was made under the (read-only, in the image) workdir
    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    assert defaults() == {  # a developer machine: unchanged, under the working directory
        "mlflow": f"sqlite:///{work}/.medmlops/mlflow.db", "monitoring": "sqlite:///.medmlops/monitoring.db",
        "spool": ".medmlops/spool", "runs": ".medmlops/runs", "weights": ".medmlops/weights",
        "artifacts": ".medmlops/mlartifacts", "demo": ".medmlops/demo",
    }  # fmt: skip
