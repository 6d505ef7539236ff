"""Is every scoring process alive and making progress? Shared by all processes of a server.

The scoring processes are the inference workers in queued mode, and the API servers (uvicorn
processes, each with its own model) in direct mode (serve/direct.py); below, "worker" is either.

LitServe 0.2.19 answers /health from its workers' setup status alone, so a worker that dies or
hangs after setup leaves /health at 200 while every request waits for an answer that never
comes. Here:

- each worker, once it has loaded its model, beats (a daemon thread writes the time
  every `BEAT_EVERY_S`) and marks when it starts and ends scoring a batch;
- the server's main process watches the worker processes (their exit is seen at once) and
  the beats: a worker that exited, stopped beating or spent more than `stall_timeout`
  seconds on one batch makes it mark the server failed, kill a stuck worker, and shut the
  server down, so that `evergreen serve` exits with code 1 and an orchestrator restarts it;
- the API servers answer /health 503 as soon as the server is failed or any beat is stale,
  and answer 503 to every request still waiting for a worker (`fail_waiting_requests`).

The values live in shared memory created before any process starts: the API servers are
forked and inference workers spawned with them (a `WorkerHealth` pickles only while a process
is being spawned). Times are `time.monotonic()`, one clock for every process of a machine.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from litserve.utils import LitAPIStatus, WorkerSetupStatus

log = logging.getLogger("evergreen.serve")

BEAT_EVERY_S = 0.5
# how often an API server checks for a failed server, to answer its waiting requests
POLL_S = 0.2
# after marking the server failed, the main process waits this long (the API servers answer
# their waiting requests with 503) before it shuts everything down
FAIL_GRACE_S = 0.5
# the slots of WorkerHealth._state: the monitor's own beat (a main process that stopped
# watching leaves /health at 503 too), the failed flag and when it was set
_MONITOR, _FAILED, _FAILED_AT = 0, 1, 2


class WorkerHealth:
    """Beats and busy marks of `workers` inference workers, and the server's failed flag."""

    def __init__(self, workers: int, stall_timeout: float, kind: str = "inference worker") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.workers = workers
        self.stall_timeout = stall_timeout
        self.kind = kind  # what the workers are, in messages
        # 0.0: not started (beats), idle (busy); single doubles are written and read whole
        self._beats = ctx.RawArray("d", workers)
        self._busy = ctx.RawArray("d", workers)
        self._state = ctx.RawArray("d", 3)

    # ------------------------------------------------------------------ in a worker

    def start_beating(self, slot: int) -> None:
        """Beat for worker `slot` from a daemon thread of this process, from now on."""
        self._beats[slot] = time.monotonic()

        def beat() -> None:
            while True:
                self._beats[slot] = time.monotonic()
                time.sleep(BEAT_EVERY_S)

        threading.Thread(target=beat, name="evergreen-heartbeat", daemon=True).start()

    @contextmanager
    def busy(self, slot: int) -> Iterator[None]:
        """Marks worker `slot` busy while the block runs (one batch being scored)."""
        self._busy[slot] = time.monotonic()
        try:
            yield
        finally:
            self._busy[slot] = 0.0

    # ------------------------------------------------------------------ anywhere

    @property
    def failed(self) -> bool:
        return self._state[_FAILED] != 0.0

    def all_started(self) -> bool:
        """Every worker has loaded its model (and beats)."""
        return all(self._beats[slot] for slot in range(self.workers))

    def stalled(self, now: float | None = None) -> tuple[int, str] | None:
        """(worker slot, what is wrong) for the first worker that stopped beating or is stuck
        on one batch; None when every started worker is fine."""
        now = time.monotonic() if now is None else now
        limit = self.stall_timeout
        for slot in range(self.workers):
            beat, busy = self._beats[slot], self._busy[slot]
            if beat and now - beat > limit:
                return slot, f"no heartbeat for {now - beat:.1f} s (limit {limit:g} s)"
            if busy and now - busy > limit:
                return slot, f"scoring one batch for {now - busy:.1f} s (limit {limit:g} s)"
        return None

    def problem(self) -> str | None:
        """Why the server is not healthy (None: it is, as far as beats tell)."""
        now = time.monotonic()
        if self.failed:
            return f"failed: an {self.kind} died or is stuck; the server is exiting"
        monitor = self._state[_MONITOR]
        if monitor and now - monitor > max(self.stall_timeout, 2.0):
            return "the server's main process stopped watching its workers"
        stalled = self.stalled(now)
        return None if stalled is None else f"{self.kind} {stalled[0]}: {stalled[1]}"

    # ------------------------------------------------------------------ in the main process

    def beat_monitor(self) -> None:
        self._state[_MONITOR] = time.monotonic()

    def mark_failed(self) -> None:
        self._state[_FAILED_AT] = time.monotonic()
        self._state[_FAILED] = 1.0


def _exit_code(process: Any) -> str:
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class WorkerMonitor:
    """The main process's watch over a LitServer's scoring processes (see the module doc):
    its inference workers, or those `processes()` returns (direct mode: the API servers).

    `start()` before `LitServer.run()`: it waits for the workers to be launched, then checks
    them every `POLL_S`. `stop()` (at SIGINT/SIGTERM, before LitServe stops the workers
    itself) ends the watch without failing anything. After `run()` returns, `failure` says
    why the server was shut down (None: it was not).
    """

    def __init__(
        self,
        server: Any,
        health: WorkerHealth,
        processes: Callable[[], list[Any]] | None = None,
    ) -> None:
        self.server = server
        self.health = health
        self._processes = processes or (
            lambda: list(getattr(server, "inference_workers", None) or [])
        )
        self.failure: str | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evergreen-monitor", daemon=True)

    def start(self) -> WorkerMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def _workers(self) -> list[Any] | None:
        while not self._stopping.is_set():
            workers = self._processes()
            if len(workers) >= self.health.workers:
                return workers
            self.health.beat_monitor()
            time.sleep(POLL_S / 4)
        return None

    def _run(self) -> None:
        try:
            workers = self._workers()
            while workers is not None and not self._stopping.is_set():
                self.health.beat_monitor()
                multiprocessing.connection.wait([w.sentinel for w in workers], timeout=POLL_S)
                if self._stopping.is_set():
                    return
                for slot, worker in enumerate(workers):
                    if not worker.is_alive():
                        how = _exit_code(worker)
                        kind = self.health.kind
                        self._fail(slot, f"{kind} {slot} (pid {worker.pid}) {how}")
                        return
                stalled = self.health.stalled()
                if stalled is not None:
                    slot, what = stalled
                    worker = workers[slot]
                    kind = self.health.kind
                    self._fail(slot, f"{kind} {slot} (pid {worker.pid}) is stuck: {what}")
                    worker.kill()  # it cannot be trusted to stop by itself
                    return
        except Exception as exc:  # the watch must never take the server down by itself
            log.exception("evergreen serve: the worker monitor failed: %s", exc)

    def _fail(self, slot: int, reason: str) -> None:
        self.failure = reason
        self.health.mark_failed()  # /health 503; waiting requests get 503 (API servers)
        print(
            f"evergreen serve: {reason}; /health answers 503 and the server exits (code 1) so "
            "that it can be restarted",
            file=sys.stderr,
            flush=True,
        )
        statuses = getattr(self.server, "workers_setup_status", None)
        if statuses is not None:
            # LitServe's own readiness (/health) and its start-up wait see the failure too
            try:
                for key in list(statuses.keys()):
                    if key.endswith(f"_{slot}"):
                        statuses[key] = WorkerSetupStatus.ERROR
            except Exception:  # the manager may be gone already
                pass
        time.sleep(FAIL_GRACE_S)
        event = getattr(self.server, "_shutdown_event", None)
        if event is not None:
            try:
                event.set()  # LitServer.run() leaves its wait and stops everything
            except Exception:
                os.kill(os.getpid(), signal.SIGINT)


async def fail_waiting_requests(
    buffer: dict[str, Any], health: WorkerHealth, make_error: Callable[[], Exception]
) -> None:
    """In an API server: once the server is failed, answer every request that waits for an
    inference worker with `make_error()` (instead of waiting for ever), until cancelled.

    `buffer` is LitServer.response_buffer: request id -> item with `event` and `response`.
    """
    while True:
        await asyncio.sleep(POLL_S)
        if not health.failed:
            continue
        for item in list(buffer.values()):
            if not item.event.is_set():
                item.response = (make_error(), LitAPIStatus.ERROR)
                item.event.set()
