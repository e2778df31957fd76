"""Deliver prediction records to the monitoring service off the request path, durably and stored once per id.

``submit`` writes the record to a spool directory (a temporary file of its own, then an atomic rename) before it
returns; a background thread POSTs spooled records to ``{url}/records`` in arrival order and deletes each only after
a 2xx (a 409 "already have it" counts as delivered: record ids are unique per prediction, so a 409 is a redelivery).
While monitoring is unreachable the records stay on disk and the thread retries with jittered exponential backoff
(bounded), so replicas that lost monitoring together do not retry in step; a restarted server picks the spool up
again. On shutdown, :meth:`Forwarder.stop` first tries for a bounded grace period to deliver what is spooled and
leaves the rest on disk.

The spool holds patients' uploads: its folders are owner-only (0700) and so are its files (0600).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from medmlops.errors import UserError
from medmlops.inference.record import PredictionRecord

log = logging.getLogger(__name__)
DEFAULT_SPOOL_DIR = ".medmlops/spool"  # one folder per family below it
# Below Kubernetes' default terminationGracePeriodSeconds (30 s): BentoML still has to stop its workers afterwards.
DEFAULT_DRAIN_S = 20.0
FOLDER_MODE, FILE_MODE = 0o700, 0o600


class SpoolError(UserError, OSError):
    """The spool cannot take a record (full disk, read-only directory): the caller must not pretend it was kept."""


def private_folder(path: Path) -> Path:
    """``path`` as an owner-only folder: created with its missing parents (each 0700), or made 0700 if it exists."""
    missing = [folder for folder in (path, *path.parents) if not folder.is_dir()]
    for folder in reversed(missing):
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
        folder.chmod(FOLDER_MODE)  # mkdir's mode passes through the umask
    if not missing:
        path.chmod(FOLDER_MODE)  # a spool an older version made world-readable
    return path


def prepare_spool(spool_dir: str | Path) -> Path:
    """The spool folder, owner-only and writable; SpoolError naming the path and the fix when it cannot be.

    ``medmlops serve`` calls it before starting the server: a spool that fails here would make the server's worker
    fail at start, and BentoML restarts it forever while the port is open but nothing answers.
    """
    spool = Path(spool_dir)
    blocker = next((p for p in (spool, *spool.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:  # mkdir would only say "Not a directory" or "File exists"
        raise SpoolError(
            f"the monitoring spool {spool} cannot be created because {blocker} is a file, not a folder; move that "
            "file away or choose another spool folder (--spool-dir)"
        )
    try:
        private_folder(spool)
        fd, probe = tempfile.mkstemp(dir=spool, prefix=".probe.", suffix=".tmp")  # writable, not just present
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SpoolError(
            f"the monitoring spool {spool} cannot be used ({exc.strerror or exc}); fix its permissions or choose "
            "another spool folder (--spool-dir)"
        ) from exc
    return spool


def next_backoff(previous_s: float, low_s: float, high_s: float, rng: random.Random) -> float:
    """The wait before the next retry: "decorrelated jitter", a random draw between ``low_s`` and three times the
    previous wait, capped at ``high_s``. Exponential on average, yet two replicas that failed at the same moment
    retry at different ones; always within [low_s, high_s]."""
    high_s = max(high_s, low_s)
    return min(high_s, rng.uniform(low_s, max(previous_s, low_s) * 3))


class Forwarder:
    """The spool of one family and the thread that delivers it.

    Args:
        url: the monitoring service (``/records`` is appended).
        spool_dir: created owner-only when missing (SpoolError when it cannot be).
        token: sent as ``Authorization: Bearer``.
        timeout_s: one POST's limit.
        min_backoff_s, max_backoff_s: the bounds of the jittered wait between retries while monitoring is down.
        rng: the jitter's source (seed it in tests); each process draws its own by default.
    """

    def __init__(
        self, url: str, spool_dir: str | Path, *, token: str | None = None, timeout_s: float = 5.0,
        min_backoff_s: float = 0.5, max_backoff_s: float = 30.0, rng: random.Random | None = None,
    ) -> None:  # fmt: skip
        self.url = url.rstrip("/") + "/records"
        self.token = token
        self.timeout_s, self.min_backoff_s, self.max_backoff_s = timeout_s, min_backoff_s, max_backoff_s
        self.rng = rng or random.Random()
        self._wake = threading.Event()  # a record was spooled, or stop() was called
        self._closing = threading.Event()  # stop() was called: deliver until _deadline, then end
        self._deadline = math.inf
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.spool = prepare_spool(spool_dir)

    def submit(self, record: PredictionRecord) -> Path:
        """Keep ``record`` on disk (durable once this returns) and wake the sender; SpoolError if it cannot.

        The file is named after the request id, which the record's rule keeps to characters safe in a file name.
        """
        target = self.spool / f"{time.time_ns():020d}-{record.request_id}.json"
        tmp = None
        try:
            # A new temporary name per write, so concurrent writers never share one, created 0600 (mkstemp).
            fd, tmp = tempfile.mkstemp(dir=self.spool, prefix=f".{record.request_id}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record.to_json(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):  # the folder itself may be what failed: the cause below matters
                    os.unlink(tmp)
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

    def stop(self, grace_s: float = 0.0) -> int:
        """Stop the sender, after it has tried for at most ``grace_s`` seconds to deliver what is spooled (serving's
        shutdown); returns how many records are left in the spool for the next start.

        Returns within ``max(grace_s, 1)`` seconds: a POST still in flight then may outlive the call, but its record
        is deleted only after a 2xx, so a process that exits meanwhile loses nothing (monitoring answers 409 to it
        next time if it did arrive).
        """
        self._deadline = time.monotonic() + max(grace_s, 0.0)
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(grace_s, 1.0))
        return len(self.pending())

    def _time_left(self) -> float:
        return self._deadline - time.monotonic()

    def _out_of_time(self) -> bool:
        return self._closing.is_set() and self._time_left() <= 0

    def _send(self, path: Path) -> bool:
        body = path.read_bytes()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        timeout = min(self.timeout_s, max(self._time_left(), 0.1))  # a drain's send ends with its grace period
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return 200 <= response.status < 300
        except urllib.error.HTTPError as err:
            if err.code == 409:  # monitoring already has this request id
                return True
            if 400 <= err.code < 500 and err.code not in (408, 429):
                log.error("monitoring refused record %s (%s); kept in %s/rejected", path.name, err.code, self.spool)
                rejected = private_folder(self.spool / "rejected")
                os.replace(path, rejected / path.name)
                return False
            return False
        except OSError:
            return False

    def _deliver_spooled(self) -> bool:
        """Send the spool in order; True when all of it was taken, False at the first record monitoring did not take
        (or when the grace period of a stop ran out)."""
        for path in self.pending():
            if self._out_of_time():
                return False
            try:
                delivered = self._send(path)
            except FileNotFoundError:  # another sender on the same spool (a second worker) took it meanwhile
                continue
            if delivered:
                path.unlink(missing_ok=True)
                self.delivered += 1
            elif path.exists():  # not moved to rejected/: monitoring is down or busy
                return False
        return True

    def _run(self) -> None:
        backoff = self.min_backoff_s
        while not self._out_of_time():
            self._wake.clear()  # before reading the spool: a record spooled from here on wakes the next wait
            if self._deliver_spooled():
                if self._closing.is_set():
                    return  # drained
                backoff = self.min_backoff_s
                self._wake.wait(1.0)
                continue
            # Monitoring is down: wait out a jittered backoff. New records do not shorten it (under load they would
            # turn it into a busy loop); a stop does once, so the drain tries at once, and its deadline bounds it.
            backoff = next_backoff(backoff, self.min_backoff_s, self.max_backoff_s, self.rng)
            if not self._closing.is_set():
                if self._closing.wait(backoff):
                    backoff = self.min_backoff_s  # a short grace period: retry often, not after the last long wait
            elif self._time_left() > 0:
                time.sleep(min(backoff, self._time_left()))
