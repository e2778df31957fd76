"""The fake logit-tier source (:mod:`.fake_analyser`) with an alias history attached, as
:func:`medmlops.monitoring.trends.alias_source` looks for it: ``$FAKE_ALIASES`` holds the JSON
``{"events": [{"version", "alias", "at"}], "current": {alias: version}}`` a registry would give."""

from __future__ import annotations

import json
import os
from typing import Any

from .fake_analyser import calibration_source as _calibration_source


def calibration_source(family: str, version: str) -> Any:
    return _calibration_source(family, version)


def alias_history(family: str) -> dict[str, Any]:
    if family == "missing":
        raise RuntimeError("registry down")
    return json.loads(os.environ.get("FAKE_ALIASES") or '{"events": [], "current": {}}')


calibration_source.alias_history = alias_history  # type: ignore[attr-defined]
