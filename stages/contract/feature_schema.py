"""The feature schema: the contract between `features`, `train`, `evaluate` and the server."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.contract.storage import write_bytes_atomic

if TYPE_CHECKING:  # the server imports this module; pandas is only needed to encode a frame
    import pandas as pd

# what the model predicts: the probability of label 1, or a number
CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
# how a categorical column is stored in the data (and sent in a request): text, or integer codes
# (season 1-4); the model reads both as text, an int code as its decimal digits ("2")
CATEGORY_TYPES = ("string", "int64", "bool")


@dataclass(frozen=True)
class FeatureSchema:
    entity_key: str
    time: str
    label: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    # allowed values per categorical feature, as seen by the features stage's config
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # classification (a 0/1 label; entity churn, rows_classification) or regression
    task: str = CLASSIFICATION
    # the storage type of each categorical that is not a string (CATEGORY_TYPES)
    category_types: dict[str, str] = field(default_factory=dict)
    # the entity key is a hash of the row (a rows dataset's surrogate key): no client knows it,
    # so a request may leave it out
    surrogate_key: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"feature schema: task {self.task!r} is not one of {TASKS}")
        for name, kind in self.category_types.items():
            if name not in self.categorical or kind not in CATEGORY_TYPES:
                raise ValueError(
                    f"feature schema: category_types.{name} is {kind!r}, expected a categorical "
                    f"feature's storage type, one of {CATEGORY_TYPES}"
                )

    def category_type(self, name: str) -> str:
        """How categorical feature `name` is stored in the data: one of CATEGORY_TYPES."""
        return self.category_types.get(name, "string")

    @property
    def regression(self) -> bool:
        return self.task == REGRESSION

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: dict) -> FeatureSchema:
        return cls(
            entity_key=raw["entity_key"],
            time=raw["time"],
            label=raw["label"],
            numeric=tuple(raw["numeric"]),
            categorical=tuple(raw["categorical"]),
            categories={k: tuple(v) for k, v in raw.get("categories", {}).items()},
            # a schema written before the rows kinds is a classification's
            task=raw.get("task", CLASSIFICATION),
            # a schema written before integer-coded categories holds text ones only
            category_types=dict(raw.get("category_types") or {}),
            surrogate_key=bool(raw.get("surrogate_key", False)),
        )


def category_text(values: pd.Series, kind: str) -> pd.Series:
    """A categorical column as the model reads it: text (pandas `str`), NaN for every missing
    marker. An integer code (`kind` int64) reads as its decimal digits, "2", also where a null
    made its column float (2.0) or a JSON request made it an object column; anything else
    (an unseen string) as itself."""
    if kind != "int64" or values.dtype.kind in "iu" or str(values.dtype) in _INT_DTYPES:
        return values.astype("str")
    return values.map(_code_text, na_action="ignore").astype("str")


_INT_DTYPES = frozenset({"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"})


def _code_text(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return str(int(value))
    if isinstance(value, float) or (hasattr(value, "dtype") and value.dtype.kind == "f"):
        number = float(value)
        if math.isnan(number):
            return math.nan
        return str(int(number)) if number.is_integer() else str(number)
    return str(value)


def save_schema(schema: FeatureSchema, path: str | Path) -> Path:
    return write_bytes_atomic(schema.to_json().encode(), path)


def load_schema(path: str | Path) -> FeatureSchema:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature schema not found")
    try:
        return FeatureSchema.from_dict(json.loads(path.read_text()))
    except (KeyError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a valid feature schema ({exc})") from exc
