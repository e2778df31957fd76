"""Deliver prediction records to the monitoring service off the request path, durably and exactly once per id.

``submit`` writes the record to a spool directory (atomic rename) before it returns; a background thread POSTs
spooled records to ``{url}/records`` in arrival order and deletes each only after a 2xx (a 409 "already have it"
counts as delivered, so delivery is idempotent by ``request_id``). While monitoring is unreachable the records stay
on disk and the thread retries with exponential backoff (capped); a restarted server picks the spool up again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from medmlops.errors import UserError
from medmlops.inference.record import PredictionRecord

log = logging.getLogger(__name__)
DEFAULT_SPOOL_DIR = ".medmlops/spool"  # one folder per family below it


class SpoolError(UserError, OSError):
    """The spool cannot take a record (full disk, read-only directory): the caller must not pretend it was kept."""


class Forwarder:
    def __init__(
        self, url: str, spool_dir: str | Path, *, token: str | None = None, timeout_s: float = 5.0,
        min_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
    ) -> None:  # fmt: skip
        self.url = url.rstrip("/") + "/records"
        self.spool = Path(spool_dir)
        self.token = token
        self.timeout_s, self.min_backoff_s, self.max_backoff_s = timeout_s, min_backoff_s, max_backoff_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        try:
            self.spool.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"monitoring spool {self.spool} cannot be created ({exc.strerror or exc})") from exc

    def submit(self, record: PredictionRecord) -> Path:
        """Keep ``record`` on disk (durable once this returns) and wake the sender; SpoolError if it cannot.

        The file is named after the request id, which the record's rule keeps to characters safe in a file name.
        """
        target = self.spool / f"{time.time_ns():020d}-{record.request_id}.json"
        tmp = self.spool / f".{record.request_id}.tmp"
        try:
            with tmp.open("w", encoding="utf-8") as f:
                json.dump(record.to_json(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):  # the folder itself may be what failed: the cause below matters
                tmp.unlink(missing_ok=True)
            raise SpoolError(f"monitoring spool {self.spool} cannot keep the record ({exc.strerror or exc})") from exc
        self._wake.set()
        return target

    def pending(self) -> list[Path]:
        return sorted(self.spool.glob("*.json"))

    def start(self) -> Forwarder:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="medmlops-forwarder", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _send(self, path: Path) -> bool:
        body = path.read_bytes()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return 200 <= response.status < 300
        except urllib.error.HTTPError as err:
            if err.code == 409:  # monitoring already has this request id
                return True
            if 400 <= err.code < 500 and err.code not in (408, 429):
                log.error("monitoring refused record %s (%s); kept in %s/rejected", path.name, err.code, self.spool)
                rejected = self.spool / "rejected"
                rejected.mkdir(exist_ok=True)
                os.replace(path, rejected / path.name)
                return False
            return False
        except OSError:
            return False

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._stop.is_set():
            batch = self.pending()
            failed = False
            for path in batch:
                if self._stop.is_set():
                    return
                if not path.exists():
                    continue
                if self._send(path):
                    path.unlink(missing_ok=True)
                    self.delivered += 1
                elif path.exists():
                    failed = True
                    break
            if failed:  # monitoring down: wait out the backoff (new records do not shorten it)
                if self._stop.wait(backoff):
                    return
                self._wake.clear()
                backoff = min(backoff * 2, self.max_backoff_s)
            else:
                backoff = self.min_backoff_s
                self._wake.wait(1.0)
                self._wake.clear()
