"""A small real model for the server tests: fitted by stages.train, exported by stages.export,
described by stages.card, as `dvc repro` makes them (only smaller)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.pipeline import Pipeline

from stages.contract.card import ModelCard
from stages.contract.feature_schema import FeatureSchema
from stages.lib.cards import build_card
from stages.lib.onnx_export import export_onnx
from stages.lib.training import ModelConfig, train_model

SCHEMA = FeatureSchema(
    entity_key="customer_id",
    time="snapshot_date",
    label="churn",
    numeric=("days_since_last_order", "orders_28d"),
    categorical=("plan",),
    categories={"plan": ("basic", "standard", "premium")},
)
PARAMS: dict[str, Any] = {
    "seed": 7,
    "model": {"name": "logreg", "estimator": "logistic_regression", "hyperparameters": {}},
    "dataset": {
        "activity_types": ["order"],
        "label": {"name": "churn", "horizon_days": 21, "lookback_days": 28},
    },
}
GATE = {
    "blessed": True,
    "checks": [{"name": "min_roc_auc", "passed": True}],
    "champion": None,
    "champion_missing": "no model on main yet",
}


def synthetic_frame(n: int, seed: int) -> pd.DataFrame:
    """Churn rises with days since the last order, falls with orders, and is lower on premium;
    a few values missing."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "snapshot_date": pd.Timestamp("2026-03-01"),
            "days_since_last_order": rng.uniform(0, 60, n),
            "orders_28d": rng.poisson(3, n).astype(float),
            "plan": pd.Series(rng.choice(["basic", "standard", "premium"], n), dtype="str"),
        }
    )
    logit = (
        0.12 * frame["days_since_last_order"]
        - 0.8 * frame["orders_28d"]
        - 1.5 * (frame["plan"] == "premium")
    )
    frame["churn"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype("int64")
    frame.loc[frame.index % 17 == 0, "orders_28d"] = np.nan
    frame.loc[frame.index % 23 == 0, "plan"] = None
    return frame


@dataclass(frozen=True)
class Artifacts:
    pipe: Pipeline
    onnx: Path
    card: Path
    card_json: dict[str, Any]
    version: str


def write_model(
    directory: Path,
    *,
    seed: int = 0,
    estimator: str = "logistic_regression",
    stamped: bool = True,
    name: str = "model",
) -> Artifacts:
    """Fit, export and describe a model in `directory` (<name>.onnx, <name>_card.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    frame = synthetic_frame(400, seed)
    params = {**PARAMS, "model": {**PARAMS["model"], "estimator": estimator}}
    config = ModelConfig.from_params(params["model"])
    pipe = train_model(frame, SCHEMA, config, seed)
    graph = export_onnx(pipe, SCHEMA).SerializeToString()
    onnx = directory / f"{name}.onnx"
    onnx.write_bytes(graph)
    version = hashlib.md5(graph).hexdigest()
    card = build_card(
        schema=SCHEMA,
        train=frame,
        params=params,
        metrics={"roc_auc": 0.8, "pr_auc": 0.6},
        slices={},
        model_file="models/model.skops",
        model_md5=f"{seed:032d}",
        landing_md5="d4t4.dir",
        data_source="dvc.lock: stage 'validate', dependency 'data/landing'",
        onnx={"file": "models/model.onnx", "md5": version},
        libraries={"onnxruntime": "x"},
        # refitted on train + valid (train.refit): /info says so
        train_metrics={"refit_rows": len(frame) + 10},
    )
    if stamped:
        gate = {**GATE, "challenger": {"model_md5": card["model"]["md5"]}}
        card = ModelCard(card).stamped(gate, "c0ffee" * 6 + "beef")
    path = directory / f"{name}_card.json"
    path.write_text(json.dumps(card, indent=2))
    return Artifacts(pipe=pipe, onnx=onnx, card=path, card_json=card, version=version)


def settings_file(path: Path, **overrides: Any) -> Path:
    """A settings file: the repository's conf/serve/default.yaml with `overrides`."""
    root = Path(__file__).resolve().parents[2]
    serve = yaml.safe_load((root / "conf/serve/default.yaml").read_text())
    serve["threshold"] = 0.5  # an interpolation in conf/, resolved by `evergreen params`
    serve.update(overrides)
    path.write_text(yaml.safe_dump({"serve": serve}, sort_keys=False))
    return path
