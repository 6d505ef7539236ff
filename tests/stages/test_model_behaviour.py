"""Behavioural tests for every model family: direction and invariance on shop-like features.

The frames have the names and shapes of the shop features (recency, sessions, tickets, plan...)
with the simulator's causal story: churn rises with days since the last activity and with
support tickets, falls with sessions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.contract.feature_schema import FeatureSchema
from stages.contract.onnx_predict import OnnxPredictor
from stages.lib.onnx_export import export_onnx
from stages.lib.training import positive_proba, train_model
from tests.stages.test_train import MODELS

SHOP = FeatureSchema(
    entity_key="customer_id",
    time="snapshot_date",
    label="churn",
    numeric=("days_since_last_activity", "sessions_28d", "tickets_28d", "monthly_price"),
    categorical=("plan", "country"),
    categories={"plan": ("basic", "standard", "premium")},
)


def shop_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    recency = np.minimum(rng.exponential(7.0, n), 28.0).round()
    sessions = rng.poisson(np.maximum(12.0 - 0.4 * recency, 0.5))
    tickets = rng.poisson(0.4, n)
    plan = rng.choice(["basic", "standard", "premium"], n)
    logit = -2.5 + 0.18 * recency - 0.08 * sessions + 0.7 * tickets
    return pd.DataFrame(
        {
            "customer_id": rng.permutation(n).astype("int64") + 1000,
            "snapshot_date": pd.Timestamp("2026-03-01").date(),
            "days_since_last_activity": recency,
            "sessions_28d": sessions.astype("float64"),
            "tickets_28d": tickets.astype("float64"),
            "monthly_price": np.select([plan == "basic", plan == "premium"], [9.0, 29.0], 19.0),
            "plan": pd.Series(plan, dtype="str"),
            "country": pd.Series(rng.choice(["DE", "FR", "NL"], n), dtype="str"),
            "churn": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64"),
        }
    )


@pytest.fixture(scope="module")
def shop_models():
    train, valid = shop_frame(800, seed=1), shop_frame(300, seed=2)
    return {name: train_model(train, SHOP, cfg, 7, valid=valid) for name, cfg in MODELS.items()}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_more_recent_activity_lowers_the_churn_score(shop_models, family: str) -> None:
    probe = shop_frame(100, seed=3)
    recent = positive_proba(shop_models[family], probe.assign(days_since_last_activity=1.0), SHOP)
    stale = positive_proba(shop_models[family], probe.assign(days_since_last_activity=21.0), SHOP)
    assert np.mean(recent < stale) >= 0.9
    assert np.mean(stale - recent) > 0.1


@pytest.mark.parametrize("family", sorted(MODELS))
def test_more_tickets_raise_the_churn_score(shop_models, family: str) -> None:
    probe = shop_frame(100, seed=4)
    none = positive_proba(shop_models[family], probe.assign(tickets_28d=0.0), SHOP)
    many = positive_proba(shop_models[family], probe.assign(tickets_28d=3.0), SHOP)
    assert np.mean(none <= many) >= 0.9


@pytest.mark.parametrize("family", sorted(MODELS))
def test_scores_ignore_the_customer_id_natively_and_in_onnx(shop_models, family: str) -> None:
    model = shop_models[family]
    probe = shop_frame(60, seed=5)
    relabelled = probe.assign(customer_id=probe["customer_id"][::-1].to_numpy() * 7)
    native = positive_proba(model, probe, SHOP)
    np.testing.assert_array_equal(positive_proba(model, relabelled, SHOP), native)
    predictor = OnnxPredictor(export_onnx(model, SHOP).SerializeToString(), SHOP)
    np.testing.assert_array_equal(
        predictor.predict_proba(relabelled), predictor.predict_proba(probe)
    )
