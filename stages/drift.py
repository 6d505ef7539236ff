"""Stage `drift`: the latest partitions against the data the model was trained on.

The work is stages/lib/drift.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.lib.dataset import dataset_from_params, settings_for
from stages.lib.drift import INPUT, DriftConfig, column_roles, compute_drift, drift_summary
from stages.lib.io import write_json
from stages.lib.params import section, stage_params
from stages.lib.profiling import read_profiles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.drift", description=__doc__)
    parser.add_argument("profile_dir", type=Path, help="profile's output")
    parser.add_argument("split_summary", type=Path, help="split's summary.json (train dates)")
    parser.add_argument("metrics", type=Path, help="data drift metrics JSON (the headline)")
    parser.add_argument("report", type=Path, help="the whole drift report JSON (every column)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = stage_params(args.params, "drift")
    try:
        dataset = dataset_from_params(section(params, "dataset"))
        cfg = DriftConfig.from_params(section(params, "drift"))
        seasonal = settings_for(params, "monitor").get("seasonal") or ()
    except ValueError as exc:  # a DatasetConfigError names the file and key
        print(f"drift: {exc}", file=sys.stderr)
        return 2
    # the monitor's roles: what the model reads can drift, the rest is listed (the dataset's
    # declared inputs; an excluded feature stays one here, a column it still computes)
    task, ef = dataset.task, dataset.entity_features
    inputs = [*task.numeric, *task.categorical] if task.rows else [*ef.numeric, *ef.categorical]
    roles = column_roles(dataset, inputs, seasonal)
    train = json.loads(args.split_summary.read_text())["train"]["snapshot_dates"]
    profiles = {t.name: read_profiles(args.profile_dir, t.name) for t in dataset.tables}
    report = compute_drift(profiles, dataset, train, cfg, roles)
    write_json(report, args.report)
    write_json(drift_summary(report), args.metrics)
    for name, t in report["tables"].items():
        columns = t.get("columns", {})
        flagged = sorted(c for c, m in columns.items() if m["drifted"] and m["role"] == INPUT)
        # seasonal inputs, the target, ids and free text, columns the model does not read: each
        # with its role (a seasonal column is an input, just not one that can drift the verdict)
        listed = sorted(
            f"{c} ({m['role']})" for c, m in columns.items() if m["drifted"] and m["role"] != INPUT
        )
        print(
            f"drift {name}: {'DRIFTED' if t['drifted'] else 'stable'}"
            + (f" ({', '.join(flagged)})" if flagged else "")
            + (f"; moved, not counted: {', '.join(listed)}" if listed else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
