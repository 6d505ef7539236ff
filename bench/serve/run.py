"""Benchmark: our LitServe service, in both modes, against three baselines, side by side.

One HistGradientBoosting model (conf/model/hgb.yaml) is fitted on a synthetic frame with the
shop's 25 features, saved with skops, exported to ONNX and described by a model card. Then each
server is started in turn and loaded with wrk (a closed loop: each of c connections sends its
next request when the previous answer arrives) for `--duration` seconds at c = 1, 16, 64 with
one-record requests, and at c = 16 with 64-record requests:

    evergreen               serve/app.py with conf/serve/default.yaml (direct mode, log on)
    evergreen_queued        the same with `mode: queued` (LitServe's inference worker)
    fastapi_sklearn         FastAPI + uvicorn calling scikit-learn predict_proba
    litserve_default_onnx   LitServe with default settings on the same ONNX graph
    raw_asgi_onnx           a bare ASGI app + ONNX on 2 uvicorn workers: the practical limit

It prints `serve: <name> c=<n> rps=<x> p50_ms=<x> p99_ms=<x> errors=<n>` per server and
concurrency, `serve: <name> batch=64 c=16 rows_per_s=<x> ...`, each server's ratio to the raw
limit per concurrency, the load average, and a soak of `evergreen`: twice the c=16 load
(c=32) for `--soak` seconds with the server's RSS (all its processes) sampled every second.
With `--py-spy PATH` it also samples every process of our server during one c=16 run and prints
where the time goes (py-spy is not a project dependency: pass its binary).

    .venv/bin/python bench/serve/run.py --out bench/serve.out
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NAMES = (
    "evergreen",
    "evergreen_queued",
    "fastapi_sklearn",
    "litserve_default_onnx",
    "raw_asgi_onnx",
)
RAW = "raw_asgi_onnx"
OURS = ("evergreen", "evergreen_queued")
SOAK_CONCURRENCY = 32  # twice the c=16 load
CONCURRENCY = (1, 16, 64)
BATCH_ROWS = 64
BATCH_CONCURRENCY = 16
NUMERIC = tuple(
    [f"{kind}_{w}d" for kind in ("sessions", "orders", "tickets", "refunds") for w in (7, 14, 28)]
    + [f"{kind}_amount_{w}d" for kind in ("orders", "refunds") for w in (7, 14, 28)]
    + ["days_since_last_activity", "activity_trend", "tenure_days", "monthly_price"]
)
CATEGORIES = {
    "country": ("DE", "FR", "GB", "NL", "ES", "IT", "PL", "SE"),
    "plan": ("basic", "standard", "premium"),
    "channel": ("organic", "ads", "referral", "partner"),
}


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int

    def describe(self, rows_per_s: float | None = None) -> str:
        rows = "" if rows_per_s is None else f"rows_per_s={rows_per_s:.0f} "
        return (
            f"{rows}rps={self.rps:.0f} p50_ms={self.p50_ms:.2f} p99_ms={self.p99_ms:.2f} "
            f"errors={self.errors}"
        )


def synthetic_frame(n: int, seed: int) -> pd.DataFrame:
    """Shop-like features with a churn label that depends on a few of them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"customer_id": np.arange(n), "snapshot_date": pd.Timestamp("2026-04-01")})
    for name in NUMERIC:
        frame[name] = rng.gamma(2.0, 3.0, n).round(2)
    frame["activity_trend"] = rng.normal(0, 1, n)
    for name, values in CATEGORIES.items():
        frame[name] = pd.Series(rng.choice(values, n), dtype="str")
    logit = (
        0.08 * frame["days_since_last_activity"]
        - 0.3 * frame["orders_28d"]
        + 0.5 * (frame["plan"] == "basic")
    )
    frame["churn"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype("int64")
    return frame


def build_model(directory: Path) -> dict[str, Path]:
    """Fit, save, export and describe the model; returns the files the servers need."""
    from stages.contract.card import file_md5
    from stages.contract.feature_schema import FeatureSchema, save_schema
    from stages.lib.cards import build_card
    from stages.lib.model_io import save_model
    from stages.lib.onnx_export import export_onnx
    from stages.lib.training import ModelConfig, train_model

    schema = FeatureSchema(
        entity_key="customer_id",
        time="snapshot_date",
        label="churn",
        numeric=NUMERIC,
        categorical=tuple(CATEGORIES),
        categories=dict(CATEGORIES),
    )
    frame = synthetic_frame(4000, seed=7)
    model_params = yaml.safe_load((ROOT / "conf/model/hgb.yaml").read_text())
    pipe = train_model(frame, schema, ModelConfig.from_params(model_params), seed=7)
    files = {
        "schema": save_schema(schema, directory / "feature_schema.json"),
        "skops": save_model(pipe, directory / "model.skops"),
        "onnx": directory / "model.onnx",
        "card": directory / "model_card.json",
    }
    files["onnx"].write_bytes(export_onnx(pipe, schema).SerializeToString())
    params = {
        "seed": 7,
        "model": model_params,
        "dataset": {
            "activity_types": ["session", "order"],
            "label": {"name": "churn", "horizon_days": 21, "lookback_days": 28},
        },
    }
    card = build_card(
        schema=schema,
        train=frame,
        params=params,
        metrics={},
        slices={},
        model_file="model.skops",
        model_md5=file_md5(files["skops"]),
        landing_md5="bench",
        data_source="bench/serve/run.py",
        onnx={"file": "model.onnx", "md5": file_md5(files["onnx"])},
    )
    files["card"].write_text(json.dumps(card, indent=2))
    records = json.loads(
        frame[[schema.entity_key, *schema.features]].head(BATCH_ROWS).to_json(orient="records")
    )
    files["one"] = directory / "one.json"
    files["one"].write_text(json.dumps({"records": records[:1]}))
    files["batch"] = directory / "batch.json"
    files["batch"].write_text(json.dumps({"records": records}))
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(name: str, files: dict[str, Path], port: int, settings: Path) -> list[str]:
    baselines = [sys.executable, str(HERE / "baselines.py"), name]
    if name in OURS:
        if name == "evergreen_queued":
            settings = settings.with_name("settings_queued.yaml")
        return [sys.executable, "-m", "serve.app", "--settings", str(settings), "--port", str(port)]
    if name == "fastapi_sklearn":
        return [*baselines, str(files["skops"]), str(files["schema"]), str(port)]
    return [*baselines, str(files["onnx"]), str(files["schema"]), str(port)]


def wait_ready(proc: subprocess.Popen, url: str, body: bytes, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            response = requests.post(
                url, data=body, headers={"Content-Type": "application/json"}, timeout=2
            )
            if response.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after 120 s:\n{log.read_text()}")


def stop(proc: subprocess.Popen, *, profiled: bool = False) -> None:
    """SIGINT to the server (under py-spy: to py-spy's child, so py-spy sees it exit)."""
    if proc.poll() is None:
        target = proc.pid
        if profiled:
            import psutil

            children = psutil.Process(proc.pid).children()
            target = children[0].pid if children else proc.pid
        os.kill(target, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def parse_wrk(output: str) -> Load:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(m.group(1))
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(g) for g in m.groups())
    return Load(rps, p50, p99, errors, total)


def wrk(url: str, body: Path, connections: int, seconds: float) -> Load:
    threads = min(2, connections)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{round(seconds)}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    cmd += ["-s", str(HERE / "post.lua"), url]
    done = subprocess.run(
        cmd, env={**os.environ, "BODY_FILE": str(body)}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr}")
    return parse_wrk(done.stdout)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB (2^20 bytes)."""
    import psutil

    total = 0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
    except psutil.Error:
        pass
    return total / 2**20


def soak(url: str, body: Path, pid: int, seconds: float) -> tuple[Load, list[float]]:
    """wrk at SOAK_CONCURRENCY for `seconds`, sampling the server's RSS every second."""
    samples = [tree_rss_mb(pid)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(wrk, url, body, SOAK_CONCURRENCY, seconds)
        while not running.done():
            time.sleep(1.0)
            samples.append(tree_rss_mb(pid))
        return running.result(), samples


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


ROLES = (
    ("multiprocessing/managers.py", "LitServe queue manager"),
    ("spawn_main", "inference worker"),
    ("uvicorn", "API server (uvicorn)"),
)


def summarize_profile(raw: Path, top: int = 12) -> list[str]:
    """py-spy's raw samples (CPU only) per process of the server: its share of all samples and
    its hottest frames by self time and by inclusive time."""
    samples: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    roles: dict[str, Counter[str]] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "importlib._bootstrap" in stack:  # start-up imports, not the request path
            continue
        frames = stack.split(";")
        procs = [i for i, f in enumerate(frames) if f.startswith("process ")]
        pid = frames[procs[-1]].split(":")[0] if procs else "process ?"
        own = frames[procs[-1] + 1 :] if procs else frames
        n = int(count)
        samples[pid][own[-1][:120] if own else "?"] += n
        for frame in set(own):
            inclusive[pid][frame[:120]] += n
        for marker, name in ROLES:
            if marker in stack:
                roles[pid][name] += n
    total = sum(sum(c.values()) for c in samples.values()) or 1
    lines = []
    for pid, counts in sorted(samples.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counts.values())
        role = roles[pid].most_common(1)[0][0] if roles[pid] else "main"
        lines.append(f"profile: {n / total:6.1%} of CPU samples: {role} ({pid})")
        for frame, k in counts.most_common(top):
            lines.append(f"profile:     self {k / n:6.1%} {frame}")
        for frame, k in inclusive[pid].most_common(top + 8)[8:]:
            lines.append(f"profile:     incl {k / n:6.1%} {frame}")
    return lines


def run_server(
    name: str,
    files: dict[str, Path],
    settings: Path,
    seconds: float,
    workdir: Path,
    py_spy: str | None,
    emit,
    soak_s: float = 0.0,
) -> dict[tuple[str, int], Load]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/predict"
    cmd = command(name, files, port, settings)
    profile = workdir / f"{name}.pyspy"
    if py_spy and name == "evergreen":
        cmd = [
            py_spy,
            "record",
            "--subprocesses",
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(profile),
            "--",
            *cmd,
        ]
    log = workdir / f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    results = {}
    try:
        wait_ready(proc, url, files["one"].read_bytes(), log)
        wrk(url, files["one"], 16, 3)  # warm-up
        for c in CONCURRENCY:
            load = wrk(url, files["one"], c, seconds)
            results[("one", c)] = load
            emit(f"serve: {name} c={c} {load.describe()}")
        load = wrk(url, files["batch"], BATCH_CONCURRENCY, seconds)
        results[("batch", BATCH_CONCURRENCY)] = load
        rows = load.rps * BATCH_ROWS
        emit(f"serve: {name} batch={BATCH_ROWS} c={BATCH_CONCURRENCY} {load.describe(rows)}")
        if soak_s > 0:
            load, rss = soak(url, files["one"], proc.pid, soak_s)
            results[("soak", SOAK_CONCURRENCY)] = load
            emit(
                f"serve: {name} soak c={SOAK_CONCURRENCY} seconds={soak_s:.0f} {load.describe()} "
                f"rss_start_mb={rss[0]:.0f} rss_end_mb={rss[-1]:.0f} rss_max_mb={max(rss):.0f} "
                # growth that levels off is a buffer filling; growth to the end, a leak
                f"rss_mb_every_10s={','.join(f'{r:.0f}' for r in rss[::10])}"
            )
    finally:
        stop(proc, profiled=bool(py_spy and name == "evergreen"))
    if py_spy and name == "evergreen" and profile.exists():
        for line in summarize_profile(profile):
            emit(line)
    return results


def breakdown(files: dict[str, Path], repeats: int = 500) -> list[str]:
    """Wall time of each step of our request path, one at a time in this process, for one
    record and for 64: where a request's time goes outside HTTP handling (uvicorn, FastAPI)."""
    import multiprocessing
    import pickle
    import uuid

    from fastapi.responses import Response

    from serve.model import load_served_model
    from serve.schema import api_models

    model = load_served_model(files["onnx"], files["card"], range_margin=1.0)
    models = api_models(model.schema, 1000)
    feed = model.feed_from(model.schema)
    manager = multiprocessing.get_context("spawn").Manager()
    queue = manager.Queue()

    def encode(wire, scores) -> Response:
        rows = [
            {"customer_id": k, "score": s, "churn": s >= 0.5}
            for k, s in zip(wire.keys, scores.tolist(), strict=True)
        ]
        body = {"request_id": uuid.uuid4().hex, "model": {"name": "m"}, "predictions": rows}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    def steps(body: bytes) -> dict[str, Any]:
        wire = models.parse(body)
        packed = pickle.dumps(wire)
        inputs = feed.inputs(wire)
        scores = model.score(feed, wire)
        out = encode(wire, scores)
        return {
            "validate JSON (API server)": lambda: models.parse(body),
            "pickle+unpickle request": lambda: pickle.loads(pickle.dumps(wire)),
            # LitServe: put + get of the request, put + get of the answer, via its manager
            "4 queue calls (manager process)": lambda: (
                queue.put(packed),
                queue.get(),
                queue.put(packed),
                queue.get(),
            ),
            "feed (worker)": lambda: feed.inputs(wire),
            "onnxruntime run (worker)": lambda: model.predictor.session.run(
                ["probabilities"], inputs
            ),
            "encode JSON response (worker)": lambda: encode(wire, scores),
            "pickle+unpickle response": lambda: pickle.loads(pickle.dumps(out)),
        }

    costs: dict[str, dict[str, float]] = defaultdict(dict)
    for size in ("one", "batch"):
        for step, call in steps(files[size].read_bytes()).items():
            call()
            started = time.perf_counter()
            for _ in range(repeats):
                call()
            costs[step][size] = (time.perf_counter() - started) / repeats * 1e6
    manager.shutdown()
    costs["sum"] = {size: sum(c[size] for c in costs.values()) for size in ("one", "batch")}
    return [
        f"serve: breakdown {step:32s} one_us={c['one']:7.1f} batch64_us={c['batch']:7.1f}"
        for step, c in costs.items()
    ]


def verdicts(results: dict[str, dict[tuple[str, int], Load]]) -> list[str]:
    """Each server's ratio to the raw limit per concurrency, ours to the others, and the
    issue's targets (for `evergreen`, the direct mode), met or not."""
    lines = []
    raw = results.get(RAW)
    for name, loads in results.items():
        if raw is None or name == RAW:
            continue
        for c in CONCURRENCY:
            ratio = loads[("one", c)].rps / raw[("one", c)].rps
            lines.append(f"serve: ratio {name}/{RAW} c={c} rps={ratio:.2f}")
        ratio = loads[("batch", BATCH_CONCURRENCY)].rps / raw[("batch", BATCH_CONCURRENCY)].rps
        lines.append(f"serve: ratio {name}/{RAW} batch={BATCH_ROWS} rows_per_s={ratio:.2f}")
    ours = results.get("evergreen")
    if not ours:
        return lines
    for other in ("evergreen_queued", "fastapi_sklearn", "litserve_default_onnx"):
        for c in CONCURRENCY if other in results else ():
            ratio = ours[("one", c)].rps / results[other][("one", c)].rps
            lines.append(f"serve: ratio evergreen/{other} c={c} rps={ratio:.2f}")

    def target(what: str, met: bool, value: float) -> str:
        return f"serve: target {what}: {'met' if met else 'NOT met'} ({value:.2f})"

    c16 = ours[("one", 16)]
    if raw is not None:
        floor = 0.6 * raw[("one", 16)].rps
        lines.append(target(f"c=16 rps>={floor:.0f} (0.6x {RAW})", c16.rps >= floor, c16.rps))
    lines.append(target("c=16 p99_ms<=20", c16.p99_ms <= 20, c16.p99_ms))
    lines.append(target("c=16 errors=0", c16.errors == 0, c16.errors))
    rows = ours[("batch", BATCH_CONCURRENCY)].rps * BATCH_ROWS
    lines.append(target(f"batch={BATCH_ROWS} rows_per_s>=50000", rows >= 50000, rows))
    if ("soak", SOAK_CONCURRENCY) in ours:
        errors = ours[("soak", SOAK_CONCURRENCY)].errors
        lines.append(target(f"soak c={SOAK_CONCURRENCY} errors=0", errors == 0, errors))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load run")
    parser.add_argument("--servers", nargs="+", default=list(NAMES), choices=NAMES)
    parser.add_argument(
        "--evergreen", nargs="*", default=[], metavar="KEY=VALUE", help="settings overrides"
    )
    parser.add_argument(
        "--soak", type=float, default=60.0, help="seconds of the evergreen soak (0: none)"
    )
    parser.add_argument("--py-spy", help="py-spy binary: profile our server during its runs")
    parser.add_argument("--out", type=Path, help="also write the output here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        files = build_model(workdir)
        serve = yaml.safe_load((ROOT / "conf/serve/default.yaml").read_text())
        serve.update(model=str(files["onnx"]), card=str(files["card"]), threshold=0.5)
        serve.update(predictions_path=str(workdir / "predictions"))
        for item in args.evergreen:
            key, _, value = item.partition("=")
            serve[key] = yaml.safe_load(value)
        settings = workdir / "settings.yaml"
        settings.write_text(yaml.safe_dump({"serve": serve}))
        queued = {**serve, "mode": "queued"}
        (workdir / "settings_queued.yaml").write_text(yaml.safe_dump({"serve": queued}))
        keys = ("mode", "workers", "api_servers", "max_batch_size", "batch_timeout")
        shown = {k: serve[k] for k in keys}
        emit(f"serve: setup {load_text()}; evergreen settings {json.dumps(shown)}")
        results = {}
        for name in args.servers:
            soak_s = args.soak if name == "evergreen" else 0.0
            results[name] = run_server(
                name, files, settings, args.duration, workdir, args.py_spy, emit, soak_s
            )
            emit(f"serve: after {name}: {load_text()}")
        for line in verdicts(results):
            emit(line)
        if "evergreen_queued" in args.servers:  # queued mode's path, step by step
            for line in breakdown(files):
                emit(line)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
