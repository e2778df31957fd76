"""The GPU check (``benchmarks/gpu_check.py``, ``make gpu-check``): its report names every part with figures or a
stated reason, whether the parts ran (the ``--cpu`` dry run), were skipped (budget spent) or could not run (no CUDA).
The figures themselves are never asserted: they are measured on a GPU, once, and recorded in benchmarks/README.md."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]
PART_NAMES = [p[0] for p in gpu_check.PARTS]


def _report(out: Path) -> tuple[dict, str]:
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def _every_part_is_reported(report: dict, markdown: str) -> None:
    assert [p["name"] for p in report["parts"]] == PART_NAMES
    for part in report["parts"]:
        assert part["status"] in ("passed", "failed", "timed out", "skipped", "not run"), part
        assert part["reason"], f"{part['name']}: no figures and no reason"
        assert f"| {part['name']}: " in markdown
    for what, figure in report["summary"].items():
        assert figure and f"| {what} | {figure} |" in markdown  # the same numbers in both files


def test_with_the_budget_spent_every_part_is_skipped_with_a_line_saying_so(tmp_path):
    code = gpu_check.main(["--cpu", "--budget-s", "0", "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    report, markdown = _report(tmp_path)
    assert code == 0 and report["mode"] == "cpu-dry-run"
    _every_part_is_reported(report, markdown)
    assert all(p["status"] == "skipped" and p["reason"].startswith("budget spent") for p in report["parts"])
    assert all(v.startswith("not measured") for v in report["summary"].values())
    assert "skipped: " + ", ".join(PART_NAMES) in report["verdict"]


def test_a_part_whose_packages_are_missing_is_skipped_with_their_names(tmp_path, monkeypatch):
    """The device's python3 lacks most of the lock: such a part is skipped, naming what to carry (DEVELOPERS.md)."""
    monkeypatch.setitem(gpu_check.NEEDS, "bench-training", ["torch", "no_such_package_here"])
    args = ["--cpu", "--parts", "bench-training", "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    assert gpu_check.main(args) == 0
    report, markdown = _report(tmp_path)
    _every_part_is_reported(report, markdown)
    parts = {p["name"]: p for p in report["parts"]}
    assert parts["bench-training"]["status"] == "skipped"
    assert "missing Python package(s) no_such_package_here" in parts["bench-training"]["reason"]
    assert {p["reason"] for n, p in parts.items() if n != "bench-training"} == {"not asked for (--parts)"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_check_fails_at_once_and_says_why(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path), "--work", str(tmp_path / "work")]) == 1
    report, markdown = _report(tmp_path)
    assert report["verdict"].startswith("FAILED: CUDA is not available")
    assert report["machine"]["torch"] and report["machine"]["cuda_available"] is False
    _every_part_is_reported(report, markdown)
    assert "CUDA is not available" in markdown


def test_the_cuda_tests_are_the_files_that_skip_without_cuda_and_not_this_one():
    files = gpu_check.cuda_test_files()
    assert "tests/training/test_cuda.py" in files and "tests/test_gpu_check.py" not in files


def test_a_part_at_its_cap_is_stopped_with_its_children(tmp_path):
    """The cap ends the part's process and what it started in sessions of its own (as serving's servers are)."""
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    start = time.monotonic()
    code, seconds = gpu_check.run_child(
        [sys.executable, "-c", script], log=tmp_path / "part.log", cap_s=3, env=None, cwd=tmp_path
    )
    assert code is None and seconds < 30 and time.monotonic() - start < 30
    assert "stopped at the part's cap of 3 s" in (tmp_path / "part.log").read_text()
    grandchild = Path(f"/proc/{pid_file.read_text()}/stat")

    def gone() -> bool:  # or a zombie: killed, waiting for init to reap it
        try:
            return grandchild.read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, IndexError):
            return True

    deadline = time.monotonic() + 10
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gone(), "the part's grandchild in its own session outlived the cap"


# The parts CI runs: the CUDA-test discovery, the data and the three paper-profile folds (what the check adds on top of
# the benchmark scripts). The benchmarks and serving (~2.5 min more on 2 cores) run with `make gpu-check
# GPU_CHECK_ARGS=--cpu` by hand; `make test` stays within its budget.
CI_PARTS = ["cuda-tests", "data", "train-cxr", "train-ich", "train-covid"]


@pytest.mark.slow  # ~1.5-3 min on 2 busy cores: three `medmlops train` folds of two steps
@pytest.mark.timeout(1800)
def test_the_cpu_dry_run_trains_one_fold_per_family_and_reports_its_figures(tmp_path):
    out = tmp_path / "report"
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--budget-s", "1500", "--out", str(out),
         "--parts", ",".join(CI_PARTS)],
        cwd=REPO, capture_output=True, text=True, timeout=1700,
    )  # fmt: skip
    report, markdown = _report(out)
    _every_part_is_reported(report, markdown)
    lines = [line for line in run.stdout.splitlines() if line.startswith("[gpu-check] ") and "/8 " in line]
    assert len(lines) == len(PART_NAMES), run.stdout  # one console line per part
    parts = {p["name"]: p for p in report["parts"]}
    failed = {n: p["reason"] for n, p in parts.items() if n in CI_PARTS and p["status"] != "passed"}
    assert not failed and run.returncode == 0, (failed, run.stdout[-3000:])
    assert {n for n, p in parts.items() if p["reason"] == "not asked for (--parts)"} == set(PART_NAMES) - set(CI_PARTS)
    assert parts["cuda-tests"]["figures"]["skipped"] >= 3  # collected, and skipped without CUDA
    for family in ("ich", "covid", "cxr"):
        fold = parts[f"train-{family}"]["figures"]
        assert fold["samples_per_s"] > 0 and fold["steps"] == 2 and fold["exit_code"] == 0, fold
        assert "train.pretrained=false" in fold["sets"] and "train.max_steps=2" in fold["sets"]
    for name in CI_PARTS:
        assert (out / parts[name]["log"]).is_file()
