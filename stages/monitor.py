"""Stage `monitor`: should the model be retrained? (stages/lib/monitoring.py says how it judges)"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.lib.monitoring import MonitorPaths, print_verdict, run_monitor
from stages.lib.params import PARAMS_FILE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stages.monitor", description=__doc__)
    parser.add_argument("profile_dir", type=Path, help="the profiles stage's output")
    parser.add_argument("card", type=Path, help="the model card")
    parser.add_argument("predict_dir", type=Path, help="predict's output")
    parser.add_argument("history_dir", type=Path, help="prepare's output")
    parser.add_argument("out", type=Path, help="monitor.json to write (the headline)")
    parser.add_argument("history_out", type=Path, help="history CSV to upsert")
    parser.add_argument("report", type=Path, help="the whole report JSON to write")
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    parser.add_argument(
        "--train", type=Path, help="the train split: the served inputs' reference (serving skew)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run_monitor(MonitorPaths(**vars(args)))
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"monitor: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    print_verdict(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
