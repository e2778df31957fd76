"""``medmlops.commandline``: what every entry point shares, and how ``medmlops`` starts a shell's own command line."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from medmlops.commandline import code_root, run_command, shell_command
from medmlops.errors import UserError
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["pipeline", "run", "--help"], "usage: medmlops pipeline run"),
        (["pipeline", "compile", "--help"], "usage: medmlops pipeline compile"),
        (["monitor", "serve", "--help"], "usage: medmlops monitor serve"),
    ],
)
def test_forwarded_commands_answer_with_their_shells_own_parser(argv, usage, tmp_path):
    """Run from a folder that holds no shell: the checkout's shells are found, and their help is the real one."""
    result = subprocess.run([sys.executable, "-m", "medmlops.cli", *argv], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage), result.stdout


def test_a_forwarded_user_error_is_one_sentence_and_exit_1(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "medmlops.cli", "pipeline", "run", "ich", "--repo", str(REPO)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "medmlops: error: say where to run: --local (Kubeflow's local runner here) or --host URL (a Kubeflow "
        "Pipelines API)"
    ]


def test_code_root_prefers_the_project_then_the_checkout(tmp_path):
    assert code_root(REPO, "pipelines/__main__.py") == REPO
    assert code_root(tmp_path, "pipelines/__main__.py") == REPO  # a data-only project uses the checkout's shells
    with pytest.raises(UserError, match="no-such-shell/__main__.py: not found"):
        code_root(tmp_path, "no-such-shell/__main__.py")
    command, env = shell_command(tmp_path, "monitoring", ["--port", "1"])
    assert command == [sys.executable, "-m", "monitoring", "--port", "1"]
    assert env["PYTHONPATH"].split(":")[0] == str(REPO)


def test_run_command_keeps_the_error_contract(capsys):
    def fails_as_user(_):
        raise UserError("data/raw/ich: dataset folder not found")

    def interrupted(_):
        raise KeyboardInterrupt

    def full_disk(_):
        raise OSError(28, "No space left on device", "reports/x.html")

    def bug(_):
        raise ZeroDivisionError

    args = argparse.Namespace()
    assert run_command(fails_as_user, args, "medmlops") == 1
    assert run_command(interrupted, args, "medmlops") == 130
    assert run_command(full_disk, args, "medmlops") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "medmlops: error: data/raw/ich: dataset folder not found"
    assert err[1] == "medmlops: interrupted"
    assert err[2].startswith("medmlops: error: reports/x.html: No space left on device; files already written")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_command(bug, args, "medmlops")
