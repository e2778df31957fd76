"""The processing worker: pending records → INFORMER results, with the model version that made each prediction.

One background thread per service takes a batch of pending records of one (family, version), runs that version's
:class:`~medmlops.informer.analyser.Analyser` over the uploads in one call, and writes every result with its
``done`` status in one transaction (:meth:`Store.finish`). Nothing is marked while a batch is analysed, so a process
killed mid-batch leaves its records pending for the next start; a record already done is never selected again and
cannot get a second result. Two workers on one database (two replicas) may analyse the same record at the same
time, but only one commit moves it out of pending; the other's result is dropped.

Failures:
    - an upload the model cannot take (the analyser returns an exception in its slot, e.g. ``InputError``): that
      record becomes ``failed`` with the error;
    - the model version cannot be loaded (MLflow down, version deleted): its records stay pending and that
      (family, version) is retried after an exponential backoff; other versions go on;
    - the analyser raises on a batch: the records are retried one by one; one that keeps raising becomes ``failed``
      after ``max_attempts`` tries.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from medmlops.monitoring.store import PendingRecord, Store

log = logging.getLogger(__name__)


class AnalyserLike(Protocol):
    def analyse_bytes(self, uploads: Sequence[bytes]) -> list[dict[str, Any] | BaseException]: ...


AnalyserFactory = Callable[[str, str], AnalyserLike]
BatchHook = Callable[[str, str, float, int, int], None]


def registry_analyser(family: str, version: str) -> AnalyserLike:
    """The default factory: ``models:/family/version`` with its INFORMER calibration (MLflow from the environment)."""
    from medmlops.informer.analyser import Analyser

    return Analyser.from_registry(family, version)


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


class Worker:
    """Processes pending records in a background thread (``start``/``stop``), or one batch per ``run_once`` call.

    Args:
        store: the record store.
        factory: ``(family, version) -> analyser``; default :func:`registry_analyser`.
        batch_size: at most this many records per analyser call.
        poll_s: how often to look for records when not woken by :meth:`wake`.
        min_backoff_s, max_backoff_s: retry delays of a (family, version) whose model cannot be loaded.
        max_attempts: tries of a record the analyser raises on before it is marked failed.
        cache_size: analysers kept loaded.
        on_batch: called after each committed batch with (family, version, seconds, n_done, n_failed).
        clock: monotonic seconds, for the backoff (tests pass their own).
        nice: added to the worker thread's CPU niceness on Linux (0: unchanged). INFORMER costs several forward
            passes per record and can wait; on a node it shares with serving, request latency comes first.
            Torch's intra-op threads started from this thread inherit it.
    """

    def __init__(
        self, store: Store, *, factory: AnalyserFactory | None = None, batch_size: int = 8, poll_s: float = 1.0,
        min_backoff_s: float = 1.0, max_backoff_s: float = 300.0, max_attempts: int = 5, cache_size: int = 4,
        on_batch: BatchHook | None = None, clock: Callable[[], float] = time.monotonic, nice: int = 0,
    ) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.store = store
        self.analysers = AnalyserCache(factory or registry_analyser, cache_size)
        self.batch_size, self.poll_s, self.max_attempts = batch_size, poll_s, max_attempts
        self.min_backoff_s, self.max_backoff_s = min_backoff_s, max_backoff_s
        self.on_batch, self.clock, self.nice = on_batch, clock, nice
        self._backoff: dict[tuple[str, str], tuple[float, float]] = {}  # pair → (retry at, current delay)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0
        self.failed = 0

    # -- thread -------------------------------------------------------------------------------------------------------

    def start(self) -> Worker:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="medmlops-monitor-worker", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Finish the batch in hand (its results are committed) and end the thread; False if it did not end in time."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def wake(self) -> None:
        """New records are in: look now rather than at the next poll."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _lower_priority(self) -> None:
        if self.nice <= 0 or not hasattr(os, "setpriority"):
            return
        tid = threading.get_native_id()  # Linux: niceness is per thread, and setpriority takes a thread id
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError as exc:
            log.warning("monitoring worker: cannot lower its CPU priority (%s)", exc)

    def _run(self) -> None:
        self._lower_priority()
        pause = self.min_backoff_s
        log.info("monitoring worker started (%d records pending)", self._pending_or_zero())
        while not self._stop.is_set():
            try:
                moved = self.run_once()
                pause = self.min_backoff_s
            except Exception:  # noqa: BLE001 - the database went away: keep the service up, try again
                log.exception("monitoring worker: the store failed; retrying in %.0f s", pause)
                self._stop.wait(pause)
                pause = min(pause * 2, self.max_backoff_s)
                continue
            if moved == 0 and not self._stop.is_set():
                self._wake.wait(self._idle_wait())
                self._wake.clear()
        log.info("monitoring worker stopped")

    def _pending_or_zero(self) -> int:
        try:
            return self.store.pending_count()
        except Exception:  # noqa: BLE001 - only for the log line
            return 0

    def _idle_wait(self) -> float:
        if not self._backoff:
            return self.poll_s
        soonest = min(at for at, _delay in self._backoff.values()) - self.clock()
        return max(0.05, min(self.poll_s, soonest))

    # -- one batch ----------------------------------------------------------------------------------------------------

    def _skipped(self) -> set[tuple[str, str]]:
        now = self.clock()
        return {pair for pair, (at, _delay) in self._backoff.items() if at > now}

    def run_once(self) -> int:
        """Take one batch and process it; 0 when there was nothing to do (or its model could not be loaded, which
        backs that (family, version) off), else at least 1: the records moved out of pending."""
        batch = self.store.next_batch(self.batch_size, skip=self._skipped())
        if not batch:
            return 0
        family, version = batch[0].family, batch[0].version
        try:
            analyser = self.analysers.get(family, version)
        except Exception as exc:  # noqa: BLE001 - any load failure: keep the records, back off, keep serving
            self._back_off(family, version, batch, exc)
            return 0
        self._backoff.pop((family, version), None)
        started = time.perf_counter()
        done, failed = self._analyse(analyser, batch)
        moved = self.store.finish(done, failed)
        seconds = time.perf_counter() - started
        self.processed += len(done)
        self.failed += len(failed)
        if failed:
            log.warning("%s version %s: %d records failed: %s", family, version, len(failed),
                        "; ".join(f"{k} ({v})" for k, v in list(failed.items())[:3]))  # fmt: skip
        if self.on_batch is not None:
            self.on_batch(family, version, seconds, len(done), len(failed))
        return max(moved, 1)  # a batch that only counted retries still did work: look again at once

    def _back_off(self, family: str, version: str, batch: list[PendingRecord], exc: BaseException) -> None:
        _at, delay = self._backoff.get((family, version), (0.0, self.min_backoff_s / 2))
        delay = min(max(delay * 2, self.min_backoff_s), self.max_backoff_s)
        self._backoff[(family, version)] = (self.clock() + delay, delay)
        message = f"model {family} version {version} cannot be loaded ({_error_text(exc)})"
        log.error("%s; its pending records wait, next try in %.0f s", message, delay)
        self.store.note_retry([r.request_id for r in batch], message)

    def _analyse(
        self, analyser: AnalyserLike, batch: list[PendingRecord]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        done: dict[str, dict[str, Any]] = {}
        failed: dict[str, str] = {}
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
                    if record.attempts + 1 >= self.max_attempts:
                        failed[record.request_id] = f"analysis failed {self.max_attempts} times: {_error_text(exc)}"
                    else:
                        self.store.note_retry([record.request_id], f"analysis failed: {_error_text(exc)}")
                    continue
                pairs.append((record, output))
        for record, output in pairs:
            if isinstance(output, BaseException):
                failed[record.request_id] = _error_text(output)
            elif isinstance(output, dict):
                done[record.request_id] = output
            else:
                failed[record.request_id] = f"the analyser returned {type(output).__name__}, not a result"
        return done, failed
