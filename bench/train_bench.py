"""Training time per model family, and ONNX Runtime vs native predict latency.

    .venv/bin/python bench/train_bench.py                      # the demo lake (1500 customers)
    .venv/bin/python bench/train_bench.py --customers 15000    # 10x

Builds the train/valid/test splits the way `dvc repro` does (simulate -> validate -> prepare
-> features -> split, in a temporary folder), then for each family in conf/model/: one fit
with the config's hyperparameters (no tuning trials: the time of one trial), its test ROC AUC,
and the median latency of scoring a pandas frame of 1 and of 64 rows natively
(`positive_proba` on the skops Pipeline) and with `OnnxPredictor` on the exported graph,
single-threaded both, printed with their ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from stages import features, prepare, split, validate
from stages.contract.feature_schema import FeatureSchema, load_schema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.onnx_export import export_onnx
from stages.lib.params import compose_params
from stages.lib.training import ModelConfig, positive_proba, train_model
from stages.sim import shop as simulate

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("logreg", "hgb", "rf", "mlp")


def build_splits(
    work: Path, customers: int, days: int, seed: int
) -> tuple[dict[str, pd.DataFrame], FeatureSchema, dict]:
    """The splits of a simulated lake, through the project's own stages."""
    params_path = compose_params(ROOT / "conf", work / "params.yaml")
    params = yaml.safe_load(params_path.read_text())
    params["simulate"]["initial_customers"] = customers
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    config = simulate.SimulateConfig.from_params(params["simulate"])
    lake = work / "lake"
    simulate.simulate(str(lake), days=days, config=config, start=dt.date(2026, 1, 1), seed=seed)
    p = ["--params", str(params_path)]
    steps = [
        (validate.main, [lake / "landing", work / "validate", work / "validation.json"]),
        (prepare.main, [work / "validate", work / "prepare"]),
        (features.main, [work / "prepare", work / "features"]),
        (split.main, [work / "features" / "snapshots.parquet", work / "split"]),
    ]
    for step, args in steps:
        if step([*map(str, args), *p]) != 0:
            raise SystemExit(f"bench: {step.__module__} failed")
    frames = {
        s: pd.read_parquet(work / "split" / f"{s}.parquet") for s in ("train", "valid", "test")
    }
    return frames, load_schema(work / "features" / "feature_schema.json"), params


def median_us(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU time of `fn` in microseconds, after two warm-up calls.

    CPU time (this process, all threads) is what the call costs; on a busy machine the wall time
    also counts the time the process waited for a core.
    """
    fn()
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter_ns(), time.process_time_ns()
        fn()
        cpu.append(time.process_time_ns() - start_cpu)
        wall.append(time.perf_counter_ns() - start)
    return statistics.median(wall) / 1000.0, statistics.median(cpu) / 1000.0


def bench_family(
    family: str,
    frames: dict[str, pd.DataFrame],
    schema: FeatureSchema,
    seed: int,
    repeats: int,
) -> dict[str, float]:
    cfg = ModelConfig.from_params(
        yaml.safe_load((ROOT / "conf/model" / f"{family}.yaml").read_text())
    )
    start = time.perf_counter()
    model = train_model(frames["train"], schema, cfg, seed, valid=frames["valid"])
    fit_s = time.perf_counter() - start
    test = frames["test"]
    auc = roc_auc_score(test[schema.label], positive_proba(model, test, schema))
    predictor = OnnxPredictor(export_onnx(model, schema).SerializeToString(), schema, threads=1)
    row: dict[str, float] = {"fit_s": fit_s, "test_roc_auc": auc}
    with threadpool_limits(limits=1):
        for n in (1, 64):
            batch = test.head(n)
            native = median_us(lambda b=batch: positive_proba(model, b, schema), repeats)
            onnx = median_us(lambda b=batch: predictor.predict_proba(b), repeats)
            row[f"native_{n}_us"], row[f"native_{n}_cpu_us"] = native
            row[f"onnx_{n}_us"], row[f"onnx_{n}_cpu_us"] = onnx
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1500, help="initial customers")
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per latency")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="evergreen-bench-") as tmp:
        start = time.perf_counter()
        frames, schema, _ = build_splits(Path(tmp), args.customers, args.days, args.seed)
        print(
            f"data: {args.customers} customers, {args.days} days -> train {len(frames['train'])}, "
            f"valid {len(frames['valid'])}, test {len(frames['test'])} rows, "
            f"{len(schema.features)} features (built in {time.perf_counter() - start:.0f} s)"
        )
        header = (
            f"{'family':<7} {'fit s':>6} {'test AUC':>8} | {'rows':>4} {'native µs':>10} "
            f"{'onnx µs':>8} {'ratio':>6} | {'native cpu µs':>13} {'onnx cpu µs':>11} {'ratio':>6}"
        )
        print(header)
        print("-" * len(header))
        for family in args.families.split(","):
            r = bench_family(family, frames, schema, args.seed, args.repeats)
            for i, n in enumerate((1, 64)):
                lead = (
                    f"{family:<7} {r['fit_s']:>6.2f} {r['test_roc_auc']:>8.4f}"
                    if i == 0
                    else " " * 23
                )
                wall = (r[f"native_{n}_us"], r[f"onnx_{n}_us"])
                cpu = (r[f"native_{n}_cpu_us"], r[f"onnx_{n}_cpu_us"])
                print(
                    f"{lead} | {n:>4} {wall[0]:>10.0f} {wall[1]:>8.0f} {wall[0] / wall[1]:>5.1f}x"
                    f" | {cpu[0]:>13.0f} {cpu[1]:>11.0f} {cpu[0] / cpu[1]:>5.1f}x"
                )
    print(
        "median of the timed calls; ratio = native / ONNX Runtime (higher: ONNX faster); "
        "single-threaded both; fit = one fit with the config's hyperparameters"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
