"""Fault: a full or read-only disk under the CLI. Real size-limited and read-only tmpfs mounts (``small_disk``), not
mocks: each command stops with one sentence naming the file and the cause, and what was on the disk is kept."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, make_read_only, small_disk

PARAMS = str(REPO / "params.yaml")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``medmlops ARGS --quiet --params <repo params>`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "medmlops.cli", *args, "--quiet", "--params", PARAMS],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _generate(dataset: str, out: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _cli("data", "generate", dataset, "--out", str(out), "--profile", "smoke", cwd=cwd)


def _one_sentence(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medmlops: error: "), done.stderr[-3000:]
    return lines[0]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


@pytest.mark.reliability(
    "Faults",
    "`data generate` on a full disk; `data generate` and `data validate --report` on a read-only disk",
    "one sentence naming the path and the cause; the data on the disk unchanged",
)
def test_a_full_disk_and_a_read_only_disk_are_one_sentence_each_and_keep_the_data(tmp_path):
    with small_disk(tmp_path / "full", "64k") as full:
        sentence = _one_sentence(_generate("ich", full / "ich", tmp_path))
        assert str(full / "ich") in sentence and "No space left on device" in sentence, sentence
        assert sentence.endswith("make room or fix the permissions, then run the command again")

    with small_disk(tmp_path / "ro", "16m") as disk:
        assert _generate("aiforcovid", disk / "aiforcovid", tmp_path).returncode == 0
        before = _digest(disk)
        make_read_only(disk)
        sentence = _one_sentence(_generate("brixia", disk / "brixia", tmp_path))
        assert str(disk / "brixia") in sentence and "Read-only file system" in sentence, sentence
        # Validation reads the read-only data fine; only its report cannot be written there.
        report = disk / "reports" / "aiforcovid.json"
        sentence = _one_sentence(
            _cli("data", "validate", "aiforcovid", str(disk / "aiforcovid"), "--report", str(report), cwd=tmp_path)
        )
        assert "Read-only file system" in sentence and str(disk / "reports") in sentence, sentence
        assert _digest(disk) == before
