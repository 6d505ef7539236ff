from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.card import main
from stages.cli.card import main as stamp_main
from stages.contract.card import ModelCard, file_md5
from stages.contract.feature_schema import FeatureSchema, save_schema
from stages.lib.cards import build_card, data_version

SCHEMA = FeatureSchema(
    entity_key="customer_id",
    time="snapshot_date",
    label="churn",
    numeric=("tenure", "sessions"),
    categorical=("plan",),
    categories={"plan": ("basic", "premium", "gold")},
)
PARAMS = {
    "seed": 7,
    "model": {"name": "hgb", "estimator": "hist_gradient_boosting", "hyperparameters": {"a": 1}},
    "dataset": {
        "activity_types": ["session", "order"],
        "label": {"name": "churn", "horizon_days": 21, "lookback_days": 28},
        # `sessions` is declared: the server will never accept what validate quarantines
        "tables": {
            "t": {
                "columns": {
                    # the key's declared type and pattern reach the server (entity_key_*)
                    "customer_id": {"type": "string", "pattern": "c[0-9]+"},
                    "tenure": {"type": "int64"},  # whole numbers only at the server
                    # declared nullable: false: the server refuses a null (none in training)
                    "sessions": {
                        "type": "float64",
                        "min": 0,
                        "max": 50,
                        "missing": [-1],
                        "nullable": False,
                    },
                    # declared so, but the training split holds a null: still nullable
                    "plan": {"type": "string", "nullable": False},
                }
            }
        },
    },
}
LOCK = {
    "stages": {
        "validate": {"deps": [{"path": "data/landing", "md5": "abc.dir"}]},
        "card": {"deps": [{"path": "data/landing", "md5": "stale.dir"}]},
    }
}


def train_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 4],
            "snapshot_date": pd.to_datetime(["2026-01-01", "2026-01-01", "2026-01-08", None]).date,
            "tenure": [3.0, 400.0, np.nan, 12.5],
            "sessions": [0.0, 1.0, 2.0, 3.0],
            "plan": pd.Series(["basic", "premium", None, "basic"], dtype="str"),
            "churn": [0, 1, 0, 1],
        }
    )


def test_card_holds_schema_ranges_label_data_and_model() -> None:
    card = build_card(
        schema=SCHEMA,
        train=train_frame(),
        params=PARAMS,
        metrics={"roc_auc": 0.81},
        slices={"plan": {"basic": {"n": 2}}},
        model_file="models/model.skops",
        model_md5="m" * 32,
        landing_md5="abc.dir",
        data_source="dvc.lock: stage 'validate'",
        libraries={"scikit-learn": "1.0"},
    )
    numeric = {f["name"]: f for f in card["features"]["numeric"]}
    assert numeric["tenure"] == {
        "name": "tenure",
        "type": "float64",
        "min": 3.0,
        "max": 400.0,
        "missing_fraction": 0.25,
        "integer": True,
    }
    assert "integer" not in numeric["sessions"]
    assert (numeric["sessions"]["declared_min"], numeric["sessions"]["declared_max"]) == (0, 50)
    assert numeric["sessions"]["missing_codes"] == [-1]  # the server reads them as null too
    assert "missing_codes" not in numeric["tenure"]
    assert numeric["sessions"]["nullable"] is False and "nullable" not in numeric["tenure"]
    (plan,) = card["features"]["categorical"]
    assert "nullable" not in plan  # a null reached the training split: not refused
    assert plan["allowed"] == ["basic", "premium", "gold"]
    assert plan["observed"] == ["basic", "premium"]  # gold allowed, never seen in training
    assert plan["missing_fraction"] == 0.25
    assert card["features"]["order"] == ["tenure", "sessions", "plan"]
    assert card["features"]["entity_key_type"] == "string"
    assert card["features"]["entity_key_pattern"] == "c[0-9]+"
    label = card["label"]
    assert (label["name"], label["horizon_days"], label["lookback_days"]) == ("churn", 21, 28)
    assert "21 days after" in label["definition"] and "28 days up to" in label["definition"]
    assert card["data"]["landing_md5"] == "abc.dir"
    assert card["data"]["train_rows"] == 4
    assert card["data"]["train_snapshot_dates"] == ["2026-01-01", "2026-01-08"]
    assert card["model"] == {
        "name": "hgb",
        "estimator": "hist_gradient_boosting",
        "params": {"hyperparameters": {"a": 1}},
        "seed": 7,
        "file": "models/model.skops",
        "md5": "m" * 32,
    }
    assert card["metrics"] == {"test": {"roc_auc": 0.81}, "slices": {"plan": {"basic": {"n": 2}}}}
    assert "git_commit" not in card and "gate" not in card


def test_data_version_is_the_hash_the_named_stage_recorded() -> None:
    assert data_version(LOCK, "data/landing", "validate") == "abc.dir"
    with pytest.raises(ValueError, match=r"no entry for stage 'prepare'"):
        data_version(LOCK, "data/landing", "prepare")
    with pytest.raises(ValueError, match=r"stage 'validate' records no md5 for .*'data/other'"):
        data_version(LOCK, "data/other", "validate")


def test_file_md5_is_the_md5_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"x" * 3_000_000)
    assert file_md5(path) == hashlib.md5(b"x" * 3_000_000).hexdigest()


@pytest.fixture
def card_inputs(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "model": tmp_path / "model.skops",
        "schema": tmp_path / "feature_schema.json",
        "train": tmp_path / "train.parquet",
        "metrics": tmp_path / "evaluate.json",
        "slices": tmp_path / "slices.json",
        "lock": tmp_path / "dvc.lock",
        "params": tmp_path / "params.yaml",
    }
    paths["model"].write_bytes(b"model bytes")
    save_schema(SCHEMA, paths["schema"])
    train_frame().to_parquet(paths["train"])
    paths["metrics"].write_text(json.dumps({"roc_auc": 0.8123456789}))
    paths["slices"].write_text(json.dumps({"plan": {}}))
    paths["lock"].write_text(yaml.safe_dump(LOCK))
    paths["params"].write_text(yaml.safe_dump(PARAMS))
    return paths


def build_argv(paths: dict[str, Path], out: Path) -> list[str]:
    argv: list[str] = []
    for key in ("model", "schema", "train", "metrics", "slices", "lock", "params"):
        argv += [f"--{key}", str(paths[key])]
    return [*argv, "--data", "data/landing", "--data-stage", "validate", "--out", str(out)]


def test_main_build_writes_a_deterministic_card(
    card_inputs: dict[str, Path], tmp_path: Path
) -> None:
    assert main(build_argv(card_inputs, tmp_path / "a.json")) == 0
    assert main(build_argv(card_inputs, tmp_path / "b.json")) == 0
    a = (tmp_path / "a.json").read_bytes()
    assert a == (tmp_path / "b.json").read_bytes()
    card = json.loads(a)
    assert card["model"]["md5"] == hashlib.md5(b"model bytes").hexdigest()
    assert card["metrics"]["test"]["roc_auc"] == 0.812346  # rounded like every metrics file
    assert card["libraries"]["scikit-learn"]
    assert "onnx" not in card


def test_main_build_takes_fitted_hyperparameters_from_train_metrics(
    card_inputs: dict[str, Path], tmp_path: Path
) -> None:
    train_metrics = tmp_path / "train.json"
    train_metrics.write_text(
        json.dumps(
            {
                "hyperparameters": {"a": 3},
                "tuning": {"n_trials": 5, "best_trial": 2},
                "valid": {"roc_auc": 0.7},
                "train": {"rows": 4},
                "refit_rows": 6,
            }
        )
    )
    argv = [*build_argv(card_inputs, tmp_path / "t.json"), "--train-metrics", str(train_metrics)]
    assert main(argv) == 0
    card = json.loads((tmp_path / "t.json").read_text())
    assert card["model"]["params"] == {"hyperparameters": {"a": 1}}  # as configured
    assert card["model"]["fitted_hyperparameters"] == {"a": 3}  # as tuning chose
    assert card["model"]["tuning"] == {"n_trials": 5, "best_trial": 2}
    assert card["metrics"]["valid"] == {"roc_auc": 0.7}
    assert card["data"]["train_rows"] == 4 and card["data"]["refit_rows"] == 6  # train + valid


def test_main_build_records_the_onnx_file_when_given(
    card_inputs: dict[str, Path], tmp_path: Path
) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"graph")
    assert main([*build_argv(card_inputs, tmp_path / "c.json"), "--onnx", str(onnx)]) == 0
    card = json.loads((tmp_path / "c.json").read_text())
    assert card["onnx"]["md5"] == hashlib.md5(b"graph").hexdigest()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("lock", r"dvc\.lock: dvc\.lock not found"),
        ("slices", r"slices\.json: slice metrics not found"),
        ("label", r"dataset\.label lacks \['lookback_days'\]"),
        ("train", r"training split: missing column\(s\) \['sessions'\]"),
    ],
)
def test_main_build_names_a_bad_input(
    card_inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    breakage: str,
    message: str,
) -> None:
    if breakage in ("lock", "slices"):
        card_inputs[breakage].unlink()
    if breakage == "label":
        params = yaml.safe_load(card_inputs["params"].read_text())
        del params["dataset"]["label"]["lookback_days"]
        card_inputs["params"].write_text(yaml.safe_dump(params))
    if breakage == "train":
        train_frame().drop(columns="sessions").to_parquet(card_inputs["train"])
    assert main(build_argv(card_inputs, tmp_path / "card.json")) == 2
    err = capsys.readouterr().err
    assert err.startswith("card: ") and re.search(message, err), err
    assert not (tmp_path / "card.json").exists()


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_stamp_adds_the_commit_and_the_gate_verdict(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("x")
    git(tmp_path, "add", "f")
    git(tmp_path, "commit", "-q", "-m", "one")
    card = {"model": {"md5": "abc"}, "metrics": {}}
    gate = {"blessed": True, "challenger": {"model_md5": "abc"}, "checks": []}
    (tmp_path / "card.json").write_text(json.dumps(card))
    (tmp_path / "gate.json").write_text(json.dumps(gate))
    argv = ["--card", str(tmp_path / "card.json"), "--gate", str(tmp_path / "gate.json")]
    out = tmp_path / "build" / "model_card.json"
    assert stamp_main([*argv, "--out", str(out), "--repo", str(tmp_path)]) == 0
    stamped = json.loads(out.read_text())
    assert stamped["git_commit"] == git(tmp_path, "rev-parse", "HEAD")
    assert stamped["gate"] == gate
    assert {k: stamped[k] for k in card} == card
    # the card itself is left as it was
    assert json.loads((tmp_path / "card.json").read_text()) == card


def test_stamp_refuses_a_gate_verdict_on_another_model() -> None:
    with pytest.raises(ValueError, match=r"gate judged model def but the card describes abc"):
        ModelCard({"model": {"md5": "abc"}}).stamped(
            {"blessed": True, "challenger": {"model_md5": "def"}}, "c"
        )
    with pytest.raises(ValueError, match=r"lacks 'blessed'"):
        ModelCard({"model": {"md5": "abc"}}).stamped({"challenger": {"model_md5": "abc"}}, "c")


def test_stamp_outside_a_git_commit_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    git(tmp_path, "init", "-q")  # no commit yet: no HEAD
    (tmp_path / "card.json").write_text(json.dumps({"model": {"md5": "abc"}}))
    (tmp_path / "gate.json").write_text(
        json.dumps({"blessed": False, "challenger": {"model_md5": "abc"}})
    )
    argv = ["--card", str(tmp_path / "card.json"), "--gate", str(tmp_path / "gate.json")]
    assert stamp_main([*argv, "--out", str(tmp_path / "o.json"), "--repo", str(tmp_path)]) == 2
    assert "no git commit at HEAD" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_a_derived_calendar_part_is_a_whole_number_in_its_range() -> None:
    """`hour(t)` is 0..23 and whole: the server refused neither `hour: 30` nor `hour: 7.5`, as
    the card bounded it by the training data's hours, widened (to 46). An arithmetic over a
    timestamp has no range known in advance: only what its spec declares."""
    schema = FeatureSchema(
        entity_key="customer_id",
        time="snapshot_date",
        label="churn",
        numeric=("hour", "lead_days", "weekday"),
        categorical=(),
    )
    params = json.loads(json.dumps(PARAMS))
    params["dataset"]["tables"]["t"]["derived"] = {
        "hour": "hour(booked_at)",
        "lead_days": {"expr": "(starts_at - booked_at) / 86400", "min": 0},
        "weekday": {"expr": "weekday(booked_at)", "max": 4},  # a weekday-only calendar
    }
    train = train_frame().assign(
        hour=[0.0, 7.0, 13.0, 20.0], lead_days=[0.5, 3.0, 9.0, 1.0], weekday=[0.0, 1.0, 2.0, 4.0]
    )
    card = build_card(
        schema=schema, train=train, params=params, metrics={}, slices={},
        model_file="m", model_md5="m" * 32, landing_md5="abc.dir", data_source="x",
        libraries={},
    )  # fmt: skip
    numeric = {f["name"]: f for f in card["features"]["numeric"]}
    hour = numeric["hour"]
    assert (hour["declared_min"], hour["declared_max"], hour["integer"]) == (0, 23, True)
    lead = numeric["lead_days"]
    assert lead["declared_min"] == 0 and "declared_max" not in lead and "integer" not in lead
    assert (numeric["weekday"]["declared_min"], numeric["weekday"]["declared_max"]) == (0, 4)


def test_a_timestamp_key_reaches_the_card_as_its_type() -> None:
    """An hourly series keyed by its hour: the server checks the key is a time."""
    from stages.lib.cards import key_check

    schema = FeatureSchema(
        entity_key="hour_start", time="hour_start", label="cnt", numeric=("t",), categorical=()
    )
    columns = {"hour_start": {"type": "timestamp"}}
    params = {"dataset": {"tables": {"rentals": {"columns": columns}}}}
    assert key_check(params, schema) == {"entity_key_type": "timestamp"}
