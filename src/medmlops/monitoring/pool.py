"""``medmlops monitor worker``: saliency-tier workers as processes of their own, no HTTP server.

One worker per process (a Python process runs one analysis at a time, and torch uses the cores it is given); N of
them on one machine are children of this command, which forwards SIGTERM and Ctrl-C to them and restarts one that
dies. In a cluster each pod runs ``--workers 1`` and the replicas are the scaling unit. Workers on any number of
machines share the one database through leases (:mod:`medmlops.monitoring.store.queue`).

Stopping (SIGTERM, or Ctrl-C): a worker claims nothing more, finishes the batch in hand, commits it and exits 0;
a second signal ends it at once (exit 130), and its leases expire for another worker to take the records.
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import multiprocessing.connection
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from medmlops.monitoring.store import Store
from medmlops.monitoring.worker import (
    DEFAULT_BACKLOG_BOUND,
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    AnalyserFactory,
    Worker,
    load_factory,
    registry_analyser,
)

log = logging.getLogger(__name__)
RESTART_MIN_S, RESTART_MAX_S = 1.0, 60.0
STOP_GRACE_S = 60.0  # k8s's terminationGracePeriodSeconds for the worker pods: a CPU batch of 8 fits in it


@dataclass(frozen=True)
class WorkerOptions:
    """One worker process's settings (picklable: a child gets them as they are)."""

    db_url: str
    batch_size: int = 8
    lease_s: float = DEFAULT_LEASE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backlog_bound: int | None = DEFAULT_BACKLOG_BOUND
    poll_s: float = 1.0
    nice: int = 0
    analyser_factory: str | None = None
    device: str | None = None
    tracking_uri: str | None = None
    heartbeat: str | None = None
    verbose: bool = False

    def factory(self) -> AnalyserFactory:
        if self.analyser_factory:
            return load_factory(self.analyser_factory)
        return functools.partial(registry_analyser, device=self.device)


def _stop_on_signals(worker: Worker, *, interrupt: bool) -> None:
    """SIGTERM (and SIGINT when ``interrupt``): stop after the batch in hand; a second one: stop now
    (KeyboardInterrupt)."""

    def handler(signum: int, _frame: object) -> None:
        if worker.stopping:
            raise KeyboardInterrupt
        log.info("%s: finishing the batch in hand, then stopping", signal.Signals(signum).name)
        worker.request_stop()

    signal.signal(signal.SIGTERM, handler)
    # A pool's child: Ctrl-C reaches the whole process group, and the pool passes it on as SIGTERM; taking both
    # would count as the second signal that stops a batch half done.
    signal.signal(signal.SIGINT, handler if interrupt else signal.SIG_IGN)


def run_worker(options: WorkerOptions, *, interrupt: bool = True) -> int:
    """One worker in this process, until SIGTERM (or Ctrl-C, when ``interrupt``)."""
    if options.tracking_uri:
        from medmlops.config import RegistryConfig
        from medmlops.registry import tracking

        tracking.configure(RegistryConfig(), uri=options.tracking_uri)
    factory = options.factory()
    store = Store(options.db_url)
    try:
        worker = Worker(
            store, factory=factory, batch_size=options.batch_size, poll_s=options.poll_s, lease_s=options.lease_s,
            max_attempts=options.max_attempts, backlog_bound=options.backlog_bound, nice=options.nice,
            heartbeat=options.heartbeat,
        )  # fmt: skip
        _stop_on_signals(worker, interrupt=interrupt)
        worker.run()
    finally:
        store.close()
    return 0


def _child(options: WorkerOptions) -> None:
    """A worker process's entry point (spawned): the project's error contract, its exit code."""
    from medmlops.commandline import run_command, setup

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until run_worker's handlers: the pool forwards Ctrl-C as SIGTERM
    setup(options.verbose)
    code = run_command(lambda _args: run_worker(options, interrupt=False), argparse.Namespace(), prog="medmlops")
    sys.exit(code)


def run_pool(options: WorkerOptions, workers: int) -> int:
    """``workers`` worker processes until SIGTERM or Ctrl-C (one: this process itself). A child that exits with
    the error contract's 1 (a mistake in the settings, said in one sentence) stops them all; one that dies
    otherwise is restarted, after a delay that doubles while it keeps dying young."""
    if workers == 1:
        return run_worker(options)
    options.factory()  # a wrong --analyser-factory is said once, here, not by every child
    Store(options.db_url).close()  # so is a database that cannot be opened; and the schema exists before N race
    context = multiprocessing.get_context("spawn")  # no fork: a forked SQLAlchemy pool or torch runtime is unsafe
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:
            raise KeyboardInterrupt
        stopping = True
        log.info("%s: stopping %d workers after their batches", signal.Signals(signum).name, len(children))
        for child in children.values():
            if child.is_alive():
                child.terminate()  # SIGTERM: the child finishes its batch

    def launch(slot: int) -> Any:
        child = context.Process(target=_child, args=(options,), name=f"medmlops-worker-{slot}", daemon=False)
        child.start()
        started[slot] = time.monotonic()
        return child

    children: dict[int, Any] = {}
    started: dict[int, float] = {}
    code = 0
    delays = dict.fromkeys(range(workers), RESTART_MIN_S)
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in range(workers):
            children[slot] = launch(slot)
        log.info("%d monitoring workers started (pids %s)", workers, ", ".join(str(c.pid) for c in children.values()))
        while children:
            multiprocessing.connection.wait([c.sentinel for c in children.values()], timeout=1.0)
            for slot, child in list(children.items()):
                if child.is_alive():
                    continue
                del children[slot]
                if stopping:
                    continue
                if child.exitcode == 1:
                    log.error("worker %d stopped on an error (above); stopping the others", slot)
                    stop(signal.SIGTERM, None)
                    code = 1
                    continue
                lived = time.monotonic() - started[slot]
                delays[slot] = RESTART_MIN_S if lived > RESTART_MAX_S else min(delays[slot] * 2, RESTART_MAX_S)
                log.error("worker %d (pid %s) died (exit code %s); restarting it in %.0f s; its leases expire",
                          slot, child.pid, child.exitcode, delays[slot])  # fmt: skip
                time.sleep(delays[slot])
                if not stopping:
                    children[slot] = launch(slot)
    except KeyboardInterrupt:  # a second signal: do not wait for the batches
        for child in children.values():
            child.kill()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children.values():
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
    return code
