"""The system-reliability table: what was tried against the running platform, and whether it held.

Tests carry ``@pytest.mark.reliability(area, tried, held)``. After a run that included any of them, pytest prints the
table (``make reliability`` runs just those tests); ``--reliability-table PATH`` also writes it as Markdown, the block
kept in the README between ``<!-- reliability:start -->`` and ``<!-- reliability:end -->``
(``tests/test_readme.py`` checks that block lists every marked test, as written here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

AREAS = ("Load", "Faults", "Bad input", "Security")
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"


@dataclass
class Row:
    area: str
    tried: str
    held: str
    test: str
    result: str = "not run"

    def cells(self) -> list[str]:
        return [self.area, self.tried, self.held, self.result, f"`{self.test}`"]


def row_of(item: pytest.Item) -> Row | None:
    marker = item.get_closest_marker("reliability")
    if marker is None:
        return None
    area, tried, held = marker.args
    if area not in AREAS:
        raise pytest.UsageError(f"{item.nodeid}: reliability area {area!r} is not one of {AREAS}")
    name = item.nodeid.split("::")[-1].split("[")[0]
    return Row(area, tried, held, f"{item.nodeid.split('::')[0]}::{name}")


class Table:
    """Rows of the collected marked tests (one per test function: parametrised cases share a row)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def collect(self, items: list[pytest.Item]) -> None:
        for item in items:
            row = row_of(item)
            if row is not None:
                self.rows.setdefault(row.test, row)

    def record(self, item: pytest.Item, report: pytest.TestReport) -> None:
        row = row_of(item)
        if row is None or row.test not in self.rows:
            return
        row = self.rows[row.test]
        if report.failed:
            row.result = "**FAILED**"
        elif report.skipped and row.result != "**FAILED**":
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            row.result = f"skipped ({reason.removeprefix('Skipped: ')})"
        elif report.when == "call" and report.passed and row.result == "not run":
            row.result = "held"

    def markdown(self, with_results: bool = True) -> str:
        header = ["Area", "What was tried", "What must hold", "Result", "Test"]
        rows = sorted(self.rows.values(), key=lambda r: (AREAS.index(r.area), r.test))
        lines = []
        for cells in [header, *[r.cells() for r in rows]]:
            if not with_results:
                cells = cells[:3] + cells[4:]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            if len(lines) == 1:
                lines.append("|" + "---|" * len(cells))
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        held = sum(r.result == "held" for r in self.rows.values())
        return f"{held} of {len(self.rows)} held"


def readme_block(readme: Path) -> str:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise AssertionError(f"{readme}: no {START} ... {END} block")
    return text.split(START, 1)[1].split(END, 1)[0].strip() + "\n"


def without_results(markdown: str) -> str:
    """The table minus its Result column (what the README check compares)."""
    out = []
    for line in markdown.strip().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        out.append(" | ".join(cells[:3] + cells[4:]))
    return "\n".join(out)
