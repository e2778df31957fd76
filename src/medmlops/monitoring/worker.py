"""The saliency tier's worker: claimed records → INFORMER results, with the model version that made each prediction.

A worker claims a batch of pending records of one (family, version) under a lease (:meth:`Store.claim`), runs that
version's :class:`~medmlops.informer.analyser.Analyser` over the uploads in one call, and writes every result with
its ``done`` status in one transaction (:meth:`Store.finish`), which succeeds only while it still holds the
lease. While a batch is analysed a helper thread renews its leases (every third of the lease), so a slow batch is
not taken from a live worker; a worker that dies stops renewing and its records are claimed by another once the
lease expires. Any number of workers (threads in ``medmlops monitor serve``, processes of ``medmlops monitor
worker``, pods) share one database without analysing a record twice, barring a lease lost mid-batch.

Failures are bounded: every claim counts an attempt, and a record that has had ``max_attempts`` is marked
``failed`` with its last error, never left pending forever.
    - an upload the model cannot take (the analyser returns an exception in its slot, e.g. ``InputError``): that
      record becomes ``failed`` at once;
    - the model version cannot be loaded (deleted, never registered, MLflow down): its records are given back with
      a retry delay shared by every worker (doubling per attempt, ``min_backoff_s`` to ``max_backoff_s``); other
      versions go on;
    - the analyser raises on a batch: the records are retried one by one; one that keeps raising is given back
      with a retry delay, and fails after ``max_attempts``;
    - the worker dies mid-batch (killed, out of memory): the lease expires and another claim counts the attempt.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from medmlops.errors import UserError
from medmlops.monitoring.store import PendingRecord, Store

log = logging.getLogger(__name__)
HEARTBEAT_ENV = "MEDMLOPS_WORKER_HEARTBEAT"
# Renewed every third while a batch runs, so a lease need only outlast a missed renewal or two; it is also how long
# a dead worker's records wait for another.
DEFAULT_LEASE_S = 60.0
# A batch held longer than this (a call that never returns) stops renewing and its heartbeat goes stale: its records
# go to another worker and the liveness probe restarts this one. A CPU batch of 8 takes a minute or two.
DEFAULT_MAX_HOLD_S = 900.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKLOG_BOUND = 1000


class AnalyserLike(Protocol):
    def analyse_bytes(self, uploads: Sequence[bytes]) -> list[dict[str, Any] | BaseException]: ...


AnalyserFactory = Callable[[str, str], AnalyserLike]
BatchHook = Callable[[str, str, float, int, int], None]


def registry_analyser(family: str, version: str, device: str | None = None) -> AnalyserLike:
    """The default factory: ``models:/family/version`` with its INFORMER calibration (MLflow as configured)."""
    from medmlops.informer.analyser import Analyser

    return Analyser.from_registry(family, version, device=device)


def load_callable(spec: str, option: str) -> Callable[..., Any]:
    """``"package.module:attribute.path"`` → that callable; UserError naming ``option`` otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UserError(f"{option} '{spec}' must look like package.module:callable")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{option} '{spec}' cannot be imported ({exc})") from exc
    if not callable(target):
        raise UserError(f"{option} '{spec}' is not callable")
    return target


def load_factory(spec: str) -> AnalyserFactory:
    """``--analyser-factory MODULE:CALLABLE``: ``(family, version) -> analyser``."""
    return load_callable(spec, "--analyser-factory")


def worker_name() -> str:
    """A lease owner no other worker has: host, process and a random suffix (a restarted process is another)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class AnalyserCache:
    """The few most recently used analysers, one per (family, version); the factory is called on a miss."""

    def __init__(self, factory: AnalyserFactory, size: int = 4) -> None:
        self.factory, self.size = factory, max(1, size)
        self._cache: OrderedDict[tuple[str, str], AnalyserLike] = OrderedDict()

    def get(self, family: str, version: str) -> AnalyserLike:
        key = (family, version)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        analyser = self.factory(family, version)
        self._cache[key] = analyser
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return analyser

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._cache


def _error_text(exc: BaseException) -> str:
    error, detail = getattr(exc, "error", None), getattr(exc, "detail", None)
    if error and detail:
        return f"{error}: {detail}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _LeaseKeeper:
    """Renews a batch's leases from a helper thread while the batch is analysed (the analyser holds the worker's
    thread in one call), and beats the heartbeat. It gives up after ``max_hold_s``: a call that never returns
    then loses its records to another worker instead of holding them forever."""

    def __init__(self, worker: Worker, request_ids: list[str]) -> None:
        self.worker, self.ids = worker, request_ids
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="medmlops-lease", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self) -> None:
        worker, started = self.worker, time.monotonic()
        while not self._done.wait(worker.lease_s / 3):
            if time.monotonic() - started > worker.max_hold_s:
                log.error("a batch has been analysed for %.0f s: its leases are left to expire", worker.max_hold_s)
                return
            try:
                held = worker.store.renew(worker.owner, self.ids, worker.lease_s, now=worker.clock())
            except Exception:  # noqa: BLE001 - the database blinked: the next renewal may succeed
                log.exception("renewing the leases of %d records failed", len(self.ids))
                continue
            worker.beat()
            if held < len(self.ids):
                log.warning("%d of %d leases were lost mid-batch; those results will be dropped",
                            len(self.ids) - held, len(self.ids))  # fmt: skip


class Worker:
    """Processes pending records in a background thread (``start``/``stop``), in the calling thread (``run`` until
    ``request_stop``), or one batch per ``run_once`` call.

    Args:
        store: the record store.
        factory: ``(family, version) -> analyser``; default :func:`registry_analyser`.
        batch_size: at most this many records per claim and analyser call.
        poll_s: how often to look for records when not woken by :meth:`wake`.
        lease_s: how long a claim holds its records without a renewal (renewed every ``lease_s / 3``).
        max_attempts: claims of a record before it is marked failed.
        min_backoff_s, max_backoff_s: the retry delay of a record after a failed attempt (doubling per attempt).
        backlog_bound: more pending records than this: claim by stratum (flagged, sample, rest); None: always oldest
            first.
        cache_size: analysers kept loaded.
        on_batch: called after each committed batch with (family, version, seconds, n_done, n_failed).
        clock: Unix seconds, for leases and retry delays (tests pass their own); every worker's clock should agree
            within a small part of ``lease_s`` (NTP).
        nice: added to the worker thread's CPU niceness on Linux (0: unchanged). INFORMER costs several forward
            passes per record and can wait; on a node it shares with serving, request latency comes first.
            Torch's intra-op threads started from this thread inherit it.
        owner: the lease owner name (default: :func:`worker_name`).
        heartbeat: a file touched on every poll and lease renewal (liveness probes read its age).
        max_hold_s: renewals (and heartbeats) stop after this long on one batch.
    """

    def __init__(
        self, store: Store, *, factory: AnalyserFactory | None = None, batch_size: int = 8, poll_s: float = 1.0,
        lease_s: float = DEFAULT_LEASE_S, max_attempts: int = DEFAULT_MAX_ATTEMPTS, min_backoff_s: float = 1.0,
        max_backoff_s: float = 300.0, backlog_bound: int | None = DEFAULT_BACKLOG_BOUND, cache_size: int = 4,
        on_batch: BatchHook | None = None, clock: Callable[[], float] = time.time, nice: int = 0,
        owner: str | None = None, heartbeat: str | Path | None = None, max_hold_s: float = DEFAULT_MAX_HOLD_S,
    ) -> None:  # fmt: skip
        if batch_size < 1:
            raise UserError(f"--batch-size {batch_size} must be at least 1")
        if not lease_s > 0.3:
            raise UserError(f"--lease-s {lease_s} must be more than 0.3 seconds")
        if max_attempts < 1:
            raise UserError(f"--max-attempts {max_attempts} must be at least 1")
        self.store = store
        self.analysers = AnalyserCache(factory or registry_analyser, cache_size)
        self.batch_size, self.poll_s, self.lease_s, self.max_attempts = batch_size, poll_s, lease_s, max_attempts
        self.min_backoff_s, self.max_backoff_s, self.backlog_bound = min_backoff_s, max_backoff_s, backlog_bound
        self.on_batch, self.clock, self.nice, self.max_hold_s = on_batch, clock, nice, max_hold_s
        self.owner = owner or worker_name()
        self.heartbeat = Path(heartbeat) if heartbeat else None
        self._unloadable: dict[tuple[str, str], tuple[float, str]] = {}  # pair → (retry load after, error)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0
        self.failed = 0

    # -- thread -------------------------------------------------------------------------------------------------------

    def start(self) -> Worker:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="medmlops-monitor-worker", daemon=True)
            self._thread.start()
        return self

    def request_stop(self) -> None:
        """Claim nothing more; the batch in hand is finished (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Finish the batch in hand (its results are committed) and end the thread; False if it did not end in time
        (its leases then expire and another worker takes the records)."""
        self.request_stop()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def wake(self) -> None:
        """New records are in: look now rather than at the next poll."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def beat(self) -> None:
        """Touch the heartbeat file (when there is one): this worker is alive and not stuck."""
        if self.heartbeat is None:
            return
        try:
            self.heartbeat.touch()
            os.utime(self.heartbeat)
        except OSError as exc:
            log.warning("cannot touch the heartbeat file %s (%s)", self.heartbeat, exc)

    def _lower_priority(self) -> None:
        if self.nice <= 0 or not hasattr(os, "setpriority"):
            return
        tid = threading.get_native_id()  # Linux: niceness is per thread, and setpriority takes a thread id
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError as exc:
            log.warning("monitoring worker: cannot lower its CPU priority (%s)", exc)

    def run(self) -> None:
        """Claim and analyse batches in the calling thread until :meth:`request_stop`."""
        self._lower_priority()
        pause = self.min_backoff_s
        log.info("monitoring worker %s started (%d records pending)", self.owner, self._pending_or_zero())
        while not self._stop.is_set():
            try:
                moved = self.run_once()
                pause = self.min_backoff_s
            except Exception:  # noqa: BLE001 - the database went away: keep the service up, try again
                log.exception("monitoring worker: the store failed; retrying in %.0f s", pause)
                self.beat()  # alive and retrying: not a stuck call
                self._stop.wait(pause)
                pause = min(max(pause, 0.1) * 2, self.max_backoff_s)
                continue
            if moved == 0 and not self._stop.is_set():
                self._wake.wait(self.poll_s)
                self._wake.clear()
        log.info("monitoring worker %s stopped", self.owner)

    def _pending_or_zero(self) -> int:
        try:
            return self.store.pending_count()
        except Exception:  # noqa: BLE001 - only for the log line
            return 0

    # -- one batch ----------------------------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim one batch and process it; 0 when there was nothing to claim, else at least 1."""
        self.beat()
        batch = self.store.claim(
            self.owner, self.batch_size, lease_s=self.lease_s, now=self.clock(), backlog_bound=self.backlog_bound,
            max_attempts=self.max_attempts,
        )  # fmt: skip
        if not batch:
            return 0
        family, version = batch[0].family, batch[0].version
        try:
            analyser = self._analyser(family, version)
        except Exception as exc:  # noqa: BLE001 - any load failure: give the records back with a delay, go on
            message = f"model {family} version {version} cannot be loaded ({_error_text(exc)})"
            log.error("%s; its %d claimed records wait", message, len(batch))
            self._retry_or_fail({record.request_id: (record, message) for record in batch})
            return 1
        started = time.perf_counter()
        with _LeaseKeeper(self, [record.request_id for record in batch]):
            done, failed, retry = self._analyse(analyser, batch)
        failed.update(self._retry_or_fail(retry, commit=False))
        moved = self.store.finish(self.owner, done, failed)
        seconds = time.perf_counter() - started
        self.processed += len(done)
        self.failed += len(failed)
        if failed:
            log.warning("%s version %s: %d records failed: %s", family, version, len(failed),
                        "; ".join(f"{k} ({v})" for k, v in list(failed.items())[:3]))  # fmt: skip
        if moved < len(done) + len(failed):
            log.warning(
                "%d results dropped: their leases had passed to another worker", len(done) + len(failed) - moved
            )
        if self.on_batch is not None:
            self.on_batch(family, version, seconds, len(done), len(failed))
        return max(moved, 1)  # a batch that only gave records back still did work: look again at once

    def _analyser(self, family: str, version: str) -> AnalyserLike:
        """The version's analyser; a version that just failed to load fails again at once for ``min_backoff_s``
        (every batch of its records would otherwise ask the registry again)."""
        key = (family, version)
        if key in self.analysers:
            return self.analysers.get(family, version)
        until, error = self._unloadable.get(key, (0.0, ""))
        if self.clock() < until:
            raise RuntimeError(error)
        try:
            analyser = self.analysers.get(family, version)
        except Exception as exc:
            self._unloadable[key] = (self.clock() + self.min_backoff_s, _error_text(exc))
            raise
        self._unloadable.pop(key, None)
        return analyser

    def retry_delay(self, attempts: int) -> float:
        """Seconds before a record is claimable again after its ``attempts``-th attempt failed."""
        return min(self.max_backoff_s, self.min_backoff_s * 2 ** max(0, attempts - 1))

    def _retry_or_fail(self, retry: dict[str, tuple[PendingRecord, str]], *, commit: bool = True) -> dict[str, str]:
        """Records whose attempt failed: those out of attempts as failures (committed here when ``commit``, else
        returned for the caller's commit), the others given back with their retry delay."""
        failed = {
            request_id: f"{message}; gave up after {record.attempts} attempts"
            for request_id, (record, message) in retry.items()
            if record.attempts >= self.max_attempts
        }
        now = self.clock()
        later = {
            request_id: (now + self.retry_delay(record.attempts), message)
            for request_id, (record, message) in retry.items()
            if request_id not in failed
        }
        self.store.release(self.owner, later)
        if commit and failed:
            self.store.finish(self.owner, failed=failed)
            self.failed += len(failed)
        return failed

    def _analyse(
        self, analyser: AnalyserLike, batch: list[PendingRecord]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, tuple[PendingRecord, str]]]:
        """(results, failures, records to retry with their error)."""
        done: dict[str, dict[str, Any]] = {}
        failed: dict[str, str] = {}
        retry: dict[str, tuple[PendingRecord, str]] = {}
        try:
            outputs = analyser.analyse_bytes([r.upload for r in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"the analyser returned {len(outputs)} results for {len(batch)} uploads")
            pairs = list(zip(batch, outputs, strict=True))
        except Exception:  # noqa: BLE001 - find the record at fault: one at a time
            log.exception("analysing a batch of %d %s records failed; retrying them one by one", len(batch),
                          batch[0].family)  # fmt: skip
            pairs = []
            for record in batch:
                try:
                    (output,) = analyser.analyse_bytes([record.upload])
                except Exception as exc:  # noqa: BLE001 - this record makes the analyser raise
                    retry[record.request_id] = (record, f"analysis failed: {_error_text(exc)}")
                    continue
                pairs.append((record, output))
        for record, output in pairs:
            if isinstance(output, BaseException):
                failed[record.request_id] = _error_text(output)
            elif isinstance(output, dict):
                done[record.request_id] = output
            else:
                failed[record.request_id] = f"the analyser returned {type(output).__name__}, not a result"
        return done, failed, retry
