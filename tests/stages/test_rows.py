"""features for the rows kinds (stages/rows.py): rows become examples, dated by period."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from stages.contract.feature_schema import load_schema
from stages.features import main
from stages.lib.cards import label_card
from tests.conftest import write_params

START = dt.date(2026, 3, 2)
LOANS = {
    "name": "loans",
    "tables": {
        "applications": {
            "key": "application_id",
            "timestamp": "applied_at",
            "columns": {
                "application_id": {"type": "string", "nullable": False},
                "applied_at": {"type": "timestamp", "nullable": False},
                "amount": {"type": "float64"},
                "region": {"type": "string", "allowed": ["north", "south"]},
                "outcome": {"type": "string", "allowed": ["repaid", "default"]},
            },
        }
    },
    "task": {
        "kind": "rows_classification",
        "target": "outcome",
        "labels": {"default": 1, "repaid": 0},
        "period_days": 7,
    },
}


def _history(days: int, *, pending_from: int | None = None) -> pd.DataFrame:
    """Two applications a day; from day `pending_from` on the outcome is not known yet."""
    rows = []
    for d in range(days):
        for i in range(2):
            known = pending_from is None or d < pending_from
            rows.append(
                {
                    "application_id": f"a{d:03d}{i}",
                    "applied_at": pd.Timestamp(START + dt.timedelta(days=d))
                    + pd.Timedelta(hours=9 + i),
                    "amount": float(100 * d + i),
                    "region": "north" if i else "south",
                    "outcome": ("default" if (d + i) % 3 == 0 else "repaid") if known else None,
                }
            )
    return pd.DataFrame(rows)


def _run(tmp_path: Path, dataset: dict, history: pd.DataFrame, table: str = "applications"):
    hist = tmp_path / "prepare"
    hist.mkdir()
    history.to_parquet(hist / f"{table}.parquet", index=False)
    params = {"dataset": dataset, "features": {}}
    params_file = write_params(params, tmp_path / "params.yaml")
    out = tmp_path / "features"
    code = main([str(hist), str(out), "--params", str(params_file)])
    return code, out


def test_rows_are_examples_dated_by_the_end_of_their_period(tmp_path: Path) -> None:
    code, out = _run(tmp_path, LOANS, _history(16))
    assert code == 0
    snaps = pd.read_parquet(out / "snapshots.parquet")
    assert len(snaps) == 32 and snaps["application_id"].is_unique
    last = START + dt.timedelta(days=15)
    # periods (L-7, L], (L-14, L-7], ... counted back from the last day L
    expected = {d: last - dt.timedelta(days=7 * ((15 - d) // 7)) for d in range(16)}
    for _, row in snaps.iterrows():
        day = (row["applied_at"].date() - START).days
        assert row["snapshot_date"].date() == expected[day]
    assert sorted({d.date() for d in snaps["snapshot_date"]}) == [
        START + dt.timedelta(days=1),
        START + dt.timedelta(days=8),
        last,
    ]
    mapped = snaps["outcome"].to_numpy()
    history = _history(16).set_index("application_id").loc[snaps["application_id"]]
    assert (mapped == (history["outcome"] == "default").astype(int).to_numpy()).all()
    schema = load_schema(out / "feature_schema.json")
    assert (schema.entity_key, schema.time, schema.label) == (
        "application_id",
        "snapshot_date",
        "outcome",
    )
    assert schema.numeric == ("amount",) and schema.categorical == ("region",)
    assert schema.categories == {"region": ("north", "south")} and schema.task == "classification"


def test_periods_and_the_prediction_date_are_the_tables_local_days(tmp_path: Path) -> None:
    """Tokyo (UTC+9): an application at 08:00 local is 23:00 UTC the day before. On UTC days
    the last day's 08:00 rows would belong to the day before, and a period would end there."""
    dataset = copy.deepcopy(LOANS)
    dataset["tables"]["applications"]["timezone"] = "Asia/Tokyo"
    history = _history(16)
    # stored as naive UTC, as validate writes them: 09:00 and 10:00 local are 00:00, 01:00 UTC;
    # move the day's first application to 08:00 local, 23:00 UTC the day before
    first = history["application_id"].str.endswith("0")
    history.loc[first, "applied_at"] -= pd.Timedelta(hours=10)
    history.loc[~first, "applied_at"] -= pd.Timedelta(hours=9)
    code, out = _run(tmp_path, dataset, history)
    assert code == 0
    snaps = pd.read_parquet(out / "snapshots.parquet")
    last = START + dt.timedelta(days=15)
    assert sorted({d.date() for d in snaps["snapshot_date"]}) == [
        START + dt.timedelta(days=1),
        START + dt.timedelta(days=8),
        last,
    ]
    # each day's two applications share its period, as in the UTC test above
    assert snaps.groupby(snaps["application_id"].str[:4])["snapshot_date"].nunique().max() == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predict"]["date"] == str(last)


def test_without_pending_targets_the_latest_period_is_the_prediction_set(tmp_path: Path) -> None:
    code, out = _run(tmp_path, LOANS, _history(16))
    assert code == 0
    predict = pd.read_parquet(out / "predict.parquet")
    snaps = pd.read_parquet(out / "snapshots.parquet")
    latest = snaps[snaps["snapshot_date"] == snaps["snapshot_date"].max()]
    assert sorted(predict["application_id"]) == sorted(latest["application_id"])
    assert "outcome" not in predict.columns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predict"] == {"date": "2026-03-17", "rows": 14, "source": "latest period"}
    assert sum(s["rows"] for s in summary["snapshots"].values()) == 32


def test_max_periods_keeps_the_latest_labelled_periods_and_the_prediction_set(
    tmp_path: Path,
) -> None:
    # 30 days: periods end on days 1, 8, 15, 22, 29; the latest 3 are trained, validated and
    # tested on, the older rows (whose label rate may no longer hold) are left out
    windowed = copy.deepcopy(LOANS)
    windowed["task"]["max_periods"] = 3
    history = _history(30, pending_from=28)
    code, out = _run(tmp_path, windowed, history)
    assert code == 0
    snaps = pd.read_parquet(out / "snapshots.parquet")
    last = START + dt.timedelta(days=27)
    assert sorted({d.date() for d in snaps["snapshot_date"]}) == [
        last - dt.timedelta(days=14), last - dt.timedelta(days=7), last
    ]  # fmt: skip
    assert len(snaps) == 2 * 21
    # the rows still waiting for their target are predicted whatever the window
    predict = pd.read_parquet(out / "predict.parquet")
    assert sorted(predict["application_id"]) == ["a0280", "a0281", "a0290", "a0291"]
    (tmp_path / "full").mkdir()
    code, full = _run(tmp_path / "full", LOANS, history)
    assert code == 0 and len(pd.read_parquet(full / "snapshots.parquet")) == 2 * 28


def test_rows_with_a_null_target_are_the_prediction_set(tmp_path: Path) -> None:
    code, out = _run(tmp_path, LOANS, _history(16, pending_from=13))
    assert code == 0
    snaps = pd.read_parquet(out / "snapshots.parquet")
    predict = pd.read_parquet(out / "predict.parquet")
    assert len(snaps) == 26 and len(predict) == 6
    assert set(snaps["application_id"]).isdisjoint(predict["application_id"])
    # periods end at the last day with a target; pending rows are dated at the newest day
    assert snaps["snapshot_date"].max().date() == START + dt.timedelta(days=12)
    assert set(predict["snapshot_date"].dt.date) == {START + dt.timedelta(days=15)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predict"]["source"] == "pending targets"


def test_a_label_delay_reads_an_export_as_if_its_recent_outcomes_had_not_arrived(
    tmp_path: Path,
) -> None:
    """A historical export holds every outcome; with label_delay_days: 3 the rows of the
    latest 3 days are pending, as in the live lake where they are still null: the same
    examples, periods and prediction set, byte for byte."""
    delayed = copy.deepcopy(LOANS)
    delayed["task"]["label_delay_days"] = 3
    code, out = _run(tmp_path, delayed, _history(16))
    assert code == 0
    (tmp_path / "live").mkdir()
    code, live = _run(tmp_path / "live", LOANS, _history(16, pending_from=13))
    assert code == 0
    for name in ("snapshots.parquet", "predict.parquet"):
        assert (out / name).read_bytes() == (live / name).read_bytes(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predict"] == {"date": "2026-03-17", "rows": 6, "source": "pending targets"}
    # no delay: the same export's recent outcomes are learnt from at once
    (tmp_path / "now").mkdir()
    code, now = _run(tmp_path / "now", LOANS, _history(16))
    assert len(pd.read_parquet(now / "snapshots.parquet")) == 32


def test_pending_days_leaves_old_null_targets_out_as_missing_outcomes(
    tmp_path: Path, capsys
) -> None:
    """A sensor's reading that never came (a null target on day 3) is no outcome still to
    come: with pending_days: 2 it is neither learnt nor scored, and the prediction set is the
    latest days' null targets only (without it, day 3's rows would be scored every day)."""
    history = _history(16, pending_from=14)
    history.loc[history["application_id"].str.startswith("a003"), "outcome"] = None
    code, out = _run(tmp_path, LOANS, history)
    predict = pd.read_parquet(out / "predict.parquet")
    assert code == 0 and len(predict) == 6  # days 3, 14 and 15
    waiting = copy.deepcopy(LOANS)
    waiting["task"]["pending_days"] = 2
    (tmp_path / "pending").mkdir()
    code, out = _run(tmp_path / "pending", waiting, history)
    assert code == 0
    predict = pd.read_parquet(out / "predict.parquet")
    assert sorted(predict["application_id"]) == ["a0140", "a0141", "a0150", "a0151"]
    snaps = pd.read_parquet(out / "snapshots.parquet")
    assert len(snaps) == 26 and not snaps["application_id"].str.startswith("a003").any()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"]["outcome_missing"] == 2
    assert "2 whose target is still null after pending_days (2) left out" in capsys.readouterr().out


def test_an_unmapped_target_value_names_the_file_key_and_value(tmp_path: Path, capsys) -> None:
    dataset = copy.deepcopy(LOANS)
    dataset["task"]["labels"] = {"default": 1}  # "repaid" left out
    dataset["task"]["labels"]["repaid_late"] = 0
    dataset["tables"]["applications"]["columns"]["outcome"]["allowed"] = [
        "repaid",
        "default",
        "repaid_late",
    ]
    code, out = _run(tmp_path, dataset, _history(16))
    assert code == 2
    err = capsys.readouterr().err
    assert "conf/dataset/loans.yaml task.labels" in err and "['repaid']" in err
    assert not (out / "snapshots.parquet").exists()


def test_a_regression_target_is_a_number_and_the_schema_says_regression(tmp_path: Path) -> None:
    dataset = copy.deepcopy(LOANS)
    dataset["tables"]["applications"]["columns"]["loss"] = {"type": "float64"}
    dataset["task"] = {
        "kind": "rows_regression",
        "target": "loss",
        "period_days": 7,
        "features": {"numeric": ["amount"], "categorical": ["region"]},
    }
    history = _history(16).assign(loss=lambda f: f["amount"] / 10)
    code, out = _run(tmp_path, dataset, history)
    assert code == 0
    snaps = pd.read_parquet(out / "snapshots.parquet")
    assert snaps["loss"].dtype == "float64"
    assert (snaps["loss"] == snaps["amount"] / 10).all()
    assert load_schema(out / "feature_schema.json").task == "regression"
    summary = json.loads((out / "summary.json").read_text())
    first = summary["snapshots"]["2026-03-03 00:00:00"]
    assert first == {"rows": 4, "target_mean": pytest.approx((0 + 1 + 100 + 101) / 40)}


def test_excluded_features_leave_the_schema_and_unknown_ones_are_named(
    tmp_path: Path, capsys
) -> None:
    hist = tmp_path / "prepare"
    hist.mkdir()
    _history(16).to_parquet(hist / "applications.parquet", index=False)
    params = {"dataset": LOANS, "features": {"exclude": ["region"]}}
    out = tmp_path / "f"
    assert (
        main([str(hist), str(out), "--params", str(write_params(params, tmp_path / "p.yaml"))]) == 0
    )
    assert load_schema(out / "feature_schema.json").categorical == ()
    # the frames keep it: a champion that reads it is still scored on this test split (the
    # gate) and on the prediction set, like an entity task's computed features
    for name in ("snapshots.parquet", "predict.parquet"):
        assert "region" in pd.read_parquet(out / name).columns, name
    params["features"]["exclude"] = ["colour"]
    code = main([str(hist), str(out), "--params", str(write_params(params, tmp_path / "p.yaml"))])
    assert code == 2 and "features.exclude: ['colour']" in capsys.readouterr().err


def test_an_input_the_model_cannot_have_when_it_predicts_is_refused(tmp_path: Path, capsys):
    """A hotel export with no `task.features` made every column an input: its status, set
    exactly when the outcome is (ROC AUC 1.0, blessed, 97 % of pending bookings "cancel"), and
    an id; each is named in one line. The same columns as plain inputs pass."""
    import copy

    history = _history(120, pending_from=100)
    known = history["outcome"].notna()
    history["status"] = history["outcome"].map({"default": "charged_off", "repaid": "closed"})
    history["note"] = [f"call {i} about the loan" for i in range(len(history))]
    history["branch"] = ["b1", "b2", "b3"] * (len(history) // 3)  # a plain input
    dataset = copy.deepcopy(LOANS)
    columns = dataset["tables"]["applications"]["columns"]
    for name in ("status", "note", "branch"):
        columns[name] = {"type": "string"}
    for name in "acd":
        (tmp_path / name).mkdir()
    code, _ = _run(tmp_path / "a", dataset, history)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "'status' is set on every labelled row and on none of the 40 whose outcome" in err
    assert "'note' has 200 values in 200 labelled rows: an id or free text" in err
    assert "branch" not in err
    # known at prediction time too (no pending rows to tell), but one outcome per value
    history.loc[~known, "outcome"] = "repaid"
    history["status"] = history["outcome"].map({"default": "charged_off", "repaid": "closed"})
    del columns["note"]
    code, _ = _run(tmp_path / "c", dataset, history.drop(columns="note"))
    err = capsys.readouterr().err
    assert code == 2 and "'status': each of its frequent values comes with one outcome" in err
    # without them: trained as before
    del columns["status"]
    assert _run(tmp_path / "d", dataset, history.drop(columns=["note", "status"]))[0] == 0


def test_label_card_follows_the_task_kind() -> None:
    card = label_card({"dataset": LOANS})
    assert card["name"] == "outcome" and card["kind"] == "rows_classification"
    assert card["labels"] == {"default": 1, "repaid": 0}
    assert card["definition"] == "outcome = 1 for a row whose outcome is default, else 0"
    assert "label_delay_days" not in card
    delayed = copy.deepcopy(LOANS)
    delayed["task"]["label_delay_days"] = 30
    card = label_card({"dataset": delayed})
    assert card["label_delay_days"] == 30 and card["definition"].endswith(
        "known 30 day(s) after the row"
    )
    regression = copy.deepcopy(LOANS)
    regression["task"] = {"kind": "rows_regression", "target": "loss"}
    assert label_card({"dataset": regression})["kind"] == "rows_regression"
    with pytest.raises(KeyError, match=r"dataset\.task lacks 'target'"):
        label_card({"dataset": {"task": {"kind": "rows_regression"}}})
