"""Stage `split`: out-of-time split over snapshot dates.

The work is stages/lib/splitting.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from stages.lib.io import write_frame, write_json
from stages.lib.params import section, stage_params
from stages.lib.predictions import SNAPSHOT_COL
from stages.lib.splitting import SplitConfig, split_snapshots


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.split", description=__doc__)
    parser.add_argument("snapshots", type=Path, help="features' labelled snapshots parquet")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    cfg = SplitConfig(**section(stage_params(args.params, "split"), "split"))
    parts = split_snapshots(pd.read_parquet(args.snapshots), cfg)
    summary = {}
    for name, part in parts.items():
        write_frame(part, args.out_dir / f"{name}.parquet")
        dates = sorted(str(pd.Timestamp(d).date()) for d in part[SNAPSHOT_COL].unique())
        summary[name] = {"rows": len(part), "snapshot_dates": dates}
        print(f"split {name}: {len(part)} rows, snapshots {dates[0]}..{dates[-1]}")
    write_json(summary, args.out_dir / "summary.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
