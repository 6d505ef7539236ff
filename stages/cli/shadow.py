"""`evergreen shadow`: the shadow model's live record and the serving skew, from the server's
prediction log (stages/lib/shadow.py, stages/lib/skew.py say how they are judged).

    evergreen shadow [--out shadow.json] [--log PATH] [--days N] [--all-requests]

Prints a readable summary and, with `--out`, writes the record as JSON: the verdict (`shadow
better`, `not distinguishable`, `shadow worse`, or `not enough labelled requests` with how
many more are needed) with both models' metrics on the same requests and the paired interval
of the shadow's improvement, which a promotion can cite. The card, prepare's history, the
profiles (the latest day of data: which labels matured) and the train split are the monitor
stage's, as dvc.yaml gives them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.cli.monitor import stage_argv
from stages.contract.card import ModelCard
from stages.lib.dataset import dataset_from_params
from stages.lib.io import round_floats, write_metrics
from stages.lib.monitoring import served_sections
from stages.lib.params import PARAMS_FILE, load_params, section
from stages.lib.profiling import read_profiles
from stages.lib.shadow import summary_lines as shadow_lines
from stages.lib.skew import summary_lines as skew_lines


@dataclass(frozen=True)
class InputPaths:
    """The monitor stage's inputs the record reads, as dvc.yaml gives them."""

    profile_dir: Path
    card: Path
    history_dir: Path
    train: Path | None


def monitor_paths(dvc_yaml: Path) -> InputPaths:
    """The monitor stage's profiles, card, prepare's history and train split (dvc.yaml)."""
    stage = stage_argv(dvc_yaml)
    train = Path(stage[stage.index("--train") + 1]) if "--train" in stage[:-1] else None
    # an option's value is no position
    positional = [
        p
        for i, p in enumerate(stage)
        if not p.startswith("-") and (i == 0 or not stage[i - 1].startswith("-"))
    ]
    if len(positional) < 4:
        raise ValueError(f"{dvc_yaml}: stage 'monitor' does not give its input paths")
    profile_dir, card, _, history_dir = (Path(p) for p in positional[:4])
    return InputPaths(profile_dir, card, history_dir, train)


def latest_day(params: Mapping[str, Any], profile_dir: Path) -> dt.date:
    """The latest day of data (the profiles of the table that dates a run, as the monitor)."""
    dataset = dataset_from_params(section(params, "dataset"))
    table = dataset.task.table if dataset.task.rows else dataset.events.name
    profiles = read_profiles(profile_dir, table)
    if not profiles:
        raise FileNotFoundError(f"{profile_dir}/{table}: no profiles (the profiles stage)")
    return dt.date.fromisoformat(max(profiles))


def shadow_report(
    params: Mapping[str, Any], paths: InputPaths, *, all_requests: bool = False
) -> dict[str, Any]:
    """The latest day of data and the `shadow` and `serving_skew` sections (the monitor's)."""
    last_day = latest_day(params, paths.profile_dir)
    sections = served_sections(
        params,
        ModelCard.read(paths.card),
        paths.history_dir,
        paths.train,
        last_day,
        authenticated_only=not all_requests,
    )
    return round_floats({"date": last_day.isoformat(), **sections})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evergreen shadow", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    parser.add_argument(
        "--dvc-yaml", type=Path, default=Path("dvc.yaml"), help="where the monitor's paths are"
    )
    parser.add_argument("--log", help="the prediction log (default: serve.predictions_path)")
    parser.add_argument(
        "--days", type=int, help="the log's latest days to read (default: monitor.served_days)"
    )
    parser.add_argument(
        "--all-requests",
        action="store_true",
        help="judge unauthenticated requests too (default: those with the API key only)",
    )
    parser.add_argument("--out", type=Path, help="write the record as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.days is not None and args.days < 1:
        print("shadow: --days: expected a whole number >= 1", file=sys.stderr)
        return 2
    try:
        params = load_params(args.params)
        if args.log is not None:
            params = {
                **params,
                "serve": {**(params.get("serve") or {}), "predictions_path": args.log},
            }
        if args.days is not None:
            params = {
                **params,
                "monitor": {**(params.get("monitor") or {}), "served_days": args.days},
            }
        report = shadow_report(params, monitor_paths(args.dvc_yaml), all_requests=args.all_requests)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"shadow: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    for line in (*shadow_lines(report["shadow"]), *skew_lines(report["serving_skew"])):
        print(line)
    if args.out is not None:
        write_metrics(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
