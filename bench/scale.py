"""Benchmark: prepare + features at 1x, 10x and 100x the demo data, on DuckDB and on Spark.

For each scale the simulated shop lake (`evergreen lake simulate`, 120 days, seed 7) gets
`initial_customers` and `signups_per_day` times the scale, is validated (in-process, and at
the --spark-scales also as Spark tasks, whose files are compared byte for byte), then
  duckdb   `python -m stages.prepare` and `python -m stages.features`, engine duckdb with the
           memory limit given (default: params.yaml's engine.memory_limit);
  pyspark  the same two commands with `engine.name: pyspark`, Spark in local mode (2 cores),
           at the scales in --spark-scales (each command starts its own JVM: ~10 s of it);
  pandas   `bench/pandas_baseline.py`: the same merge and features in plain pandas, at the
           scales in --pandas-scales; its outputs are compared with DuckDB's.
Each command runs in a fresh process: wall time (DuckDB and pandas: the fastest of --repeats
runs), and peak RSS of its process tree (the JVM included for Spark), sampled every 50 ms, or
the kernel's maximum for the main process where that is larger. Last, the ratios: pandas /
DuckDB at each scale, and DuckDB's cost per million events (flat = linear in the data).

    .venv/bin/python bench/scale.py | tee bench/scale.out
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
HISTORY_KEYS = {
    "events": ["event_id"],
    "customers": ["customer_id"],
    "customers_versions": ["customer_id", "updated_at"],
}


@dataclass
class Timed:
    seconds: float
    peak_mb: float


def measure(*cmd: str | Path) -> Timed:
    """Run `cmd` from the repository root; its wall time and the peak RSS of its tree."""
    peak = 0
    done = threading.Event()
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=log, stderr=log)

        def sample() -> None:
            nonlocal peak
            top = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    tree = [top, *top.children(recursive=True)]
                    peak = max(peak, sum(p.memory_info().rss for p in tree))
                except psutil.Error:
                    pass
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{log.read().decode()[-3000:]}")
    return Timed(seconds, max(peak, usage.ru_maxrss * 1024) / 2**20)


def write_params(base: dict, path: Path, scale: int, engine: dict) -> Path:
    params = {**base, "engine": {**base.get("engine", {}), **engine}}
    sim = dict(params["simulate"])
    sim["initial_customers"] *= scale
    sim["signups_per_day"] *= scale
    params["simulate"] = sim
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def fastest(repeats: int, *cmd: str | Path) -> Timed:
    """The fastest of `repeats` runs (the others waited longer for a core: the machine may be
    shared), with the largest peak RSS seen."""
    runs = [measure(*cmd) for _ in range(repeats)]
    return Timed(min(r.seconds for r in runs), max(r.peak_mb for r in runs))


def stages(validated: Path, out: Path, params: Path, repeats: int) -> tuple[Timed, Timed]:
    """prepare from nothing, then features; each `repeats` times (prepare's output is removed
    in between, so each run is a full build, not an incremental no-op)."""
    runs = []
    for _ in range(repeats):
        shutil.rmtree(out / "prepare", ignore_errors=True)
        runs.append(
            measure(PY, "-m", "stages.prepare", validated, out / "prepare", "--params", params)
        )
    prep = Timed(min(r.seconds for r in runs), max(r.peak_mb for r in runs))
    feat = fastest(
        repeats, PY, "-m", "stages.features", out / "prepare", out / "features", "--params", params
    )
    return prep, feat


def _sorted(path: Path, keys: list[str]) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(keys, kind="stable").reset_index(drop=True)


def agree(pandas_dir: Path, engine_dir: Path) -> str:
    """Whether the pandas baseline computed what the stages did: histories equal, features
    equal (amount sums within 1e-9: pandas sums floats, the stages sum exact decimals)."""
    for name, keys in HISTORY_KEYS.items():
        pd.testing.assert_frame_equal(
            _sorted(pandas_dir / f"{name}.parquet", keys),
            _sorted(engine_dir / "prepare" / f"{name}.parquet", keys),
            check_dtype=False,
        )
    worst = 0.0
    for name in ("snapshots", "predict"):
        keys = ["snapshot_date", "customer_id"]
        a = _sorted(pandas_dir / f"{name}.parquet", keys)
        b = _sorted(engine_dir / "features" / f"{name}.parquet", keys)
        pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-9, atol=1e-9)
        numeric = [c for c in b.columns if pd.api.types.is_float_dtype(b[c])]
        worst = max(worst, float(np.nanmax(np.abs(a[numeric] - b[numeric]).to_numpy())))
    return f"outputs agree (max |diff| {worst:.1e})"


def _parquet_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.parquet")}


def same_files(a: Path, b: Path) -> str:
    names = [f"prepare/{n}.parquet" for n in HISTORY_KEYS]
    names += ["features/snapshots.parquet", "features/predict.parquet"]
    differ = [n for n in names if (a / n).read_bytes() != (b / n).read_bytes()]
    return "byte-identical to DuckDB's" if not differ else f"differ from DuckDB's: {differ}"


Row = tuple[int, int, str, Timed, Timed | None]  # scale, events, engine, prepare, features


def run_scale(
    scale: int, case: Path, base: dict, args: argparse.Namespace, notes: list[str]
) -> list[Row]:
    """Simulate and validate the lake of one scale, then time every engine on it."""
    case.mkdir()
    params = write_params(
        base, case / "duckdb.yaml", scale, {"name": "duckdb", "memory_limit": args.memory_limit}
    )
    lake = case / "lake"
    measure(
        Path(PY).parent / "evergreen", "lake", "simulate", "--lake", lake,
        "--start", "2026-01-01", "--days", "120", "--seed", "7", "--params", params,
    )  # fmt: skip
    validated = case / "validated"
    v = measure(
        PY, "-m", "stages.validate", lake / "landing", validated, case / "v.json",
        "--params", params,
    )  # fmt: skip
    events = sum(pq.read_metadata(f).num_rows for f in (validated / "events").glob("*"))
    line = f"x{scale}: {events} validated events (validate {v.seconds:.1f} s"
    spark = write_params(base, case / "spark.yaml", scale, {"name": "pyspark"})
    if scale in args.spark_scales:  # the same validation as Spark tasks: the same files?
        on_spark = case / "validated-spark"
        vs = measure(
            PY, "-m", "stages.validate", lake / "landing", on_spark, case / "vs.json",
            "--params", spark,
        )  # fmt: skip
        same = _parquet_bytes(on_spark) == _parquet_bytes(validated)
        line += f"; on Spark {vs.seconds:.1f} s, {vs.peak_mb:.0f} MB, "
        line += "byte-identical files" if same else "FILES DIFFER"
    print(line + ")", flush=True)
    runs: dict[str, tuple[Timed, Timed | None]] = {
        "duckdb": stages(validated, case / "duckdb", params, args.repeats)
    }
    if scale in args.spark_scales:
        runs["pyspark"] = stages(validated, case / "pyspark", spark, 1)
        notes.append(f"x{scale} pyspark: {same_files(case / 'duckdb', case / 'pyspark')}")
    if scale in args.pandas_scales:
        baseline = ROOT / "bench/pandas_baseline.py"
        t = fastest(args.repeats, PY, baseline, validated, case / "pandas", "--params", params)
        runs["pandas"] = (t, None)
        notes.append(f"x{scale} pandas: {agree(case / 'pandas', case / 'duckdb')}")
    rows = []
    for engine, (prep, feat) in runs.items():
        rows.append((scale, events, engine, prep, feat))
        total = prep.seconds + (feat.seconds if feat else 0)
        print(
            f"  {engine:8s} prepare {prep.seconds:6.1f} s {prep.peak_mb:6.0f} MB"
            + (f" | features {feat.seconds:6.1f} s {feat.peak_mb:6.0f} MB" if feat else "")
            + f" | total {total:6.1f} s; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    return rows


def report(rows: list[Row], notes: list[str], startup: float) -> None:
    print()
    head = ["scale", "events", "engine", "prepare s", "prepare MB", "features s", "features MB"]
    print("| " + " | ".join([*head, "total s"]) + " |")
    print("|---" * (len(head) + 1) + "|")
    for scale, events, engine, prep, feat in rows:
        if feat is None:  # pandas: merge + features in one process
            cells = f"{prep.seconds:.1f} (merge + features) | {prep.peak_mb:.0f} | | "
        else:
            cells = (
                f"{prep.seconds:.1f} | {prep.peak_mb:.0f} | {feat.seconds:.1f} | "
                f"{feat.peak_mb:.0f} | "
            )
        total = prep.seconds + (feat.seconds if feat else 0)
        print(f"| {scale}x | {events:,} | {engine} | {cells}{total:.1f} |")
    print()
    totals = {(s, e): p.seconds + (f.seconds if f else 0) for s, _, e, p, f in rows}
    for scale in sorted({r[0] for r in rows}):
        for other in ("pandas", "pyspark"):
            if (scale, other) in totals:
                ratio = totals[scale, other] / totals[scale, "duckdb"]
                print(f"{other} / duckdb at {scale}x: {ratio:.2f}", end="")
                if other == "pandas":  # one process against two: without the start-up costs
                    work = (totals[scale, other] - startup) / (
                        totals[scale, "duckdb"] - 2 * startup
                    )
                    print(f" (without each process's start-up: {work:.2f})", end="")
                print()
    for scale, events, engine, prep, feat in rows:
        if engine == "duckdb" and feat is not None:
            per = (prep.seconds + feat.seconds) / (events / 1e6)
            peak = max(prep.peak_mb, feat.peak_mb)
            print(f"duckdb {scale}x: {per:.2f} s per million events; peak RSS {peak:.0f} MB")
    for note in notes:
        print(note)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--spark-scales", type=int, nargs="*", default=[1, 10])
    parser.add_argument("--pandas-scales", type=int, nargs="*", default=[1, 10, 100])
    parser.add_argument("--repeats", type=int, default=3, help="DuckDB and pandas: fastest of")
    parser.add_argument("--memory-limit", help="DuckDB's (default: params.yaml's)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    args.memory_limit = args.memory_limit or base["engine"]["memory_limit"]

    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        print(
            f"# DuckDB memory_limit {args.memory_limit}; Spark local[2]; wall seconds (DuckDB, "
            f"pandas: fastest of {args.repeats}; Spark: one run), peak RSS MB of the command's "
            "process tree"
        )
        # what every command pays before it reads a row: the interpreter and the imports
        startup = fastest(args.repeats, PY, "-c", "import stages.prepare, stages.features").seconds
        print(
            f"# start-up (python + imports of stages.prepare and stages.features): {startup:.2f} s"
        )
        for scale in args.scales:
            rows += run_scale(scale, Path(tmp) / f"x{scale}", base, args, notes)
        report(rows, notes, startup)
        print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
