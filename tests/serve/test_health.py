"""Worker health in shared memory (serve/health.py): what the monitor and /health read. The
real server's behaviour when a worker dies or freezes is in test_faults.py."""

from __future__ import annotations

import time

from serve.health import BEAT_EVERY_S, WorkerHealth


def test_a_worker_stuck_on_one_batch_or_without_heartbeat_is_named() -> None:
    health = WorkerHealth(workers=2, stall_timeout=1.0)  # beats come every 0.5 s
    assert health.stalled() is None and health.problem() is None  # not started: not judged
    health.start_beating(0)
    health.start_beating(1)
    with health.busy(1):
        time.sleep(0.2)
        assert health.stalled() is None
        time.sleep(1.0)
        slot, what = health.stalled()
        assert slot == 1 and what.startswith("scoring one batch for 1.")
        assert health.problem().startswith("inference worker 1: scoring one batch")
    assert health.stalled() is None  # the batch ended
    # a worker whose beats stop (frozen, or its process stopped)
    later = time.monotonic() + BEAT_EVERY_S + 1.0
    slot, what = health.stalled(now=later)
    assert slot == 0 and what.startswith("no heartbeat for ")
    assert not health.failed
    health.mark_failed()
    assert health.failed and health.problem().startswith("failed: ")
