"""`evergreen canary`: infra validation of a prediction image before it is pushed.

    evergreen canary --context build/serve [--url http://127.0.0.1:8000]

With `--url`, checks a server already running (the container the promote workflow started from
the image); without, starts the server from the build context as the image's entry point runs it
(`python -m serve.app` in `app/`, the context's settings, 127.0.0.1 on a free port), checks it
and stops it. The checks: `/health` answers 200, `/info` reports the model version (md5 of the
context's `model/model.onnx`) and the git commit of the context's stamped card, and `/predict`
scores a record built from the card's feature schema with one probability in [0, 1]; `/info`
also says the server runs the serving mode of the context's settings (`model/serve.yaml`:
`direct` unless the settings chose `queued`), so the image is checked as it will serve.
Exit 0 when every check passes, 1 when one fails (the message names it), 2 on a bad context.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
import yaml

from stages.contract.card import ModelCard, file_md5

READY_TIMEOUT_S = 120.0


class CanaryFailed(Exception):
    """A check of the running server failed; the message names it."""


def canary_record(card: ModelCard) -> dict[str, Any]:
    """A record every feature of the card accepts: numbers at the middle of their training
    range, categories at their first allowed (else observed) value."""
    features = card.features or {}
    record: dict[str, Any] = {str(features.get("entity_key") or "id"): 1}
    for f in features.get("numeric") or ():
        lo, hi = f.get("min"), f.get("max")
        record[f["name"]] = None if lo is None or hi is None else (lo + hi) / 2
    for f in features.get("categorical") or ():
        values = f.get("allowed") or f.get("observed") or []
        record[f["name"]] = values[0] if values else None
    return record


def context_mode(context: Path) -> str:
    """The serving mode the context's settings give (ValueError: no readable mode)."""
    path = context / "model/serve.yaml"
    try:
        section = (yaml.safe_load(path.read_text()) or {}).get("serve") or {}
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise ValueError(f"{path}: cannot read the settings ({exc})") from exc
    mode = section.get("mode")
    if mode not in ("direct", "queued"):
        raise ValueError(f"{path}: serve.mode is {mode!r}, expected direct or queued")
    return mode


def check_server(url: str, card: ModelCard, version: str, mode: str) -> dict[str, Any]:
    """Run the checks against `url`; returns what was seen, or CanaryFailed."""
    health = requests.get(f"{url}/health", timeout=10)
    if health.status_code != 200:
        raise CanaryFailed(f"/health answered {health.status_code}, expected 200")
    info = requests.get(f"{url}/info", timeout=10)
    if info.status_code != 200:
        raise CanaryFailed(f"/info answered {info.status_code}: {info.text[:300]}")
    served = info.json()
    got = (served.get("model") or {}).get("version")
    if got != version:
        raise CanaryFailed(
            f"/info model.version is {got}, expected {version} (the context's model)"
        )
    if served.get("git_commit") != card.git_commit:
        raise CanaryFailed(
            f"/info git_commit is {served.get('git_commit')}, expected {card.git_commit}"
        )
    got_mode = (served.get("server") or {}).get("mode")
    if got_mode != mode:
        raise CanaryFailed(
            f"/info server.mode is {got_mode}, expected {mode} (the context's serve.yaml)"
        )
    record = canary_record(card)
    answer = requests.post(f"{url}/predict", json=record, timeout=30)
    if answer.status_code != 200:
        raise CanaryFailed(f"/predict answered {answer.status_code}: {answer.text[:500]}")
    predictions = answer.json().get("predictions") or []
    if len(predictions) != 1 or not 0.0 <= float(predictions[0].get("score", -1)) <= 1.0:
        raise CanaryFailed(f"/predict: expected one score in [0, 1], got {predictions}")
    return {
        "version": got,
        "git_commit": served.get("git_commit"),
        "mode": got_mode,
        "score": predictions[0]["score"],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    """Poll /health until 200: a container or process takes a while to load the model."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None else ""
            raise CanaryFailed(f"the server exited with {proc.returncode}:\n{tail}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    raise CanaryFailed(f"{url}/health did not answer 200 within {timeout:.0f}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # the image's STOPSIGNAL: graceful shutdown
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the server and its workers only
        proc.wait()


def run_from_context(context: Path, card: ModelCard, version: str, mode: str) -> dict[str, Any]:
    """Start the server from `context` as a process, check it, stop it."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="evergreen-canary-") as tmp:
        env = {
            **os.environ,
            "PYTHONPATH": str(context / "app"),
            "EVERGREEN_SERVE_SETTINGS": str(context / "model/serve.yaml"),
            "EVERGREEN_SERVE_HOST": "127.0.0.1",
            "EVERGREEN_SERVE_PORT": str(port),
            "EVERGREEN_SERVE_PREDICTIONS_PATH": str(Path(tmp) / "predictions"),
        }
        log = Path(tmp) / "server.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "serve.app"],
                cwd=context / "app",
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, READY_TIMEOUT_S, proc, log)
            return check_server(url, card, version, mode)
        finally:
            _stop(proc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evergreen canary", description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=Path, required=True, help="the image's build context")
    parser.add_argument("--url", help="a running server to check (default: start one)")
    parser.add_argument(
        "--wait", type=float, default=READY_TIMEOUT_S, help="seconds to wait for /health (--url)"
    )
    args = parser.parse_args(argv)
    card_path, model_path = (
        args.context / "model/model_card.json",
        args.context / "model/model.onnx",
    )
    for path in (card_path, model_path):
        if not path.is_file():
            print(f"canary: {path} not found: not a build context", file=sys.stderr)
            return 2
    try:
        card = ModelCard.read(card_path)
        mode = context_mode(args.context)
    except ValueError as exc:
        print(f"canary: {exc}", file=sys.stderr)
        return 2
    version = file_md5(model_path)
    try:
        if args.url:
            wait_ready(args.url.rstrip("/"), args.wait)
            seen = check_server(args.url.rstrip("/"), card, version, mode)
        else:
            seen = run_from_context(args.context.resolve(), card, version, mode)
    except (CanaryFailed, requests.RequestException) as exc:
        print(f"canary: FAILED: {exc}", file=sys.stderr)
        return 1
    print(
        f"canary: ok: /health 200, /info version {seen['version']} commit "
        f"{str(seen['git_commit'])[:12]} mode {seen['mode']}, /predict score {seen['score']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
