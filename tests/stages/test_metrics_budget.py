"""`dvc metrics show` fits a screen: the metrics files hold the scalars a person compares across
runs (issue 16); tables (per partition, per column, per slice, per check) live in report data.

The budget is counted as DVC prints it: `dvc metrics show --json` on the repository's committed
demo state, every leaf of a file's mapping one value (a list is one value, as DVC prints it)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 60


def values(tree: Any) -> int:
    """How many values DVC prints for one metrics file (flatten_dict: mappings only, an empty
    one prints nothing)."""
    if isinstance(tree, Mapping):
        return sum(values(v) for v in tree.values())
    return 1


def declared_metrics(dvc_yaml: Path) -> list[str]:
    doc = yaml.safe_load(dvc_yaml.read_text())
    paths = [next(iter(m)) if isinstance(m, Mapping) else m for m in doc.get("metrics") or ()]
    for stage in (doc.get("stages") or {}).values():
        for entry in stage.get("metrics") or ():
            paths.append(next(iter(entry)) if isinstance(entry, Mapping) else entry)
    return paths


def test_values_counts_as_dvc_flattens() -> None:
    assert values({"a": 1, "b": {"c": None, "d": [1, 2, 3]}, "e": {"f": {"g": "x"}, "h": {}}}) == 4
    # a per-partition table: every cell is a column of `dvc metrics show`
    table = {"by_partition": {f"2026-01-{d:02d}": {"rows_in": 1, "rows_valid": 1} for d in (1, 2)}}
    assert values(table) == 4


def test_the_demo_metrics_fit_a_screen() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    files = json.loads(shown.stdout)[""]["data"]
    declared = declared_metrics(ROOT / "dvc.yaml")
    missing = [p for p in declared if p not in files]
    if len(missing) == len(declared):
        pytest.skip("no metrics file in this checkout (not the demo state)")
    counts = {path: values(entry.get("data", {})) for path, entry in files.items()}
    total = sum(counts.values())
    assert total <= BUDGET, f"`dvc metrics show` prints {total} values (> {BUDGET}): {counts}"
