"""The README's reliability table lists every test marked ``reliability`` with what it tries and what must hold
(``make reliability`` prints the same table with results)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, _free_port
from .reliability import readme_block, without_results


def test_readme_keeps_the_reliability_table(tmp_path):
    table = tmp_path / "reliability.md"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "reliability", f"--reliability-table={table}",
         "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = without_results(table.read_text())
    assert expected.count("\n") >= 25  # header, rule and the rows
    assert without_results(readme_block(REPO / "README.md")) == expected, (
        "README.md's reliability block is stale: run `make reliability` and paste reports/reliability.md into it"
    )


def _shell_blocks(text: str) -> list[str]:
    """The commands of the README's ```bash blocks (continuations joined, comments dropped)."""
    import re

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].strip()
            synopsis = re.search(r"\[--|\{[\w-]+,|\s\|\s", line)  # usage notation ([--opt], {a,b}), not a command
            if line and not line.startswith("#") and not synopsis:
                commands.append(line)
    return commands


def test_every_medmlops_and_make_command_in_the_readmes_is_real():
    """Each ``medmlops ...`` line of README.md and k8s/README.md parses with the real CLI parser (subcommands,
    options, choices), and each ``make X`` names a Makefile target: a renamed flag cannot leave the docs behind."""
    import re
    import shlex

    from medmlops.cli import build_parser

    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*):", makefile, flags=re.M))
    checked = 0
    for readme in (REPO / "README.md", REPO / "k8s" / "README.md"):
        for command in _shell_blocks(readme.read_text()):
            if not re.match(r"([A-Z_][A-Z0-9_]*=\S*\s+)*(medmlops|make)\s", command):
                continue  # kubectl, curl, docker, ... (multi-line JSON included)
            words = shlex.split(command)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value prefixes
                words = words[1:]
            if words[:1] == ["medmlops"]:
                argv = words[1 : words.index("&")] if "&" in words else words[1:]
                try:
                    _parse_like_the_cli(build_parser(), argv)
                except SystemExit as exc:
                    raise AssertionError(f"{readme.name}: `{command}` does not parse") from exc
                checked += 1
            elif words[:1] == ["make"]:
                for target in (w for w in words[1:] if "=" not in w):
                    assert target in targets, f"{readme.name}: `{command}`: no Makefile target {target!r}"
                checked += 1
    assert checked >= 20, checked


def _parse_like_the_cli(parser, argv: list[str]) -> None:
    """Parse as ``medmlops`` does, including the commands it passes on to a shell's own parser."""
    import importlib

    from medmlops.commandline import SHELL_COMMANDS, cmd_shell

    args = parser.parse_args(argv)
    if args.func is cmd_shell:
        package, prefix = SHELL_COMMANDS[(args.command, args.shell_command)]
        shell = importlib.import_module("pipelines.cli" if package == "pipelines" else "monitoring.__main__")
        shell.build_parser().parse_args([*prefix, *args.argv])


# Commands of the READMEs that no test here can run, and why. Everything else must be run by a test (or the demo).
NOT_RUN_HERE = {
    "make push-images": "docker/podman push to a registry: no registry reachable",
    "make test": "CI's .ci/run runs it on a clean clone",
}
CLI_GROUPS = {"data", "registry", "pipeline", "informer", "monitor", "config"}  # `medmlops GROUP SUB ...`
# make targets and what runs their recipe: a medmlops command a test runs, or (file, text) that does it.
MAKE_RUNS = {
    "make demo": "demo",  # install (as make test) + `medmlops demo`: tests/test_demo.py
    "make tools": ("Makefile", "test: install tools"),  # make test builds the tools virtualenv first
    "make checkov": ("tests/test_k8s.py", "done = _checkov(K8S)"),  # checkov on k8s/ with the same flags
    "make containers": ("Makefile", "test: install tools browser containers"),  # make test installs them first
    # The container test builds with the recipe's own script: the base image, then both images with buildah.
    "make base-image": ("tests/shells/test_containers.py", 'subprocess.run([*builder, "--base"]'),
    "make images": ("tests/shells/test_containers.py", 'str(REPO / "docker" / "build_image.py"), "--tool", "buildah"'),
}


def _invoked_in_tests() -> set[str]:
    """The CLI commands the tests run: ``main([...])`` and ``[... "medmlops"|"medmlops.cli", ...]`` argv lists,
    as "group sub" for command groups (data generate, registry promote, ...) and "cmd" otherwise."""
    import ast

    groups = CLI_GROUPS
    found = set()
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main" and node.args:
                arg = node.args[0]  # main(["train", ...]) with the list spread over lines
                if isinstance(arg, ast.List) and arg.elts and isinstance(arg.elts[0], ast.Constant):
                    first = arg.elts[0].value
                    second = arg.elts[1].value if len(arg.elts) > 1 and isinstance(arg.elts[1], ast.Constant) else ""
                    found.add(f"{first} {second}" if first in groups else first)
            if not isinstance(node, ast.List):
                continue
            words = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in node.elts]
            for i, word in enumerate(words):
                if word in ("medmlops", "medmlops.cli"):
                    words = words[i + 1 :]
                    break
            else:
                continue
            if words and words[0] in groups and len(words) > 1 and words[1]:
                found.add(f"{words[0]} {words[1]}")
            elif words and words[0]:
                found.add(words[0])
    return found


def test_every_medmlops_and_make_command_in_the_readmes_is_run_by_a_test():
    """Parsing (above) proves a command exists; this proves a test runs it: each README ``medmlops`` command's
    subcommand is invoked by some test, each ``make`` target's recipe is, or NOT_RUN_HERE says why not."""
    import re
    import shlex

    invoked = _invoked_in_tests()
    missing = []
    for readme in (REPO / "README.md", REPO / "k8s" / "README.md"):
        for command in _shell_blocks(readme.read_text()):
            words = shlex.split(command, posix=True) if "'" not in command else command.split()
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words = words[1:]
            if words[:1] == ["medmlops"]:
                key = (
                    " ".join(words[1:3])
                    if words[1] in {"data", "registry", "pipeline", "informer", "monitor"}
                    else words[1]
                )
                if key not in invoked:
                    missing.append(f"{readme.relative_to(REPO)}: `{command}` (no test runs `medmlops {key}`)")
            elif words[:1] == ["make"]:
                for target in (f"make {w}" for w in words[1:] if "=" not in w):
                    if target in NOT_RUN_HERE:
                        continue
                    runner = MAKE_RUNS.get(target)
                    if isinstance(runner, tuple):
                        ran = runner[1] in (REPO / runner[0]).read_text()
                    else:
                        ran = runner in invoked
                    if not ran:
                        missing.append(f"{readme.relative_to(REPO)}: `{command}` (no test runs `{target}`'s recipe)")
    assert not missing, "\n".join(missing)


# ---------------------------------------------------------------------------------------------------------------------
# The README's commands, run in README order on a fresh clone (the first hour of a new user)
# ---------------------------------------------------------------------------------------------------------------------

# A ```bash block right after this marker is not run here; the marker says why (the README shows it too).
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s+(.+?)\s*-->\s*\n```bash\n(.*?)```", flags=re.S)
# `make` lines are the entry points of whole jobs; what runs each of them instead of the in-order runner:
MAKE_IN_ORDER = {
    "make demo": "tests/test_demo.py runs `medmlops demo --profile smoke` on a fresh clone (make demo = install + that)",
    "make test": "CI's .ci/run runs it on a clean clone; this test is part of it",
    "make test-fast": "make test without the slow tests",
    "make reliability": "the reliability-marked tests of make test, as a table",
    "make lint": "CI's lint job (ruff, import-linter); tests/test_architecture.py checks the contracts",
    "make validate": "test_make_validate_runs_the_validation_stages_only below",
}


def readme_steps(text: str) -> list[tuple[str, str | None]]:
    """(command, reason it is not run or None) for each line of the README's ```bash blocks, in README order:
    continuations joined, comments and usage synopses ([--opt], {a,b}) dropped."""
    skipped = {m.start(2): m.group(1) for m in SKIP_MARKER.finditer(text)}
    steps = []
    for block in re.finditer(r"```bash\n(.*?)```", text, flags=re.S):
        reason = skipped.get(block.start(1))
        joined = re.sub(r"\\\n\s*", " ", block.group(1))
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].strip()
            if not line or line.startswith("#") or re.search(r"\[--|\{[\w-]+,|\s\|\s", line):
                continue
            if reason is None and line.startswith("make "):
                if line not in MAKE_IN_ORDER:
                    raise AssertionError(f"README.md: `{line}`: say in MAKE_IN_ORDER what runs it")
                steps.append((line, MAKE_IN_ORDER[line]))
            else:
                steps.append((line, reason))
    return steps


def _ports(commands: list[str]) -> dict[str, str]:
    """Each literal port of the README's commands → a free one here (CI machines run other servers)."""
    found = set()
    for command in commands:
        found |= set(re.findall(r"(?:--port |127\.0\.0\.1:|localhost:)(\d{4,5})\b", command))
    return {port: str(_free_port()) for port in sorted(found)}


def _with_ports(command: str, ports: dict[str, str]) -> str:
    return re.sub(
        r"(--port |127\.0\.0\.1:|localhost:)(\d{4,5})\b", lambda m: m.group(1) + ports.get(m.group(2), m.group(2)),
        command,
    )  # fmt: skip


def _wait_ready(port: str, process, log, timeout_s: float = 300.0) -> None:
    """Until the server on ``port`` answers 200 on one of its readiness paths (serving, monitoring, Evidently UI)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()[-3000:]}"
        for path in ("/readyz", "/healthz", "/api/projects"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
        time.sleep(1)
    raise AssertionError(f"nothing answered on port {port} in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def test_readme_steps_keep_order_and_say_why_a_command_is_not_run():
    """The parser the in-order run uses: every README command is a step, in order; skipped ones carry a reason."""
    steps = readme_steps((REPO / "README.md").read_text())
    commands = [c for c, _ in steps]
    assert commands[:2] == ["make demo", "make test"]
    assert all(reason for command, reason in steps if command.startswith("make "))
    run = [c for c, reason in steps if reason is None]
    assert len(run) >= 15, run
    trains = [i for i, c in enumerate(run) if c.startswith("medmlops train")]
    serves = [i for i, c in enumerate(run) if c.startswith("medmlops serve")]
    assert trains and serves and trains[0] < serves[0]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_readme_commands_run_in_order_on_a_fresh_clone(tmp_path):
    """A new user's first hour: `git clone`, then every command of README.md's ```bash blocks in README order, at
    the smoke profile (MEDMLOPS_PROFILE=smoke; a command's own --profile wins), with nothing done first. Servers
    (lines ending in `&`) run in the background and must answer before the next line; ports are swapped for free
    ones. Each command must exit 0. What is not run here is listed with its reason in the test's output."""
    import os
    import signal
    import time

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    steps = readme_steps((clone / "README.md").read_text())
    ports = _ports([c for c, _ in steps])
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MONITORING_URL")}
    env.update({"MEDMLOPS_PROFILE": "smoke", "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
                "MEDMLOPS_DVC_REMOTE": str(tmp_path / "dvc-remote")})  # fmt: skip
    logs = tmp_path / "logs"
    logs.mkdir()
    background: list[subprocess.Popen] = []
    try:
        for number, (command, reason) in enumerate(steps, 1):
            if reason is not None:
                print(f"[{number}/{len(steps)}] not run here: {command} ({reason})")
                continue
            command = _with_ports(command, ports)
            log = logs / f"{number:02d}.log"
            started = time.monotonic()
            if command.endswith("&"):
                port = re.search(r"--port (\d+)", command)
                assert port, f"README.md: `{command}`: a background server must name its --port"
                with log.open("w") as out:
                    background.append(subprocess.Popen(
                        ["bash", "-e", "-o", "pipefail", "-c", command[:-1]], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ))  # fmt: skip
                _wait_ready(port.group(1), background[-1], log)
            else:
                with log.open("w") as out:
                    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=clone, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, timeout=1800)  # fmt: skip
                assert done.returncode == 0, (
                    f"README.md: `{command}` exited {done.returncode}:\n{log.read_text()[-4000:]}"
                )
            print(f"[{number}/{len(steps)}] {time.monotonic() - started:5.0f} s  {command}")
    finally:
        for process in reversed(background):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_validate_runs_the_validation_stages_only(tmp_path):
    """`make validate` on a fresh clone: makes the demo data (absent there), checks it against data.dvc and runs
    the four validate stages of dvc.yaml, not the training stages `dvc repro` alone would run (hours)."""
    import yaml

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    venv = Path(sys.executable).parent.parent  # this environment: `-o install` keeps make from reinstalling it
    done = subprocess.run(
        ["make", "-o", "install", f"VENV={venv}", "validate"], cwd=clone, capture_output=True, text=True,
        timeout=840, env={**__import__("os").environ, "MEDMLOPS_DVC_REMOTE": str(tmp_path / "remote")},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data: generated data/raw" in done.stdout
    stages = set(yaml.safe_load((clone / "dvc.lock").read_text())["stages"])
    assert stages == {f"validate@{d}" for d in ("ich", "aiforcovid", "brixia", "chexpert")}, stages
    for dataset in ("ich", "aiforcovid", "brixia", "chexpert"):
        report = clone / "reports" / "validation" / f"{dataset}.json"
        assert report.is_file() and (clone / "reports" / "validation" / f"{dataset}.html").is_file()
    assert subprocess.run(["git", "diff", "--quiet", "data.dvc"], cwd=clone).returncode == 0
