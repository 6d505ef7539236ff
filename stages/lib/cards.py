"""The model card's document: what the `card` stage writes (stages/card.py) and the server
ships with. Everything that reads a card reads it through stages/contract/card.py.

    python -m stages.card --model models/model.skops \\
        --schema artifacts/features/feature_schema.json --train artifacts/split/train.parquet \\
        --metrics metrics/evaluate.json --slices artifacts/evaluate/slices.json \\
        --train-metrics metrics/train.json --lock dvc.lock --data data/landing \\
        --data-stage validate --out models/model_card.json [--onnx models/model.onnx]
    evergreen card stamp --card models/model_card.json --gate metrics/gate.json --out CARD

The card holds what a reader of a served prediction needs: the feature schema (types, allowed
values, the ranges seen in training), the label's definition, the data version, the model and
its params (as configured, and as fitted after tuning), its validation and test metrics (overall
and per slice), library versions and the md5 of the model file and of its ONNX export.

The data version is the md5 DVC recorded for the landing zone in `dvc.lock`, in the entry of
the stage that reads it (`--data-stage`): DVC writes a stage's lock entry as soon as that stage
has run, before the stages downstream of it, so it is the hash of the data this model came from;
`dvc checkout` of that commit restores exactly that data. The card stage itself depends on the
landing zone, so a new day of data reruns it even where the model came out unchanged.

What the card leaves out on purpose: the git commit (HEAD is no dependency of any stage, so a
commit written into a DVC output is stale by the next commit) and the gate verdict (it depends
on another git ref, see stages/cli/gate.py). `evergreen card stamp` adds both to a copy at
promotion time.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

import pandas as pd

from stages.contract.feature_schema import FeatureSchema
from stages.lib.dataset import calendar_range
from stages.lib.io import round_floats
from stages.lib.params import section

# distributions whose versions the card records, where installed
LIBRARIES = (
    "scikit-learn",
    "skops",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "torch",
    "onnx",
    "onnxruntime",
    "skl2onnx",
    "dvc",
)


def feature_card(
    schema: FeatureSchema,
    train: pd.DataFrame,
    declared: Mapping[str, tuple[float | None, float | None]] | None = None,
    codes: Mapping[str, list[Any]] | None = None,
    integers: frozenset[str] | set[str] | None = None,
    required: frozenset[str] | set[str] | None = None,
) -> dict[str, Any]:
    """Each feature's type, with the allowed values of categoricals and the range of numerics
    observed in the training split (what the model saw); with `declared` (`declared_ranges`),
    a numeric column's `min`/`max` checks in the dataset's config, as `declared_min` and
    `declared_max` (the server never accepts what validate would quarantine); with `codes`
    (`declared_missing`), a column's missing-value codes, as `missing_codes` (the server reads
    them as null, as validate does); `integers` (`declared_integers`): the numeric features
    read from int64 columns, marked `integer` (the server takes whole numbers only);
    `required` (`declared_required`): the features read from columns declared `nullable:
    false`, marked `nullable: false` where the training split holds no null in them (an
    entity's feature joined from a table may be null for an entity without a row there)."""
    missing = [c for c in schema.features if c not in train.columns]
    if missing:
        raise ValueError(f"training split: missing column(s) {missing} listed by the schema")
    numeric = []
    for name in schema.numeric:
        values = pd.to_numeric(train[name], errors="raise").astype("float64")
        present = values.dropna()
        entry = {
            "name": name,
            "type": "float64",
            "min": float(present.min()) if len(present) else None,
            "max": float(present.max()) if len(present) else None,
            "missing_fraction": float(values.isna().mean()) if len(values) else 0.0,
        }
        low, high = (declared or {}).get(name, (None, None))
        if low is not None:
            entry["declared_min"] = float(low)
        if high is not None:
            entry["declared_max"] = float(high)
        if (codes or {}).get(name):  # the server reads them as null, as validate does
            entry["missing_codes"] = list(codes[name])  # type: ignore[index]
        if name in (integers or ()):  # a column declared int64: 1.5 is what validate refuses
            entry["integer"] = True
        if name in (required or ()) and not values.isna().any():
            entry["nullable"] = False
        numeric.append(entry)
    categorical = []
    for name in schema.categorical:
        column = train[name]
        allowed = schema.categories.get(name)
        # an integer-coded category is served as the data has it: its codes as JSON integers
        coded = schema.category_type(name) == "int64"
        present = column.dropna().unique()
        observed = sorted(int(v) for v in present) if coded else sorted(str(v) for v in present)
        entry = {
            "name": name,
            "type": "int64" if coded else "string",
            "allowed": list(allowed) if allowed else None,
            "observed": observed,
            "missing_fraction": float(column.isna().mean()) if len(column) else 0.0,
        }
        if (codes or {}).get(name):  # an int-coded one's too: -1, or a CSV's "NULL"
            entry["missing_codes"] = list(codes[name])  # type: ignore[index]
        if name in (required or ()) and not column.isna().any():
            entry["nullable"] = False
        categorical.append(entry)
    return {
        "entity_key": schema.entity_key,
        # a hash of the row: requests may leave it out (serve/schema.py)
        **({"surrogate_key": True} if schema.surrogate_key else {}),
        "time": schema.time,
        "task": schema.task,
        "order": list(schema.features),
        "numeric": numeric,
        "categorical": categorical,
    }


def _declared_columns(params: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(name, spec) of every column every table of the dataset's config declares, derived ones
    included. A derived calendar part (`hour(t)`) is a whole number in its range unless its
    spec bounds it otherwise: the server refused nothing of `hour: 30` or `hour: 7.5`, as the
    training data's hours, widened, reached 46."""
    for table in (section(params, "dataset").get("tables") or {}).values():
        for name, column in ((table or {}).get("columns") or {}).items():
            if isinstance(column, Mapping):
                yield str(name), column
        for name, raw in ((table or {}).get("derived") or {}).items():
            spec = {"expr": raw} if isinstance(raw, str) else raw
            if not isinstance(spec, Mapping):
                continue
            bounds = calendar_range(str(spec.get("expr", "")))
            if bounds is None:
                yield str(name), {**spec, "type": "float64"}
            else:
                low, high = bounds
                yield str(name), {"min": low, "max": high, **spec, "type": "int64"}


def key_check(params: Mapping[str, Any], schema: FeatureSchema) -> dict[str, str]:
    """The entity key column's declared type and pattern (`entity_key_type`,
    `entity_key_pattern`), where a table declares that column: the server accepts a string
    key only as a string, full-matching its pattern (serve/schema.py). Empty for a surrogate
    key, which no table declares."""
    if schema.surrogate_key:
        return {}
    for name, column in _declared_columns(params):
        if name == schema.entity_key and column.get("type") in ("string", "int64", "timestamp"):
            out = {"entity_key_type": str(column["type"])}
            if column.get("pattern") is not None:
                out["entity_key_pattern"] = str(column["pattern"])
            return out
    return {}


def declared_integers(params: Mapping[str, Any]) -> set[str]:
    """The columns every table that declares them declares int64 (a feature read from such a
    column takes whole numbers only; a name some table declares otherwise is left out)."""
    types: dict[str, set[str]] = {}
    for name, column in _declared_columns(params):
        if column.get("type"):
            types.setdefault(name, set()).add(str(column["type"]))
    return {name for name, found in types.items() if found == {"int64"}}


def declared_required(params: Mapping[str, Any]) -> set[str]:
    """The columns every table that declares them declares `nullable: false`: validate
    quarantines a null there, so the server refuses one (a name some table allows null in is
    left out)."""
    flags: dict[str, set[bool]] = {}
    for name, column in _declared_columns(params):
        flags.setdefault(name, set()).add(column.get("nullable", True) is False)
    return {name for name, found in flags.items() if found == {True}}


def declared_missing(params: Mapping[str, Any]) -> dict[str, list[Any]]:
    """column -> its `missing` codes in the dataset's config (every table's, in order)."""
    found: dict[str, list[Any]] = {}
    for name, column in _declared_columns(params):
        codes = column.get("missing")
        if codes is None:
            continue
        for code in codes if isinstance(codes, list) else [codes]:
            if code not in found.setdefault(name, []):
                found[name].append(code)
    return found


def declared_ranges(params: Mapping[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """column -> (min, max) of the dataset's column checks (`tables.<t>.columns.<c>.min/max`,
    checked by `evergreen params`); a name in several tables: the widest bounds, None where
    one of them has none."""
    found: dict[str, list[tuple[Any, Any]]] = {}
    for name, column in _declared_columns(params):
        if "min" in column or "max" in column:
            found.setdefault(name, []).append((column.get("min"), column.get("max")))
    out: dict[str, tuple[float | None, float | None]] = {}
    for name, bounds in found.items():
        lows = [b[0] for b in bounds]
        highs = [b[1] for b in bounds]
        out[name] = (
            None if None in lows else float(min(lows)),
            None if None in highs else float(max(highs)),
        )
    return out


def label_card(params: Mapping[str, Any]) -> dict[str, Any]:
    """What the label means, by the dataset's task kind: for entity churn its `label` section
    (name, horizon_days, lookback_days) and the event types that count as activity; for a rows
    kind the target column (and its classes' mapping to 0/1)."""
    dataset = section(params, "dataset")
    task = dataset.get("task") or {}
    kind = task.get("kind", "entity_churn")
    if kind != "entity_churn":
        return _rows_label_card(task, kind)
    label = section(params, "dataset.label")
    name = label.get("name")
    missing = [k for k in ("name", "horizon_days", "lookback_days") if label.get(k) is None]
    if missing:
        raise KeyError(f"params: dataset.label lacks {missing}")
    horizon, lookback = int(label["horizon_days"]), int(label["lookback_days"])
    activity = [str(t) for t in section(params, "dataset.activity_types")]
    return {
        **{str(k): v for k, v in label.items()},
        "activity_types": activity,
        "definition": (
            f"{name} = 1 for an entity active (any of {', '.join(activity)}) in the {lookback} "
            f"days up to the snapshot date that has no such activity in the {horizon} days "
            "after it"
        ),
    }


def _rows_label_card(task: Mapping[str, Any], kind: str) -> dict[str, Any]:
    target = task.get("target")
    if not target:
        raise KeyError(f"params: dataset.task lacks 'target' (task.kind {kind})")
    period = int(task.get("period_days", 7))
    labels = task.get("labels")
    out: dict[str, Any] = {"name": str(target), "kind": kind, "period_days": period}
    if kind == "rows_regression":
        out["definition"] = (
            f"{target}: the number recorded with each row, predicted from its features"
        )
    elif labels:
        out["labels"] = {str(k): int(v) for k, v in labels.items()}
        ones = sorted(str(k) for k, v in labels.items() if int(v) == 1)
        out["definition"] = f"{target} = 1 for a row whose {target} is {' or '.join(ones)}, else 0"
    else:
        out["definition"] = f"{target}: the 0/1 outcome recorded with each row"
    delay = int(task.get("label_delay_days") or 0)
    if delay:  # only where set: the cards of datasets without a delay keep their bytes
        out["label_delay_days"] = delay
        out["definition"] += f", known {delay} day(s) after the row"
    return out


def data_version(lock: Mapping[str, Any], data_path: str, stage: str) -> str:
    """The md5 DVC recorded for `data_path` as a dependency of `stage` in dvc.lock."""
    entry = (lock.get("stages") or {}).get(stage)
    if entry is None:
        raise ValueError(f"dvc.lock: no entry for stage '{stage}' (run `dvc repro` first)")
    for dep in entry.get("deps") or ():
        if dep.get("path") == data_path and dep.get("md5"):
            return str(dep["md5"])
    raise ValueError(f"dvc.lock: stage '{stage}' records no md5 for dependency '{data_path}'")


def library_versions() -> dict[str, str]:
    """Python and the installed versions of LIBRARIES."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def build_card(
    *,
    schema: FeatureSchema,
    train: pd.DataFrame,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    slices: Mapping[str, Any],
    model_file: str,
    model_md5: str,
    landing_md5: str,
    data_source: str,
    train_metrics: Mapping[str, Any] | None = None,
    onnx: Mapping[str, str] | None = None,
    libraries: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The model card as a JSON-ready mapping (no git commit, no gate verdict).

    `train_metrics` (the train stage's metrics file) adds the hyperparameters the model was
    fitted with, which tuning may have chosen over the configured ones, the tuning summary, the
    validation metrics (of the model fitted on train) and `data.refit_rows` (train + valid, the
    rows of the model written when `train.refit` refitted it; null when it was not).
    """
    model_params = section(params, "model")
    dates = sorted(str(pd.Timestamp(d).date()) for d in train[schema.time].dropna().unique())
    card: dict[str, Any] = {
        "model": {
            "name": model_params.get("name"),
            "estimator": model_params.get("estimator"),
            "params": {k: v for k, v in model_params.items() if k not in ("name", "estimator")},
            "seed": section(params, "seed"),
            "file": model_file,
            "md5": model_md5,
        },
        "features": {
            **feature_card(
                schema,
                train,
                declared_ranges(params),
                declared_missing(params),
                declared_integers(params),
                declared_required(params),
            ),
            **key_check(params, schema),
        },
        "label": label_card(params),
        "data": {
            "landing_md5": landing_md5,
            "source": data_source,
            "train_rows": len(train),
            "train_snapshot_dates": dates,
        },
        "metrics": {"test": dict(metrics), "slices": dict(slices)},
        "libraries": dict(library_versions() if libraries is None else libraries),
    }
    fitted = train_metrics or {}
    for key, where, name in (
        ("hyperparameters", "model", "fitted_hyperparameters"),
        ("tuning", "model", "tuning"),
        ("valid", "metrics", "valid"),
        # train + valid's rows when the model written was refitted on both (train.refit)
        ("refit_rows", "data", "refit_rows"),
    ):
        if key in fitted:
            card[where][name] = fitted[key]
    if onnx is not None:
        card["onnx"] = dict(onnx)
    return round_floats(card)
