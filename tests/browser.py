"""Headless Chromium for the page tests: Debian's chromium (``make browser``) driven by Playwright, and the
problems a page reports while a test drives it (console errors and warnings, page errors, failed requests,
HTTP errors)."""

from __future__ import annotations

import os
from typing import Any

CHROMIUM = os.environ.get("MEDMLOPS_CHROMIUM", "/usr/bin/chromium")
# As root and on a closed network Chromium needs these (no sandbox, no background connections to Google).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip


def watch(page: Any) -> list[str]:
    """A list that collects, from now on, every problem ``page`` reports; the test asserts it stays empty."""
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    return problems
