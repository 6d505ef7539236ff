"""The servers the serving benchmark compares ours with (started by bench/serve/run.py).

    python bench/serve/baselines.py fastapi_sklearn MODEL.skops SCHEMA.json PORT
    python bench/serve/baselines.py litserve_default_onnx MODEL.onnx SCHEMA.json PORT
    python bench/serve/baselines.py raw_asgi_onnx MODEL.onnx SCHEMA.json PORT [WORKERS]

- fastapi_sklearn: a plain FastAPI + uvicorn app that builds a DataFrame from the records and
  calls scikit-learn's `predict_proba` (one process, access log off);
- litserve_default_onnx: LitServe with its default settings (one worker, access log on, no
  validation beyond JSON) scoring the same ONNX graph with stages.onnx_predict;
- raw_asgi_onnx: a bare ASGI callable on uvicorn (no framework, no validation), json.loads, the
  ONNX session, json.dumps: what the hardware allows, the reference for the ratio.

Every one takes `{"records": [{<key>, <features>...}, ...]}` and answers
`{"predictions": [{<key>, "score"}]}`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations as types.
import json
import os
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import pandas as pd

from stages.contract.feature_schema import FeatureSchema, load_schema


def frame_of(records: list[dict[str, Any]], schema: FeatureSchema) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records)
    for name in schema.numeric:
        frame[name] = pd.to_numeric(frame[name]).astype("float64")
    for name in schema.categorical:
        frame[name] = frame[name].astype("str")
    return frame


def predictions(keys: list[Any], scores: np.ndarray, key: str) -> dict[str, Any]:
    return {
        "predictions": [{key: k, "score": s} for k, s in zip(keys, scores.tolist(), strict=True)]
    }


def fastapi_sklearn(model_path: str, schema_path: str, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel

    from stages.lib.model_io import load_model

    schema = load_schema(schema_path)
    model = load_model(model_path)
    app = FastAPI()

    class Body(BaseModel):
        records: list[dict[str, Any]]

    @app.post("/predict")
    def predict(body: Body) -> dict[str, Any]:
        frame = frame_of(body.records, schema)
        scores = model.predict_proba(frame[schema.features])[:, 1]
        return predictions(frame[schema.entity_key].tolist(), scores, schema.entity_key)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class DefaultOnnxAPI(ls.LitAPI):
    """LitServe's contract with nothing added: a dict in, a frame, the ONNX scores out."""

    def __init__(self, model_path: str, schema_path: str) -> None:
        super().__init__()
        self.model_path, self.schema_path = model_path, schema_path

    def setup(self, device: str) -> None:
        from stages.contract.onnx_predict import OnnxPredictor

        self.schema = load_schema(self.schema_path)
        self.predictor = OnnxPredictor(self.model_path, self.schema)

    def decode_request(self, request: dict[str, Any]) -> pd.DataFrame:
        return frame_of(request["records"], self.schema)

    def predict(self, frame: pd.DataFrame) -> dict[str, Any]:
        scores = self.predictor.predict_proba(frame)
        key = self.schema.entity_key
        return predictions(frame[key].tolist(), scores, key)

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def litserve_default_onnx(model_path: str, schema_path: str, port: int) -> None:
    # defaults everywhere; only the client file is not written and the host is loopback
    server = ls.LitServer(DefaultOnnxAPI(model_path, schema_path))
    server.run(host="127.0.0.1", port=port, generate_client_file=False)


def raw_app_factory() -> Any:
    """The bare ASGI app (uvicorn --factory), configured by RAW_MODEL and RAW_SCHEMA."""
    from stages.contract.onnx_predict import OnnxPredictor

    schema = load_schema(os.environ["RAW_MODEL_SCHEMA"])
    predictor = OnnxPredictor(os.environ["RAW_MODEL"], schema)
    fill = predictor.missing_category
    key = schema.entity_key
    headers = [(b"content-type", b"application/json")]

    def score(records: list[dict[str, Any]]) -> np.ndarray:
        feed = {
            n: np.array([r[n] for r in records], dtype=np.float64).reshape(-1, 1)
            for n in schema.numeric
        }
        for n in schema.categorical:
            values = [fill if r[n] is None else r[n] for r in records]
            feed[n] = np.array(values, dtype=object).reshape(-1, 1)
        (proba,) = predictor.session.run(["probabilities"], feed)
        return proba[:, 1]

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        records = json.loads(body)["records"]
        out = json.dumps(predictions([r[key] for r in records], score(records), key)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


def raw_asgi_onnx(model_path: str, schema_path: str, port: int, workers: int = 2) -> None:
    import uvicorn

    os.environ.update(RAW_MODEL=model_path, RAW_MODEL_SCHEMA=schema_path)
    uvicorn.run(
        "baselines:raw_app_factory",
        factory=True,
        app_dir=str(Path(__file__).parent),
        host="127.0.0.1",
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    kind, model, schema_file, port_text, *rest = sys.argv[1:]
    servers = {
        "fastapi_sklearn": fastapi_sklearn,
        "litserve_default_onnx": litserve_default_onnx,
        "raw_asgi_onnx": raw_asgi_onnx,
    }
    servers[kind](model, schema_file, int(port_text), *map(int, rest))
