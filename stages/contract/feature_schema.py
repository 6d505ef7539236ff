"""The feature schema: the contract between `features`, `train`, `evaluate` and the server."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stages.contract.storage import write_bytes_atomic

# what the model predicts: the probability of label 1, or a number
CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)


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

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"feature schema: task {self.task!r} is not one of {TASKS}")

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
        )


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
