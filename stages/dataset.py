"""A dataset described by `conf/dataset/<name>.yaml`, as typed, frozen config objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COLUMN_TYPES = ("int64", "float64", "string", "bool", "date", "timestamp")
TABLE_ROLES = ("events", "entities")


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    nullable: bool = True
    allowed: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    role: str
    key: str
    timestamp: str
    columns: tuple[ColumnSpec, ...]

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table '{self.name}' has no column '{name}'")


@dataclass(frozen=True)
class EntityFeatures:
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    signup_date: str | None = None


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    entity_key: str
    tables: tuple[TableSpec, ...]
    activity_types: tuple[str, ...]
    event_features: dict[str, str]
    amount_types: tuple[str, ...]
    entity_features: EntityFeatures = field(default_factory=EntityFeatures)
    label: str = "label"

    def table(self, name: str) -> TableSpec:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"dataset '{self.name}' has no table '{name}'")

    def table_by_role(self, role: str) -> TableSpec | None:
        return next((t for t in self.tables if t.role == role), None)


def _column(name: str, raw: Mapping[str, Any], where: str) -> ColumnSpec:
    ctype = raw.get("type")
    if ctype not in COLUMN_TYPES:
        raise ValueError(f"{where}.{name}: type must be one of {COLUMN_TYPES}, got {ctype!r}")
    allowed = raw.get("allowed")
    return ColumnSpec(
        name=name,
        type=ctype,
        nullable=bool(raw.get("nullable", True)),
        allowed=tuple(str(v) for v in allowed) if allowed is not None else None,
        min=raw.get("min"),
        max=raw.get("max"),
    )


def _table(name: str, raw: Mapping[str, Any]) -> TableSpec:
    where = f"dataset.tables.{name}"
    role = raw.get("role")
    if role not in TABLE_ROLES:
        raise ValueError(f"{where}.role: must be one of {TABLE_ROLES}, got {role!r}")
    columns = tuple(_column(c, spec, f"{where}.columns") for c, spec in raw["columns"].items())
    table = TableSpec(name, role, raw["key"], raw["timestamp"], columns)
    for needed in (table.key, table.timestamp):
        table.column(needed)  # raises naming the table when the key/timestamp is undeclared
    return table


def dataset_from_params(raw: Mapping[str, Any]) -> DatasetConfig:
    """Build the dataset config from params' `dataset` section, naming any bad key."""
    try:
        tables = tuple(_table(name, spec) for name, spec in raw["tables"].items())
        ef = raw.get("entity_features") or {}
        return DatasetConfig(
            name=raw["name"],
            entity_key=raw["entity_key"],
            tables=tables,
            activity_types=tuple(raw["activity_types"]),
            event_features=dict(raw["event_features"]),
            amount_types=tuple(raw.get("amount_types") or ()),
            entity_features=EntityFeatures(
                categorical=tuple(ef.get("categorical") or ()),
                numeric=tuple(ef.get("numeric") or ()),
                signup_date=ef.get("signup_date"),
            ),
            label=(raw.get("label") or {}).get("name", "label"),
        )
    except KeyError as exc:
        raise ValueError(f"params dataset: missing key {exc}") from exc
