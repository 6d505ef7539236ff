"""The LitServe prediction server: churn scores from the ONNX model and its model card.

    evergreen serve [--settings params.yaml] [--port 8000] ...
    evergreen serve build-context --out DIR        (the image's build context, serve/context.py)

Endpoints:
- `POST /predict`: one record `{<entity key>, <feature>: value, ...}` or `{"records": [...]}`
  (1..max_records); answers `{"request_id", "model": {"name", "version"}, "predictions":
  [{<entity key>, "score", <label>: score >= threshold}, ...]}` in request order. A request that
  breaks the card's feature schema gets 422 naming each field and the expectation
  (serve/schema.py), checked by FastAPI in the API server before any worker sees it.
- `GET /health`: 200 `ok` once every scoring process (inference worker, or API server in
  direct mode) has loaded the model, 503 before (the port only opens once the first one is
  ready) and as soon as one dies or is stuck (serve/health.py: the server then answers waiting
  requests 503 and exits with code 1, to be restarted); never needs the API key.
- `GET /info`: model name and version (md5 of the ONNX file), data version, git commit, gate
  verdict, test metrics, the accepted feature schema, shadow model, prediction-log counters
  and its last failure.
- `GET /openapi.json`, `/docs`, `/redoc`: the generated request and response schemas.

With `EVERGREEN_API_KEY` (or `EVERGREEN_API_KEY_FILE`) set, every endpoint but /health needs the
header `X-API-Key` (compared in constant time), FastAPI's own documentation routes included,
and the OpenAPI document declares the key on exactly those routes (on none without a key).
LitServe 0.2.19 puts the API's `authorize` dependency on /health too, so ours lets /health
through: container and load-balancer probes then need no secret, and /health tells nothing
but readiness.

A request's headers and body must arrive within `request_header_timeout` and
`request_body_timeout` seconds (serve/protocol.py), else 408 and the connection is closed.

Two modes (`serve.mode`), the same answers byte for byte but the request id:
- `direct` (the default): each API-server process (LitServe's uvicorn processes and FastAPI
  app, its auth and /health) loads the model and validates, scores and encodes /predict
  requests itself (serve/direct.py): no inference worker, no queue hop;
- `queued`: the API servers validate, then hand each request to `workers` inference processes
  through LitServe's manager queues (cross-request batching with `max_batch_size`).

Each scoring process loads only the ONNX graph and the card (no pickle, sklearn, torch or DVC),
scores an optional shadow model on every request (logged, never returned), and hands each
answered request to the prediction log (serve/sink.py), off the request path.
"""

# No `from __future__ import annotations` here: LitServe and FastAPI read the annotations of
# `decode_request`/`encode_response` and of the endpoints as real types to build the routes.
import argparse
import asyncio
import atexit
import contextlib
import hmac
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import numpy as np
import orjson
from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect
from starlette.routing import Route

from serve.direct import DirectLitServer, freeze_loaded, serve_directly
from serve.health import WorkerHealth, WorkerMonitor, fail_waiting_requests
from serve.model import Feed, ServedModel, concat, load_served_model, preflight
from serve.protocol import timed_protocol
from serve.schema import ApiModels, WireBatch, api_models, client_errors
from serve.settings import (
    DEFAULT_SETTINGS,
    SETTINGS_ENV,
    ServeSettings,
    SettingsError,
    api_key,
    load_settings,
)
from serve.sink import WARN_EVERY_S, Counters, LogEntry, PredictionSink, Refusals, SinkConfig

API_PATH = "/predict"
HEALTH_PATH = "/health"
INFO_PATH = "/info"
# LitServe's own /info (server internals) moves here; ours takes /info
LITSERVE_INFO_PATH = "/litserve/info"
API_KEY_HEADER = "X-API-Key"
# A request with thousands of broken records would otherwise answer with thousands of errors.
MAX_REPORTED_ERRORS = 20
# bytes of JSON a record may take on average before the request is refused with 413
BYTES_PER_RECORD = 4096
# what a request gets once a scoring process died or is stuck (the server is exiting)
FAILING = (
    "the server is failing (an inference worker or API server died or is stuck) and restarting"
)
NOT_RECEIVED = "request body not received"

log = logging.getLogger("evergreen.serve")
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="needed on every endpoint but /health when the server has an API key",
)


@dataclass(frozen=True)
class Scored:
    """One request's rows with the champion's scores and the shadow's (None: no shadow or it
    failed)."""

    wire: WireBatch
    scores: np.ndarray
    shadow_scores: np.ndarray | None


def encode_json(body: Any) -> bytes:
    """Compact JSON, UTF-8, as both modes answer (orjson; the stdlib for what it refuses,
    such as an integer key beyond 64 bits)."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _exit_on_signal(signum: int, frame: object) -> None:
    # LitServe stops inference workers with SIGTERM; leaving through SystemExit runs the
    # atexit hook that writes the prediction-log buffer
    raise SystemExit(0)


class PredictAPI(ls.LitAPI):
    """Scores requests with the champion (and the shadow, when configured); see module doc.

    Requests arrive already validated (as WireBatch); with `max_batch_size` > 1 LitServe hands
    `predict` several of them, which are scored in one onnxruntime call.
    """

    def __init__(
        self,
        settings: ServeSettings,
        *,
        key: str | None,
        counters: Counters,
        health: WorkerHealth | None = None,
    ) -> None:
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout,
            api_path=API_PATH,
        )
        self.settings = settings
        self.counters = counters
        self.health_state = health
        self._key = key.encode() if key is not None else None
        self._slot = 0
        # direct mode: the model is loaded in the API servers (load), not in workers (setup)
        self.direct = settings.mode == "direct"
        self.loaded = False

    def setup(self, device: str) -> None:
        # LitServe numbers its inference workers 0..workers-1 and says which one this is
        self.load(int(os.environ.get("LITSERVE_WORKER_ID", "0")), role="worker")
        freeze_loaded()
        if self.sink is not None:
            atexit.register(self.sink.close)
            signal.signal(signal.SIGTERM, _exit_on_signal)

    def load(self, slot: int, *, role: str) -> None:
        """Load the champion, the shadow and the prediction log in this process, as scoring
        process `slot`, and start its heartbeat."""
        s = self.settings
        started = time.perf_counter()
        self._slot = slot
        self.model = load_served_model(
            s.model, s.card, range_margin=s.range_margin, name=s.model_name
        )
        self.feed: Feed = self.model.feed_from(self.model.schema)
        self.shadow: ServedModel | None = None
        self.shadow_feed: Feed | None = None
        if s.shadow_model is not None and s.shadow_card is not None:
            self.shadow = load_served_model(s.shadow_model, s.shadow_card, range_margin=None)
            self.shadow_feed = self.shadow.feed_from(self.model.schema)
        self.sink: PredictionSink | None = None
        if s.predictions_path:
            config = SinkConfig(
                path=s.predictions_path,
                format=s.predictions_format,
                max_queued=s.predictions_max_queued,
                flush_records=s.predictions_flush_records,
                flush_seconds=s.predictions_flush_seconds,
            )
            meta = {
                "model_name": self.model.name,
                "model_version": self.model.version,
                "data_version": self.model.data_version,
                "git_commit": self.model.git_commit,
                "shadow_model_version": self.shadow.version if self.shadow else None,
            }
            self.sink = PredictionSink(config, self.model.schema, meta, self.counters).start()
        if self.health_state is not None:
            # from now on (loading a large model may hold the GIL longer than the stall limit)
            self.health_state.start_beating(self._slot)
        shadow = f", shadow {self.shadow.version}" if self.shadow else ""
        self.loaded = True
        print(
            f"evergreen serve: {role} {os.getpid()} loaded {self.model.name} "
            f"{self.model.version}{shadow} in {time.perf_counter() - started:.2f} s",
            flush=True,
        )

    def close(self) -> None:
        """Write what the prediction log still holds (direct mode: at the API server's end)."""
        if getattr(self, "sink", None) is not None:
            self.sink.close()

    def health(self) -> bool:
        """LitServe's extra /health check, in the API server: no worker died or is stuck; in
        direct mode also this process holds the model and every API server has loaded it."""
        state = self.health_state
        if self.direct and not (self.loaded and (state is None or state.all_started())):
            return False
        return state is None or state.problem() is None

    def check_key(self, key: str | None) -> None:
        """401 unless the server has no key or `key` is it (compared in constant time)."""
        if self._key is None:
            return
        if not key or not hmac.compare_digest(key.encode(), self._key):
            raise HTTPException(
                status_code=401,
                detail=f"missing or wrong {API_KEY_HEADER} header",
                headers={"WWW-Authenticate": "ApiKey"},
            )

    def authorize(self, request: Request, key: str | None = Security(api_key_header)) -> None:
        """The API-key check LitServe puts on every route (see the module doc for /health)."""
        if request.url.path != HEALTH_PATH:
            self.check_key(key)

    def decode_request(self, request: Any) -> WireBatch:
        if not isinstance(request, WireBatch):  # made by the route's validating dependency
            raise TypeError(f"expected a validated request, got {type(request).__name__}")
        return request

    def predict(self, x: WireBatch | list[WireBatch]) -> Scored | list[Scored]:
        if self.health_state is None:
            return self._predict(x)
        with self.health_state.busy(self._slot):  # a batch that never ends is a stuck worker
            return self._predict(x)

    def _predict(self, x: WireBatch | list[WireBatch]) -> Scored | list[Scored]:
        wires = x if isinstance(x, list) else [x]
        joined = concat(wires)
        scores = self.model.score(self.feed, joined)
        shadow = self._shadow_scores(joined)
        out, start = [], 0
        for wire in wires:
            end = start + len(wire)
            part = None if shadow is None else shadow[start:end]
            out.append(Scored(wire, scores[start:end], part))
            start = end
        return out if isinstance(x, list) else out[0]

    def _shadow_scores(self, wire: WireBatch) -> np.ndarray | None:
        if self.shadow is None or self.shadow_feed is None:
            return None
        try:
            return self.shadow.score(self.shadow_feed, wire)
        except Exception as exc:  # the shadow must never fail a request: count, log, go on
            self.counters.add("shadow_errors", len(wire))
            now = time.monotonic()
            if now - getattr(self, "_shadow_warned", -WARN_EVERY_S) >= WARN_EVERY_S:
                self._shadow_warned = now
                log.warning(
                    "shadow model %s failed (counted in /info): %s", self.shadow.version, exc
                )
            return None

    def encode_response(self, output: Scored) -> Response:
        # encoded here, in the worker: the API server passes a Response through untouched
        # (FastAPI would otherwise validate and encode it again, in the busier process)
        return Response(self.encode_body(output), media_type="application/json")

    def encode_body(self, output: Scored) -> bytes:
        """The answer's JSON, after handing the request to the prediction log."""
        request_id = uuid.uuid4().hex
        key, label = self.model.schema.entity_key, self.model.schema.label
        if self.model.schema.regression:
            # a regression has no decision: its log has a `prediction` column instead
            decisions = np.zeros(0, dtype=bool)
            predictions = [
                {key: k, "prediction": v}
                for k, v in zip(output.wire.keys, output.scores.tolist(), strict=True)
            ]
        else:
            decisions = output.scores >= self.settings.threshold
            predictions = [
                {key: k, "score": s, label: d}
                for k, s, d in zip(
                    output.wire.keys, output.scores.tolist(), decisions.tolist(), strict=True
                )
            ]
        if self.sink is not None:
            now = time.time()
            latency_ms = (now - output.wire.received) * 1000.0
            entry = LogEntry(
                request_id,
                now,
                latency_ms,
                output.wire,
                output.scores,
                decisions,
                output.shadow_scores,
                # with a key, only requests that carried it reach a worker
                authenticated=self._key is not None,
            )
            self.sink.submit(entry)
        body = {
            "request_id": request_id,
            "model": {"name": self.model.name, "version": self.model.version},
            "predictions": predictions,
        }
        return encode_json(body)


def validate(models: ApiModels, body: bytes) -> WireBatch:
    """The request body as a WireBatch, or RequestValidationError (422, by
    `validation_error`) naming each field."""
    try:
        return models.parse(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def _plain_api() -> PredictAPI:
    # pickle then restores the instance's __dict__ (the 3rd item of __reduce__)
    return PredictAPI.__new__(PredictAPI)


def routed_api(models: ApiModels, health: WorkerHealth | None = None) -> type[PredictAPI]:
    """A PredictAPI whose /predict route validates with the card's generated models.

    LitServe builds the route from the annotations of `decode_request` (here a FastAPI
    dependency that reads the body and validates it into a WireBatch, in the API server) and
    `encode_response` (the response model, for the OpenAPI document). Workers need neither:
    an instance pickles as a plain PredictAPI. Once the server is failing (`health`), a request
    gets 503 before it is queued for a worker.
    """

    async def validated_body(request: Request) -> WireBatch:
        if health is not None and health.failed:
            raise HTTPException(status_code=503, detail=FAILING)
        try:
            body = await request.body()
        except ClientDisconnect:  # gone, or its body timed out (serve/protocol.py): no answer
            raise HTTPException(status_code=408, detail=NOT_RECEIVED) from None
        return validate(models, body)

    request_type = Annotated[WireBatch, Depends(validated_body)]
    response_type = models.response

    class RoutedPredictAPI(PredictAPI):
        def decode_request(self, request: request_type) -> WireBatch:  # type: ignore[valid-type]
            return super().decode_request(request)

        def encode_response(self, output: Scored) -> response_type:  # type: ignore[valid-type]
            return super().encode_response(output)

        def __reduce__(self) -> tuple[Any, ...]:
            return (_plain_api, (), self.__dict__)

    return RoutedPredictAPI


class InfoResponse(BaseModel):
    """GET /info: what is served and how it came to be."""

    model: dict[str, Any]
    data: dict[str, Any]
    git_commit: str | None
    gate: dict[str, Any] | None
    metrics: dict[str, Any]
    features: dict[str, Any]
    shadow: dict[str, Any] | None
    predictions_log: dict[str, Any]
    # requests answered 422 since the server started, and the fields they named
    refused: dict[str, Any]
    server: dict[str, Any]


def describe(
    settings: ServeSettings, champion: ServedModel, shadow: ServedModel | None, *, auth: bool
) -> dict[str, Any]:
    """The static part of GET /info (the log counters are added per request)."""
    card = champion.card
    data = card.data
    return {
        "model": champion.identity(),
        "data": {
            "version": champion.data_version,
            "train_rows": data.get("train_rows"),
            "train_snapshot_dates": data.get("train_snapshot_dates"),
            # the rows the model served learnt, where it was refitted on train + valid
            # (train.refit): train_rows alone said less than it learnt
            **({"refit_rows": data["refit_rows"]} if "refit_rows" in data else {}),
        },
        "git_commit": champion.git_commit,
        "gate": card.gate,
        # test and validation metrics (the per-slice ones stay in the card)
        "metrics": {k: v for k, v in card.metrics.items() if k in ("test", "valid")},
        "features": champion.schema.describe(),
        "shadow": None if shadow is None else shadow.identity(),
        "predictions_log": {
            "path": settings.predictions_path,
            "format": settings.predictions_format,
            "max_queued": settings.predictions_max_queued,
        },
        "server": {
            "mode": settings.mode,
            "workers": settings.workers,
            "max_batch_size": settings.max_batch_size,
            "batch_timeout": settings.batch_timeout,
            "max_records": settings.max_records,
            "threshold": settings.threshold,
            "range_margin": settings.range_margin,
            "request_header_timeout": settings.request_header_timeout,
            "request_body_timeout": settings.request_body_timeout,
            "worker_stall_timeout": settings.worker_stall_timeout,
            "auth": auth,
        },
    }


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


VALIDATION_ERRORS = {
    "title": "ValidationErrors",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        }
    },
}


def document_routes(app: FastAPI, models: ApiModels, *, auth: bool) -> None:
    """Make the OpenAPI document say what the routes take and answer: /predict's body (read by
    a dependency, so FastAPI cannot see it), its 422 and 503; LitServe's /health and / reply
    text/plain (FastAPI would document JSON); with an API key every route but /health needs it
    (`security`) and can answer 401; without one no route declares it. (`authorize` declares
    the key on every route it guards, /health included, whether a key is set or not.)"""
    build = app.openapi
    template = "#/components/schemas/{model}"
    request_schema = TypeAdapter(models.request).json_schema(ref_template=template)

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI builds it once and caches it; the edits below are idempotent
        paths = schema.get("paths", {})
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        predict = paths.get(API_PATH, {}).get("post")
        if predict is not None:
            body = {k: v for k, v in request_schema.items() if k != "$defs"}
            components.update(request_schema.get("$defs", {}))
            components["ValidationErrors"] = VALIDATION_ERRORS
            predict["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
            predict["responses"]["422"] = {
                "description": "the request breaks the model card's feature schema",
                "content": {
                    "application/json": {
                        "schema": {"$ref": template.format(model="ValidationErrors")}
                    }
                },
            }
            predict["responses"]["503"] = {
                "description": FAILING,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        if "get" in paths.get(HEALTH_PATH, {}):
            paths[HEALTH_PATH]["get"]["responses"] = {
                "200": _text("ok: every inference worker has loaded the model"),
                "503": _text("not ready: a worker is still loading, or died"),
            }
        if "get" in paths.get("/", {}):
            paths["/"]["get"]["responses"]["200"] = _text("litserve running")
        denied = {
            "description": f"missing or wrong {API_KEY_HEADER} header",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
        for path, operations in paths.items():
            for operation in operations.values():
                if auth and path != HEALTH_PATH:
                    operation["responses"].setdefault("401", denied)
                else:
                    operation.pop("security", None)
        if not auth:
            components_root = schema.get("components", {})
            components_root.pop("securitySchemes", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field and the expectation, without echoing the input back."""
    return JSONResponse(
        status_code=422, content={"detail": client_errors(exc.errors(), MAX_REPORTED_ERRORS)}
    )


def counting(refusals: Refusals) -> Callable[..., Any]:
    """`validation_error`, counting each refusal and the fields it names (GET /info's
    `refused`)."""

    async def handler(request: Request, exc: RequestValidationError) -> JSONResponse:
        refusals.add(exc.errors())
        return await validation_error(request, exc)

    return handler


def guard_fastapi_routes(app: FastAPI, authorize: Callable[..., None]) -> None:
    """FastAPI serves /openapi.json, /docs, /docs/oauth2-redirect and /redoc as plain routes,
    outside any dependency: re-add each with `authorize`, as every LitServe route has it."""
    for route in list(app.router.routes):
        if isinstance(route, Route) and not isinstance(route, APIRoute):
            app.router.routes.remove(route)
            app.add_api_route(
                route.path,
                route.endpoint,
                methods=sorted((route.methods or {"GET"}) - {"HEAD"}),
                include_in_schema=False,
                dependencies=[Depends(authorize)],
            )


def watch_for_failure(app: FastAPI, server: ls.LitServer, health: WorkerHealth) -> None:
    """Run `fail_waiting_requests` in each API server, beside LitServe's own lifespan task
    (the app is copied into each API server process, its router shared)."""
    inner = app.router.lifespan_context

    def failing() -> Exception:
        return HTTPException(status_code=503, detail=FAILING)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as state:
            watch = fail_waiting_requests(server.response_buffer, health, failing)
            task = asyncio.create_task(watch)
            try:
                yield state
            finally:
                task.cancel()

    app.router.lifespan_context = lifespan


def build_server(
    settings: ServeSettings,
    champion: ServedModel,
    shadow: ServedModel | None,
    *,
    key: str | None,
    counters: Counters,
    health: WorkerHealth | None = None,
) -> ls.LitServer:
    """The LitServer with /predict typed by the card, our /info and 422 handler; with
    `health`, its scoring processes are watched (serve/health.py: start a WorkerMonitor with
    it). In direct mode /predict is answered in the API servers (serve/direct.py)."""
    models = api_models(champion.schema, settings.max_records)
    api = routed_api(models, health)(settings, key=key, counters=counters, health=health)
    max_payload = max(1 << 20, settings.max_records * BYTES_PER_RECORD)
    server = (DirectLitServer if api.direct else ls.LitServer)(
        api,
        accelerator="cpu",
        workers_per_device=settings.workers,
        timeout=settings.timeout,
        healthcheck_path=HEALTH_PATH,
        info_path=LITSERVE_INFO_PATH,
        max_payload_size=max_payload,
    )
    if health is not None:
        # ours replaces LitServe's watch, which sees only a dead worker, leaves /health at 200
        # and its waiting requests hanging, and exits after uvicorn's 30 s graceful wait
        server._monitor_workers = False
    app = server.app
    app.title = "Evergreen prediction server"
    app.version = f"{champion.name}@{champion.version}"
    # created before any server process starts, as `counters`: every API server counts into it
    refusals = Refusals([champion.schema.entity_key, *champion.schema.features])
    app.add_exception_handler(RequestValidationError, counting(refusals))
    document_routes(app, models, auth=key is not None)
    static = describe(settings, champion, shadow, auth=key is not None)

    async def info() -> InfoResponse:
        log_info = {**static["predictions_log"], **counters.snapshot(), **counters.last_error()}
        return InfoResponse(
            **{**static, "predictions_log": log_info, "refused": refusals.snapshot()}
        )

    app.add_api_route(
        INFO_PATH,
        info,
        methods=["GET"],
        response_model=InfoResponse,
        dependencies=[Depends(api.authorize)],
        summary="What is served: model, data version, commit, gate verdict, metrics, schema",
    )
    guard_fastapi_routes(app, api.authorize)
    if api.direct:
        serve_directly(
            app,
            api,
            lambda body: validate(models, body),
            health,
            path=API_PATH,
            failing=FAILING,
            not_received=NOT_RECEIVED,
            limit=max_payload,
        )
    elif health is not None:
        watch_for_failure(app, server, health)
    return server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evergreen serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings",
        type=Path,
        default=Path(os.environ.get(SETTINGS_ENV, DEFAULT_SETTINGS)),
        help=f"file with a `serve` section (env {SETTINGS_ENV}; default %(default)s)",
    )
    parser.add_argument("--model", type=Path, help="ONNX model (settings: model)")
    parser.add_argument("--card", type=Path, help="its model card JSON (settings: card)")
    parser.add_argument("--model-name", help="name returned with predictions")
    parser.add_argument("--host", choices=["127.0.0.1", "0.0.0.0", "::"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--workers", type=int, help="inference processes")
    parser.add_argument("--max-records", type=int, help="records per request at most")
    parser.add_argument("--threshold", type=float, help="decision: score >= threshold")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--access-log", action="store_true", default=None, help="log every HTTP request"
    )
    parser.add_argument("--predictions-path", help="prediction log folder or s3:// prefix")
    parser.add_argument("--shadow-model", type=Path, help="ONNX model scored in shadow")
    parser.add_argument("--shadow-card", type=Path, help="the shadow model's card")
    return parser


def interrupt_on(
    signums: Sequence[int], on_signal: Callable[[], None] | None = None
) -> dict[int, Any]:
    """Make `signums` raise KeyboardInterrupt here, LitServe's one graceful-shutdown path
    (after calling `on_signal`, in this process only).

    Needed because SIGTERM (docker stop, CI runners) would kill this process and leave its
    children serving the port, a container's PID 1 ignores it outright, and SIGINT arrives
    ignored in a background job of a non-interactive shell. Returns the previous handlers.
    """
    owner = os.getpid()

    def handler(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            # a forked uvicorn child re-raises the signal at its own exit: just die by it
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        if on_signal is not None:
            on_signal()
        raise KeyboardInterrupt

    return {signum: signal.signal(signum, handler) for signum in signums}


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM. Returns 2 when the settings, model or card are unusable,
    1 when a worker fails to start, or dies or gets stuck while serving (serve/health.py)."""
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "settings"}
    # Inference workers are spawned and inherit this: one OpenMP thread each keeps several
    # workers from oversubscribing the cores (onnxruntime gets its own thread count).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        settings = load_settings(args.settings, os.environ, overrides)
        key = api_key(os.environ)
        champion, shadow = preflight(settings)
    except (SettingsError, FileNotFoundError, ValueError) as exc:
        print(f"evergreen serve: {exc}", file=sys.stderr)
        return 2
    direct = settings.mode == "direct"
    health = WorkerHealth(
        settings.scoring_processes,
        settings.worker_stall_timeout,
        kind="API server" if direct else "inference worker",
    )
    server = build_server(settings, champion, shadow, key=key, counters=Counters(), health=health)
    processes = (lambda: getattr(server, "api_server_processes", [])) if direct else None
    monitor = WorkerMonitor(server, health, processes)
    previous = interrupt_on([signal.SIGINT, signal.SIGTERM], on_signal=monitor.stop)
    try:
        monitor.start()
        server.run(
            host=settings.host,
            port=settings.port,
            num_api_servers=settings.scoring_processes if direct else settings.api_servers,
            log_level=settings.log_level,
            generate_client_file=False,
            access_log=settings.access_log,
            http=timed_protocol(settings.request_header_timeout, settings.request_body_timeout),
        )
    except RuntimeError as exc:  # a worker failed in setup()
        print(f"evergreen serve: {exc}", file=sys.stderr)
        return 1
    finally:
        monitor.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if monitor.failure is not None:
        print(f"evergreen serve: stopped: {monitor.failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run through the imported module so the LitAPI pickled to spawned workers is
    # `serve.app.PredictAPI`, not `__main__.PredictAPI`.
    from serve import app

    raise SystemExit(app.main())
