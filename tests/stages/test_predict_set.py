"""Stage `predict_set`: the latest day's rows to score, with the champion's features."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from stages import features, predict_set
from stages.contract.feature_schema import load_schema, save_schema
from tests.conftest import write_params
from tests.stages import test_features
from tests.stages.test_features import CFG, LABEL

tiny_history = test_features.tiny_history  # the same fixture


def _setup(tmp_path: Path, tiny_history, shop_params) -> tuple[Path, Path]:
    params = dict(shop_params)
    params["features"] = {**CFG.__dict__, "windows": list(CFG.windows), "max_snapshots": 2}
    params["dataset"] = {**shop_params["dataset"], "label": LABEL}
    params_file = write_params(params, tmp_path / "params.yaml")
    events, customers = tiny_history
    hist = tmp_path / "history"
    hist.mkdir()
    events.to_parquet(hist / "events.parquet", index=False)
    customers.to_parquet(hist / "customers_versions.parquet", index=False)
    return hist, params_file


def test_the_prediction_set_is_the_features_stages_latest_snapshot(
    tmp_path,
    tiny_history,
    shop_params,
):
    hist, params = _setup(tmp_path, tiny_history, shop_params)
    assert features.main([str(hist), str(tmp_path / "f"), "--params", str(params)]) == 0
    schema = tmp_path / "f/feature_schema.json"
    out = tmp_path / "p"
    assert predict_set.main([str(hist), str(schema), str(out), "--params", str(params)]) == 0
    assert (out / "predict.parquet").read_bytes() == (tmp_path / "f/predict.parquet").read_bytes()
    rows = pd.read_parquet(out / "predict.parquet")
    assert json.loads((out / "summary.json").read_text()) == {
        "date": "2026-01-09",
        "rows": len(rows),
    }


def test_a_champion_reading_a_feature_not_computed_now_fails_in_one_line(
    tmp_path,
    tiny_history,
    shop_params,
    capsys,
):
    hist, params = _setup(tmp_path, tiny_history, shop_params)
    assert features.main([str(hist), str(tmp_path / "f"), "--params", str(params)]) == 0
    schema = load_schema(tmp_path / "f/feature_schema.json")
    champion = tmp_path / "champion_schema.json"
    save_schema(replace(schema, numeric=(*schema.numeric, "sessions_90d")), champion)
    capsys.readouterr()
    out = tmp_path / "p"
    assert predict_set.main([str(hist), str(champion), str(out), "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"predict_set: {champion}: the champion reads ['sessions_90d'], which the features "
        "config does not compute now: run `evergreen run training --promote`"
    ]
    assert not (out / "predict.parquet").exists()
