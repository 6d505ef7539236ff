"""Crash safety: validate and prepare killed (SIGKILL) at random points leave nothing
half-written where it could be read, and the rerun gives the bytes of an uninterrupted run."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import customers_frame, events_frame, write_params, write_partition

pytestmark = pytest.mark.slow

SEEDS = (1, 2, 3)


def _day(root: Path, d: int, bad: bool = False) -> None:
    day = f"2026-01-{d:02d}" if d <= 31 else f"2026-02-{d - 31:02d}"
    kinds = ["session", "order", "support_ticket", "refund"]
    rows = [
        (d * 1000 + i, i % 50, f"{day} {i % 24:02d}:00", kinds[i % 4], float(i % 7))
        for i in range(200)
    ]
    if bad:
        rows[0] = (rows[0][0], 1, f"{day} 10:00", "teleport", None)
    write_partition(root, "events", day, events_frame(rows))
    customers = [
        (c, "2025-12-01", "DE", ["basic", "premium"][(c + d) % 2], "ads", 9.0, f"{day} 00:00")
        for c in range(d % 5, 50, 5)
    ]
    write_partition(root, "customers", day, customers_frame(customers))


def _wrote_since(out_dir: Path, since_ns: int) -> bool:
    for path in out_dir.rglob("*"):
        try:
            if path.stat(follow_symlinks=False).st_mtime_ns >= since_ns:
                return True
        except FileNotFoundError:
            return True  # a temporary file renamed or removed under us: the stage is writing
    return False


class Stage:
    def __init__(self, name: str, args: list[str], out_dir: Path) -> None:
        self.cmd = [sys.executable, "-m", f"stages.{name}", *args]
        self.out_dir = out_dir

    def _start(self) -> tuple[subprocess.Popen, float]:
        """Start the stage; return it once it has written its first file (or exited), and
        when that was."""
        since = time.time_ns()
        proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        while proc.poll() is None and not _wrote_since(self.out_dir, since):
            time.sleep(0.002)
        return proc, time.perf_counter()

    def run(self) -> float:
        """Run to the end; return how long it wrote for (its first write to its exit)."""
        proc, first = self._start()
        output, _ = proc.communicate()
        assert proc.returncode == 0, output
        return time.perf_counter() - first

    def kill_while_writing(self, seconds: float) -> bool:
        """SIGKILL the stage `seconds` after its first write; whether it was still running."""
        proc, _ = self._start()
        time.sleep(seconds)
        running = proc.poll() is None
        proc.kill()
        proc.communicate()
        return running


def _files(*dirs: Path) -> dict[str, bytes]:
    """Every file's bytes, manifests included (stat caches live beside the directories)."""
    out = {}
    for base in dirs:
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            out[f"{base.name}/{path.relative_to(base).as_posix()}"] = path.read_bytes()
    return out


def _assert_readable(out_dir: Path) -> None:
    """What a reader finds after a kill: every file at its final name is complete (temporary
    files are the only partial ones, and the next run deletes them unread)."""
    for path in out_dir.rglob("*"):
        if not path.is_file() or ".tmp-" in path.name:
            continue
        if path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())


def test_killed_runs_rerun_to_the_bytes_of_an_uninterrupted_run(tmp_path, shop_params):
    params = str(write_params(shop_params, tmp_path / "params.yaml"))
    data = tmp_path / "data"
    for d in range(1, 21):
        _day(data, d)

    def stages(base: Path) -> tuple[Stage, Stage, Path]:
        validated, history = base / "validate", base / "prepare"
        metrics = base / "metrics" / "validation.json"
        validate = Stage(
            "validate",
            [str(data / "landing"), str(validated), str(metrics), "--params", params],
            validated,
        )
        prepare = Stage("prepare", [str(validated), str(history), "--params", params], history)
        return validate, prepare, metrics.parent

    before = tmp_path / "before"
    validate, prepare, _ = stages(before)
    validate.run()
    prepare.run()

    # the increment: ten new days, one day rewritten (a bad row now), one deleted
    for d in range(21, 31):
        _day(data, d)
    _day(data, 5, bad=True)
    for table in ("events", "customers"):
        shutil.rmtree(data / "landing" / table / "date=2026-01-07")

    reference = tmp_path / "reference"
    shutil.copytree(before, reference)
    validate, prepare, metrics = stages(reference)
    # how long each writes for: the kills land in that window
    t_validate, t_prepare = validate.run(), prepare.run()
    expected = _files(reference / "validate", reference / "prepare", metrics)

    interrupted = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        work = tmp_path / f"work{seed}"
        shutil.copytree(before, work)
        validate, prepare, metrics = stages(work)
        interrupted += validate.kill_while_writing(rng.uniform(0, t_validate))
        _assert_readable(work)
        validate.run()
        interrupted += prepare.kill_while_writing(rng.uniform(0, t_prepare))
        _assert_readable(work)
        prepare.run()
        assert _files(work / "validate", work / "prepare", metrics) == expected
        assert not [p for p in work.rglob("*") if ".tmp-" in p.name]
    assert interrupted, "no kill landed while a stage was running"
