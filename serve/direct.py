"""Direct mode (`serve.mode: direct`): /predict validated, scored and encoded inside each of
LitServe's API-server processes.

LitServe 0.2.19 always hands a request to an inference worker through a
`multiprocessing.Manager().Queue()` and takes the answer back the same way: four round trips to
the manager process, about 280 µs, for a tabular model whose onnxruntime `run` takes 50-90 µs
(bench/README.md). In direct mode the server is still LitServe's (its FastAPI app, its uvicorn
processes sharing one socket, its middlewares, auth, /health and shutdown), but:

- no inference worker is started (`DirectLitServer`); each API server loads the model, the
  shadow and its own prediction-log writer in its lifespan, before its uvicorn accepts a
  connection, and beats for the main process's monitor (serve/health.py), which watches the
  API-server processes as it watches workers in queued mode: one that dies or is stuck turns
  /health to 503 and the server exits with code 1;
- the /predict route keeps its FastAPI definition (so the OpenAPI document, 405s and the
  exception handlers are those of queued mode), but its handler is a bare ASGI callable:
  the API key, the failing check, the body, the card's validation (`parse`, the 422s of queued
  mode), scoring and the JSON answer (the same bytes as a queued worker's) in one coroutine,
  without FastAPI's dependency resolution;
- a POST /predict that does not ask for gzip skips the middleware stack too (`fast_lane`:
  about 100 µs a request, as much as scoring): the handler runs first, with the payload limit
  of LitServe's MaxSizeMiddleware, the app's exception handlers for its errors and the `vary`
  header GZipMiddleware adds to an answer of 1000 bytes or more; a request that accepts gzip
  takes the whole stack (and its compression) to the same handler.

Scoring runs on the event loop: a request's onnxruntime call takes tens of microseconds, less
than handing it to a thread would cost. Models whose inference dominates belong in queued mode.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import litserve as ls
from fastapi import FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from litserve.utils import WorkerSetupStatus

from serve.health import WorkerHealth
from serve.schema import WireBatch

_KEY_HEADER = b"x-api-key"
_JSON = b"application/json"


class ScoringAPI(Protocol):
    """What direct mode needs of serve.app.PredictAPI."""

    def load(self, slot: int, *, role: str) -> None: ...
    def close(self) -> None: ...
    def check_key(self, key: str | None) -> None: ...
    def predict(self, x: WireBatch) -> Any: ...
    def encode_body(self, output: Any) -> bytes: ...


class DirectLitServer(ls.LitServer):
    """A LitServer whose API servers score requests themselves: it starts no inference worker
    (LitServe's start-up wait sees its one slot ready at once: readiness is each API server's
    own model load, in its lifespan) and keeps its API-server processes for the monitor."""

    api_server_processes: list[Any]

    def launch_inference_worker(self, lit_api: ls.LitAPI) -> list[Any]:
        endpoint = lit_api.api_path.split("/")[-1]
        self.workers_setup_status[f"{endpoint}_0"] = WorkerSetupStatus.READY
        return []

    def _start_server(self, *args: Any, **kwargs: Any) -> dict[int, Any]:
        workers = super()._start_server(*args, **kwargs)
        self.api_server_processes = list(workers.values())
        return workers


def freeze_loaded() -> None:
    """Take what the process holds once its model is loaded (libraries, model, app) out of
    the garbage collector's passes: it lives as long as the process, and a full collection
    walking its ~350,000 objects held the event loop for 150 ms on this container, which is
    a request's p99 at any concurrency (bench/README.md, "The p99 tail")."""
    gc.collect()
    gc.freeze()


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            # as Starlette decodes a header (what the FastAPI route of queued mode compares)
            return value.decode("latin-1")
    return None


# what LitServe's MaxSizeMiddleware answers past its limit, and GZipMiddleware's threshold
TOO_LARGE = "Payload too large"
GZIP_MINIMUM = 1000


async def _body(receive: Callable[[], Any], not_received: str, limit: int | None) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            # gone, or its body timed out (serve/protocol.py): nobody reads this answer
            raise HTTPException(status_code=408, detail=not_received)
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise HTTPException(status_code=413, detail=TOO_LARGE)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def direct_handler(
    api: ScoringAPI,
    parse: Callable[[bytes], WireBatch],
    health: WorkerHealth | None,
    *,
    failing: str,
    not_received: str,
    limit: int | None = None,
) -> Callable[..., Any]:
    """The ASGI callable answering /predict in this process (see the module doc). Errors are
    raised as queued mode's dependencies raise them, for the app's exception handlers; with
    `limit` (bytes: the fast lane), a longer body is refused as LitServe's MaxSizeMiddleware
    refuses it, and a long answer has GZipMiddleware's `vary` header."""

    async def predict(scope: dict[str, Any], receive: Any, send: Any) -> None:
        api.check_key(_header(scope, _KEY_HEADER))
        if health is not None and health.failed:
            raise HTTPException(status_code=503, detail=failing)
        wire = parse(await _body(receive, not_received, limit))
        payload = api.encode_body(api.predict(wire))
        headers = [(b"content-length", str(len(payload)).encode()), (b"content-type", _JSON)]
        if limit is not None and len(payload) >= GZIP_MINIMUM:
            headers.append((b"vary", b"Accept-Encoding"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return predict


def _handler_for(handlers: dict[Any, Any], exc: Exception) -> Any:
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


def fast_lane(app: FastAPI, handler: Callable[..., Any], *, path: str) -> None:
    """Put `handler` in front of the app's middleware stack for POST `path` without gzip
    (see the module doc); every other request goes through the stack as before. (LitServe's
    per-process copies of the app build the same stack: they share its router and settings.)"""
    build = app.build_middleware_stack

    def build_stack() -> Any:
        stack = build()
        handlers = app.exception_handlers

        async def outer(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if (
                scope["type"] != "http"
                or scope["path"] != path
                or scope["method"] != "POST"
                or "gzip" in (_header(scope, b"accept-encoding") or "")
            ):
                await stack(scope, receive, send)
                return
            try:
                await handler(scope, receive, send)
            except Exception as exc:
                respond = _handler_for(handlers, exc)
                if respond is None:
                    raise  # uvicorn answers 500, as the stack's ServerErrorMiddleware would
                response = await respond(Request(scope, receive), exc)
                if len(response.body) >= GZIP_MINIMUM:
                    response.headers.add_vary_header("Accept-Encoding")
                await response(scope, receive, send)

        return outer

    app.build_middleware_stack = build_stack  # type: ignore[method-assign]


def serve_directly(
    app: FastAPI,
    api: ScoringAPI,
    parse: Callable[[bytes], WireBatch],
    health: WorkerHealth | None,
    *,
    path: str,
    failing: str,
    not_received: str,
    limit: int,
) -> None:
    """Answer POST `path` in the API servers and load the model in each one's lifespan;
    `limit`: the server's payload limit in bytes."""
    routes = [
        r
        for r in app.router.routes
        if isinstance(r, APIRoute) and r.path == path and "POST" in r.methods
    ]
    if len(routes) != 1:
        raise RuntimeError(f"expected one POST {path} route from LitServe, found {len(routes)}")
    routes[0].app = direct_handler(api, parse, health, failing=failing, not_received=not_received)
    lane = direct_handler(
        api, parse, health, failing=failing, not_received=not_received, limit=limit
    )
    fast_lane(app, lane, path=path)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        # LitServe sets each API server's copy of the app its number (0..api_servers-1)
        api.load(int(app.response_queue_id or 0), role="API server")
        freeze_loaded()
        try:
            async with inner(app) as state:
                yield state
        finally:
            api.close()  # the prediction log's last records, before uvicorn's process ends

    app.router.lifespan_context = lifespan
