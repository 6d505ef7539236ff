"""Stage `validate`: check every landed partition against the dataset's schema, losing no row.

The work is stages/lib/validation.py's (its docstring says how); this module reads the paths
dvc.yaml passes and the params section, and writes the outputs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.lib.dataset import (
    DatasetConfigError,
    dataset_from_params,
)
from stages.lib.engine import EngineConfig
from stages.lib.incremental import (
    remove_temp_siblings,
)
from stages.lib.io import (
    write_json,
)
from stages.lib.params import section, stage_params
from stages.lib.validation import (
    DST_NOT_INFERRED,
    ValidateConfig,
    ValidationFailed,
    check_thresholds,
    conservation_problems,
    results_of,
    run_validate,
    summarize,
    unlanded_tables,
    validate_fingerprint,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.validate", description=__doc__)
    parser.add_argument("landing_dir", type=Path, help="ingested landing zone (data/landing)")
    parser.add_argument("out_dir", type=Path, help="validated partitions, quarantine, manifest")
    parser.add_argument("metrics", type=Path, help="validation metrics JSON")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    params = stage_params(args.params, "validate")
    dataset_params, validate_params = section(params, "dataset"), section(params, "validate")
    try:
        dataset = dataset_from_params(dataset_params)
    except DatasetConfigError as exc:  # one line naming the file and key, not a traceback
        print(f"validate: {exc}", file=sys.stderr)
        return 2
    try:
        cfg = ValidateConfig(**validate_params)
    except (TypeError, ValueError) as exc:  # an unknown key or a value out of its choices
        print(f"validate: params validate: {exc}", file=sys.stderr)
        return 2
    try:
        engine = EngineConfig.from_params(params.get("engine"))
    except ValueError as exc:
        print(f"validate: {exc}", file=sys.stderr)
        return 2
    if not args.landing_dir.is_dir():
        print(f"validate: {args.landing_dir} not found (run `evergreen ingest`)", file=sys.stderr)
        return 2
    unlanded = unlanded_tables(args.landing_dir, dataset)
    if unlanded:  # a table or partition key naming nothing: fail here, not in a later stage
        for line in unlanded:
            print(f"validate: {line}", file=sys.stderr)
        return 2
    remove_temp_siblings(args.metrics)
    fp = validate_fingerprint(dataset_params, validate_params)
    run = run_validate(args.landing_dir, args.out_dir, dataset, fp, engine, cfg.extra_columns)
    metrics, report = summarize(run.entries, dataset.calendar, run.unread)
    write_json(metrics, args.metrics)
    print(
        f"validate: {len(run.plan.todo)} partition(s) validated, {len(run.plan.keep)} unchanged, "
        f"{len(run.plan.drop)} removed" + (f" ({run.rebuilt})" if run.rebuilt else "")
    )
    for name in run.entries:
        m = report[name]["totals"]
        print(
            f"validate {name}: {m['partitions']} partitions, {m['rows_in']} rows in, "
            f"{m['rows_valid']} valid, {m['rows_quarantined']} quarantined"
        )
        new = {part for table, part in run.plan.todo if table == name}
        _print_notes(name, report[name], cfg.extra_columns, new)
    problems = conservation_problems(run.entries) + check_thresholds(
        results_of(run.entries), cfg, dataset.calendar
    )
    if problems:
        print(ValidationFailed(problems), file=sys.stderr)
        return 1
    return 0


def _print_notes(name: str, table_report: dict, extra_columns: str, new: set[str]) -> None:
    """What a user should look at in a table's partitions, on stderr; never a failure. Days
    missing between the first and last partition, each run while they are missing (a day
    that never landed was seen only in the metrics, for weeks); a short partition once, when
    it is validated (`new`: a half-day stays in report.json, not on every run's stderr)."""
    missing = table_report["missing_days"]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        print(
            f"validate {name}: {len(missing)} day(s) with no partition between the first and "
            f"the last ({shown}; dataset.calendar says which days are expected)",
            file=sys.stderr,
        )
    for part, short in table_report["short_partitions"].items():
        if part not in new:
            continue
        print(
            f"validate {name}: partition {part} holds {short['rows_in']} rows where its "
            f"weekday usually holds {short['typical']} (a partial export?)",
            file=sys.stderr,
        )
    for folder, expected in table_report["folders_not_read"].items():
        print(
            f"validate {name}: folder '{folder}' not read (expected {expected})",
            file=sys.stderr,
        )
    parts = table_report["partitions"].items()
    guessed = {p: e[DST_NOT_INFERRED] for p, e in parts if e.get(DST_NOT_INFERRED)}
    if guessed:
        # `ambiguous: infer` fell back: these repeated hours are the earliest reading, a guess
        print(
            f"validate {name}: {sum(guessed.values())} row(s) in a repeated DST hour could "
            f"not be told apart by their order in {len(guessed)} partition(s) (first "
            f"{min(guessed)}: times out of order?); read as the earliest (dst.ambiguous)",
            file=sys.stderr,
        )
    extra = {p: e["extra_columns"] for p, e in parts if e.get("extra_columns")}
    if extra:
        columns = list(dict.fromkeys(c for cols in extra.values() for c in cols))
        print(
            f"validate {name}: column(s) {columns} not in the dataset, in {len(extra)} "
            f"partition(s) (first {min(extra)}): "
            f"{'kept' if extra_columns == 'keep' else 'dropped'} (validate.extra_columns)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    raise SystemExit(main())
