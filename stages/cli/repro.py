"""`dvc repro` after a crash: the locks a killed DVC left in `.dvc/tmp/` are cleared first.

    python -m stages.cli.repro [DVC REPRO OPTIONS]     (`make demo`; `evergreen retrain` too)

DVC 3.67 keeps two locks there:

- `rwlock`, JSON naming the outputs and dependencies each running command holds:
  `{"write": {path: {"pid": N, "cmd": "dvc repro"}}, "read": {path: [{"pid": N, ...}]}}`.
  A killed `dvc repro` leaves its entries behind. DVC drops the entries of a PID that no longer
  exists, but not those of a PID that another process now has (PIDs are reused, and a
  container's start again from 1 on each run): `dvc repro` then refuses to run ("is busy, it
  is being blocked by (PID N)") until someone deletes the file. Here an entry is stale when its
  process is gone, a zombie, or started after the file was last written (so it cannot have
  written it); stale entries are removed under DVC's own guard (`rwlock.lock`), each holder
  said in one line; an entry of a live holder is left alone.
- `lock`, the repository lock: an flock the kernel releases when its holder dies, so the file
  a crash leaves is not a lock and needs no clearing. When a live process holds it, its PID
  is named (DVC itself only says "Unable to acquire lock").
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.contract.storage import write_bytes_atomic

TMP_DIR = Path(".dvc") / "tmp"
RWLOCK = "rwlock"
RWLOCK_GUARD = "rwlock.lock"
REPO_LOCK = "lock"
# a process's start time is known to about a second (psutil adds the start, in clock ticks,
# to the boot time, a whole second): one that started this much after the file's last write
# cannot have written it
CLOCK_SLACK_S = 2.0


def _why_stale(pid: int, written_at: float) -> str | None:
    """Why `pid` cannot hold a lock written at `written_at`, or None if it may."""
    import psutil

    if pid <= 0:
        return "it is not a process"
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return "it has exited (a zombie)"
        if process.create_time() > written_at + CLOCK_SLACK_S:
            return "its PID now belongs to another process, started after the lock was written"
    except psutil.NoSuchProcess:  # ZombieProcess is one too
        return "it is not running"
    except psutil.AccessDenied:
        return None
    return None


def _entries(lock: dict) -> list[tuple[str, str, dict, int]]:
    """(mode, path, holder, its PID) for each holder of each path."""
    found = []
    for path, holder in (lock.get("write") or {}).items():
        found.append(("write", path, holder, int(holder["pid"])))
    for path, holders in (lock.get("read") or {}).items():
        found.extend(("read", path, holder, int(holder["pid"])) for holder in holders)
    return found


def clear_stale_locks(repo: Path = Path(".")) -> list[str]:
    """Remove the `.dvc/tmp/rwlock` entries of processes that cannot hold them any more, and
    name a live holder of the repository lock; returns one line per finding."""
    from dvc.lock import LockError, make_lock

    tmp = Path(repo) / TMP_DIR
    path = tmp / RWLOCK
    lines = _repo_lock_holder(tmp / REPO_LOCK)
    if not path.is_file():
        return lines
    shown = TMP_DIR / RWLOCK
    try:
        # the guard DVC takes to edit the file; a DVC editing it now makes us wait up to 3 s
        with make_lock(str(tmp / RWLOCK_GUARD), tmp_dir=str(tmp)):
            written_at = path.stat().st_mtime
            try:
                lock = json.loads(path.read_text())
                entries = _entries(lock)
            except (ValueError, AttributeError, TypeError, KeyError):  # cut short by a kill
                path.unlink()
                return [*lines, f"{shown}: unreadable (left by a killed DVC command): removed"]
            stale: dict[int, str] = {}
            for *_, pid in entries:
                if pid not in stale and (why := _why_stale(pid, written_at)):
                    stale[pid] = why
            if not stale:
                return lines
            kept: dict[str, dict] = {"write": {}, "read": {}}
            cleared: dict[int, tuple[str, int]] = {}
            for mode, locked, holder, pid in entries:
                if pid in stale:
                    cmd, count = cleared.get(pid, (str(holder.get("cmd", "?")), 0))
                    cleared[pid] = (cmd, count + 1)
                elif mode == "write":
                    kept["write"][locked] = holder
                else:
                    kept["read"].setdefault(locked, []).append(holder)
            write_bytes_atomic(json.dumps({k: v for k, v in kept.items() if v}).encode(), path)
    except LockError:
        return [*lines, f"{TMP_DIR / RWLOCK_GUARD}: held by a running DVC command; left alone"]
    for pid, (cmd, count) in sorted(cleared.items()):
        lines.append(
            f"{shown}: cleared the stale lock of PID {pid} (`{cmd}`, {count} path(s)): {stale[pid]}"
        )
    return lines


def _repo_lock_holder(path: Path) -> list[str]:
    """One line naming the live holder of DVC's repository lock, if any (never cleared)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: DVC locks differently there
        return []
    if not path.is_file():
        return []
    with path.open("a") as f:  # "a": the holder's PID in the file stays as it is
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = path.read_text().strip() or "?"
            return [
                f"{TMP_DIR / REPO_LOCK}: held by running process {holder} (a DVC command): "
                "wait for it to finish, or stop it"
            ]
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return []


def repro(repo: Path = Path("."), args: Sequence[str] = ()) -> int:
    """Clear stale locks (saying so), then run `dvc repro ARGS` in `repo`; its exit code."""
    for line in clear_stale_locks(repo):
        print(line, flush=True)
    return subprocess.run(["dvc", "repro", *args], cwd=repo, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    return repro(Path("."), list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
