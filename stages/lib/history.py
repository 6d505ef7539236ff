"""The monitoring history (`metrics/monitor_history.csv`): one row per monitored date, which the
monitor upserts and the insights report draws.

Every row names the dataset it was computed on. A history that reached this project from
another one (a clone started for a new dataset, before `evergreen new` cleared it) or rows
written before rows named their dataset are not this project's: readers keep this dataset's
rows only and say what they left out, so no other dataset's numbers reach a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

DATASET = "dataset"
# read as text: dates and versions must not turn into numbers or timestamps
TEXT_COLUMNS = ("date", DATASET, "model_version", "live_snapshot")


def own_rows(frame: pd.DataFrame, dataset: str, where: str) -> tuple[pd.DataFrame, str | None]:
    """The rows of `frame` about `dataset`, and one line naming what was left out (None when
    nothing was)."""
    named = frame[DATASET] if DATASET in frame.columns else pd.Series(None, index=frame.index)
    mine = named.notna() & (named.astype(str) == dataset)
    others = named[~mine]
    if others.empty:
        return frame, None
    parts = []
    for name, count in sorted(others.dropna().astype(str).value_counts().items()):
        parts.append(f"{count} row(s) of dataset '{name}'")
    unnamed = int(others.isna().sum())
    if unnamed:
        parts.append(f"{unnamed} row(s) that name no dataset (written before rows named theirs)")
    note = f"{where}: ignored {', '.join(parts)}; this project's dataset is '{dataset}'"
    return frame[mine].reset_index(drop=True), note


def read_monitor_history(
    path: Path, dataset: str, columns: Sequence[str] = ()
) -> tuple[pd.DataFrame, str | None]:
    """This dataset's rows of the history CSV at `path` (empty, with `columns`, when there is
    no file), and the line `own_rows` gives about the rows it ignored."""
    if not path.is_file():
        return pd.DataFrame(columns=list(columns)), None
    frame = pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    return own_rows(frame, dataset, str(path))
