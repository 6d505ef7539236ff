"""`evergreen lake simulate`: write the shop's simulated lake, or a sample dataset's lake."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
from collections.abc import Sequence

from stages.lib.params import default_lake
from stages.sim.samples import SAMPLES, SampleLakeMismatch, write_sample
from stages.sim.shop import (
    FAULTS,
    LakeMismatchError,
    load_config,
    load_fault_config,
    parse_faults,
    simulate,
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen lake simulate",
        description="Write the simulated shop lake as daily partitions (or append to one).",
    )
    parser.add_argument("--lake", help="lake folder or fsspec URL (default: params lake.path)")
    parser.add_argument(
        "--dataset",
        default="shop",
        choices=("shop", *SAMPLES),
        help="which example dataset's lake to write (conf/dataset/NAME.yaml; default shop)",
    )
    parser.add_argument(
        "--start", type=dt.date.fromisoformat, help="first day, YYYY-MM-DD (new lakes)"
    )
    parser.add_argument(
        "--days",
        type=_positive_int,
        help="with --start: simulate through day start+DAYS-1; without: append DAYS days "
        "(required for the shop; the other datasets have a small default)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: params seed)")
    parser.add_argument("--customers", type=_positive_int, help="override initial_customers")
    parser.add_argument(
        "--faults",
        default="none",
        help=f"faults to inject into the days written: all, none (default) or a comma list of "
        f"{', '.join(FAULTS)}; how much of each: params simulate.faults",
    )
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args(argv)

    if args.dataset != "shop":
        return _write_sample(args)
    if args.days is None:
        parser.error("the following arguments are required: --days")
    try:
        faults = parse_faults(args.faults)
    except ValueError as err:
        print(f"evergreen lake simulate: --faults: {err}", file=sys.stderr)
        return 2
    try:
        config, params_seed = load_config(args.params)
        fault_config = load_fault_config(args.params)
    except (KeyError, ValueError) as err:
        print(f"evergreen lake simulate: {args.params}: {err}", file=sys.stderr)
        return 2
    if args.customers is not None:
        config = dataclasses.replace(config, initial_customers=args.customers)
    lake = default_lake(args.lake, args.params)
    try:
        result = simulate(
            lake,
            days=args.days,
            config=config,
            start=args.start,
            seed=args.seed,
            default_seed=params_seed,
            faults=faults,
            fault_config=fault_config,
        )
    except LakeMismatchError as err:
        print(f"evergreen lake simulate: {err}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def _write_sample(args: argparse.Namespace) -> int:
    """`--dataset retail|bank|bikes`: that dataset's generated sample lake (stages/sim/samples)."""
    if args.faults != "none" or args.customers is not None:
        print("evergreen lake simulate: --faults and --customers are the shop's", file=sys.stderr)
        return 2
    # params seed where there is a params file (a project), else the default, as for the shop
    seed = args.seed if args.seed is not None else load_config(args.params)[1]
    lake = default_lake(args.lake, args.params)
    try:
        print(write_sample(args.dataset, lake, start=args.start, days=args.days, seed=seed))
    except SampleLakeMismatch as err:
        print(f"evergreen lake simulate: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
