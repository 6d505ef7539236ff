"""The backtest's gate (`evergreen gate`'s checks on in-memory models) says how sure a refusal
is, as `evergreen gate` does: "inconclusive" and "worse" must not read alike."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import yaml

from stages.cli.backtest import make_gate
from stages.lib.backtest import Trained
from stages.lib.training import ModelConfig, train_model
from tests.conftest import ROOT
from tests.stages.test_train import SCHEMA, make_frame


def _trained(day: dt.date, train: pd.DataFrame, test: pd.DataFrame, c: float) -> Trained:
    model = train_model(train, SCHEMA, ModelConfig("logreg", "logistic_regression", {"C": c}), 7)
    return Trained(day, model, SCHEMA, test, pd.DataFrame(), day, 0.5, len(train), 0.0)


def test_a_refused_challenger_says_its_interval_and_what_the_test_set_detects():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"]["slices"] = []
    gate = make_gate(params)
    test = make_frame(120, seed=3)  # a small test set: nothing can be shown
    champion = _trained(dt.date(2026, 3, 1), make_frame(300, seed=1), test, 1.0)
    # a challenger that learnt from noise alone: its scores have nothing to do with churn
    noise = make_frame(300, seed=2).assign(churn=lambda f: (f.index % 2).astype("int64"))
    challenger = _trained(dt.date(2026, 3, 8), noise, test, 1.0)
    verdict = gate(challenger, champion)
    assert not verdict.blessed
    assert verdict.detail.startswith("max_regression failed against trained-2026-03-01 (")
    assert "95% CI" in verdict.detail and "detectable" in verdict.detail
    assert gate(champion, None).detail == "blessed against the baseline"
