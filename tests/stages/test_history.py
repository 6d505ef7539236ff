"""The monitoring history names the dataset of each row; its readers keep this dataset's rows
and say what they ignored (a history copied from another project never reaches a report)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stages.lib.history import own_rows, read_monitor_history
from stages.lib.monitoring import HISTORY_COLUMNS, history_row, upsert_history
from stages.report import main as report_main
from tests.stages.test_report_page import make_page


def test_own_rows_keeps_this_datasets_rows_and_names_the_others() -> None:
    frame = pd.DataFrame(
        {
            "date": ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"],
            "dataset": ["shop", "bank", None, "shop", "bank"],
            "psi_max": [0.1, 0.2, 0.3, 0.4, 0.5],
        }
    )
    kept, note = own_rows(frame, "bank", "h.csv")
    assert kept["date"].tolist() == ["2026-01-02", "2026-01-05"]
    assert note == (
        "h.csv: ignored 2 row(s) of dataset 'shop', 1 row(s) that name no dataset (written "
        "before rows named theirs); this project's dataset is 'bank'"
    )
    assert own_rows(kept, "bank", "h.csv") == (kept, None)
    # a history written before rows named their dataset: nothing in it is known to be this one's
    legacy = frame.drop(columns="dataset")
    kept, note = own_rows(legacy, "shop", "h.csv")
    assert kept.empty and "5 row(s) that name no dataset" in note


def test_read_monitor_history(tmp_path: Path) -> None:
    empty, note = read_monitor_history(tmp_path / "absent.csv", "shop", HISTORY_COLUMNS)
    assert empty.empty and list(empty.columns) == list(HISTORY_COLUMNS) and note is None
    path = tmp_path / "h.csv"
    pd.DataFrame(
        {"date": ["2026-01-01", "2026-01-02"], "dataset": ["shop", "bank"], "live_snapshot": "1"}
    ).to_csv(path, index=False)
    kept, note = read_monitor_history(path, "shop")
    assert kept.to_dict("records") == [
        {"date": "2026-01-01", "dataset": "shop", "live_snapshot": "1"}
    ]
    assert note is not None and "1 row(s) of dataset 'bank'" in note and str(path) in note


def test_the_monitors_rows_name_their_dataset() -> None:
    report = {
        "inputs": {"psi_max": 0.1, "js_max": None},
        "performance": {"snapshots": {}},
        "prediction_drift": {"batch": {"value": 0.0}, "served": None},
        "retrain_recommended": False,
        "reasons": [],
    }
    row = history_row(report, "2026-03-02", "m1", dataset="bank")
    history = upsert_history(pd.DataFrame(columns=list(HISTORY_COLUMNS)), row)
    assert list(history.columns[:3]) == ["date", "dataset", "model_version"]
    assert history["dataset"].tolist() == ["bank"]


def test_the_report_draws_only_this_datasets_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = make_page("bank", tmp_path)
    page = (out / "report.md").read_text()
    assert "2026-03-02" in page
    # the shop's rows, as a clone of the demo carries them, and one from before rows were named
    history = tmp_path / "monitor_history.csv"
    mine = pd.read_csv(history)
    foreign = pd.DataFrame(
        {"date": ["2026-01-05", "2026-01-06"], "dataset": ["shop", None], "psi_max": [0.9876] * 2}
    )
    pd.concat([foreign, mine]).to_csv(history, index=False)
    capsys.readouterr()

    argv = [str(tmp_path / f) for f in ("predictions.parquet", "predict.parquet", "model.onnx")]
    argv += [str(tmp_path / "feature_schema.json"), str(tmp_path / "monitor.json"), str(history)]
    argv += [str(out), "--params", str(tmp_path / "params.yaml")]
    assert report_main([*argv, "--train", str(tmp_path / "train.parquet")]) == 0
    err = capsys.readouterr().err
    assert "ignored 1 row(s) of dataset 'shop', 1 row(s) that name no dataset" in err
    redrawn = (out / "report.md").read_text()
    assert "2026-01-05" not in redrawn and "0.9876" not in redrawn
    assert redrawn == page
