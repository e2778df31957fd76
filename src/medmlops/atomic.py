"""Atomic file writes: a reader in another process sees the old file or the new one, never a partial one.

Kubeflow's local runner trains folds in parallel processes that each re-plan their experiment (manifest, splits,
resolved params); a plain ``to_csv`` truncates the file first, and a fold reading it at that moment got an empty
CSV (``EmptyDataError``, seen in CI). The same holds for steps sharing a data volume on a cluster.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path`` (one ``rename(2)``);
    on an error the old file is left as it was and the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
