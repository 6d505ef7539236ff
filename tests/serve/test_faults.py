"""The prediction server under faults, as a real process on 127.0.0.1 over HTTP: an inference
worker killed or frozen, clients that send their request a byte at a time, a prediction log
that cannot be written."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from tests.serve.artifacts import settings_file, write_model
from tests.server_process import free_port, running_server

pytestmark = pytest.mark.slow

RECORD = {"customer_id": 1, "days_since_last_order": 10.0, "orders_28d": 2.0, "plan": "basic"}
BODY = b'{"customer_id": 7, "days_since_last_order": 3.0, "orders_28d": 1.0, "plan": "premium"}'
# the hardened server's limits (the defaults are 10 s)
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^PPid:\s+(\d+)", status, re.MULTILINE).group(1))


def worker_pid(log: Path, server: subprocess.Popen, role: str = "worker") -> int:
    """The (first) scoring process's pid, as it logged its load (an inference worker, or an
    API server in direct mode); a child of the server process."""
    pid = int(re.findall(rf"serve: {role} (\d+) loaded", log.read_text())[0])
    assert parent_of(pid) == server.pid
    return pid


def first_unhealthy(url: str, limit_s: float) -> tuple[float, int | None]:
    """Seconds until /health stops answering 200 (503, or refused: None), polled for at most
    `limit_s` seconds; (inf, 200) if it never does."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            status: int | None = requests.get(f"{url}/health", timeout=2).status_code
        except requests.RequestException:  # refused, or taken by a frozen API server
            status = None
        if status != 200:
            return time.monotonic() - started, status
        time.sleep(0.1)
    return float("inf"), 200


def faulty_server(tmp_path: Path, mode: str, stall_s: float) -> tuple[list[str], int, Path]:
    """(command, port, log) of a server in `mode` whose scoring processes count as stuck after
    `stall_s` seconds without a heartbeat, with no prediction log."""
    champion = write_model(tmp_path / "models")
    port = free_port()
    settings = settings_file(
        tmp_path / "params.yaml",
        model=str(champion.onnx),
        card=str(champion.card),
        port=port,
        mode=mode,
        predictions_path=None,
        worker_stall_timeout=stall_s,
    )
    cmd = [sys.executable, "-m", "serve.app", "--settings", str(settings)]
    return cmd, port, tmp_path / "server.log"


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_dead_or_stuck_worker_turns_health_to_503_and_the_server_exits(
    tmp_path: Path, fault: str
) -> None:
    # queued mode: requests wait for the inference worker, and are answered 503 when it fails
    # killed: SIGKILL (the stall limit is far); frozen: SIGSTOP, found by its stopped heartbeat
    stall_s = 2.0 if fault == "frozen" else 60.0
    cmd, port, log = faulty_server(tmp_path, "queued", stall_s)
    with (
        running_server(cmd, port, log, exit_code=1) as (url, proc),
        ThreadPoolExecutor(1) as pool,
    ):
        assert requests.post(f"{url}/predict", json=RECORD, timeout=10).status_code == 200
        pid = worker_pid(log, proc)
        os.kill(pid, signal.SIGSTOP)  # from now on the worker answers nothing
        waiting = pool.submit(requests.post, f"{url}/predict", json=RECORD, timeout=20)
        time.sleep(0.5)  # that request now waits for the worker
        if fault == "killed":
            os.kill(pid, signal.SIGKILL)
        took, status = first_unhealthy(url, limit_s=stall_s + 8)
        assert took <= stall_s + 2.0 and status in (503, None), (took, status)
        # the waiting request is answered (503), it does not hang until its timeout
        answered = waiting.result(timeout=25)
        assert answered.status_code == 503, answered.text
        assert "inference worker" in answered.json()["detail"]
        assert proc.wait(timeout=15) == 1  # at once, not after uvicorn's 30 s graceful wait
    text = log.read_text()
    assert f"inference worker 0 (pid {pid})" in text
    assert ("killed by SIGKILL" if fault == "killed" else "is stuck: no heartbeat") in text


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_dead_or_stuck_api_server_turns_health_to_503_in_direct_mode(
    tmp_path: Path, fault: str
) -> None:
    # direct mode: the API servers hold the model; the monitor watches them as it watches
    # workers, and the one left answers /health 503 until the server exits
    stall_s = 2.0 if fault == "frozen" else 60.0
    cmd, port, log = faulty_server(tmp_path, "direct", stall_s)
    with running_server(cmd, port, log, exit_code=1) as (url, proc):
        for _ in range(4):  # both API servers answer (each with its own model)
            assert requests.post(f"{url}/predict", json=RECORD, timeout=10).status_code == 200
        pid = worker_pid(log, proc, role="API server")
        os.kill(pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        took, status = first_unhealthy(url, limit_s=stall_s + 8)
        assert took <= stall_s + 2.0 and status in (503, None), (took, status)
        assert proc.wait(timeout=15) == 1
    text = log.read_text()
    assert re.search(rf"API server \d \(pid {pid}\)", text), text
    assert ("killed by SIGKILL" if fault == "killed" else "is stuck: no heartbeat") in text


# ---------------------------------------------------------------- the hardened server


@dataclass
class Hardened:
    url: str
    port: int
    log: Path


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hardened]:
    """Short request deadlines, and a prediction log on an S3 endpoint where nothing listens."""
    tmp = tmp_path_factory.mktemp("hardened")
    champion = write_model(tmp / "models")
    port = free_port()
    store = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = settings_file(
        tmp / "params.yaml",
        model=str(champion.onnx),
        card=str(champion.card),
        port=port,
        request_header_timeout=HEADER_TIMEOUT_S,
        request_body_timeout=BODY_TIMEOUT_S,
        predictions_path=f"s3://evergreen-logs/serve?endpoint_override={store}&scheme=http",
        predictions_flush_seconds=0.2,
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    cmd = [sys.executable, "-m", "serve.app", "--settings", str(settings)]
    log = tmp / "server.log"
    with running_server(cmd, port, log, env=env) as (url, _):
        yield Hardened(url, port, log)


def test_slow_clients_get_408_and_never_hold_up_the_others(hardened: Hardened) -> None:
    # 30 clients send a POST's headers and then its body a byte at a time, 10 send their
    # headers a byte at a time: each is answered 408 (or closed) once its deadline passes,
    # while another client's predictions keep coming at once
    slow: list[tuple[socket.socket, float]] = []
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(BODY)
    )
    for i in range(40):
        sock = socket.create_connection(("127.0.0.1", hardened.port), timeout=5)
        sock.setblocking(False)
        sock.sendall(head if i % 4 else b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow.append((sock, time.monotonic()))
    answers: dict[int, tuple[bytes, float]] = {}  # slow client -> (first bytes, after seconds)
    latencies = []
    session = requests.Session()
    deadline = time.monotonic() + max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 5.0
    try:
        while len(answers) < len(slow) and time.monotonic() < deadline:
            for i, (sock, opened) in enumerate(slow):
                if i in answers:
                    continue
                try:
                    data = sock.recv(64)
                except BlockingIOError:
                    try:
                        sock.send(b"a")  # one more byte of its header or body
                    except OSError:
                        answers[i] = (b"", time.monotonic() - opened)  # closed on it
                    continue
                except OSError:
                    data = b""
                answers[i] = (data, time.monotonic() - opened)
            started = time.monotonic()
            response = session.post(f"{hardened.url}/predict", json=RECORD, timeout=10)
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200, response.text
            time.sleep(0.05)
    finally:
        for sock, _ in slow:
            sock.close()
    assert len(answers) == len(slow), f"{len(slow) - len(answers)} slow clients still open"
    for i, (data, after) in answers.items():
        limit = BODY_TIMEOUT_S if i % 4 else HEADER_TIMEOUT_S
        assert limit - 0.1 <= after <= limit + 2.5, (i, after)
        assert data.startswith(b"HTTP/1.1 408 ") or data == b"", data
    assert sum(data.startswith(b"HTTP/1.1 408 ") for data, _ in answers.values()) >= 30
    assert len(latencies) >= 10 and max(latencies) < 2.0, latencies  # milliseconds, usually


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (status line, headers, a content-length body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_complete_request_after_a_slow_start_is_still_answered(hardened: Hardened) -> None:
    # the deadlines bound how long a request may take to arrive, not a keep-alive connection
    with socket.create_connection(("127.0.0.1", hardened.port), timeout=5) as sock:
        request = (
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(BODY)
        ) + BODY
        for _ in range(2):  # two requests on one connection, each sent in two halves
            sock.sendall(request[:40])
            time.sleep(min(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) / 2)
            sock.sendall(request[40:])
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            time.sleep(min(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) * 1.5)  # idle between requests


def test_a_failing_prediction_log_shows_in_info_and_the_server_log(hardened: Hardened) -> None:
    # the server started and answers although its log cannot be written; /info says why
    assert requests.post(f"{hardened.url}/predict", json=RECORD, timeout=10).status_code == 200
    deadline = time.monotonic() + 30  # the S3 client retries a refused connection for ~6 s
    while True:
        log_info = requests.get(f"{hardened.url}/info", timeout=10).json()["predictions_log"]
        if log_info["failed"] >= 1:
            break
        assert time.monotonic() < deadline, log_info
        time.sleep(0.3)
    assert log_info["written"] == 0
    assert "records lost writing to s3://evergreen-logs/serve" in log_info["last_error"]
    assert "OSError" in log_info["last_error"]
    at = datetime.fromisoformat(log_info["last_error_at"])
    assert abs((datetime.now(UTC) - at).total_seconds()) < 60
    assert "prediction log: " in hardened.log.read_text()  # the worker's warning
