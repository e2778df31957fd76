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
                    build_parser().parse_args(argv)
                except SystemExit as exc:
                    raise AssertionError(f"{readme.name}: `{command}` does not parse") from exc
                checked += 1
            elif words[:1] == ["make"]:
                for target in (w for w in words[1:] if "=" not in w):
                    assert target in targets, f"{readme.name}: `{command}`: no Makefile target {target!r}"
                checked += 1
    assert checked >= 20, checked
