"""`dvc repro` after a crash (stages/cli/repro.py): a lock a killed DVC left in .dvc/tmp/rwlock
is cleared, in one line, and the pipeline runs; a lock of a live holder is left alone."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.cli import repro, retrain
from tests.conftest import ROOT

DVC = shutil.which("dvc", path=str(Path(sys.executable).parent)) or "dvc"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A git + DVC repository with one stage (in.txt -> out.txt), reproduced once."""
    repo = tmp_path_factory.mktemp("template")
    run = {"cwd": repo, "check": True, "env": ENV, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    subprocess.run([DVC, "init", "-q"], **run)
    (repo / "in.txt").write_text("1\n")
    stage = ["-n", "copy", "-d", "in.txt", "-o", "out.txt", "cp in.txt out.txt"]
    subprocess.run([DVC, "stage", "add", "-q", *stage], **run)
    subprocess.run([DVC, "repro", "-q"], **run)
    return repo


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    """A fresh copy whose input changed: the next `dvc repro` has the stage to run."""
    copy = shutil.copytree(template, tmp_path / "repo", symlinks=True)
    (copy / "in.txt").write_text("2\n")
    return copy


def write_rwlock(repo: Path, pid: int, cmd: str = "dvc repro", written_at: float | None = None):
    """The rwlock a `dvc repro` of PID `pid` holds while it runs the stage (DVC 3.67's form)."""
    holder = {"pid": pid, "cmd": cmd}
    lock = {
        "write": {str(repo / "out.txt"): holder},
        "read": {str(repo / "in.txt"): [holder], str(repo / "out.txt"): [holder]},
    }
    path = repo / ".dvc" / "tmp" / "rwlock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(lock))
    if written_at is not None:
        os.utime(path, (written_at, written_at))
    return path


def run_repro(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages.cli.repro"],
        cwd=repo,
        env={**ENV, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def test_a_killed_repros_lock_is_cleared_in_one_line_and_the_stage_runs(repo: Path) -> None:
    pid = dead_pid()
    rwlock = write_rwlock(repo, pid)
    done = run_repro(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first == (
        f".dvc/tmp/rwlock: cleared the stale lock of PID {pid} (`dvc repro`, 3 path(s)): "
        "it is not running"
    )
    assert (repo / "out.txt").read_text() == "2\n"
    assert str(pid) not in rwlock.read_text()


def test_a_lock_whose_pid_another_process_reused_is_cleared(repo: Path) -> None:
    # the killed `dvc repro` wrote its lock an hour ago; its PID is now a later process's (a
    # container's PIDs start again at 1): DVC itself refuses to run
    later = subprocess.Popen(["sleep", "60"])
    try:
        write_rwlock(repo, later.pid, written_at=time.time() - 3600)
        refused = subprocess.run(
            [DVC, "repro"], cwd=repo, env=ENV, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode != 0 and "is busy" in refused.stderr
        done = run_repro(repo)
    finally:
        later.kill()
        later.wait()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"cleared the stale lock of PID {later.pid}" in done.stdout
    assert "now belongs to another process" in done.stdout
    assert (repo / "out.txt").read_text() == "2\n"


def test_a_live_holders_lock_is_left_alone(repo: Path) -> None:
    rwlock = write_rwlock(repo, os.getpid(), cmd="dvc repro (another one, running)")
    before = rwlock.read_text()
    assert repro.clear_stale_locks(repo) == []
    assert rwlock.read_text() == before
    done = run_repro(repo)
    assert done.returncode != 0  # DVC waits for no one: it says who blocks it
    assert f"(PID {os.getpid()})" in done.stderr and "cleared" not in done.stdout
    assert rwlock.read_text() == before
    assert (repo / "out.txt").read_text() == "1\n"


def test_only_the_dead_holders_entries_go(repo: Path) -> None:
    pid = dead_pid()
    rwlock = write_rwlock(repo, pid)
    lock = json.loads(rwlock.read_text())
    live = {"pid": os.getpid(), "cmd": "dvc status"}
    lock["read"][str(repo / "in.txt")].append(live)
    rwlock.write_text(json.dumps(lock))
    [line] = repro.clear_stale_locks(repo)
    assert f"PID {pid}" in line
    assert json.loads(rwlock.read_text()) == {"read": {str(repo / "in.txt"): [live]}}


def test_an_unreadable_rwlock_is_removed(repo: Path) -> None:
    rwlock = write_rwlock(repo, dead_pid())
    rwlock.write_text(rwlock.read_text()[:20])  # killed while DVC rewrote it
    assert repro.clear_stale_locks(repo) == [
        ".dvc/tmp/rwlock: unreadable (left by a killed DVC command): removed"
    ]
    assert not rwlock.exists()


def test_a_held_repository_lock_is_named_never_cleared(repo: Path) -> None:
    import fcntl

    lock = repo / ".dvc" / "tmp" / "lock"
    lock.write_text(f" {os.getpid()}\n")
    with lock.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert repro.clear_stale_locks(repo) == [
            f".dvc/tmp/lock: held by running process {os.getpid()} (a DVC command): "
            "wait for it to finish, or stop it"
        ]
    assert repro.clear_stale_locks(repo) == []  # the file a crash leaves is no lock
    assert lock.exists()


def test_retrain_clears_stale_locks_before_its_first_dvc_command(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    (tmp_path / "in.txt").write_text("x")
    pid = dead_pid()
    rwlock = write_rwlock(tmp_path, pid)
    seen: list[tuple[str, bool]] = []

    def run(cmd, repo, ok=(0,)):
        if cmd[0] == "dvc":
            seen.append((" ".join(cmd), str(pid) in rwlock.read_text()))
        return 0

    monkeypatch.setattr(retrain, "_run", run)
    args = argparse.Namespace(
        repo=tmp_path, overrides_env="OVERRIDES", lake=None, remote="", base="main",
        date="2026-05-01", report="review/report.md",
    )  # fmt: skip
    retrain.retrain(args)
    assert seen[0] == ("dvc pull --allow-missing", False)
    # the training run's stages, then the prediction stages on the champion it made
    assert ("dvc repro card drift", False) in seen and ("dvc repro report", False) in seen
    out = capsys.readouterr().out
    assert f"retrain: .dvc/tmp/rwlock: cleared the stale lock of PID {pid}" in out
