"""The server's request and response models, generated from the model card's feature schema.

The card (stages/lib/cards.py) gives every feature its type, the allowed values of a categorical and
the range a numeric feature took in training. From it we build pydantic models that the API
server process checks (a dependency of the /predict route), before a request reaches a worker:

- a request is one record `{<entity key>, <feature>: value, ...}` or `{"records": [...]}` with
  1..max_records records; every feature must be present (null = missing, the model imputes it),
  nothing else may be;
- a numeric feature is a JSON number (not a string, not a bool), finite, within its accepted
  range: the training range widened by `range_margin` times the feature's scale (the larger of
  its training span and magnitude, at least 1) on each side, and never below 0 for a feature
  that was never negative in training (counts, amounts, days) unless the dataset declares a
  negative `min` for it, and never past the `min`/`max`
  the dataset's config declares for the column (the card's `declared_min`/`declared_max`:
  validate would quarantine such a row); `range_margin: null` turns the training-range check
  off, not the declared one;
- a categorical feature is one of the card's allowed values (or, where the dataset config
  lists none, the values seen in training), sent as the data holds it: a string, or for an
  integer-coded category (the card's `type: int64`: season 1-4) a JSON integer (`"season": 2`;
  `"2"`, `2.0` or `true` is refused naming the field). An unknown code is refused like an
  unknown string. The API server turns a code into its digits ("2"), the text the model was
  trained on, so what crosses to a worker is text either way;
- the entity key is required, except where it is a surrogate key (a hash of the row, the card's
  `features.surrogate_key`: no client can compute it): a record without it is answered, and
  logged, under a request-local id, `"#<i>"` for the record's position i (from 0) in the
  request; a key the client sends is echoed as sent.

The API server validates a request body into a `WireBatch` (columns, not models), which is
what crosses LitServe's queue to a worker: workers never need the generated classes.
"""

# No `from __future__ import annotations`: pydantic and FastAPI read these annotations as types.
import datetime as dt
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    WithJsonSchema,
    create_model,
)
from pydantic_core import PydanticCustomError

from stages.contract.card import ModelCard
from stages.contract.feature_schema import FeatureSchema

MAX_KEY_LENGTH = 256
# the tags of the two request shapes in the documented union (the OpenAPI body); pydantic puts
# them in the error locations of that union, and `client_errors` drops them
RECORD_TAG, BATCH_TAG = "record", "batch"
BATCH_FIELD = "records"
# names the response itself uses, which no column may take
RESERVED = frozenset({BATCH_FIELD, "score", "prediction", "request_id", "model"})
CLASSIFICATION, REGRESSION = "classification", "regression"
# the storage types of a categorical feature in the card; an int64 one is sent as JSON integers
TEXT, CODES = "string", "int64"


def local_id(position: int) -> str:
    """The id a record without a (surrogate) key is answered and logged under: its position in
    the request. Not a key's form (16 hex digits), so the two never mix in a log."""
    return f"#{position}"


@dataclass(frozen=True)
class NumericFeature:
    name: str
    train_min: float | None
    train_max: float | None
    minimum: float | None
    maximum: float | None
    # the column's "no value" codes (the card's `missing_codes`: -200): read as null, as
    # validate reads them, so a client sending its source's rows as they are is not refused
    missing: tuple[float | str, ...] = ()
    # its column is declared int64: a fraction is what validate quarantines, never scored
    integer: bool = False
    # its column is declared `nullable: false`: a null is what validate quarantines
    nullable: bool = True


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    allowed: tuple[str, ...] | tuple[int, ...]
    type: str = TEXT  # CODES: integer codes, sent as JSON integers
    missing: tuple[str | int, ...] = ()  # "no value" codes ("?", "NA"; a code: -1): null
    nullable: bool = True  # False: its column is declared `nullable: false`

    @property
    def coded(self) -> bool:
        return self.type == CODES


@dataclass(frozen=True)
class ServingSchema:
    """What a request must hold, read from the model card: key, label name, features."""

    entity_key: str
    time: str
    label: str
    numeric: tuple[NumericFeature, ...]
    categorical: tuple[CategoricalFeature, ...]
    # the card's features.task: a classification answers a score and a decision, a regression
    # its `prediction`
    task: str = CLASSIFICATION
    # the entity key is a hash of the row: a request may leave it out (see the module doc)
    surrogate_key: bool = False
    # the key column's declared type and pattern (the card's features.entity_key_type and
    # entity_key_pattern): a string key is never accepted as a number, nor off its pattern,
    # since its predictions could never join the data by key. None: any integer or string
    key_type: str | None = None
    key_pattern: str | None = None

    @property
    def regression(self) -> bool:
        return self.task == REGRESSION

    @property
    def features(self) -> list[str]:
        return [f.name for f in self.numeric] + [f.name for f in self.categorical]

    def feature_schema(self) -> FeatureSchema:
        """The stages' FeatureSchema (what OnnxPredictor checks the graph against)."""
        return FeatureSchema(
            entity_key=self.entity_key,
            time=self.time,
            label=self.label,
            numeric=tuple(f.name for f in self.numeric),
            categorical=tuple(f.name for f in self.categorical),
            categories={f.name: tuple(str(v) for v in f.allowed) for f in self.categorical},
            task=self.task,
            category_types={f.name: f.type for f in self.categorical if f.coded},
            surrogate_key=self.surrogate_key,
        )

    def describe(self) -> dict[str, Any]:
        """The schema as /info shows it: what is accepted, and the training ranges."""
        return {
            "entity_key": self.entity_key,
            "entity_key_required": not self.surrogate_key,
            "label": self.label,
            "task": self.task,
            "numeric": [
                {
                    "name": f.name,
                    "type": "number",
                    "minimum": f.minimum,
                    "maximum": f.maximum,
                    "train_min": f.train_min,
                    "train_max": f.train_max,
                }
                for f in self.numeric
            ],
            "categorical": [
                {
                    "name": f.name,
                    "type": "integer" if f.coded else "string",
                    "allowed": list(f.allowed),
                }
                for f in self.categorical
            ],
        }


def accepted_range(
    train_min: float | None,
    train_max: float | None,
    margin: float | None,
    declared_min: float | None = None,
) -> tuple[float | None, float | None]:
    """The [minimum, maximum] a numeric feature may take (None: unbounded); see the module doc.
    A feature never negative in training keeps 0 as its floor, unless the dataset declares a
    negative `min` (a temperature in °F trained on a mild year: -2 is a reading, not a typo)."""
    if margin is None or train_min is None or train_max is None:
        return None, None
    scale = max(train_max - train_min, abs(train_min), abs(train_max), 1.0)
    slack = margin * scale
    counts = train_min >= 0 and (declared_min is None or declared_min >= 0)
    low = 0.0 if counts else train_min - slack
    return low, train_max + slack


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"model card: {where} is {value!r}, expected a finite number or null")
    return float(value)


def _entries(features: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    entries = features.get(kind)
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ValueError(f"model card: features.{kind} must be a list of objects")
    for i, entry in enumerate(entries):
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"model card: features.{kind}[{i}] lacks a 'name'")
    return entries


def _categorical_features(features: Mapping[str, Any]) -> list[CategoricalFeature]:
    """The card's categorical features: text, or integer codes (`type: int64`)."""
    categorical = []
    for i, entry in enumerate(_entries(features, "categorical")):
        where = f"features.categorical[{i}] ({entry['name']})"
        kind = entry.get("type", TEXT)
        if kind not in (TEXT, CODES):
            raise ValueError(f"model card: {where}.type is {kind!r}, expected {TEXT} or {CODES}")
        values = entry.get("allowed") or entry.get("observed")
        what = "integers" if kind == CODES else "strings"
        if (
            not isinstance(values, list)
            or not values
            or not all(_is_code(v) if kind == CODES else isinstance(v, str) for v in values)
        ):
            raise ValueError(
                f"model card: {where} has no allowed or observed values (a non-empty list of "
                f"{what})"
            )
        codes = _codes(entry, where, (int, str) if kind == CODES else (str,))
        nullable = _flag(entry, where, "nullable")
        categorical.append(CategoricalFeature(entry["name"], tuple(values), kind, codes, nullable))
    return categorical


def _codes(entry: Mapping[str, Any], where: str, types: tuple[type, ...]) -> tuple[Any, ...]:
    """A feature's `missing_codes` (none: ()); ValueError naming it when they are no list of
    values of its type."""
    codes = entry.get("missing_codes")
    if codes is None:
        return ()
    if not isinstance(codes, list) or not all(
        isinstance(c, types) and not isinstance(c, bool) for c in codes
    ):
        raise ValueError(f"model card: {where}.missing_codes is {codes!r}, expected a list")
    return tuple(codes)


def _key_check(features: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The card's entity key type and pattern (a card from before them: None, None)."""
    key_type, pattern = features.get("entity_key_type"), features.get("entity_key_pattern")
    if key_type not in (None, "string", "int64", "timestamp"):
        raise ValueError(f"model card: features.entity_key_type is {key_type!r}")
    if pattern is None:
        return key_type, None
    try:
        re.compile(str(pattern))
    except re.error as exc:
        raise ValueError(f"model card: features.entity_key_pattern: {exc}") from None
    return key_type, str(pattern)


def _numeric_features(
    features: Mapping[str, Any], range_margin: float | None
) -> list[NumericFeature]:
    """The card's numeric features, each with the range a request may take."""
    numeric = []
    for i, entry in enumerate(_entries(features, "numeric")):
        where = f"features.numeric[{i}] ({entry['name']})"
        lo, hi = (
            _number(entry.get("min"), f"{where}.min"),
            _number(entry.get("max"), f"{where}.max"),
        )
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"model card: {where} has min {lo} > max {hi}")
        declared_lo = _number(entry.get("declared_min"), f"{where}.declared_min")
        declared_hi = _number(entry.get("declared_max"), f"{where}.declared_max")
        minimum, maximum = accepted_range(lo, hi, range_margin, declared_lo)
        # what validate would quarantine is never accepted, whatever the margin
        if declared_lo is not None:
            minimum = declared_lo if minimum is None else max(minimum, declared_lo)
        if declared_hi is not None:
            maximum = declared_hi if maximum is None else min(maximum, declared_hi)
        # numbers (-200), or text a source writes in a numeric column ("NULL", "NA")
        codes = _codes(entry, where, (int, float, str))
        integer, nullable = _flag(entry, where, "integer", False), _flag(entry, where, "nullable")
        codes_read = tuple(c if isinstance(c, str) else float(c) for c in codes)
        numeric.append(
            NumericFeature(entry["name"], lo, hi, minimum, maximum, codes_read, integer, nullable)
        )
    return numeric


def _flag(entry: Mapping[str, Any], where: str, key: str, default: bool = True) -> bool:
    """A feature's boolean `key` (absent: `default`, a card from before it)."""
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"model card: {where}.{key} is {value!r}, expected a bool")
    return value


def schema_from_card(
    card: ModelCard | Mapping[str, Any], *, range_margin: float | None
) -> ServingSchema:
    """The serving schema of a model card (stages/lib/cards.py writes it); ValueError names
    the key."""
    card = card if isinstance(card, ModelCard) else ModelCard(card)
    features = card.features
    if features is None:
        raise ValueError("model card: no 'features' section")
    label = card.label_name
    for key, value in (
        ("features.entity_key", features.get("entity_key")),
        ("features.time", features.get("time")),
        ("label.name", label),
    ):
        if not isinstance(value, str) or not value:
            raise ValueError(f"model card: '{key}' must be a non-empty string")
    numeric = _numeric_features(features, range_margin)
    categorical = _categorical_features(features)
    task = features.get("task", CLASSIFICATION)  # a card from before the rows kinds
    if task not in (CLASSIFICATION, REGRESSION):
        raise ValueError(
            f"model card: features.task is {task!r}, expected {CLASSIFICATION} or {REGRESSION}"
        )
    surrogate = features.get("surrogate_key", False)  # a card from before it: a key column
    if not isinstance(surrogate, bool):
        raise ValueError(f"model card: features.surrogate_key is {surrogate!r}, expected a bool")
    key_type, key_pattern = _key_check(features)
    schema = ServingSchema(
        entity_key=features["entity_key"],
        time=features["time"],
        label=label,
        numeric=tuple(numeric),
        categorical=tuple(categorical),
        task=task,
        surrogate_key=surrogate,
        key_type=key_type,
        key_pattern=key_pattern,
    )
    names = [schema.entity_key, *schema.features]
    clashes = sorted({n for n in names if names.count(n) > 1} | (set(names) & RESERVED))
    if not schema.features or clashes or schema.label in (*names, *RESERVED):
        raise ValueError(
            f"model card: features must be non-empty, unique and not named {sorted(RESERVED)} "
            f"or like the entity key or label (clashes: {clashes or [schema.label]})"
        )
    order = features.get("order")
    if order is not None and list(order) != schema.features:
        raise ValueError(
            f"model card: features.order {list(order)} is not numeric then categorical "
            f"{schema.features}"
        )
    return schema


# ---------------------------------------------------------------- the wire form of a request


@dataclass(frozen=True)
class WireBatch:
    """A validated request as it travels to an inference worker.

    `numeric` is (rows, numeric features) float64 with NaN for null; `categorical` holds one
    tuple per categorical feature (None for null); `received` is the unix time at which the API
    server had validated it (the start of the latency we log). Plain data: it pickles small.
    """

    keys: list[int | str]
    numeric: np.ndarray
    categorical: list[tuple[str | None, ...]]
    received: float

    def __len__(self) -> int:
        return len(self.keys)


def _is_code(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def to_wire(rows: Sequence[Sequence[Any]], n_numeric: int, n_categorical: int) -> WireBatch:
    """Rows of (key, numeric..., categorical...) values as a WireBatch; a row without a key
    (None: a surrogate key left out) gets its request-local id (`local_id`)."""
    columns = list(zip(*rows, strict=True))
    numeric = np.array(columns[1 : 1 + n_numeric], dtype=np.float64).reshape(n_numeric, len(rows))
    categorical = columns[1 + n_numeric :]
    if len(categorical) != n_categorical:
        raise ValueError(f"expected {n_categorical} categorical columns, got {len(categorical)}")
    return WireBatch(
        keys=[local_id(i) if k is None else k for i, k in enumerate(columns[0])],
        numeric=numeric.T.copy(),
        categorical=[tuple(c) for c in categorical],
        received=time.time(),
    )


class RecordBase(BaseModel):
    """Base of the generated record model: fields `f0` (key), then numeric, then categorical."""

    model_config = ConfigDict(extra="forbid")

    def values(self) -> tuple[Any, ...]:
        return tuple(self.__dict__.values())


class BatchBase(BaseModel):
    """Base of the generated `{"records": [...]}` model."""

    model_config = ConfigDict(extra="forbid")


def _entity_key(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError(
            "entity_key_type", "Input should be an integer or a string (the entity key)"
        )
    if isinstance(value, str) and not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise PydanticCustomError(
            "entity_key_length",
            "Input should be a string of 1 to {max} characters",
            {"max": MAX_KEY_LENGTH},
        )
    return value


EntityKey = Annotated[
    int | str,
    PlainValidator(_entity_key),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer"},
                {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
            ]
        }
    ),
]


def _numeric_field(f: NumericFeature) -> tuple[Any, Any]:
    bounds = {}
    if f.minimum is not None:
        bounds["ge"] = f.minimum
    if f.maximum is not None:
        bounds["le"] = f.maximum
    number = Annotated[float, Field(strict=True, allow_inf_nan=False, **bounds)]
    if f.integer:
        number = Annotated[number, AfterValidator(_whole)]
    accepted = f"[{f.minimum:g}, {f.maximum:g}]" if f.minimum is not None else "any finite number"
    described = f"{'whole ' if f.integer else ''}number in {accepted}{_if_missing(f.nullable)}"
    if f.train_min is not None:
        described += f" (training range [{f.train_min:g}, {f.train_max:g}])"
    shown = [repr(c) if isinstance(c, str) else f"{c:g}" for c in f.missing]
    return _nullable(number, f.name, f.missing, shown, described, nullable=f.nullable)


def _if_missing(nullable: bool) -> str:
    return ", null if missing" if nullable else " (never null: its column is not nullable)"


def _nullable(
    kind: Any,
    name: str,
    missing: tuple[Any, ...],
    shown: list[str],
    described: str,
    *,
    nullable: bool = True,
) -> tuple[Any, Any]:
    """A feature's field: `kind` or null, its missing-value codes (shown as `shown`) read as
    null before `kind` is checked. Not `nullable` (its column declared `nullable: false`): a
    null, or a missing-value code, is refused as validate would quarantine it."""
    typed: Any = kind | None if nullable else kind
    if not nullable:
        typed = Annotated[typed, BeforeValidator(_refuse_null)]
    if missing:
        described += f"; {', '.join(shown)} read as null"
        typed = Annotated[typed, BeforeValidator(_as_null(missing))]
    return (typed, Field(alias=name, title=name, description=described))


def _refuse_null(value: Any) -> Any:
    if value is None:
        raise PydanticCustomError(
            "not_nullable", "Input should not be null (its column is declared nullable: false)"
        )
    return value


def _whole(value: float) -> float:
    if value % 1:
        raise PydanticCustomError(
            "int_from_float", "Input should be a whole number (its column is int64)"
        )
    return value


def _is_missing(value: Any, codes: frozenset[Any]) -> bool:
    """Null, or one of a column's missing-value codes (never a bool: True == 1; never an
    unhashable dict or list)."""
    return value is None or (not isinstance(value, bool | dict | list) and value in codes)


def _as_null(codes: tuple[Any, ...]) -> Any:
    """A validator reading a column's missing-value codes as null."""
    known = frozenset(codes)

    def read(value: Any) -> Any:
        return None if _is_missing(value, known) else value

    return read


# a category with more values than this is described and refused by its count and a few
# examples, not by the list: a 30,000-value column made every 422 and /openapi.json ~0.5 MB
LISTED = 20


def _values(f: CategoricalFeature) -> str:
    """What a request may send, for a description or a 422: the values, or a count of them."""
    if len(f.allowed) <= LISTED:
        return " or ".join(", ".join(repr(v) for v in f.allowed).rsplit(", ", 1))
    examples = ", ".join(repr(v) for v in f.allowed[:5])
    return (
        f"one of the {len(f.allowed)} values the model knows (e.g. {examples}; the model "
        f"card's features.categorical lists them all)"
    )


def _categorical_field(f: CategoricalFeature) -> tuple[Any, Any]:
    many = len(f.allowed) > LISTED
    described = f"{_values(f) if many else f'one of {list(f.allowed)}'}{_if_missing(f.nullable)}"
    if f.coded:
        return (_code_type(f), Field(alias=f.name, title=f.name, description=described))
    if many:
        return (_many_texts(f), Field(alias=f.name, title=f.name, description=described))
    allowed = Literal[f.allowed]  # type: ignore[valid-type]
    shown = [repr(c) for c in f.missing]
    return _nullable(allowed, f.name, f.missing, shown, described, nullable=f.nullable)


def _many_texts(f: CategoricalFeature) -> Any:
    """A text category of many values: a set lookup whose 422 gives their count and a few,
    where a Literal's would list them all. Its missing codes read as null, as `_nullable`."""
    known, missing, expected = frozenset(f.allowed), frozenset(f.missing), _values(f)

    def text(value: Any) -> str | None:
        if _is_missing(value, missing):
            return None if f.nullable else _refuse_null(None)
        if not isinstance(value, str):
            raise PydanticCustomError("string_type", "Input should be a valid string")
        if value not in known:
            raise PydanticCustomError("literal_error", "Input should be {expected}", {
                "expected": expected})  # fmt: skip
        return value

    kind = {"type": "string"}
    return Annotated[
        Any,
        PlainValidator(text),
        WithJsonSchema({"anyOf": [kind, {"type": "null"}]} if f.nullable else kind),
    ]


def _code_type(f: CategoricalFeature) -> Any:
    """An integer-coded category: a JSON integer among the known codes (strictly: no "2", 2.0
    or true), validated into its digits, the text the model reads (feature_schema's
    `category_text`)."""
    known = frozenset(f.allowed)
    listed = _values(f)
    missing = frozenset(f.missing)

    def code(value: Any) -> str | None:
        if _is_missing(value, missing):
            return None if f.nullable else _refuse_null(None)
        if not _is_code(value):
            raise PydanticCustomError(
                "int_type", "Input should be an integer (a code of the category) or null"
            )
        if value not in known:
            raise PydanticCustomError("literal_error", "Input should be {expected}", {
                "expected": listed})  # fmt: skip
        return str(value)

    codes: dict[str, Any] = {"type": "integer"}
    if len(f.allowed) <= LISTED:
        codes["enum"] = list(f.allowed)
    return Annotated[
        Any,
        PlainValidator(code),
        WithJsonSchema({"anyOf": [codes, {"type": "null"}]} if f.nullable else codes),
    ]


@dataclass(frozen=True)
class ApiModels:
    """The generated models: the request (record or batch, for the OpenAPI document), a
    record, a batch, the response; `parse` validates a request body into a WireBatch."""

    request: Any
    record: type[BaseModel]
    batch: type[BaseModel]
    response: type[BaseModel]
    shape: tuple[int, int]

    def parse(self, body: bytes) -> WireBatch:
        """Validate a JSON body (pydantic's ValidationError names each field) into columns.

        The shape is read from the bytes, so pydantic parses and validates in one pass (its
        union with a callable discriminator would parse to Python objects first, twice the
        time): a record cannot hold a "records" field, so a body that mentions it is a batch.
        """
        if b'"records"' in body:
            rows = [r.values() for r in self.batch.model_validate_json(body).records]  # type: ignore[attr-defined]
        else:
            rows = [self.record.model_validate_json(body).values()]  # type: ignore[attr-defined]
        return to_wire(rows, *self.shape)


INT64 = (-(2**63), 2**63 - 1)
_DIGITS = re.compile(r"-?[0-9]{1,19}")


def _int64_key(value: Any) -> int | str:
    """An int64 key column's key: a JSON integer, or its digits as text (ids often travel as
    strings), within int64; echoed as sent. "abc" could never join the data by key."""
    number = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    if number is None or not INT64[0] <= number <= INT64[1]:
        raise PydanticCustomError(
            "entity_key_type",
            "Input should be an integer within int64, or its digits as a string (the entity "
            "key is an int64 column)",
        )
    return value


Int64Key = Annotated[
    int | str,
    PlainValidator(_int64_key),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": INT64[0], "maximum": INT64[1]},
                {"type": "string", "pattern": "^-?[0-9]{1,19}$"},
            ]
        }
    ),
]


def _timestamp_key(value: Any) -> str:
    """A timestamp key column's key: an ISO 8601 time as text (the export's wall clock, or
    with its offset), echoed as sent. "not a time" could never join the data by key."""
    if isinstance(value, str) and 1 <= len(value) <= MAX_KEY_LENGTH:
        try:
            dt.datetime.fromisoformat(value)
            return value
        except ValueError:
            pass
    raise PydanticCustomError(
        "entity_key_type",
        "Input should be an ISO 8601 time as a string, such as 2024-11-03T07:00:00 (the entity "
        "key is a timestamp column)",
    )


TimestampKey = Annotated[
    str,
    PlainValidator(_timestamp_key),
    WithJsonSchema({"type": "string", "format": "date-time", "maxLength": MAX_KEY_LENGTH}),
]


def _declared_key(schema: ServingSchema) -> Any:
    """The entity key's type: an int64 column's integer (or its digits), a timestamp column's
    ISO time, the string its column declares (a pattern full-matched, as validate checks the
    column), or any integer or string."""
    if schema.key_type == "int64":
        return Int64Key
    if schema.key_type == "timestamp":
        return TimestampKey
    if schema.key_type != "string":
        return EntityKey
    pattern = None if schema.key_pattern is None else re.compile(schema.key_pattern)

    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise PydanticCustomError(
                "entity_key_type", "Input should be a string (the entity key is a string column)"
            )
        _entity_key(value)
        if pattern is not None and not pattern.fullmatch(value):
            raise PydanticCustomError(
                "entity_key_pattern",
                "Input should match the entity key's pattern {pattern}",
                {"pattern": schema.key_pattern},
            )
        return value

    described: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}
    if schema.key_pattern is not None:
        described["pattern"] = schema.key_pattern
    return Annotated[str, PlainValidator(check), WithJsonSchema(described)]


def _request_shape(value: Any) -> str:
    return BATCH_TAG if isinstance(value, dict) and BATCH_FIELD in value else RECORD_TAG


def api_models(schema: ServingSchema, max_records: int) -> ApiModels:
    """Request and response models for `schema`, batches of 1..max_records records."""
    key = Field(alias=schema.entity_key, title=schema.entity_key)
    if schema.surrogate_key:
        described = "optional (a hash of the row): left out, the answer names the record #<i>"
        key = Field(None, alias=schema.entity_key, title=schema.entity_key, description=described)
    declared = _declared_key(schema)
    fields: dict[str, Any] = {"f0": (declared | None if schema.surrogate_key else declared, key)}
    for f in schema.numeric:
        fields[f"f{len(fields)}"] = _numeric_field(f)
    for f in schema.categorical:
        fields[f"f{len(fields)}"] = _categorical_field(f)
    record = create_model("Record", __base__=RecordBase, **fields)
    batch = create_model(
        "Batch",
        __base__=BatchBase,
        records=(Annotated[list[record], Field(min_length=1, max_length=max_records)], ...),
    )
    request = Annotated[
        Union[Annotated[record, Tag(RECORD_TAG)], Annotated[batch, Tag(BATCH_TAG)]],  # noqa: UP007
        Discriminator(_request_shape),
    ]
    if schema.regression:
        prediction = create_model(
            "Prediction",
            key=(int | str, Field(alias=schema.entity_key)),
            prediction=(float, Field(description=f"the predicted {schema.label}")),
        )
    else:
        prediction = create_model(
            "Prediction",
            key=(int | str, Field(alias=schema.entity_key)),
            score=(float, Field(ge=0.0, le=1.0, description="the positive-class probability")),
            decision=(bool, Field(alias=schema.label, description="score >= threshold")),
        )
    model_id = create_model("ModelId", name=(str, ...), version=(str, ...))
    response = create_model(
        "PredictResponse",
        request_id=(str, ...),
        model=(model_id, ...),
        predictions=(list[prediction], ...),
    )
    return ApiModels(
        request=request,
        record=record,
        batch=batch,
        response=response,
        shape=(len(schema.numeric), len(schema.categorical)),
    )


def client_errors(errors: Sequence[Mapping[str, Any]], limit: int) -> list[dict[str, Any]]:
    """pydantic/FastAPI errors as our 422 detail: loc, msg, type; no echoed input; at most
    `limit`; the request-shape tag dropped from loc (["body", "plan"], or
    ["body", "records", 3, "plan"]). Past the limit, the last entry says how many more there
    are (a client reading 20 problems must not take them for all: the 21st, an unknown
    category, went unseen)."""
    shown = errors if len(errors) <= limit else errors[: max(limit - 1, 0)]
    out = []
    for err in shown:
        loc = list(err.get("loc", ()))
        if len(loc) >= 2 and loc[0] == "body" and loc[1] in (RECORD_TAG, BATCH_TAG):
            del loc[1]
        out.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    if len(errors) > len(shown):
        more = len(errors) - len(shown)
        out.append(
            {
                "loc": ["body"],
                "msg": f"{more} more problem(s) not listed: fix these and send it again",
                "type": "too_many_errors",
            }
        )
    return out
