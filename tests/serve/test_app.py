"""The prediction server: pure helpers in-process, then one real server process over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from pydantic import ValidationError
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from serve.app import (
    interrupt_on,
    main,
    model_columns,
    parse_records,
    records_model,
    to_predictions,
)
from stages.cli import main as cli_main
from stages.feature_schema import FeatureSchema, save_schema
from stages.model_io import save_model
from tests.server_process import free_port, running_server

SCHEMA = FeatureSchema(
    entity_key="customer_id",
    time="snapshot_date",
    label="churned",
    numeric=("days_since_last_order", "orders_28d"),
    categorical=("plan",),
    categories={"plan": ("basic", "standard", "premium")},
)
MAX_RECORDS = 5


def synthetic_frame(n: int, seed: int) -> pd.DataFrame:
    """Churn rises with days since the last order, falls with orders, and is lower on premium."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(n),
            "days_since_last_order": rng.uniform(0, 60, n),
            "orders_28d": rng.poisson(3, n).astype(float),
            "plan": rng.choice(["basic", "standard", "premium"], n),
        }
    )
    logit = (
        0.12 * frame["days_since_last_order"]
        - 0.8 * frame["orders_28d"]
        - 1.5 * (frame["plan"] == "premium")
    )
    frame["churned"] = rng.uniform(size=n) < 1 / (1 + np.exp(-logit))
    return frame


def fit_pipeline(frame: pd.DataFrame) -> Pipeline:
    preprocess = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), list(SCHEMA.numeric)),
            ("cat", OneHotEncoder(handle_unknown="ignore"), list(SCHEMA.categorical)),
        ]
    )
    pipe = Pipeline([("preprocess", preprocess), ("clf", LogisticRegression())])
    return pipe.fit(frame[SCHEMA.features], frame[SCHEMA.label])


def record(customer_id: int | str = 1, **overrides: object) -> dict[str, object]:
    base = {"customer_id": customer_id, "days_since_last_order": 10.0, "orders_28d": 2.0}
    return {**base, "plan": "standard", **overrides}


# ---------------------------------------------------------------- pure helpers, in-process


def test_parse_records_types_and_nulls() -> None:
    rows = [record(7, orders_28d=None, plan=None), record("c-8", orders_28d=3)]
    frame = parse_records(records_model(SCHEMA, 10), SCHEMA, rows)
    assert frame["customer_id"].tolist() == [7, "c-8"]
    assert frame["orders_28d"].dtype == "float64"
    assert np.isnan(frame.loc[0, "orders_28d"]) and frame.loc[1, "orders_28d"] == 3.0
    assert frame["plan"].isna().tolist() == [True, False]


@pytest.mark.parametrize(
    ("rows", "loc"),
    [
        ([{k: v for k, v in record().items() if k != "plan"}], ("records", 0, "plan")),
        ([record(), record(orders_28d="2")], ("records", 1, "orders_28d")),
        ([record(orders_28d=True)], ("records", 0, "orders_28d")),
        ([record(orders_28d=float("nan"))], ("records", 0, "orders_28d")),
        ([record(plan=3)], ("records", 0, "plan")),
        ([record(customer_id=1.5)], ("records", 0, "customer_id", "int")),
        ([], ("records",)),
        ([record()] * 3, ("records",)),
    ],
)
def test_parse_records_refuses(rows: list[dict], loc: tuple) -> None:
    with pytest.raises(ValidationError) as info:
        parse_records(records_model(SCHEMA, 2), SCHEMA, rows)
    assert loc in [err["loc"] for err in info.value.errors()]


def test_model_columns_follow_fit_order_and_refuse_mismatch() -> None:
    frame = synthetic_frame(50, seed=1)
    pipe = fit_pipeline(frame)
    assert model_columns(pipe, SCHEMA) == SCHEMA.features
    other = FeatureSchema(**{**SCHEMA.__dict__, "numeric": ("orders_28d", "tenure_days")})
    with pytest.raises(ValueError, match=r"days_since_last_order.*tenure_days"):
        model_columns(pipe, other)


def test_to_predictions_threshold_is_inclusive() -> None:
    out = to_predictions([1, 2], [0.5, 0.49], key_name="customer_id", threshold=0.5)
    assert out == [
        {"customer_id": 1, "score": 0.5, "churn": True},
        {"customer_id": 2, "score": 0.49, "churn": False},
    ]


def test_main_refuses_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    schema = save_schema(SCHEMA, tmp_path / "schema.json")
    missing = tmp_path / "nope.skops"
    # through the `evergreen` dispatcher, so the wiring is covered too
    assert cli_main(["serve", "--model", str(missing), "--schema", str(schema)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_main_refuses_schema_model_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = save_model(fit_pipeline(synthetic_frame(50, seed=1)), tmp_path / "model.skops")
    other = FeatureSchema(**{**SCHEMA.__dict__, "categorical": ("country",)})
    schema = save_schema(other, tmp_path / "schema.json")
    assert main(["--model", str(model), "--schema", str(schema)]) == 2
    assert "country" in capsys.readouterr().err


def test_interrupt_on_raises_in_owner_and_kills_forked_children() -> None:
    previous = interrupt_on([signal.SIGTERM])
    try:
        child = os.fork()
        if child == 0:  # a forked child (as uvicorn's) must die by the signal, not raise
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            finally:
                os._exit(3)  # reached only if the signal did not kill it
        _, status = os.waitpid(child, 0)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes; this is never reached in full
    finally:
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


# ---------------------------------------------------------------- one real server process
# Starting it takes ~10 s on two cores (spawned workers import sklearn), hence `slow`.


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen
    pipe: Pipeline
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("serve")
    pipe = fit_pipeline(synthetic_frame(400, seed=0))
    model = save_model(pipe, tmp / "model.skops")
    schema = save_schema(SCHEMA, tmp / "feature_schema.json")
    port = free_port()
    log = tmp / "server.log"
    # the schema path comes from the environment, the model path from the command line
    env = {**os.environ, "EVERGREEN_SCHEMA": str(schema)}
    cmd = [sys.executable, "-m", "serve.app", "--model", str(model), "--port", str(port)]
    cmd += ["--max-records", str(MAX_RECORDS), "--model-name", "churn-test"]
    with running_server(cmd, port, log, env=env) as (url, proc):
        yield Server(url=url, port=port, proc=proc, pipe=pipe, log=log)


def post(server: Server, body: object) -> requests.Response:
    return requests.post(f"{server.url}/predict", json=body, timeout=30)


@pytest.mark.slow
def test_health_is_ok_when_ready(server: Server) -> None:
    response = requests.get(f"{server.url}/health", timeout=5)
    assert (response.status_code, response.text) == (200, "ok")


@pytest.mark.slow
def test_predictions_match_the_pipeline(server: Server) -> None:
    records = [
        record(11, days_since_last_order=45.0, orders_28d=0.0, plan="basic"),
        record("c-12", days_since_last_order=3.0, orders_28d=6.0, plan="premium"),
        record(13, days_since_last_order=None, orders_28d=2.0, plan=None),
        record(14, plan="enterprise"),  # a category never seen in training is ignored
        record(15, orders_28d=1),  # JSON integer for a numeric feature
    ]
    response = post(server, {"records": records})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "churn-test"
    expected = server.pipe.predict_proba(pd.DataFrame(records)[SCHEMA.features])[:, 1]
    got = body["predictions"]
    assert [p["customer_id"] for p in got] == [11, "c-12", 13, 14, 15]
    np.testing.assert_allclose([p["score"] for p in got], expected, rtol=0, atol=1e-9)
    assert [p["churn"] for p in got] == [bool(s >= 0.5) for s in expected]


@pytest.mark.slow
def test_higher_risk_scores_higher(server: Server) -> None:
    low = record(1, days_since_last_order=1.0, orders_28d=8.0, plan="premium")
    high = record(2, days_since_last_order=55.0, orders_28d=0.0, plan="basic")
    low_pred, high_pred = post(server, {"records": [low, high]}).json()["predictions"]
    assert high_pred["score"] > low_pred["score"]
    assert (low_pred["churn"], high_pred["churn"]) == (False, True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"records": [{k: v for k, v in record().items() if k != "orders_28d"}]}, "orders_28d"),
        ({"records": [{k: v for k, v in record().items() if k != "customer_id"}]}, "customer_id"),
        ({"records": [record(), record(days_since_last_order="ten")]}, "days_since_last_order"),
        ({"records": [record(plan=["basic"])]}, "plan"),
        ({"records": []}, "records"),
        ({"records": [record(i) for i in range(MAX_RECORDS + 1)]}, "records"),
        ({"rows": [record()]}, "records"),
        ({"records": [1, 2]}, "records"),
    ],
    ids=[
        "missing-feature",
        "missing-key",
        "wrong-type-numeric",
        "wrong-type-categorical",
        "empty",
        "too-many",
        "no-records",
        "not-objects",
    ],
)
def test_bad_requests_get_422_naming_the_field(server: Server, body: dict, field: str) -> None:
    response = post(server, body)
    assert response.status_code == 422, response.text
    locs = [err["loc"] for err in response.json()["detail"]]
    assert any(field in loc for loc in locs), locs


@pytest.mark.slow
def test_invalid_json_gets_422(server: Server) -> None:
    response = requests.post(
        f"{server.url}/predict",
        data="{not json",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 422, response.text


@pytest.mark.slow
def test_server_still_serves_after_bad_requests(server: Server) -> None:
    assert post(server, {"records": []}).status_code == 422
    response = post(server, {"records": [record(99)]})
    assert response.status_code == 200
    assert json.loads(response.text)["predictions"][0]["customer_id"] == 99
