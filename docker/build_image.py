"""Build one image of docker/*.Dockerfile with Docker where an engine runs, else with buildah; or make the local
base image from Debian packages. `make images` and `make base-image` call it; so does the container test.

    python docker/build_image.py -f docker/serve.Dockerfile -t NAME:TAG [--tool auto|docker|buildah]
                                 [--build-arg KEY=VALUE ...] [--dry-run]
    python docker/build_image.py --base [-f docker/serve.Dockerfile] [--dry-run]

buildah (no Docker engine, no registry, root on a Debian machine): `buildah bud --isolation chroot --format docker`
(crun fails on a cgroup v1/v2 hybrid; OCI images drop HEALTHCHECK, Docker-format ones keep it), --layers (cached
steps, as Docker does: the train and serve images share their base and dependency layers). pip inside the build
sees this machine's pip configuration: one pip.conf made from `pip config list` (configuration files and PIP_*
variables together) is mounted at /etc/pip.conf, and every local path it names (the CA bundle, a constraints
file, find-links folders, file:// wheel indexes) is mounted read-only at the same path, so locked wheels that lie
on this disk are installed from there. With Docker nothing is mounted: pip uses its defaults (PyPI).

--base: the image the Dockerfiles' FROM line names (python:3.11-slim-bookworm), made from Debian
bookworm's packages where no registry is reachable: `mmdebstrap --variant=minbase` with python3, python3-venv
and ca-certificates from the mirror apt is configured with, then `podman import` under that name.
"""

from __future__ import annotations

import argparse
import configparser
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIP_PATH_KEYS = ("cert", "client-cert", "constraint", "requirement", "find-links", "index-url", "extra-index-url")
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
# Left out of the base image: documentation, manual pages and translations (~30 MB).
BASE_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


def engine_runs(tool: str) -> bool:
    """Whether ``tool`` is installed and, for docker, answers with a running engine (the client alone is not enough)."""
    if shutil.which(tool) is None:
        return False
    if tool != "docker":
        return True
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


def choose_tool(tool: str = "auto") -> str:
    """``docker`` where its engine runs, else ``buildah``; an explicit choice is checked, not guessed."""
    if tool != "auto":
        if not engine_runs(tool):
            raise SystemExit(f"{tool} is not usable here (not installed, or no Docker engine answers `docker info`)")
        return tool
    for candidate in ("docker", "buildah"):
        if engine_runs(candidate):
            return candidate
    raise SystemExit(
        "neither a Docker engine nor buildah here: install Docker, or on Debian "
        "`apt-get install -y --no-install-recommends buildah podman runc mmdebstrap`"
    )


def pip_settings(python: str = sys.executable) -> dict[str, str]:
    """This machine's effective pip settings (``pip config list``: files, then PIP_* variables), key -> value."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
    settings: dict[str, str] = {}
    for line in out.splitlines():
        match = re.match(r"^([^.]*)\.([\w-]+)='(.*)'$", line)
        if match:  # later lines (environment variables) win, as in pip
            settings[match.group(2).replace("_", "-")] = match.group(3)
    return settings


def local_paths(settings: dict[str, str]) -> list[Path]:
    """The existing local files and folders pip's settings name, to mount read-only at the same path.

    A ``file://`` index ``.../simple`` is mounted with its parent: PEP 503 pages link to the wheels beside it.
    """
    found: list[Path] = []
    for key in PIP_PATH_KEYS:
        for value in settings.get(key, "").split():
            path = Path(value[len("file://") :]) if value.startswith("file://") else Path(value)
            if not path.is_absolute() or not path.exists():
                continue
            if path.name == "simple":
                path = path.parent
            if not any(path == p or p in path.parents for p in found):
                found = [p for p in found if path not in p.parents] + [path]
    return sorted(found)


def pip_conf(settings: dict[str, str]) -> str:
    """One pip.conf ``[global]`` section with ``settings`` (what the build's pip reads from /etc/pip.conf)."""
    conf = configparser.ConfigParser(interpolation=None)
    conf["global"] = {key: value for key, value in settings.items() if "\n" not in value}
    lines = [f"{key} = {value}" for key, value in conf["global"].items()]
    return "[global]\n" + "\n".join(lines) + "\n"


def build_command(
    tool: str, dockerfile: str, tag: str, build_args: list[str], pip_dir: Path | None = None
) -> list[str]:
    """The build command line for ``tool`` (run from the repository root, the build context)."""
    args = [item for pair in build_args for item in ("--build-arg", pair)]
    if tool == "docker":
        return ["docker", "build", "-f", dockerfile, "-t", tag, *args, "."]
    mounts: list[str] = []
    if pip_dir is not None:
        settings = pip_settings()
        (pip_dir / "pip.conf").write_text(pip_conf(settings))
        mounts = ["-v", f"{pip_dir / 'pip.conf'}:/etc/pip.conf:ro"]
        for path in local_paths(settings):
            mounts += ["-v", f"{path}:{path}:ro"]
    return [
        "buildah", "bud", "--isolation", "chroot", "--format", "docker", "--pull=never", "--layers",
        *mounts, "-f", dockerfile, "-t", tag, *args, ".",
    ]  # fmt: skip


def base_image_name(dockerfile: str) -> str:
    """The image the Dockerfile's FROM line builds on."""
    match = re.search(r"^FROM (\S+)", (ROOT / dockerfile).read_text(), re.MULTILINE)
    if not match:
        raise SystemExit(f"{dockerfile}: no FROM line")
    return match.group(1)


def qualified(name: str) -> str:
    """``python:3.11`` as podman stores a Docker Hub short name: ``docker.io/library/python:3.11``."""
    first = name.split("/")[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def make_base(dockerfile: str, dry_run: bool) -> int:
    """mmdebstrap a minimal Debian bookworm with python3 and import it as the Dockerfile's base image name."""
    name = qualified(base_image_name(dockerfile))
    sources = next((str(p) for p in APT_SOURCES if p.is_file()), "http://deb.debian.org/debian")
    with tempfile.TemporaryDirectory(prefix="medmlops-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        excludes = [f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_EXCLUDES]
        commands = [
            ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", *excludes, "bookworm", str(tar), sources],
            ["podman", "import", str(tar), name],
        ]
        for command in commands:
            print("+", shlex.join(command), flush=True)
            if not dry_run:
                subprocess.run(command, check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--file", default="docker/serve.Dockerfile", help="Dockerfile, from the repo root")
    parser.add_argument("-t", "--tag", help="image name:tag")
    parser.add_argument("--tool", default="auto", choices=("auto", "docker", "buildah"))
    parser.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--base", action="store_true", help="make the base image from Debian packages (mmdebstrap)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    if args.base:
        return make_base(args.file, args.dry_run)
    if not args.tag:
        parser.error("-t/--tag is required (or --base)")
    tool = "docker" if args.dry_run and args.tool == "docker" else choose_tool(args.tool)
    with tempfile.TemporaryDirectory(prefix="medmlops-pip-") as tmp:
        command = build_command(tool, args.file, args.tag, args.build_arg, Path(tmp) if tool == "buildah" else None)
        print("+", shlex.join(command), flush=True)
        if args.dry_run:
            return 0
        start = time.monotonic()
        code = subprocess.run(command, cwd=ROOT).returncode
    print(f"{args.tag}: built in {time.monotonic() - start:.0f} s with {tool}" if code == 0 else f"{tool}: exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
