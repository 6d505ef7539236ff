"""`evergreen backtest`: replay a lake's history under each retrain policy and say which pays.

    evergreen backtest --lake DIR --step-days K --out DIR [--params params.yaml]
        [--warmup-days N] [--start YYYY-MM-DD] [--end YYYY-MM-DD] [--policies a,b] [--work DIR]

Writes `<out>/backtest.json` (per policy: mean_metric, trainings, promotions, seconds, the
step-by-step series, and hindsight_best: the best mean any choice of as many training days
could have reached, from the top-level `hindsight` bound) and `<out>/backtest.html` (the plot
and the tables). How it replays: stages/lib/backtest.py; how to read it: README "Backtest:
choosing a retrain policy". Progress goes to stderr, one line per step and policy. Exit 0
when written, 2 on a usage or input error.

The gate is `evergreen gate`'s own (the paired bootstrap and its checks, `gate` params),
judged on the challenger's test split against the policy's model in production, scored on
the same rows; with no model in production, against the naive baseline.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stages.cli.gate import GateConfig, judge, score
from stages.lib.backtest import (
    HTML_FILE,
    JSON_FILE,
    BacktestConfig,
    BacktestError,
    Gate,
    GateResult,
    Settings,
    Trained,
    replay,
)
from stages.lib.backtest_page import comparison_line, render
from stages.lib.dataset import settings_for
from stages.lib.evaluation import EvaluateConfig
from stages.lib.io import write_bytes_atomic, write_json
from stages.lib.params import PARAMS_FILE, ParamsError, default_lake, load_params, section


def make_gate(params: dict) -> Gate:
    """`evergreen gate`'s verdict on in-memory models: both scored on the challenger's test
    split with the evaluate stage's code, then judged by the gate's checks."""
    cfg = GateConfig.from_params(settings_for(params, "gate"))
    eval_cfg = EvaluateConfig.from_params(section(params, "evaluate"))
    seed = int(section(params, "seed"))

    def gate(challenger: Trained, champion: Trained | None) -> GateResult:
        test, label = challenger.test, challenger.schema.label
        new = score(
            challenger.model, test, challenger.schema, label, eval_cfg, source=challenger.model_id
        )
        old = None
        if champion is not None:
            old = score(champion.model, test, champion.schema, label, eval_cfg,
                        source=f"{challenger.model_id}'s test split")  # fmt: skip
        verdict = judge(new, old, cfg, seed=seed)
        against = "the baseline" if champion is None else champion.model_id
        if verdict.blessed:
            return GateResult(True, f"blessed against {against}")
        failed = ", ".join(c.name for c in verdict.failed)
        # how sure: the first failed comparison's interval and what the test set can detect
        # ("inconclusive" and "worse" read alike without it)
        shown = next(
            (
                c
                for c in verdict.failed
                if None not in (c.difference, c.ci_low, c.ci_high, c.confidence, c.detectable)
            ),
            None,
        )
        sure = ""
        if shown is not None:
            sure = (
                f" (difference {shown.difference:+.4f}, {shown.confidence:.0%} CI "
                f"{shown.ci_low:+.4f} to {shown.ci_high:+.4f}, detectable {shown.detectable:.4f})"
            )
        return GateResult(False, f"{failed} failed against {against}{sure}")

    return gate


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evergreen backtest", description=__doc__.split("\n")[0])
    parser.add_argument("--lake", help="the lake folder (default: params lake.path)")
    parser.add_argument("--step-days", type=int, default=7, help="days between steps (7)")
    parser.add_argument("--out", type=Path, default=Path("reports/backtest"))
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    parser.add_argument(
        "--warmup-days",
        type=int,
        help="days of history before the first step (default: a full training window)",
    )
    parser.add_argument("--start", type=_date, help="the first step (overrides --warmup-days)")
    parser.add_argument(
        "--end", type=_date, help="the last step (default: the last day with matured labels)"
    )
    parser.add_argument("--policies", help="comma list of retrain.policies (default: all)")
    parser.add_argument(
        "--work", type=Path, help="scratch folder to keep (default: a temporary one, removed)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params)
        settings = Settings.from_params(params)
        gate = make_gate(params)
        cfg = BacktestConfig(
            step_days=args.step_days,
            warmup_days=args.warmup_days,
            start=args.start,
            end=args.end,
            policies=tuple(p.strip() for p in (args.policies or "").split(",") if p.strip()),
        )
    except (ParamsError, TypeError, ValueError, KeyError) as exc:
        print(f"evergreen backtest: {args.params}: {exc}", file=sys.stderr)
        return 2
    lake = default_lake(args.lake, args.params)
    if "://" in lake:
        print(f"evergreen backtest: --lake {lake}: expected a local folder", file=sys.stderr)
        return 2
    landing = Path(lake) / "landing"
    if not landing.is_dir():
        print(f"evergreen backtest: --lake {lake}: no landing/ folder in it", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="evergreen-backtest-") as scratch:
            work = args.work or Path(scratch)
            payload = replay(landing, work, settings, cfg, gate)
    except BacktestError as exc:
        print(f"evergreen backtest: {exc}", file=sys.stderr)
        return 2
    write_json(payload, args.out / JSON_FILE)
    write_bytes_atomic(render(payload).encode(), args.out / HTML_FILE)
    for name, p in payload["policies"].items():
        mean = "-" if p["mean_metric"] is None else f"{p['mean_metric']:.4f}"
        bound = "-" if p["hindsight_best"] is None else f"{p['hindsight_best']:.4f}"
        print(
            f"backtest {name}: mean {payload['metric']} {mean} over {p['steps_scored']} steps, "
            f"{p['trainings']} trainings, {p['promotions']} promotions, {p['seconds']:.1f} s; "
            f"best with hindsight at {p['trainings']} trainings {bound}"
        )
    for found in payload["comparisons"]:
        print(f"backtest: {comparison_line(found, payload['metric'])}")
    hindsight = payload["hindsight"]
    if hindsight["available"]:
        print(f"backtest: the bound with hindsight cost {hindsight['seconds']:.1f} s")
    else:
        print(f"backtest: no bound with hindsight: {hindsight['why']}")
    for warning in payload.get("warnings") or ():
        print(f"backtest: warning: {warning}")
    print(f"backtest: {args.out / JSON_FILE} and {args.out / HTML_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
