"""The README's reliability table lists every test marked ``reliability`` with what it tries and what must hold
(``make reliability`` prints the same table with results)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO
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
            synopsis = re.search(r"\[--|\{[\w-]+,", line)  # usage notation ([--opt], {a,b}), not a command
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
    "make images": "docker build: no Docker engine on this machine (the Dockerfiles are checked by checkov)",
    "make push-images": "docker push to a registry: no Docker engine, no registry reachable",
    "make test": "CI's .ci/run runs it on a clean clone",
}
CLI_GROUPS = {"data", "registry", "pipeline", "informer", "monitor", "config"}  # `medmlops GROUP SUB ...`
# make targets and what runs their recipe: a medmlops command a test runs, or (file, text) that does it.
MAKE_RUNS = {
    "make demo": "demo",  # install (as make test) + `medmlops demo`: tests/test_demo.py
    "make tools": ("Makefile", "test: install tools"),  # make test builds the tools virtualenv first
    "make checkov": ("tests/test_k8s.py", "done = _checkov(K8S)"),  # checkov on k8s/ with the same flags
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
