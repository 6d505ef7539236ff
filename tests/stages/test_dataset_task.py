"""The dataset's `task:` block, calendar and cancellation marker: what they hold, and one clear
message (file, key, expectation) for each way they can be wrong; the validation they drive."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from stages.lib.dataset import (
    NULL_KEY_CHECK,
    DatasetConfigError,
    dataset_from_params,
    surrogate_keys,
)
from stages.lib.params import compose_params
from stages.lib.validation import ValidateConfig, check_thresholds, missing_days, validate_partition
from stages.validate import main
from tests.conftest import write_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dataset_params(tmp_path_factory: pytest.TempPathFactory):
    """name -> params composed from the real conf/ with `dataset=name`."""
    out = {}
    for name in ("shop", "retail", "bank", "bikes"):
        path = tmp_path_factory.mktemp(name) / "params.yaml"
        compose_params(ROOT / "conf", path, [f"dataset={name}"])
        out[name] = yaml.safe_load(path.read_text())
    return out


def _raw(dataset_params, name: str) -> dict:
    return copy.deepcopy(dataset_params[name]["dataset"])


def _error(raw: dict) -> str:
    with pytest.raises(DatasetConfigError) as info:
        dataset_from_params(raw)
    message = str(info.value)
    assert message.startswith(f"conf/dataset/{raw['name']}.yaml: ") and "\n" not in message
    return message


def test_shipped_configs_parse_to_their_task_kinds(dataset_params):
    shop = dataset_from_params(_raw(dataset_params, "shop"))
    assert shop.task.kind == "entity_churn" and not shop.task.rows
    assert shop.calendar.is_open(dt.date(2026, 1, 3)) and shop.cancel_marker is None

    retail = dataset_from_params(_raw(dataset_params, "retail"))
    assert retail.task.kind == "entity_churn" and retail.event_type_column is None
    assert retail.event_types == ("event", "cancellation")
    assert retail.events.key == "line_key" and retail.events.column("line_key").surrogate
    assert retail.events.entity_key == "customer_id"
    assert not retail.calendar.is_open(dt.date(2026, 1, 3))  # a Saturday
    assert not retail.calendar.is_open(dt.date(2025, 12, 29))  # the year-end break
    assert retail.calendar.is_open(dt.date(2026, 1, 4))  # a Sunday, open

    bank = dataset_from_params(_raw(dataset_params, "bank"))
    assert (bank.task.kind, bank.task.target, bank.task.time) == (
        "rows_classification",
        "y",
        "call_time",
    )
    assert bank.task.labels == {"yes": 1, "no": 0} and bank.task.surrogate_key
    assert bank.entity_key == bank.task.key == "row_key"
    # no features listed: every column but target, key and time, by type
    assert "euribor3m" in bank.task.numeric and "month" in bank.task.categorical
    assert {"y", "row_key", "call_time"}.isdisjoint({*bank.task.numeric, *bank.task.categorical})
    assert bank.label.horizon_days == 0

    bikes = dataset_from_params(_raw(dataset_params, "bikes"))
    assert bikes.task.regression and bikes.task.labels is None
    assert bikes.task.categorical == ("season", "weather") and "hour" in bikes.task.numeric


def _edit(raw: dict, path: str, value) -> dict:
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return raw


_DELETE = object()
BANK_BAD = [
    ("task.kind", "ranking", "task.kind: expected one of entity_churn, rows_classification"),
    ("task.target", "outcome", "task.target: expected a column of table 'calls'"),
    ("task.labels", _DELETE, "task.labels: expected a mapping of the string target 'y' to 0/1"),
    ("task.labels", {"yes": 1, "no": 1}, "task.labels: expected each class mapped to 0 or 1"),
    ("task.labels", {"yes": 1, "no": "0"}, "task.labels: expected each class mapped to 0 or 1"),
    ("task.labels", {"si": 1, "no": 0}, "task.labels: expected classes allowed in column 'y'"),
    ("task.time", "age", "task.time: expected a column of type timestamp or date, 'age' is"),
    ("task.surrogate_key", "yes", "task.surrogate_key: expected true or false, got 'yes'"),
    ("task.surrogate_key", False, "task.key: expected a key column, or surrogate_key: true"),
    ("task.key", "age", "task.key: expected a new column name for the surrogate key"),
    ("task.period_days", 0, "task.period_days: expected a whole number of days >= 1"),
    ("task.max_periods", 2, "task.max_periods: expected null or a whole number of periods >= 3"),
    ("task.max_periods", "13", "task.max_periods: expected null or a whole number of periods"),
    ("task.label_delay_days", -1, "task.label_delay_days: expected a whole number of days >= 0"),
    ("task.label_delay_days", 1.5, "task.label_delay_days: expected a whole number of days >= 0"),
    ("task.pending_days", -1, "task.pending_days: expected null or a whole number of days"),
    ("task.features", {"numeric": ["job"]}, "task.features.numeric: expected a column of type"),
    ("task.features", {"numeric": ["y"]}, "task.features.numeric: expected a column of type"),
    ("task.features", {"categorical": ["y"]}, "task.features: expected feature columns other"),
    ("task.features", {"numeric": []}, "task.features: expected at least one feature column"),
    ("task.features", {"numeric": ["age", "age"]}, "numeric: expected each value once, got age"),
    ("task.features", {"colour": []}, "task.features.colour: expected a known key"),
    ("task.table", "loans", "task.table: expected the dataset's table ('calls')"),
    ("task.horizon", 3, "task.horizon: expected a known key"),
    ("activity_types", ["call"], "activity_types: expected no such key for task.kind rows_c"),
    ("tables.loans", {"timestamp": "t", "columns": {"t": {"type": "date"}}}, "exactly one table"),
    ("tables.calls.role", "events", "tables.calls.role: expected one of ('rows',)"),
    ("calendar.weekdays", ["monday"], "calendar.weekdays: expected a non-empty list of mon"),
    ("calendar.holidays", ["12/25"], "calendar.holidays: expected dates YYYY-MM-DD or MM-DD"),
    ("calendar.holidays", ["02-30"], "calendar.holidays: expected dates YYYY-MM-DD or MM-DD"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BANK_BAD)
def test_a_bad_rows_task_names_file_key_and_expectation(dataset_params, path, value, expected):
    assert expected in _error(_edit(_raw(dataset_params, "bank"), path, value))


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("task.labels", {"a": 1, "b": 0}, "task.labels: expected no labels for task.kind rows_r"),
        ("task.target", "season", "task.target: expected a column of type int64 or float64"),
        ("task.key", "when", "task.key: expected a column of table 'rentals'"),
        ("task.key", "cnt", "task.target: expected a column other than the key and time"),
    ],
)
def test_a_bad_regression_task_names_file_key_and_expectation(
    dataset_params, path, value, expected
):
    assert expected in _error(_edit(_raw(dataset_params, "bikes"), path, value))


def test_a_classification_target_must_be_0_1_or_mapped(dataset_params):
    raw = _edit(_raw(dataset_params, "bikes"), "task.kind", "rows_classification")
    raw = _edit(raw, "task.features", {"numeric": ["hour"]})
    ok = dataset_from_params(_edit(copy.deepcopy(raw), "task.target", "holiday"))
    assert ok.task.target == "holiday" and ok.task.labels is None
    message = _error(_edit(raw, "task.target", "temp"))
    assert "task.target: expected a 0/1 int64, bool or string column, 'temp' is float64" in message


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("task.target", "churn", "task.target: expected only `kind` for task.kind entity_churn"),
        ("cancel_marker.column", "quantity", "cancel_marker.column: expected a column of type"),
        ("cancel_marker.prefix", "", "cancel_marker.prefix: expected a non-empty string"),
        ("cancel_marker.sign", "-", "cancel_marker.sign: expected a known key"),
        ("activity_types", ["order"], "activity_types: expected event types (no event_type_col"),
        ("tables.invoices.surrogate_key", 1, "tables.invoices.surrogate_key: expected true or"),
        ("tables.invoices.key", "quantity", "tables.invoices.key: expected a new column name"),
    ],
)
def test_a_bad_churn_extension_names_file_key_and_expectation(
    dataset_params, path, value, expected
):
    assert expected in _error(_edit(_raw(dataset_params, "retail"), path, value))


def test_cancellations_are_an_event_type_only_with_a_marker(dataset_params):
    raw = _edit(_raw(dataset_params, "retail"), "cancel_marker", _DELETE)
    message = _error(raw)
    assert "amount_types: expected event types (no event_type_column: every event is" in message
    raw["event_features"] = {"event": "lines"}
    raw["amount_types"] = ["event"]
    assert dataset_from_params(raw).event_types == ("event",)


def test_surrogate_keys_hash_the_row_and_its_partition():
    frame = pd.DataFrame({"a": [1, 1, 2], "b": ["x", "x", None]})
    keys = surrogate_keys(frame, ("a", "b"), "2026-01-01")
    assert keys.str.fullmatch(r"[0-9a-f]{16}").all()
    assert keys.iloc[0] == keys.iloc[1] != keys.iloc[2]  # identical rows: one example
    assert keys.tolist() == surrogate_keys(frame.copy(), ("a", "b"), "2026-01-01").tolist()
    other_day = surrogate_keys(frame, ("a", "b"), "2026-01-02")
    assert not set(keys) & set(other_day)


def _invoice_lines(customers: list[int | None]) -> pd.DataFrame:
    n = len(customers)
    return pd.DataFrame(
        {
            "invoice_no": [f"{536365 + i}" if i % 3 else f"C{536365 + i}" for i in range(n)],
            "stock_code": ["85123A"] * n,
            "description": ["WHITE HANGING HEART"] * n,
            "quantity": [(-2 if i % 3 == 0 else 6) for i in range(n)],
            "invoice_date": pd.date_range("2026-01-05 09:00", periods=n, freq="min"),
            "unit_price": [2.55] * n,
            "customer_id": pd.array(customers, dtype="Int64"),
            "country": ["United Kingdom"] * n,
        }
    )


def test_null_entity_keys_are_quarantined_with_their_reason_and_counted_apart(
    tmp_path, dataset_params
):
    # 4 of 10 lines have no customer: 40%, over max_quarantine_fraction, yet not a fault
    customers = [12346, None, 12347, None, 12348, None, 12349, None, 12350, 12351]
    raw = dataset_params["retail"]
    landing = tmp_path / "data/landing/invoices/date=2026-01-05"
    landing.mkdir(parents=True)
    _invoice_lines(customers).to_parquet(landing / "part-0000.parquet", index=False)
    table = dataset_from_params(copy.deepcopy(raw["dataset"])).events
    result = validate_partition(sorted(landing.iterdir()), table, "2026-01-05")
    assert result.rows_in == 10 and len(result.valid) == 6
    assert set(result.quarantine["check"]) == {NULL_KEY_CHECK}
    assert sorted(result.quarantine["row"]) == [1, 3, 5, 7]
    assert result.rows_null_key == 4 and result.summary()["rows_null_key"] == 4
    valid = result.valid
    assert valid["line_key"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert valid["amount"].tolist()[0] == pytest.approx(-2 * 2.55)  # a cancellation
    assert check_thresholds([result], ValidateConfig()) == []

    params = write_params(copy.deepcopy(raw), tmp_path / "params.yaml")
    metrics = tmp_path / "validation.json"
    out = tmp_path / "validated"
    assert (
        main([str(tmp_path / "data/landing"), str(out), str(metrics), "--params", str(params)]) == 0
    )
    # one table: the metrics' totals are the table's (the report holds it per table)
    assert json.loads((out / "report.json").read_text())["invoices"]["totals"]["rows_null_key"] == 4
    m = json.loads(metrics.read_text())
    assert (m["rows_in"], m["rows_valid"], m["rows_quarantined"], m["rows_null_key"]) == (
        10,
        6,
        4,
        4,
    )


def test_a_null_key_declared_not_nullable_stays_a_fault(tmp_path, dataset_params):
    raw = copy.deepcopy(dataset_params["retail"]["dataset"])
    raw["tables"]["invoices"]["columns"]["customer_id"]["nullable"] = False
    landing = tmp_path / "invoices/date=2026-01-05"
    landing.mkdir(parents=True)
    _invoice_lines([1, None, 2, None]).to_parquet(landing / "part-0000.parquet", index=False)
    table = dataset_from_params(raw).events
    result = validate_partition(sorted(landing.iterdir()), table, "2026-01-05")
    assert set(result.quarantine["check"]) == {"not_nullable"} and result.rows_null_key == 0
    (problem,) = check_thresholds([result], ValidateConfig())
    assert "50.0% of 4 rows quarantined" in problem


def test_missing_days_count_only_the_days_the_calendar_opens(dataset_params):
    retail = dataset_from_params(_raw(dataset_params, "retail")).calendar
    # Fri 2026-01-09 .. Tue 2026-01-13: Saturday closed, Monday missing
    partitions = ["2026-01-09", "2026-01-11", "2026-01-13"]
    assert missing_days(partitions) == ["2026-01-10", "2026-01-12"]
    assert missing_days(partitions, retail) == ["2026-01-12"]
    # the year-end break is closed too
    assert missing_days(["2025-12-22", "2026-01-04"], retail) == ["2025-12-23"]


def test_features_of_a_rows_task_without_history_says_which_file(tmp_path, dataset_params, capsys):
    from stages.features import main as features_main

    params = write_params(copy.deepcopy(dataset_params["bank"]), tmp_path / "params.yaml")
    (tmp_path / "history").mkdir()
    argv = [str(tmp_path / "history"), str(tmp_path / "out"), "--params", str(params)]
    assert features_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"features: {tmp_path / 'history' / 'calls.parquet'}: prepare's history of table "
        "'calls' not found"
    )
