"""The prediction server as a real process on 127.0.0.1, over HTTP.

Two servers start here (~10 s each on two cores):
- the image's: run from a build context as the image's entry point runs it, by a Python that
  sees only the image's packages (serve/requirements.txt; no scikit-learn, torch or DVC), with
  two workers, a shadow model and a Parquet prediction log; most tests and the schemathesis run
  use it;
- an authenticated one, from the repository, configured through the environment, in queued
  mode with cross-request batching and a JSONL log written only at shutdown.

The image's server runs the default mode (direct: the API servers score); test_direct.py
checks that both modes answer the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from serve import healthcheck
from serve.app import HEALTH_PATH, build_server
from serve.context import build_context
from serve.model import preflight
from serve.settings import load_settings
from serve.sink import Counters
from tests.serve.artifacts import SCHEMA, Artifacts, settings_file, write_model
from tests.server_process import free_port, running_server

ROOT = Path(__file__).resolve().parents[2]
MAX_RECORDS = 5
API_KEY = "s3cret-key-for-tests"
API_KEY_HEADER = "X-API-Key"

pytestmark = pytest.mark.slow


def image_site(directory: Path) -> Path:
    """A folder holding (as links) exactly the distributions of serve/requirements.txt."""
    directory.mkdir(parents=True)
    names = [
        line.split("==")[0]
        for line in (ROOT / "serve/requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    for name in names:
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops:
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (directory / top).exists():
                (directory / top).symlink_to(source)
    return directory


def record(customer_id: int | str = 1, **overrides: Any) -> dict[str, Any]:
    base = {
        "customer_id": customer_id,
        "days_since_last_order": 10.0,
        "orders_28d": 2.0,
        "plan": "basic",
    }
    return {**base, **overrides}


def expected_scores(pipe, records: list[dict]) -> np.ndarray:
    frame = pd.DataFrame(records)[SCHEMA.features]
    frame["plan"] = frame["plan"].astype("str")
    return pipe.predict_proba(frame)[:, 1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    champion: Artifacts
    shadow: Artifacts
    log: Path
    predictions: Path
    polls: list[int | None]
    env: dict[str, str]


@pytest.fixture(scope="module")
def image_server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("image")
    champion = write_model(tmp / "models")
    shadow = write_model(tmp / "models", seed=5, name="shadow", stamped=False)
    port = free_port()
    settings = settings_file(
        tmp / "params.yaml",
        model=str(champion.onnx),
        card=str(champion.card),
        shadow_model=str(shadow.onnx),
        shadow_card=str(shadow.card),
        port=port,
        workers=2,
        max_records=MAX_RECORDS,
        predictions_flush_seconds=0.3,
    )
    context = build_context(tmp / "context", settings, {}, env={})
    predictions = tmp / "predictions"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": f"{context / 'app'}{os.pathsep}{image_site(tmp / 'site')}",
        # the Dockerfile's ENV, then what an operator passes with `docker run -e`
        "PYTHONDONTWRITEBYTECODE": "1",
        "EVERGREEN_SERVE_SETTINGS": str(context / "model/serve.yaml"),
        "EVERGREEN_SERVE_PREDICTIONS_PATH": str(predictions),
        "OMP_NUM_THREADS": "1",
    }
    # -S: no site-packages, only the image's packages on PYTHONPATH (spawned workers inherit it)
    cmd = [sys.executable, "-S", "-m", "serve.app"]
    log, polls = tmp / "server.log", []
    with running_server(cmd, port, log, cwd=context / "app", env=env, polls=polls) as (url, proc):
        yield Server(url, proc, champion, shadow, log, predictions, polls, env)


def post(server: Server, body: object, **kwargs: Any) -> requests.Response:
    return requests.post(f"{server.url}/predict", json=body, timeout=30, **kwargs)


def test_the_image_python_has_only_serving_packages(image_server: Server) -> None:
    probe = (
        "import importlib.util as u, serve.app, stages.contract.onnx_predict; "
        "print(serve.app.__file__); "
        "print([m for m in ('sklearn', 'torch', 'dvc', 'skops', 'hydra') if u.find_spec(m)])"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env=image_server.env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    where, found = done.stdout.splitlines()
    assert where.startswith(image_server.env["PYTHONPATH"].split(os.pathsep)[0])
    assert found == "[]"


def test_health_answers_only_once_every_worker_has_loaded(image_server: Server) -> None:
    # polled from the start: refused (None) or 503 while loading, then 200
    polls = image_server.polls
    assert polls[-1] == 200 and None in polls
    assert set(polls[:-1]) <= {None, 503}
    loaded = image_server.log.read_text().count(f"loaded logreg {image_server.champion.version}")
    assert loaded == 2  # both scoring processes logged their load before the first 200
    response = requests.get(f"{image_server.url}/health", timeout=5)
    assert (response.status_code, response.text) == (200, "ok")


def test_one_record_and_a_batch_are_scored_in_order(image_server: Server) -> None:
    records = [
        record(11, days_since_last_order=45.0, orders_28d=0.0, plan="basic"),
        record("c-12", days_since_last_order=3.0, orders_28d=6, plan="premium"),
        record(13, days_since_last_order=None, orders_28d=2.0, plan=None),
    ]
    batch = post(image_server, {"records": records})
    one = post(image_server, records[0])
    assert batch.status_code == 200 and one.status_code == 200, batch.text + one.text
    body = batch.json()
    assert body["model"] == {"name": "logreg", "version": image_server.champion.version}
    assert len(body["request_id"]) == 32
    got = body["predictions"]
    assert [p["customer_id"] for p in got] == [11, "c-12", 13]
    expected = expected_scores(image_server.champion.pipe, records)
    np.testing.assert_allclose([p["score"] for p in got], expected, rtol=0, atol=1e-9)
    assert [p["churn"] for p in got] == [bool(s >= 0.5) for s in expected]
    assert one.json()["predictions"] == got[:1]


@pytest.mark.parametrize(
    ("body", "loc", "expectation"),
    [
        (
            {k: v for k, v in record().items() if k != "orders_28d"},
            ["body", "orders_28d"],
            "required",
        ),
        (record(customer_id=None), ["body", "customer_id"], "integer or a string"),
        (record(days_since_last_order="ten"), ["body", "days_since_last_order"], "valid number"),
        (
            record(days_since_last_order=1e6),
            ["body", "days_since_last_order"],
            "less than or equal",
        ),
        (record(orders_28d=-1), ["body", "orders_28d"], "greater than or equal to 0"),
        (record(plan="enterprise"), ["body", "plan"], "'basic', 'standard' or 'premium'"),
        (record(plan=["basic"]), ["body", "plan"], "'basic', 'standard' or 'premium'"),
        (record(tenure=3), ["body", "tenure"], "Extra inputs are not permitted"),
        ({"records": []}, ["body", "records"], "at least 1 item"),
        (
            {"records": [record(i) for i in range(MAX_RECORDS + 1)]},
            ["body", "records"],
            "at most 5",
        ),
        ({"records": [record(), record(plan="x")]}, ["body", "records", 1, "plan"], "'basic'"),
        ({"records": [1, 2]}, ["body", "records", 0], "an object"),
        ([record()], ["body"], "an object"),
        ("just text", ["body"], "an object"),
    ],
)
def test_bad_input_gets_422_naming_the_field_and_the_expectation(
    image_server: Server, body: Any, loc: list, expectation: str
) -> None:
    response = post(image_server, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(e["loc"] == loc and expectation in e["msg"] for e in detail), detail
    assert all(set(e) == {"loc", "msg", "type"} for e in detail)  # the input is not echoed


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b"a=1", "text/plain"),
        (b'{"customer_id": 1, "days_since_last_order": NaN}', "application/json"),
        (b"\xff\xfe{", "application/json"),
    ],
)
def test_malformed_bodies_get_422_not_500(
    image_server: Server, data: bytes, content_type: str
) -> None:
    response = requests.post(
        f"{image_server.url}/predict",
        data=data,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert response.status_code == 422, response.text


def test_refusals_are_counted_by_field_in_info(image_server: Server) -> None:
    """A category the model never saw is refused before any log sees it: /info's `refused`
    is its only trace (a new vehicle code was ~10 % of an insurer's claims, unseen)."""

    def refused() -> dict:
        return requests.get(f"{image_server.url}/info", timeout=10).json()["refused"]

    before = refused()
    assert post(image_server, record(plan="enterprise")).status_code == 422
    batch = {"records": [record(), record(plan="x"), record(plan="y", orders_28d=-1)]}
    assert post(image_server, batch).status_code == 422
    assert post(image_server, record()).status_code == 200
    # a column the model does not take (a client's new field, the label): counted apart
    assert post(image_server, {**record(), "notes": "x", "churn": 1}).status_code == 422
    after = refused()
    assert after["requests"] - before["requests"] == 3
    by, was = after["by_field"], before["by_field"]
    assert by["plan"] - was.get("plan", 0) == 3
    assert by["orders_28d"] - was.get("orders_28d", 0) == 1
    assert by["(not a model input)"] - was.get("(not a model input)", 0) == 2


def test_info_tells_what_is_served(image_server: Server) -> None:
    info = requests.get(f"{image_server.url}/info", timeout=10).json()
    card = image_server.champion.card_json
    assert info["model"]["name"] == "logreg"
    assert info["model"]["version"] == image_server.champion.version
    assert info["data"]["version"] == "d4t4.dir" == info["model"]["data_version"]
    assert info["data"]["refit_rows"] == info["data"]["train_rows"] + 10
    assert info["git_commit"] == card["git_commit"]
    assert info["gate"]["blessed"] is True and info["model"]["blessed"] is True
    assert info["metrics"] == {"test": card["metrics"]["test"]}
    numeric = {f["name"]: f for f in info["features"]["numeric"]}
    assert numeric["orders_28d"]["minimum"] == 0.0
    categorical = {f["name"]: f["allowed"] for f in info["features"]["categorical"]}
    assert categorical == {"plan": ["basic", "standard", "premium"]}
    assert info["shadow"]["version"] == image_server.shadow.version
    assert info["server"]["workers"] == 2 and info["server"]["auth"] is False
    assert info["server"]["mode"] == "direct"  # the default
    assert set(info["predictions_log"]) >= {"logged", "dropped", "failed", "written"}


def read_predictions(path: Path) -> pd.DataFrame:
    return ds.dataset(path, format="parquet", partitioning="hive").to_table().to_pandas()


def test_predictions_are_logged_with_versions_and_shadow_scores(image_server: Server) -> None:
    records = [record(900 + i, days_since_last_order=5.0 * i) for i in range(4)]
    response = post(image_server, {"records": records}).json()
    deadline = time.monotonic() + 20
    while True:
        frame = (
            read_predictions(image_server.predictions)
            if image_server.predictions.exists()
            else None
        )
        if frame is not None and (frame["request_id"] == response["request_id"]).sum() == 4:
            break
        assert time.monotonic() < deadline, "prediction log not written within 20 s"
        time.sleep(0.2)
    rows = frame[frame["request_id"] == response["request_id"]].sort_values("row")
    assert rows["customer_id"].tolist() == [str(900 + i) for i in range(4)]
    assert set(rows["model_version"]) == {image_server.champion.version}
    assert set(rows["data_version"]) == {"d4t4.dir"}
    assert set(rows["git_commit"]) == {image_server.champion.card_json["git_commit"]}
    assert set(rows["shadow_model_version"]) == {image_server.shadow.version}
    served = [p["score"] for p in response["predictions"]]
    np.testing.assert_allclose(rows["score"], served, rtol=0, atol=0)
    shadow = expected_scores(image_server.shadow.pipe, records)
    np.testing.assert_allclose(rows["shadow_score"], shadow, rtol=0, atol=1e-9)
    assert not np.allclose(rows["shadow_score"], rows["score"])  # another model indeed
    assert "shadow" not in json.dumps(response)  # logged, never returned
    assert rows["features"].iloc[1] == {
        "days_since_last_order": 5.0,
        "orders_28d": 2.0,
        "plan": "basic",
    }
    assert (rows["latency_ms"] > 0).all()
    assert not rows["authenticated"].any()  # a server without an API key
    counters = requests.get(f"{image_server.url}/info", timeout=10).json()["predictions_log"]
    assert counters["written"] >= 4 and counters["dropped"] == counters["failed"] == 0
    assert counters["last_error"] is None and counters["last_error_at"] is None


def test_without_a_key_no_route_declares_one(image_server: Server) -> None:
    response = requests.get(f"{image_server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    document = response.json()
    operations = [op for ops in document["paths"].values() for op in ops.values()]
    assert len(operations) == 5
    assert not any("security" in op or "401" in op["responses"] for op in operations)
    assert "securitySchemes" not in document.get("components", {})
    assert API_KEY_HEADER.lower() not in response.text.lower()
    for path in ("/docs", "/redoc"):  # FastAPI's pages are served as usual
        assert requests.get(f"{image_server.url}{path}", timeout=10).status_code == 200


def test_the_image_healthcheck_passes_against_it(image_server: Server) -> None:
    assert healthcheck.main([], env=image_server.env) == 0
    closed = {**image_server.env, "EVERGREEN_SERVE_PORT": str(free_port())}
    assert healthcheck.main([], env=closed) == 1


@pytest.fixture(scope="module")
def openapi(image_server: Server):
    return schemathesis.openapi.from_url(f"{image_server.url}/openapi.json")


@pytest.mark.parametrize(
    ("method", "path", "mode", "examples"),
    [
        ("POST", "/predict", GenerationMode.POSITIVE, 200),
        ("POST", "/predict", GenerationMode.NEGATIVE, 100),
        # without an API key these take no input at all: one request each
        ("GET", "/info", GenerationMode.POSITIVE, 1),
        ("GET", "/health", GenerationMode.POSITIVE, 1),
        ("GET", "/", GenerationMode.POSITIVE, 1),
    ],
)
def test_openapi_no_server_error_and_responses_match_the_schema(
    openapi, method: str, path: str, mode: GenerationMode, examples: int
) -> None:
    # schemathesis's pytest plugin (from_fixture) needs pytest < 9, so hypothesis drives it
    operation = openapi[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        response = case.call_and_validate(
            checks=[not_a_server_error, response_schema_conformance], timeout=30
        )
        statuses.append(response.status_code)

    statuses: list[int] = []
    check()
    assert len(statuses) >= min(examples, 50)
    if mode == GenerationMode.POSITIVE:  # the schema and the validation agree on what is valid
        assert set(statuses) == {200}, sorted(set(statuses))
    else:  # invalid bodies get 422 (no route declares a key with auth off)
        assert 422 in statuses and set(statuses) <= {200, 422}, sorted(set(statuses))


# ---------------------------------------------------------------- the authenticated server


def test_auth_batching_and_the_log_written_at_shutdown(tmp_path: Path) -> None:
    champion = write_model(tmp_path / "models")
    port = free_port()
    settings = settings_file(tmp_path / "params.yaml")
    predictions = tmp_path / "predictions"
    env = {
        **os.environ,
        "EVERGREEN_API_KEY": API_KEY,
        "EVERGREEN_SERVE_MODEL": str(champion.onnx),
        "EVERGREEN_SERVE_CARD": str(champion.card),
        "EVERGREEN_SERVE_PORT": str(port),
        # cross-request batching is done by inference workers: queued mode
        "EVERGREEN_SERVE_MODE": "queued",
        "EVERGREEN_SERVE_MAX_BATCH_SIZE": "8",
        "EVERGREEN_SERVE_BATCH_TIMEOUT": "0.02",
        "EVERGREEN_SERVE_PREDICTIONS_PATH": str(predictions),
        "EVERGREEN_SERVE_PREDICTIONS_FORMAT": "jsonl",
        "EVERGREEN_SERVE_PREDICTIONS_FLUSH_SECONDS": "3600",
    }
    cmd = [sys.executable, "-m", "serve.app", "--settings", str(settings)]
    good = {"X-API-Key": API_KEY}
    records = [record(i, days_since_last_order=float(i)) for i in range(24)]
    # every route the server has, as built from these settings (FastAPI's own included)
    built = load_settings(settings, env)
    app = build_server(built, *preflight(built), key=API_KEY, counters=Counters()).app
    routes = {(route.path, method) for route in app.routes for method in route.methods}
    assert {("/openapi.json", "GET"), ("/docs", "GET"), ("/redoc", "GET")} <= routes
    with running_server(cmd, port, tmp_path / "server.log", env=env) as (url, _):
        assert requests.get(f"{url}/health", timeout=5).status_code == 200  # no key needed
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY + "x"}):
            denied = requests.post(f"{url}/predict", json=records[0], headers=headers, timeout=10)
            assert denied.status_code == 401, denied.text
            assert requests.get(f"{url}/info", headers=headers, timeout=10).status_code == 401
        for path, method in sorted(routes):
            if method == "HEAD":
                continue
            denied = requests.request(method, f"{url}{path}", timeout=10)
            allowed = requests.request(method, f"{url}{path}", headers=good, json={}, timeout=10)
            if path == HEALTH_PATH:
                assert denied.status_code == allowed.status_code == 200
            else:  # the documentation too: it tells the model version and every input's range
                assert denied.status_code == 401, (path, method, denied.text)
                assert allowed.status_code != 401, (path, method, allowed.text)
        document = requests.get(f"{url}/openapi.json", headers=good, timeout=10).json()
        for path, operations in document["paths"].items():
            for operation in operations.values():
                if path == HEALTH_PATH:
                    assert "security" not in operation and "401" not in operation["responses"]
                else:
                    assert operation["security"] == [{"APIKeyHeader": []}], path
                    assert "401" in operation["responses"], path
        scheme = document["components"]["securitySchemes"]["APIKeyHeader"]
        assert scheme == {**scheme, "type": "apiKey", "in": "header", "name": API_KEY_HEADER}
        info = requests.get(f"{url}/info", headers=good, timeout=10).json()
        assert info["server"]["auth"] is True and info["server"]["max_batch_size"] == 8

        def send(rec: dict) -> dict:
            response = requests.post(f"{url}/predict", json=rec, headers=good, timeout=30)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(8) as pool:  # concurrent: LitServe batches them
            answers = list(pool.map(send, records))
        assert not list(predictions.rglob("*.jsonl"))  # flushes only at shutdown here
    got = [a["predictions"][0]["score"] for a in answers]
    np.testing.assert_allclose(got, expected_scores(champion.pipe, records), rtol=0, atol=1e-9)
    assert [a["predictions"][0]["customer_id"] for a in answers] == list(range(24))
    lines = [
        json.loads(x) for p in predictions.rglob("*.jsonl") for x in p.read_text().splitlines()
    ]
    assert sorted(line["request_id"] for line in lines) == sorted(a["request_id"] for a in answers)
    assert {line["model_version"] for line in lines} == {champion.version}
    assert {line["git_commit"] for line in lines} == {champion.card_json["git_commit"]}
    assert {line["shadow_score"] for line in lines} == {None}
    assert {line["authenticated"] for line in lines} == {True}  # every request carried the key
