"""`evergreen monitor [--dispatch]`: run the monitor stage's command now, as dvc.yaml gives it,
so fresh server logs are read at once; with `--dispatch`, start the retrain workflow when
retraining is recommended (stages/cli/dispatch.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from stages.cli import dispatch
from stages.lib.monitoring import MonitorPaths, print_verdict, run_monitor
from stages.lib.params import PARAMS_FILE

STAGE_MODULE = "stages.monitor"


def stage_argv(dvc_yaml: Path) -> list[str]:
    """The arguments dvc.yaml gives the monitor stage (its paths live there only)."""
    if not dvc_yaml.is_file():
        raise FileNotFoundError(f"{dvc_yaml}: not found (run `evergreen monitor` in the repo root)")
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    if "monitor" not in stages:
        raise ValueError(f"{dvc_yaml}: has no 'monitor' stage")
    argv = shlex.split(str(stages["monitor"]["cmd"]))
    if argv[:3] != ["python", "-m", STAGE_MODULE]:
        raise ValueError(f"{dvc_yaml}: stage 'monitor' does not run stages.monitor")
    return argv[3:]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evergreen monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    parser.add_argument(
        "--dvc-yaml", type=Path, default=Path("dvc.yaml"), help="where the stage's paths are"
    )
    parser.add_argument(
        "--dispatch",
        action="store_true",
        help="run the retrain workflow when retraining is recommended",
    )
    parser.add_argument("--repo", help="for --dispatch: OWNER/NAME")
    parser.add_argument("--workflow", default="retrain.yml", help="for --dispatch")
    parser.add_argument("--ref", default="main", help="for --dispatch")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        stage = stage_argv(args.dvc_yaml)
        # the train split (serving skew's reference) is an option: its value is no position
        train = Path(stage[stage.index("--train") + 1]) if "--train" in stage[:-1] else None
        stage = [p for i, p in enumerate(stage) if "--train" not in stage[max(i - 1, 0) : i + 1]]
        paths = [Path(p) for p in stage if not p.startswith("-")][:7]
        if len(paths) != 7:
            raise ValueError(f"{args.dvc_yaml}: stage 'monitor' does not give the seven paths")
        *inputs, report_path = paths
        report = run_monitor(
            MonitorPaths(*inputs, params=args.params, report=report_path, train=train)
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"monitor: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    print_verdict(report)
    if args.dispatch and report["retrain_recommended"]:
        extra = ["--workflow", args.workflow, "--ref", args.ref]
        return dispatch.main([*extra, *(["--repo", args.repo] if args.repo else [])])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
