"""Run the real prediction server as a process for tests: start, wait until ready, SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_ready(
    proc: subprocess.Popen, url: str, log: Path, polls: list[int | None] | None = None
) -> None:
    """Poll /health until 200; `polls` collects each answer's status (None: refused)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            status = requests.get(f"{url}/health", timeout=1).status_code
        except requests.ConnectionError:
            status = None
        if polls is not None:
            polls.append(status)
        if status == 200:
            return
        time.sleep(0.05 if polls is not None else 0.2)
    pytest.fail(f"server not ready after {STARTUP_TIMEOUT_S}s:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> int | None:
    """SIGINT (LitServe's graceful path); returns the exit code, None if it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the server and its children
        proc.wait()
        return None


@contextmanager
def running_server(
    cmd: Sequence[str],
    port: int,
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    polls: list[int | None] | None = None,
    exit_code: int = 0,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `cmd` (which must serve on `port`), yield (url, process) once /health answers,
    then stop it with SIGINT (unless it exited by itself) and check it exited with
    `exit_code` and freed the port."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env or os.environ),
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log, polls)
        yield url, proc
    finally:
        code = stop(proc)
        assert code == exit_code, f"server exited with {code}, not {exit_code}:\n{log.read_text()}"
        assert port_refuses(port), f"port {port} still served after the server exited"
