"""Every argument-validation failure of the command line is one sentence naming the fix, exit 1, no traceback, and
creates nothing: ``medmlops`` itself and the shells' own parsers it starts (``medmlops pipeline …``,
``medmlops monitor serve``). Most rows run ``main([...])`` in-process; a handful run the real console command as a
process (and every forwarded command must, since the shell is a separate process)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from medmlops.cli import main
from tests.conftest import REPO

FAMILIES = "(families: covid-prognosis, cxr-findings, ich-prognosis)"

# (argv, words the one line must hold); env: MEDMLOPS_PROFILE where a row names it as a leading "PROFILE=..."
ROWS: list[tuple[str, tuple[str, ...]]] = [
    # data generate: the new user's first command
    ("data generate ich --out x --shape 32x128", ("--shape 32x128", "3 sizes of at least 8", "32,128,128")),
    ("data generate ich --out x --shape abc", ("--shape", "positive integers separated by commas")),
    ("data generate ich --out x --shape 32,0,128", ("--shape", "positive integers")),
    ("data generate chexpert --out x --shape 16,16", ("--shape 16x16", "2 sizes of at least 32")),
    ("data generate all --out x --shape 32,128,128", ("--shape", "one dataset at a time")),
    ("data generate ich --out x --n 0", ("--n", "'0' is not an integer of at least 1")),
    ("data generate ich --out x --n -5", ("--n", "at least 1")),
    ("data generate ich --out x --n 1", ("--n 1", "at least 2 samples")),
    ("data generate brixia --out x --n 3", ("--n 3", "at least 4 samples")),
    ("data generate ich --out x --set data.ich.n=1", ("params data.ich.n 1", "at least 2 samples")),
    ("data generate ich --out x --set data.ich.shape=[4,64,64]", ("params data.ich.shape 4x64x64", "at least 8")),
    ("data generate ich --out x --seed -1", ("--seed", "at least 0")),
    ("data generate ich --out x --seed abc", ("--seed", "'abc' is not an integer")),
    ("data generate ich --out x --shift scaner", ("invalid choice 'scaner'", "did you mean 'scanner'?")),
    ("data generate ichh --out x", ("invalid choice 'ichh'", "did you mean 'ich'?")),
    ("data generate ich", ("required", "--out", "see `medmlops data generate --help`")),
    # --params / --profile / --set, read the same way by every command
    ("data generate ich --out x --set foo", ("--set 'foo'", "key=value", "data.ich.n=16")),
    ("data generate ich --out x --set =3", ("--set '=3'", "key=value")),
    ("data generate ich --out x --set data.ich.nn=3", ("unknown key 'data.ich.nn'", "did you mean 'n'?")),
    ("data generate ich --out x --set trian.epochs=3", ("unknown key 'trian'", "did you mean 'train'?")),
    ("data generate ich --out x --set data.ich.n=abc", ("'data.ich.n' must be an integer",)),
    ("data generate ich --out x --params nope.yaml", ("nope.yaml: params file not found",)),
    ("data generate ich --out x --params bad.yaml", ("bad.yaml: not valid YAML",)),
    ("data generate ich --out x --params list.yaml", ("list.yaml: top level must be a mapping",)),
    ("config show --profile smok", ("invalid choice 'smok'", "did you mean 'smoke'?")),
    ("PROFILE=smok config show", ("$MEDMLOPS_PROFILE", "unknown profile 'smok'", "did you mean 'smoke'?")),
    ("data track --set foo", ("--set 'foo'", "key=value")),
    ("demo --profile paperr", ("did you mean 'paper'?",)),
    ("data validate ich", ("required", "dir")),
    ("preprocess ichh", ("did you mean 'ich'?",)),
    # commands and names
    ("", ("required", "a command (data, preprocess, train")),
    ("trian ich-mt-ord", ("invalid choice 'trian'", "did you mean 'train'?")),
    ("config show --bogus", ("unrecognized arguments: --bogus",)),
    ("registry", ("a command (list, promote, rollback)",)),
    ("train ich-mt-or", ("unknown experiment 'ich-mt-or'", "did you mean 'ich-mt-ord'?")),
    ("evaluate", ("name the experiments", "--protocol covid")),
    ("evaluate ich-mt-or", ("unknown experiment 'ich-mt-or'", "did you mean 'ich-mt-ord'?")),
    ("evaluate ich-mt-ord --protocol covid", ("not both",)),
    ("evaluate --protocol cvd", ("invalid choice 'cvd'", "did you mean 'covid'?")),
    ("registry list ich-prognossis", ("unknown family 'ich-prognossis'", "did you mean 'ich-prognosis'?", FAMILIES)),
    ("registry promote cxr", ("unknown family 'cxr'", FAMILIES)),
    ("registry rollback", ("required", "family")),
    ("serve ich-prognossis", ("unknown family 'ich-prognossis'", "did you mean 'ich-prognosis'?")),
    ("serve ich-prognosis --port 0", ("--port", "from 1 to 65535")),
    ("serve ich-prognosis --port http", ("--port", "'http' is not an integer")),
    ("serve ich-prognosis --max-batch-size 0", ("--max-batch-size", "at least 1")),
    ("serve ich-prognosis --max-latency-ms -1", ("--max-latency-ms", "at least 1")),
    ("serve ich-prognosis --reload-s -1", ("--reload-s", "a number of at least 0")),
    ("serve ich-prognosis --max-upload-bytes lots", ("--max-upload-bytes", "not an integer")),
    ("informer calibrate ich-prognossis", ("unknown family 'ich-prognossis'", "did you mean 'ich-prognosis'?")),
    ("informer evaluate covid-prognosys", ("unknown family 'covid-prognosys'", "did you mean 'covid-prognosis'?")),
    ("informer evaluate ich-prognosis --shift nois", ("invalid choice 'nois'", "did you mean 'noise'?")),
    ("informer evaluate ich-prognosis --tta -1", ("--tta", "at least 0")),
    ("informer evaluate ich-prognosis --bootstrap x", ("--bootstrap", "not an integer")),
    ("informer calibrate ich-prognosis --method gradcm", ("did you mean 'gradcam'?",)),
    ("informer calibrate ich-prognosis --direction up", ("invalid choice 'up'",)),
    ("monitor report --family ich-prognossis --workspace ws", ("unknown family 'ich-prognossis'", "did you mean")),
    ("monitor report --workspace ws", ("required", "--family")),
    ("monitor report --family ich-prognosis --workspace ws --last 0", ("--last", "at least 1")),
    ("monitor report --family ich-prognosis --workspace ws --since-hours 0", ("--since-hours", "above 0")),
    ("monitor report --family ich-prognosis --workspace ws --wait-s -2", ("--wait-s", "at least 0")),
    ("monitor worker --workers 0", ("--workers", "at least 1")),
    ("monitor worker --lease-s 0", ("--lease-s", "above 0")),
    ("monitor worker --poll-s nan", ("--poll-s", "'nan' is not a number above 0")),
    ("monitor worker --nice 20", ("--nice", "from 0 to 19")),
    ("monitor worker --batch-size 0", ("--batch-size", "at least 1")),
    ("monitor worker --backlog-bound -1", ("--backlog-bound", "at least 0")),
    ("pipeline step train-fold ich-mt-ord --fold -1 --job-id j", ("--fold", "at least 0")),
    ("pipeline step train-fold ich-mt-ord --job-id j", ("required", "--fold")),
    ("pipeline step train-fold ich-mt-ord --fold 0 --job-id j --workdir nope", ("'nope' is not an existing folder",)),
    # paths: a folder given must exist; an output cannot be made where a file is in the way
    ("data track --repo nope", ("--repo", "'nope' is not an existing folder")),
    ("serve ich-prognosis --repo nope", ("--repo", "'nope' is not an existing folder")),
    ("demo --repo nope", ("'nope' is not an existing folder",)),
    ("informer evaluate ich-prognosis --repo nope", ("'nope' is not an existing folder",)),
    ("informer evaluate ich-prognosis --out params.yaml", ("'params.yaml' is a file: give a folder",)),
    ("data generate ich --out params.yaml", ("--out", "'params.yaml' is a file: give a folder")),
    ("data generate ich --out params.yaml/ich", ("cannot be made", "params.yaml is a file, not a folder")),
    ("config show --out params.yaml/resolved.yaml", ("cannot be made", "params.yaml is a file, not a folder")),
    ("config show --out .", ("'.' is a folder: give a file name",)),
    ("data validate ich data --report .", ("--report", "is a folder: give a file name")),
    ("evaluate ich-mt-ord --out params.yaml", ("--out", "is a file: give a folder")),
    ("monitor report --family ich-prognosis --workspace params.yaml", ("--workspace", "is a file: give a folder")),
    ("monitor report --family ich-prognosis --workspace ws --out params.yaml", ("--out", "is a file")),
    ("monitor report --family ich-prognosis --workspace ws --db-url garbage", ("--db-url", "not a database URL")),
    ("monitor worker --db-url foo://x", ("--db-url", "not a database URL", "sqlite:///monitoring.db")),
]

# The shells' own parsers (what `medmlops pipeline compile|run` and `medmlops monitor serve` start), in-process.
SHELL_ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("pipeline compile ichh", ("invalid choice 'ichh'", "did you mean 'ich'?", "see `medmlops pipeline compile")),
    ("pipeline compile ich --repo nope", ("'nope' is not an existing folder",)),
    ("pipeline compile ich --out params.yaml", ("'params.yaml' is a file: give a folder",)),
    ("pipeline run ich --local --experiments ich-mt-or", ("unknown experiment 'ich-mt-or'", "did you mean")),
    ("pipeline run ich --local --profile smok", ("did you mean 'smoke'?", "see `medmlops pipeline run --help`")),
    ("pipeline run ich --local --set foo", ("--set 'foo'", "key=value")),
    ("pipeline run ichh --local", ("did you mean 'ich'?",)),
    ("pipeline run ich --local --recurring 0_*_*_*_*", ("--recurring", "--host")),
    ("pipeline run ich --local --host http://kfp", ("not allowed with argument",)),
    ("pipeline", ("a command (compile, run, step)",)),
    ("monitor serve --port 99999", ("--port", "from 1 to 65535", "see `medmlops monitor serve --help`")),
    ("monitor serve --flag-window 5x", ("--flag-window", "500", "24h")),
    ("monitor serve --sample-p 2", ("--sample-p", "from 0 to 1")),
    ("monitor serve --max-body-bytes 0", ("--max-body-bytes", "at least 1")),
    ("monitor serve --worker-nice -1", ("--worker-nice", "from 0 to 19")),
    ("monitor serve --log-level loud", ("invalid choice 'loud'",)),
    ("monitor serve --bogus", ("unrecognized arguments: --bogus",)),
    ("monitor serve --repo nope", ("--repo", "'nope' is not an existing folder")),
    ("monitor serve --db-url garbage", ("--db-url", "not a database URL")),
]

# The real console, as a process: the reported cases, and a forwarded command of each shell (cmd_shell).
PROCESS_ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("data generate ich --out x --shape 32x128", ("--shape 32x128", "3 sizes of at least 8")),
    ("data generate ich --out x --n 0", ("--n", "at least 1")),
    ("serve ich-prognossis", ("unknown family 'ich-prognossis'", "did you mean 'ich-prognosis'?")),
    ("monitor report --family ich-prognossis --workspace ws", ("unknown family 'ich-prognossis'",)),
    ("PROFILE=smok config show", ("$MEDMLOPS_PROFILE", "did you mean 'smoke'?")),
    ("pipeline compile ichh", ("invalid choice 'ichh'", "did you mean 'ich'?", "see `medmlops pipeline compile")),
    ("monitor serve --port 99999", ("--port", "from 1 to 65535", "see `medmlops monitor serve --help`")),
]


def _project(root: Path) -> Path:
    """A new user's data project: params.yaml, and two params files that are not usable."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "bad.yaml").write_text("data: [unclosed\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    return root


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _split(row: str) -> tuple[dict[str, str], list[str]]:
    words = row.split()
    env = {}
    if words and words[0].startswith("PROFILE="):
        env["MEDMLOPS_PROFILE"] = words.pop(0).split("=", 1)[1]
    return env, words


def _check(code: int, stderr: str, words: tuple[str, ...], before: set[str], after: set[str]) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert lines[0].startswith("medmlops") and ": error: " in lines[0], lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert after == before, f"created {sorted(after - before)}"


@pytest.mark.parametrize(("row", "words"), ROWS + SHELL_ROWS, ids=[row or "<none>" for row, _ in ROWS + SHELL_ROWS])
def test_a_bad_argument_is_one_sentence_exit_1_and_creates_nothing(row, words, tmp_path, monkeypatch, capsys):
    project = _project(tmp_path / "project")
    env, argv = _split(row)
    monkeypatch.delenv("MEDMLOPS_PROFILE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(project)
    before = _tree(project)
    code = _main(argv)
    _check(code, capsys.readouterr().err, words, before, _tree(project))


def _main(argv: list[str]) -> int:
    """``medmlops ARGV`` in-process; a forwarded command runs its shell's own ``main`` (what the child would)."""
    if argv[:1] == ["pipeline"] and argv[1:2] in (["compile"], ["run"]):
        from pipelines.cli import main as pipelines_main

        return pipelines_main(argv[1:])
    if argv[:2] == ["monitor", "serve"]:
        from monitoring.__main__ import main as monitoring_main

        return monitoring_main(argv[2:])
    return main(argv)


def test_the_console_commands_and_the_shells_keep_the_same_contract(tmp_path):
    def run(i: int, row: str) -> tuple[int, str, set[str], set[str]]:
        project = _project(tmp_path / f"p{i}")
        env, argv = _split(row)
        before = _tree(project)
        base = {k: v for k, v in os.environ.items() if k != "MEDMLOPS_PROFILE"}
        result = subprocess.run([sys.executable, "-m", "medmlops.cli", *argv], cwd=project, capture_output=True,
                                text=True, timeout=120, env={**base, **env})  # fmt: skip
        return result.returncode, result.stderr, before, _tree(project)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(len(PROCESS_ROWS)), [row for row, _ in PROCESS_ROWS]))
    for (row, words), (code, stderr, before, after) in zip(PROCESS_ROWS, results, strict=True):
        try:
            _check(code, stderr, words, before, after)
        except AssertionError as exc:
            raise AssertionError(f"`medmlops {row}`: {exc}") from exc


def test_version_help_defaults_and_the_profile_variable(tmp_path, monkeypatch, capsys):
    from importlib.metadata import version

    monkeypatch.chdir(_project(tmp_path))
    monkeypatch.delenv("MEDMLOPS_PROFILE", raising=False)
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"medmlops {version('medmlops')}"
    assert main(["serve", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 3000)" in text and "(default: champion)" in text and "$MEDMLOPS_PROFILE" in text
    for argv, default in ((["monitor", "serve", "--help"], "(default: 8080)"),
                          (["pipeline", "run", "--help"], "(default: params.yaml)")):  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "medmlops.cli", *argv], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0 and default in " ".join(result.stdout.split()), result.stdout
    # MEDMLOPS_PROFILE: the profile when --profile is not given; --profile wins
    monkeypatch.setenv("MEDMLOPS_PROFILE", "smoke")
    assert main(["config", "show"]) == 0
    assert "profile: smoke" in capsys.readouterr().out
    assert main(["config", "show", "--profile", "paper"]) == 0
    assert "profile: paper" in capsys.readouterr().out
