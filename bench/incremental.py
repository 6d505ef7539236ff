"""Benchmark: the daily prediction run against a full build, on 30, 90 and 365 days of history.

For each history length and lake size, in a fresh git + DVC repository (like tests/e2e):
  full build   simulate N days, then time `evergreen ingest` and `dvc repro prepare` (validate +
               prepare) from nothing, three times (the repository reset in between), then once
               the training run (`dvc repro card drift` + `evergreen champion`) and the
               prediction stages (`dvc repro report`);
  new day      simulate one more day and time ingest, validate + prepare and the prediction
               stages (the breakdown of `evergreen run prediction`); three new days in a
               row, the prediction stages after the first only;
  next day     one more day through the commands production runs: `evergreen ingest` and
               `evergreen run prediction --lake` (one `dvc repro report`, then publish).
The champion the prediction stages score with is trained once per lake size on a 120-day lake
and copied into every case (a 30-day history is too short for a labelled snapshot), so each
case's prediction run scores with the same kind of model. Each figure keeps the fastest of
the three (the others waited longer for a core: the machine may be shared). It prints, per
case, seconds (wall and CPU of each command's process tree) and peak RSS, then
`prediction_run_ratio_365` (the next day's prediction run on 365 days / the full build of 365
days: ingest, validate + prepare, training run, prediction stages) and
`prediction_growth_365_30` (the prediction run on 365 days / on 30 days), wall time on the
largest lake size; and `incremental_ratio_365` / `growth_ratio_365_30`, the same for ingest +
validate + prepare alone. Last, `validate_partition` on a 1M-row partition.

    .venv/bin/python bench/incremental.py | tee bench/incremental.out
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
START = "2026-01-01"


@dataclass
class Timed:
    seconds: float  # wall clock
    cpu: float  # user + system of the command's process tree
    peak_rss_mb: float


Cycle = dict[str, Timed | None]
STEPS = ("ingest", "validate+prepare", "training", "prediction")


def run(cwd: Path, *cmd: str) -> Timed:
    """Run `cmd`; its wall time and the peak RSS of its process tree (largest process)."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        # wait4 gives this child's own rusage (its waited-for descendants included), not the
        # running maximum over every child this script ever had
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{output}")
    return Timed(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def init_repo(repo: Path) -> None:
    repo.mkdir(parents=True)
    for tree in ("conf", "stages"):
        shutil.copytree(ROOT / tree, repo / tree, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    run(repo, "git", "init", "-q")
    run(repo, "dvc", "init", "-q")
    run(repo, "dvc", "config", "hydra.enabled", "true")


def add_timed(a: Timed, b: Timed) -> Timed:
    return Timed(a.seconds + b.seconds, a.cpu + b.cpu, max(a.peak_rss_mb, b.peak_rss_mb))


def train_champion(repo: Path) -> Timed:
    """The training run's stages, the model made the champion (models/champion.dvc)."""
    return add_timed(run(repo, "dvc", "repro", "card", "drift"), run(repo, "evergreen", "champion"))


def cycle(repo: Path, downstream: bool, full: bool) -> Cycle:
    """ingest, validate + prepare, then (with `downstream`) the training run on a full build
    (None when it fails: 30 days are too short a history for a labelled snapshot) and the
    prediction stages."""
    out: Cycle = {
        "ingest": run(repo, "evergreen", "ingest", "--lake", "lake"),
        "validate+prepare": run(repo, "dvc", "repro", "prepare"),
    }
    if downstream:
        if full:
            try:
                out["training"] = train_champion(repo)
            except RuntimeError as exc:
                out["training"] = None
                reason = [line for line in str(exc).splitlines() if line.startswith("features:")]
                print(f"# {repo.name}: training failed: {reason or str(exc)[-300:]}")
        out["prediction"] = run(repo, "dvc", "repro", "report")
    return out


def reset(repo: Path) -> None:
    """Back to before the first ingest: no snapshot, no outputs, no cache, no lock file."""
    for name in ("data", "artifacts", "metrics", "plots", ".dvc/cache", ".dvc/tmp"):
        shutil.rmtree(repo / name, ignore_errors=True)
    for name in ("model.skops", "model.onnx", "model_card.json"):
        (repo / "models" / name).unlink(missing_ok=True)
    for name in ("data.dvc", "dvc.lock"):
        (repo / name).unlink(missing_ok=True)


def fastest(cycles: list[Cycle]) -> Cycle:
    """The repetition whose ingest + validate + prepare took the least wall time, with the
    downstream timing of the one repetition that ran it."""
    best = dict(min(cycles, key=ivp))
    for step in STEPS[2:]:
        best[step] = next((c[step] for c in cycles if step in c), None)
    return best


def champion_for(work: Path, customers: int) -> Path:
    """A champion (models/champion/) trained on a 120-day lake of `customers`."""
    repo = work / f"champion-c{customers}"
    init_repo(repo)
    simulate = ["evergreen", "lake", "simulate", "--lake", "lake", "--seed", "7"]
    run(repo, *simulate, "--start", START, "--days", "120", "--customers", str(customers))
    run(repo, "evergreen", "ingest", "--lake", "lake")
    train_champion(repo)
    return repo / "models/champion"


def case(
    work: Path, days: int, customers: int, repeats: int, downstream: bool, champion: Path | None
) -> dict[str, Cycle]:
    repo = work / f"d{days}-c{customers}"
    init_repo(repo)
    simulate = ["evergreen", "lake", "simulate", "--lake", "lake", "--seed", "7"]
    run(repo, *simulate, "--start", START, "--days", str(days), "--customers", str(customers))
    fulls = []
    for i in range(repeats):
        if i:
            reset(repo)
        last = i == repeats - 1
        if downstream and last and champion is not None:
            shutil.rmtree(repo / "models/champion", ignore_errors=True)
            shutil.copytree(champion, repo / "models/champion")
        fulls.append(cycle(repo, downstream and last, full=True))
    if downstream and champion is not None:
        # the full build's own training run promoted its model: score the new days with the
        # shared champion, as every case does
        shutil.rmtree(repo / "models/champion")
        shutil.copytree(champion, repo / "models/champion")
        run(repo, "dvc", "add", "-q", "models/champion")
    new_days = []
    for i in range(repeats):
        run(repo, *simulate, "--days", "1")
        if downstream and i == 0:
            run(repo, "dvc", "repro", "report")  # the champion swap's rerun is not a new day's
        new_days.append(cycle(repo, downstream and i == 0, full=False))
    found = {"full": fastest(fulls), "new day": fastest(new_days)}
    if downstream:
        # one more day through the command production runs: `evergreen run prediction` is one
        # `dvc repro report` (validate, profiles, prepare and the prediction stages: one DVC
        # start, not the two the breakdown above pays) and `evergreen publish`
        run(repo, *simulate, "--days", "1")
        found["command"] = {
            "ingest": run(repo, "evergreen", "ingest", "--lake", "lake"),
            "run prediction": run(repo, "evergreen", "run", "prediction", "--lake", "lake"),
        }
    shutil.rmtree(repo)
    return found


def ivp(t: Cycle, cpu: bool = False) -> float:
    """ingest + validate + prepare: what the ratios use."""
    return sum(getattr(t[k], "cpu" if cpu else "seconds") for k in STEPS[:2])


def whole(t: Cycle, steps: tuple[str, ...] = STEPS) -> float:
    """The sum of `steps` (nan when one failed or was not run)."""
    return sum(t[k].seconds if t.get(k) else float("nan") for k in steps)


def prediction_run(case: Mapping[str, Cycle]) -> float:
    """A new day's prediction run: `evergreen ingest` + `evergreen run prediction` (publish
    included), or ingest + validate + prepare + the prediction stages where that was not run."""
    if "command" in case:
        return sum(t.seconds for t in case["command"].values() if t)
    return whole(case["new day"], ("ingest", "validate+prepare", "prediction"))


def describe(t: Cycle) -> str:
    cells = [f"{k} {t[k].seconds:.2f}s" if t.get(k) else f"{k} n/a" for k in STEPS if k in t]
    rss = max(x.peak_rss_mb for x in t.values() if x)
    return ", ".join(cells) + f" (ingest+v+p cpu {ivp(t, cpu=True):.2f}s; peak RSS {rss:.0f} MB)"


def one_million_rows(work: Path) -> tuple[float, float]:
    """validate_partition on a 1M-row events partition: (first call, best of three)."""
    code = f"""
import time
from pathlib import Path
import numpy as np, pandas as pd, yaml
from stages.lib.dataset import dataset_from_params
from stages.lib.validation import validate_partition
n = 1_000_000
rng = np.random.default_rng(7)
frame = pd.DataFrame({{
    "event_id": np.arange(n, dtype="int64"),
    "customer_id": rng.integers(0, 15_000, n),
    "event_time": pd.Timestamp("{START}") + pd.to_timedelta(rng.integers(0, 86_400, n), "s"),
    "event_type": rng.choice(["session", "order", "support_ticket", "refund"], n),
    "amount": np.where(rng.random(n) < 0.3, rng.gamma(2.0, 20.0, n), np.nan),
}})
frame["event_time"] = frame["event_time"].astype("datetime64[us]")
path = Path(r"{work}") / "landing/events/date={START}/part-0000.parquet"
path.parent.mkdir(parents=True, exist_ok=True)
frame.to_parquet(path, index=False)
table = dataset_from_params(yaml.safe_load(open("params.yaml"))["dataset"]).table("events")
times = []
for _ in range(3):
    start = time.perf_counter()
    result = validate_partition([path], table, "{START}")
    times.append(time.perf_counter() - start)
assert result.rows_in == n, result.rows_in
print(times[0], min(times))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    first, best = done.stdout.split()
    return float(first), float(best)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, nargs="+", default=[30, 90, 365])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10], help="× demo customers")
    parser.add_argument("--no-whole", action="store_true", help="skip the downstream stages")
    parser.add_argument("--repeats", type=int, default=3, help="keep the fastest of this many")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    demo_customers = int(params["simulate"]["initial_customers"])

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        print(f"# seconds, fastest of {args.repeats}; v+p = validate + prepare")
        print("# peak RSS: the largest process of a command's tree")
        results = {}
        for scale in args.scales:
            customers = demo_customers * scale
            champion = None if args.no_whole else champion_for(work, customers)
            for days in args.days:
                r = case(work, days, customers, args.repeats, not args.no_whole, champion)
                results[scale, days] = r
                f, n = r["full"], r["new day"]
                print(f"{days} days, {customers} customers:")
                print(f"  full build: {describe(f)}")
                print(f"  new day:    {describe(n)}")
                if "command" in r:
                    c = r["command"]
                    print(
                        f"  next day:   evergreen ingest {c['ingest'].seconds:.2f}s, evergreen "
                        f"run prediction {c['run prediction'].seconds:.2f}s (cpu "
                        f"{c['run prediction'].cpu:.2f}s; peak RSS "
                        f"{c['run prediction'].peak_rss_mb:.0f} MB)"
                    )
                print(
                    f"  new day / full: ingest+v+p {ivp(n) / ivp(f):.3f} (cpu "
                    f"{ivp(n, cpu=True) / ivp(f, cpu=True):.3f}), prediction run / full build "
                    f"{prediction_run(r) / whole(f):.3f}",
                    flush=True,
                )
        top = max(args.scales)
        if 365 in args.days and not args.no_whole:
            f365, r365 = results[top, 365]["full"], results[top, 365]
            print(
                f"# the daily prediction run (evergreen ingest + evergreen run prediction), "
                f"{demo_customers * top} customers, wall time"
            )
            print(f"prediction_run_ratio_365: {prediction_run(r365) / whole(f365):.3f}")
            if 30 in args.days:
                r30 = results[top, 30]
                print(f"prediction_growth_365_30: {prediction_run(r365) / prediction_run(r30):.3f}")
        if 365 in args.days:
            f365, n365 = results[top, 365]["full"], results[top, 365]["new day"]
            print(f"# ingest + validate + prepare, {demo_customers * top} customers, wall time")
            print(f"incremental_ratio_365: {ivp(n365) / ivp(f365):.3f}")
            if 30 in args.days:
                n30 = results[top, 30]["new day"]
                print(f"growth_ratio_365_30: {ivp(n365) / ivp(n30):.3f}")
            print(f"# the same in cpu time: {ivp(n365, True) / ivp(f365, True):.3f}", end="")
            if 30 in args.days:
                print(f", growth {ivp(n365, True) / ivp(n30, True):.3f}", end="")
            print()
        first, best = one_million_rows(work)
        print(f"validate_1m_rows_s: {first:.2f} (first call), {best:.2f} (best of 3)")
        print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
