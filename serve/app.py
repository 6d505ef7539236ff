"""The LitServe prediction server: churn scores for customers, from the saved pipeline.

`POST /predict` takes `{"records": [{<entity key>, <features>...}, ...]}` and answers
`{"predictions": [{<entity key>, "score", "churn"}, ...], "model": <name>}` in request order.
A record that breaks the feature schema is refused with HTTP 422 naming the field.
`GET /health` (LitServe's) answers 200 `ok` once every inference worker has loaded the model.
"""

# No `from __future__ import annotations` here: LitServe reads the annotations of
# `decode_request`/`encode_response` as real types to build the FastAPI route.
import argparse
import hashlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import pandas as pd
from fastapi import HTTPException
from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError, create_model

from stages.feature_schema import FeatureSchema, load_schema
from stages.model_io import load_model

DEFAULT_MODEL = "models/model.skops"
DEFAULT_SCHEMA = "artifacts/features/feature_schema.json"
# A request with thousands of broken records would otherwise answer with thousands of errors.
MAX_REPORTED_ERRORS = 20

# Strict: "1.5" or true is a client bug to report, not a value to coerce. NaN/inf are
# refused too; a missing value is sent as null.
Numeric = Annotated[float | None, Field(strict=True, allow_inf_nan=False)]
Categorical = StrictStr | None
EntityKey = StrictInt | StrictStr


@dataclass(frozen=True)
class ServeConfig:
    model_path: Path
    schema_path: Path
    model_name: str
    threshold: float = 0.5
    max_records: int = 1000


class PredictRequest(BaseModel):
    """The request envelope, checked by FastAPI before it reaches a worker (bad JSON -> 422)."""

    records: list[dict[str, Any]]


def record_model(schema: FeatureSchema) -> type[BaseModel]:
    """A pydantic model of one record: the entity key (required) and every feature (nullable).

    Fields get internal names and the column names as aliases, so a column called e.g.
    `schema` or `_x` cannot clash with pydantic; errors still report the column name.
    """
    fields: dict[str, Any] = {"f0": (EntityKey, Field(alias=schema.entity_key))}
    for i, name in enumerate(schema.numeric, start=len(fields)):
        fields[f"f{i}"] = (Numeric, Field(alias=name))
    for i, name in enumerate(schema.categorical, start=len(fields)):
        fields[f"f{i}"] = (Categorical, Field(alias=name))
    return create_model("Record", **fields)


def records_model(schema: FeatureSchema, max_records: int) -> type[BaseModel]:
    """A pydantic model of the `records` list: 1..max_records records of `record_model`."""
    record = record_model(schema)
    bounded = Annotated[list[record], Field(min_length=1, max_length=max_records)]
    return create_model("Records", records=(bounded, ...))


def parse_records(
    validator: type[BaseModel], schema: FeatureSchema, records: list[dict[str, Any]]
) -> pd.DataFrame:
    """Validate `records` (raises pydantic's ValidationError) into a frame, one row per record.

    Columns: the entity key, numeric features as float64 (null -> NaN), categorical
    features as strings (null -> missing), as the training frames have them.
    """
    rows = validator.model_validate({"records": records}).records
    names = [schema.entity_key, *schema.numeric, *schema.categorical]
    columns = {name: [getattr(row, f"f{i}") for row in rows] for i, name in enumerate(names)}
    frame = pd.DataFrame({schema.entity_key: pd.Series(columns[schema.entity_key], dtype=object)})
    for name in schema.numeric:
        frame[name] = pd.Series(columns[name], dtype="float64")
    for name in schema.categorical:
        frame[name] = pd.Series(columns[name], dtype="str")
    return frame


def model_columns(model: Any, schema: FeatureSchema) -> list[str]:
    """The feature columns in the order the model was fitted on; they must be the schema's."""
    fitted = getattr(model, "feature_names_in_", None)
    if fitted is None:
        return schema.features
    fitted = [str(name) for name in fitted]
    missing = sorted(set(fitted) - set(schema.features))
    extra = sorted(set(schema.features) - set(fitted))
    if missing or extra:
        raise ValueError(
            f"model and feature schema disagree: the model needs {missing} not in the schema, "
            f"the schema has {extra} the model was not fitted on"
        )
    return fitted


def score_frame(model: Any, columns: list[str], frame: pd.DataFrame) -> list[float]:
    """Churn scores: the positive-class probability of `model` on `frame[columns]`."""
    return [float(p) for p in model.predict_proba(frame[columns])[:, 1]]


def to_predictions(
    keys: Sequence[Any], scores: Sequence[float], *, key_name: str, threshold: float
) -> list[dict[str, Any]]:
    """One prediction per record, in order: its key, its score and score >= threshold."""
    return [
        {key_name: key, "score": score, "churn": score >= threshold}
        for key, score in zip(keys, scores, strict=True)
    ]


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors in FastAPI's 422 shape (loc from `body`), without echoing the input."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return [
        {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in errors[:MAX_REPORTED_ERRORS]
    ]


class ChurnAPI(ls.LitAPI):
    """Scores customers with the saved pipeline; one request = one list of records.

    Batching across requests stays off: LitServe fails every request of a batch with the
    HTTPException of any one of them, so one bad client would get 422 for the others.
    """

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(api_path="/predict")
        self.config = config

    def setup(self, device: str) -> None:
        self.schema = load_schema(self.config.schema_path)
        self.model = load_model(self.config.model_path)
        self.columns = model_columns(self.model, self.schema)
        self.validator = records_model(self.schema, self.config.max_records)

    def decode_request(self, request: PredictRequest) -> pd.DataFrame:
        try:
            return parse_records(self.validator, self.schema, request.records)
        except ValidationError as exc:
            raise HTTPException(status_code=422, detail=validation_detail(exc)) from None

    def predict(self, frame: pd.DataFrame) -> list[dict[str, Any]]:
        scores = score_frame(self.model, self.columns, frame)
        return to_predictions(
            frame[self.schema.entity_key].tolist(),
            scores,
            key_name=self.schema.entity_key,
            threshold=self.config.threshold,
        )

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"predictions": output, "model": self.config.model_name}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _port(text: str) -> int:
    port = int(text)
    if not 1024 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1024..65535, got {port}")
    return port


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    env = os.environ
    parser = argparse.ArgumentParser(prog="evergreen serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=Path(env.get("EVERGREEN_MODEL", DEFAULT_MODEL)),
        help="skops model file (env EVERGREEN_MODEL; default %(default)s)",
    )
    parser.add_argument(
        "--schema",
        type=Path,
        default=Path(env.get("EVERGREEN_SCHEMA", DEFAULT_SCHEMA)),
        help="feature schema JSON (env EVERGREEN_SCHEMA; default %(default)s)",
    )
    parser.add_argument(
        "--model-name",
        default=env.get("EVERGREEN_MODEL_NAME"),
        help="name returned with predictions (env EVERGREEN_MODEL_NAME; "
        "default <model file stem>@<first 12 hex of its sha256>)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        choices=["127.0.0.1", "0.0.0.0", "::"],
        help="interface to bind; 0.0.0.0 exposes the server (default %(default)s)",
    )
    parser.add_argument("--port", type=_port, default=8000)
    parser.add_argument("--threshold", type=_probability, default=0.5, help="churn if score >= it")
    parser.add_argument("--workers", type=_positive_int, default=1, help="inference processes")
    parser.add_argument("--max-records", type=_positive_int, default=1000)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request")
    return parser


def preflight(args: argparse.Namespace) -> ServeConfig:
    """Load model and schema once here so a bad file fails before any worker starts."""
    schema = load_schema(args.schema)
    model = load_model(args.model)
    model_columns(model, schema)
    name = args.model_name or f"{args.model.stem}@{file_sha256(args.model)[:12]}"
    return ServeConfig(
        model_path=args.model.resolve(),
        schema_path=args.schema.resolve(),
        model_name=name,
        threshold=args.threshold,
        max_records=args.max_records,
    )


def interrupt_on(signums: Sequence[int]) -> dict[int, Any]:
    """Make `signums` raise KeyboardInterrupt here, LitServe's one graceful-shutdown path.

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
        raise KeyboardInterrupt

    return {signum: signal.signal(signum, handler) for signum in signums}


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM. Returns 2 when the model or schema is unusable."""
    args = build_parser().parse_args(argv)
    # Inference workers are spawned and inherit this; one BLAS/OpenMP thread each keeps
    # several workers from oversubscribing the cores (and predict_proba on small inputs
    # is faster single-threaded anyway).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        config = preflight(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"evergreen serve: {exc}", file=sys.stderr)
        return 2
    server = ls.LitServer(
        ChurnAPI(config),
        accelerator="cpu",
        workers_per_device=args.workers,
        model_metadata={
            "name": config.model_name,
            "threshold": config.threshold,
            "max_records": config.max_records,
        },
    )
    previous = interrupt_on([signal.SIGINT, signal.SIGTERM])
    try:
        server.run(
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            generate_client_file=False,
            access_log=args.access_log,
        )
    except RuntimeError as exc:  # a worker failed in setup()
        print(f"evergreen serve: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


if __name__ == "__main__":
    # Run through the imported module so the LitAPI pickled to spawned workers is
    # `serve.app.ChurnAPI`, not `__main__.ChurnAPI`.
    from serve import app

    raise SystemExit(app.main())
