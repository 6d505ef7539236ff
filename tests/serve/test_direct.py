"""Direct mode against queued mode: two real servers on 127.0.0.1 (same model, shadow, API key
and settings but `mode`), hit by a real client with the same requests, answer the same bytes
(but the request id) and log the same predictions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.serve.artifacts import settings_file, write_model
from tests.server_process import free_port, running_server

pytestmark = pytest.mark.slow

API_KEY = "direct-and-queued"
KEY = {"X-API-Key": API_KEY}
MAX_RECORDS = 5
REQUEST_ID = re.compile(rb'"request_id":"[0-9a-f]{32}"')


def record(key: Any = 1, **overrides: Any) -> dict[str, Any]:
    base = {"customer_id": key, "days_since_last_order": 10.0, "orders_28d": 2.0, "plan": "basic"}
    return {**base, **overrides}


# (method, path, headers, body bytes): what both servers are asked, in this order
ASKED: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("GET", "/health", {}, None),
    ("POST", "/predict", KEY, json.dumps(record()).encode()),
    (
        "POST",
        "/predict",
        KEY,
        json.dumps(
            {
                "records": [
                    record(7, days_since_last_order=0.0, orders_28d=9.0, plan="premium"),
                    record("ünï-8", days_since_last_order=None, orders_28d=None, plan=None),
                    record(2**70, days_since_last_order=59.5, plan="standard"),  # beyond int64
                ]
            },
            ensure_ascii=False,
        ).encode(),
    ),
    ("POST", "/predict", {}, json.dumps(record()).encode()),  # no key: 401
    ("POST", "/predict", {"X-API-Key": "wrong"}, json.dumps(record()).encode()),
    ("POST", "/predict", KEY, json.dumps(record(plan="gold", tenure=3)).encode()),  # 422
    ("POST", "/predict", KEY, json.dumps({"records": [record()] * 6}).encode()),
    ("POST", "/predict", KEY, json.dumps({"records": []}).encode()),
    # 15 errors: an answer over GZipMiddleware's 1000 bytes
    ("POST", "/predict", KEY, json.dumps({"records": [{"customer_id": 1}] * 5}).encode()),
    ("POST", "/predict", KEY, b'{"customer_id": 1, "days_since_last_order": NaN}'),
    ("POST", "/predict", KEY, b"{not json"),
    ("POST", "/predict", KEY, b"\xff\xfe{"),
    ("POST", "/predict", KEY, b" " * (2 << 20)),  # over the payload limit: 413
    ("GET", "/predict", KEY, None),  # 405
    ("GET", "/openapi.json", KEY, None),
    ("GET", "/openapi.json", {}, None),
]


@dataclass
class Served:
    url: str
    log: Path
    predictions: Path


def start(stack: ExitStack, tmp: Path, mode: str, models: tuple[Any, Any]) -> Served:
    champion, shadow = models
    port = free_port()
    settings = settings_file(
        tmp / f"{mode}.yaml",
        mode=mode,
        model=str(champion.onnx),
        card=str(champion.card),
        shadow_model=str(shadow.onnx),
        shadow_card=str(shadow.card),
        port=port,
        max_records=MAX_RECORDS,
        predictions_path=str(tmp / f"predictions-{mode}"),
        predictions_format="jsonl",
        predictions_flush_seconds=0.2,
    )
    env = {**os.environ, "EVERGREEN_API_KEY": API_KEY, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "serve.app", "--settings", str(settings)]
    log = tmp / f"{mode}.log"
    url, _ = stack.enter_context(running_server(cmd, port, log, env=env))
    return Served(url, log, tmp / f"predictions-{mode}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    tmp = tmp_path_factory.mktemp("modes")
    models = (
        write_model(tmp / "models"),
        write_model(tmp / "models", seed=3, name="shadow", stamped=False),
    )
    with ExitStack() as stack:
        yield {mode: start(stack, tmp, mode, models) for mode in ("direct", "queued")}


def ask(url: str, method: str, path: str, headers: dict[str, str], body: bytes | None) -> tuple:
    headers = {"Content-Type": "application/json", **headers} if body is not None else headers
    response = requests.request(method, f"{url}{path}", data=body, headers=headers, timeout=30)
    kept = {
        k: response.headers.get(k)
        for k in ("content-type", "content-encoding", "vary", "allow", "www-authenticate")
    }
    return response.status_code, kept, REQUEST_ID.sub(b'"request_id":"-"', response.content)


@pytest.mark.parametrize("encoding", ["gzip, deflate", "identity"])
def test_both_modes_answer_the_same_requests_with_the_same_bytes(
    servers: dict[str, Served], encoding: str
) -> None:
    # with gzip accepted, direct mode's /predict runs inside the middleware stack; without,
    # in front of it (serve/direct.py: fast_lane)
    asked = [(m, p, {**h, "Accept-Encoding": encoding}, b) for m, p, h, b in ASKED]
    answers = {mode: [ask(served.url, *one) for one in asked] for mode, served in servers.items()}
    for asked, direct, queued in zip(ASKED, answers["direct"], answers["queued"], strict=True):
        assert direct == queued, (asked[:3], direct, queued)
    statuses = [status for status, _, _ in answers["direct"]]
    assert statuses == [
        200,
        200,
        200,
        401,
        401,
        422,
        422,
        422,
        422,
        422,
        422,
        422,
        413,
        405,
        200,
        401,
    ]
    long_answer = answers["direct"][8][1]  # GZipMiddleware's vary header either way
    assert long_answer["vary"] == "Accept-Encoding"
    assert long_answer["content-encoding"] == ("gzip" if encoding.startswith("gzip") else None)
    body = json.loads(answers["direct"][2][2])
    assert [p["customer_id"] for p in body["predictions"]] == [7, "ünï-8", 2**70]
    # both tell what they serve alike, but the mode
    infos = {
        mode: requests.get(f"{s.url}/info", headers=KEY, timeout=10).json()
        for mode, s in servers.items()
    }
    assert infos["direct"]["server"].pop("mode") == "direct"
    assert infos["queued"]["server"].pop("mode") == "queued"
    for info in infos.values():
        info.pop("predictions_log")  # its path and counters differ
    assert infos["direct"] == infos["queued"]


def test_direct_mode_loads_the_model_in_each_api_server_and_starts_no_worker(
    servers: dict[str, Served],
) -> None:
    direct = servers["direct"].log.read_text()
    assert direct.count("evergreen serve: API server ") == 2  # api_servers: 2, each loaded
    assert "evergreen serve: worker " not in direct
    assert servers["queued"].log.read_text().count("evergreen serve: worker ") == 1


def read_log(path: Path, customers: set[str]) -> list[dict[str, Any]]:
    """The log's rows for `customers`, without what differs by nature between two servers
    answering the same request."""
    rows = [json.loads(line) for f in path.rglob("*.jsonl") for line in f.read_text().splitlines()]
    rows = [r for r in rows if r["customer_id"] in customers]
    for row in rows:
        for field in ("request_id", "time", "latency_ms"):
            row.pop(field)
    return sorted(rows, key=lambda r: (r["customer_id"], r["row"]))


def test_both_modes_log_the_same_predictions_with_the_shadow_scores(
    servers: dict[str, Served],
) -> None:
    records = [record(100 + i, days_since_last_order=3.0 * i) for i in range(4)]
    customers = {"100", "101", "102", "103"}  # the log keeps keys as text
    logs = {}
    for mode, served in servers.items():
        for i in (0, 2):
            batch = {"records": records[i : i + 2]}
            response = requests.post(f"{served.url}/predict", json=batch, headers=KEY, timeout=30)
            assert response.status_code == 200, response.text
        deadline = time.monotonic() + 20
        while len(rows := read_log(served.predictions, customers)) < 4:
            assert time.monotonic() < deadline, f"{mode}: prediction log not written in 20 s"
            time.sleep(0.2)
        logs[mode] = rows
    assert logs["direct"] == logs["queued"]
    rows = logs["direct"]
    assert len(rows) == 4 and all(r["authenticated"] for r in rows)
    assert all(r["shadow_score"] is not None and r["shadow_score"] != r["score"] for r in rows)


# an API server's lifespan (serve_directly's), run in a fresh interpreter: freezing is for
# the whole process, and pytest's must not be frozen
LIFESPAN = """
import asyncio, gc, json, sys
from fastapi import FastAPI
from serve.app import routed_api, validate
from serve.direct import serve_directly
from serve.model import load_served_model
from serve.schema import api_models
from serve.settings import load_settings
from serve.sink import Counters

settings = load_settings(sys.argv[1], {})
champion = load_served_model(settings.model, settings.card, range_margin=1.0)
models = api_models(champion.schema, settings.max_records)
api = routed_api(models)(settings, key=None, counters=Counters())
app = FastAPI()
app.add_api_route("/predict", lambda: None, methods=["POST"])
app.response_queue_id = 1  # as LitServe numbers its API servers
serve_directly(app, api, lambda body: validate(models, body), None, path="/predict",
               failing="failing", not_received="not received", limit=1 << 20)


async def main():
    before = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        frozen = gc.get_freeze_count()
        sent = []
        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [],
                 "query_string": b"", "root_path": ""}

        async def receive():
            return {"type": "http.request", "body": sys.argv[2].encode(), "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
    print(json.dumps({"before": before, "frozen": frozen, "status": sent[0]["status"],
                      "answer": json.loads(sent[1]["body"])}))


asyncio.run(main())
"""


def test_an_api_server_keeps_what_it_loaded_out_of_the_collectors_passes(tmp_path: Path) -> None:
    # a full collection walking the libraries' and the model's objects held the event loop
    # 150 ms: the p99 of every concurrency (bench/README.md, "The p99 tail")
    champion = write_model(tmp_path / "models")
    settings = settings_file(
        tmp_path / "direct.yaml",
        model=str(champion.onnx),
        card=str(champion.card),
        predictions_path=None,
    )
    done = subprocess.run(
        [sys.executable, "-c", LIFESPAN, str(settings), json.dumps(record(5))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["before"] == 0 and out["frozen"] > 50_000, out
    assert out["status"] == 200 and out["answer"]["predictions"][0]["customer_id"] == 5
