"""The core of the `export` stage (stages/export.py): the whole predictor as one ONNX graph, checked
against the native model.

    python -m stages.export models/model.skops artifacts/split/test.parquet \\
        artifacts/features/feature_schema.json models/model.onnx metrics/export.json \\
        [--params params.yaml]

Every family converts the same way: skl2onnx walks the Pipeline (imputers, scaler, one-hot
encoders, then the estimator), with three converters of our own:

- numeric `SimpleImputer` as IsNaN + Where in double precision (onnxruntime's `Imputer` op only
  runs in float32);
- the tree ensembles (HistGradientBoosting, RandomForest) in double precision: skl2onnx's
  default compares float32 inputs to float32 thresholds, and a scaled feature a rounding step
  away from a split threshold then takes the other branch (measured: |Δp| up to 0.85 on a
  300-row HGB). We emit `TreeEnsembleClassifier` (ai.onnx.ml v3) with double thresholds;
- the torch MLP (`stages.mlp`) as Gemm/Relu/Sigmoid nodes built from its weights, so one graph
  holds preprocessing and network (no torch needed to export it).

The graph's contract (inputs, `probabilities` output, missing categories) is described in
`stages.onnx_predict`, which scores with it. Parity: on the test split and on edge-case rows
(each feature missing in turn, unseen categories), max |p_onnx - p_native| <= 1e-4 and the same
decision at `evaluate.threshold` for >= 99.9% of rows, else the stage fails naming the model.

A regression (the feature schema's `task`: Ridge, HistGradientBoosting or RandomForest
regressors) exports the same way to one output `prediction` ([None, 1] double), its trees in
double precision too; parity there is relative: |y_onnx - y_native| <= 1e-4 x max(1, |y_native|)
(the tree ensemble sums its leaves in float32), and there is no decision to agree on.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, numpy_helper
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from stages.contract.feature_schema import FeatureSchema
from stages.contract.onnx_predict import META_PREFIX, OUTPUT, REGRESSION_OUTPUT, OnnxPredictor
from stages.lib.io import round_floats
from stages.lib.mlp import TabularMLPClassifier, linear_layers
from stages.lib.params import section
from stages.lib.training import MISSING_CATEGORY, predictions

TARGET_OPSET = {"": 21, "ai.onnx.ml": 3}
# tree ensemble attributes stored as double tensors instead of float lists
_DOUBLE_TREE_ATTRS = (
    "nodes_values",
    "class_weights",
    "target_weights",
    "base_values",
    "nodes_hitrates",
)
_TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
EDGE_ROWS = 8
UNSEEN_CATEGORY = "__unseen_in_training__"


@dataclass(frozen=True)
class ExportConfig:
    """The parity check's decision threshold (`evaluate.threshold`) and its limits."""

    threshold: float = 0.5
    max_abs_diff: float = 1e-4
    min_agreement: float = 0.999

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"evaluate.threshold: {self.threshold} is not in [0, 1]")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ExportConfig:
        return cls(threshold=float(section(params, "evaluate").get("threshold", 0.5)))


@dataclass(frozen=True)
class Parity:
    """How far the ONNX graph's probabilities are from the native model's on some rows."""

    rows: int
    max_abs_diff: float  # a regression's: relative to max(1, |native|)
    decision_agreement: float | None  # None: a regression, no decision


class ParityError(ValueError):
    """The exported graph does not reproduce the native model's predictions."""


def export_onnx(model: Pipeline, schema: FeatureSchema) -> onnx.ModelProto:
    """The whole predictor (preprocessing + estimator) as one ONNX graph.

    Inputs: one per feature, named as the feature, [None, 1]; double for numeric, string for
    categorical (a missing category passed as `MISSING_CATEGORY`). Output `probabilities`:
    double [None, 2], column 1 the positive class (plus skl2onnx's `label`, the argmax).
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes

    if not isinstance(model, Pipeline):
        raise TypeError(f"export: expected a Pipeline, got {type(model).__name__}")
    if schema.regression:
        return _export_regressor(model, schema)
    estimator = model[-1]
    initial_types = _initial_types(schema)
    converters: dict[type, Any] = {
        SimpleImputer: _convert_imputer,
        HistGradientBoostingClassifier: _convert_trees,
        RandomForestClassifier: _convert_trees,
        TabularMLPClassifier: _convert_mlp,
    }
    shapes: dict[type, Any] = {
        SimpleImputer: calculate_sklearn_imputer_output_shapes,
        HistGradientBoostingClassifier: _tree_shapes,
        RandomForestClassifier: _tree_shapes,
        TabularMLPClassifier: _mlp_shapes,
    }
    # zipmap off: a plain [N, 2] tensor instead of a list of {class: probability} maps; the
    # MLP's own converter takes no options (an empty entry keeps skl2onnx from adding zipmap)
    own = isinstance(estimator, TabularMLPClassifier)
    options = {id(estimator): {} if own else {"zipmap": False}}
    graph = convert_sklearn(
        model,
        name="evergreen",
        initial_types=initial_types,
        target_opset=dict(TARGET_OPSET),
        options=options,
        custom_conversion_functions=converters,
        custom_shape_calculators=shapes,
    )
    return _finish(graph, estimator, schema, output=OUTPUT, positive_column="1")


def _finish(graph: onnx.ModelProto, estimator: Any, schema: FeatureSchema, **extra: str):
    """`graph` with Evergreen's metadata (estimator, the contract's keys, `extra`), checked."""
    meta = {
        "estimator": type(estimator).__name__,
        **extra,
        "missing_category": MISSING_CATEGORY,
        "numeric": json.dumps(list(schema.numeric)),
        "categorical": json.dumps(list(schema.categorical)),
        # integer-coded categories: fed as their codes' digits (onnx_predict's contract)
        **(
            {"category_types": json.dumps(schema.category_types, sort_keys=True)}
            if schema.category_types
            else {}
        ),
    }
    onnx.helper.set_model_props(graph, {f"{META_PREFIX}{k}": v for k, v in meta.items()})
    # skl2onnx fills `opset_import` from a set, whose order follows Python's hash seed: sorted,
    # the same model serialises to the same bytes in every process (and keeps its version)
    opsets = sorted((o.domain, o.version) for o in graph.opset_import)
    del graph.opset_import[:]
    graph.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets)
    onnx.checker.check_model(graph)
    return graph


def _initial_types(schema: FeatureSchema) -> list[tuple[str, Any]]:
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    return [(c, DoubleTensorType([None, 1])) for c in schema.numeric] + [
        (c, StringTensorType([None, 1])) for c in schema.categorical
    ]


def _export_regressor(model: Pipeline, schema: FeatureSchema) -> onnx.ModelProto:
    """A regression pipeline as one graph with the output `prediction` ([None, 1] double)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.shape_calculators.imputer import calculate_sklearn_imputer_output_shapes

    estimator = model[-1]
    graph = convert_sklearn(
        model,
        name="evergreen",
        initial_types=_initial_types(schema),
        target_opset=dict(TARGET_OPSET),
        final_types=[(REGRESSION_OUTPUT, DoubleTensorType([None, 1]))],
        custom_conversion_functions={
            SimpleImputer: _convert_imputer,
            HistGradientBoostingRegressor: _convert_tree_regressor,
            RandomForestRegressor: _convert_tree_regressor,
        },
        custom_shape_calculators={
            SimpleImputer: calculate_sklearn_imputer_output_shapes,
            HistGradientBoostingRegressor: _regressor_shapes,
            RandomForestRegressor: _regressor_shapes,
        },
    )
    return _finish(graph, estimator, schema, output=REGRESSION_OUTPUT, task=schema.task)


def _regressor_shapes(operator: Any) -> None:
    from skl2onnx.common.data_types import DoubleTensorType

    operator.outputs[0].type = DoubleTensorType([operator.inputs[0].get_first_dimension(), 1])


def _convert_tree_regressor(scope: Any, operator: Any, container: Any) -> None:
    """A tree ensemble regressor on double inputs with double thresholds (as `_convert_trees`
    for the classifiers); the op's float32 output is cast to double."""
    from skl2onnx.operator_converters.random_forest import (
        convert_sklearn_random_forest_regressor_converter,
    )

    as_float = scope.get_unique_variable_name("prediction_float")
    proxy = types.SimpleNamespace(
        raw_operator=operator.raw_operator,
        inputs=operator.inputs,
        input_full_names=operator.input_full_names,
        outputs=[types.SimpleNamespace(full_name=as_float)],
    )
    convert_sklearn_random_forest_regressor_converter(
        scope, proxy, _DoubleTreeContainer(container), op_version=3
    )
    container.add_node(
        "Cast",
        [as_float],
        [operator.outputs[0].full_name],
        to=TensorProto.DOUBLE,
        name=scope.get_unique_operator_name("Cast"),
    )


def _convert_imputer(scope: Any, operator: Any, container: Any) -> None:
    """SimpleImputer: NaN -> the fitted statistic, in the input's own precision."""
    from skl2onnx.common.data_types import StringTensorType, guess_proto_type

    imputer = operator.raw_operator
    x = operator.inputs[0]
    out = operator.outputs[0].full_name
    if getattr(imputer, "add_indicator", False):
        raise NotImplementedError("export: SimpleImputer(add_indicator=True) is not supported")
    if isinstance(x.type, StringTensorType):
        # A string tensor holds no null: callers pass a missing category as the fill value
        # itself (onnx_predict does), so the imputer has nothing left to replace.
        fills = {str(v) for v in imputer.statistics_}
        if fills != {MISSING_CATEGORY}:
            raise NotImplementedError(
                f"export: categorical SimpleImputer must fill {MISSING_CATEGORY!r}, "
                f"fills {sorted(fills)}"
            )
        container.add_node(
            "Identity", [x.full_name], [out], name=scope.get_unique_operator_name("Identity")
        )
        return
    if not (isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)):
        raise NotImplementedError(
            f"export: numeric SimpleImputer must impute NaN, not {imputer.missing_values!r}"
        )
    proto = guess_proto_type(x.type)
    dtype = np.float64 if proto == TensorProto.DOUBLE else np.float32
    stats = scope.get_unique_variable_name("imputed_values")
    container.add_initializer(
        stats, proto, [len(imputer.statistics_)], imputer.statistics_.astype(dtype).tolist()
    )
    isnan = scope.get_unique_variable_name("isnan")
    container.add_node(
        "IsNaN", [x.full_name], [isnan], name=scope.get_unique_operator_name("IsNaN")
    )
    container.add_node(
        "Where", [isnan, stats, x.full_name], [out], name=scope.get_unique_operator_name("Where")
    )


class _DoubleTreeContainer:
    """Passes everything to skl2onnx's container, but stores a tree ensemble's thresholds,
    leaf weights and base values as double tensors (the `*_as_tensor` attributes of
    TreeEnsembleClassifier v3), which skl2onnx only writes as float32 lists.

    It also turns the Python bools skl2onnx 1.20 puts in `nodes_missing_value_tracks_true`
    (for leaves) into ints: protobuf 6 warns about them, protobuf 7 refuses them ("Expected an
    int, got a boolean", the HistGradientBoosting export failure)."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, op_type: str, inputs: Any, outputs: Any, **attrs: Any) -> Any:
        if op_type in _TREE_OPS:
            for key in _DOUBLE_TREE_ATTRS:
                if key in attrs:
                    values = np.asarray(attrs.pop(key), dtype=np.float64).ravel()
                    attrs[f"{key}_as_tensor"] = numpy_helper.from_array(values, name="")
            tracks = attrs.get("nodes_missing_value_tracks_true")
            if tracks is not None:
                attrs["nodes_missing_value_tracks_true"] = [int(v) for v in tracks]
        return self._container.add_node(op_type, inputs, outputs, **attrs)


def _convert_trees(scope: Any, operator: Any, container: Any) -> None:
    """HistGradientBoosting / RandomForest on double inputs, with double thresholds.

    For the forest, skl2onnx moves each threshold so that comparing the double input gives the
    branch scikit-learn takes after its own float32 cast. The op's probabilities are float32:
    cast to double so every family has the same output type.
    """
    from skl2onnx.operator_converters.random_forest import (
        convert_sklearn_random_forest_classifier,
    )

    probabilities = operator.outputs[1]
    as_float = scope.get_unique_variable_name("probabilities_float")
    # the converter only reads these attributes; its second output goes to `as_float`
    proxy = types.SimpleNamespace(
        raw_operator=operator.raw_operator,
        inputs=operator.inputs,
        input_full_names=operator.input_full_names,
        outputs=[operator.outputs[0], types.SimpleNamespace(full_name=as_float)],
    )
    convert_sklearn_random_forest_classifier(
        scope, proxy, _DoubleTreeContainer(container), op_version=3
    )
    container.add_node(
        "Cast",
        [as_float],
        [probabilities.full_name],
        to=TensorProto.DOUBLE,
        name=scope.get_unique_operator_name("Cast"),
    )


def _tree_shapes(operator: Any) -> None:
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.shape_calculators.ensemble_shapes import (
        calculate_tree_classifier_output_shapes,
    )

    calculate_tree_classifier_output_shapes(operator)
    operator.outputs[1].type = DoubleTensorType(operator.outputs[1].type.shape)


def _mlp_shapes(operator: Any) -> None:
    from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType

    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = Int64TensorType([rows])
    operator.outputs[1].type = DoubleTensorType([rows, 2])


def _convert_mlp(scope: Any, operator: Any, container: Any) -> None:
    """The MLP's forward pass in float32, as torch computes it: Gemm (+ Relu) per layer, a
    sigmoid on the one logit, then [1 - p, p] cast to double."""
    mlp = operator.raw_operator
    if list(mlp.classes_) != [0, 1]:
        raise NotImplementedError(f"export: MLP classes {list(mlp.classes_)} are not [0, 1]")

    def name(prefix: str) -> str:
        return scope.get_unique_variable_name(prefix)

    def node(op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        container.add_node(
            op_type, inputs, [output], name=scope.get_unique_operator_name(op_type), **attrs
        )
        return output

    h = node("Cast", [operator.inputs[0].full_name], name("x_float"), to=TensorProto.FLOAT)
    layers = linear_layers(mlp.state_dict_)
    for i, (weight, bias) in enumerate(layers):
        w, b = name(f"weight{i}"), name(f"bias{i}")
        container.add_initializer(w, TensorProto.FLOAT, list(weight.shape), weight.ravel())
        container.add_initializer(b, TensorProto.FLOAT, list(bias.shape), bias.ravel())
        h = node("Gemm", [h, w, b], name(f"linear{i}"), transB=1)
        if i < len(layers) - 1:
            h = node("Relu", [h], name(f"relu{i}"))
    positive = node("Sigmoid", [h], name("positive"))
    one = name("one")
    container.add_initializer(one, TensorProto.FLOAT, [1], [1.0])
    negative = node("Sub", [one, positive], name("negative"))
    both = node("Concat", [negative, positive], name("proba_float"), axis=1)
    node("Cast", [both], operator.outputs[1].full_name, to=TensorProto.DOUBLE)
    half = name("half")
    container.add_initializer(half, TensorProto.FLOAT, [1], [0.5])
    above = node("Greater", [positive, half], name("above"))
    as_int = node("Cast", [above], name("above_int"), to=TensorProto.INT64)
    flat = name("flat_shape")
    container.add_initializer(flat, TensorProto.INT64, [1], [-1])
    node("Reshape", [as_int, flat], operator.outputs[0].full_name)


def parity(
    native: np.ndarray, exported: np.ndarray, threshold: float, *, regression: bool = False
) -> Parity:
    """Max |exported - native| and the share of rows with the same decision at `threshold`;
    for a `regression`, max |exported - native| / max(1, |native|) and no decision."""
    native = np.asarray(native, dtype="float64")
    exported = np.asarray(exported, dtype="float64")
    if native.shape != exported.shape or native.ndim != 1 or len(native) == 0:
        raise ValueError(
            f"parity: need two equal-length, non-empty 1-D score arrays, got {native.shape} "
            f"and {exported.shape}"
        )
    if not np.all(np.isfinite(exported)):
        agreement = None if regression else 0.0
        return Parity(rows=len(native), max_abs_diff=float("inf"), decision_agreement=agreement)
    if regression:
        relative = np.abs(exported - native) / np.maximum(1.0, np.abs(native))
        return Parity(
            rows=len(native), max_abs_diff=float(np.max(relative)), decision_agreement=None
        )
    same = (native >= threshold) == (exported >= threshold)
    return Parity(
        rows=len(native),
        max_abs_diff=float(np.max(np.abs(exported - native))),
        decision_agreement=float(np.mean(same)),
    )


def check_parity(results: Mapping[str, Parity], cfg: ExportConfig, model_name: str) -> None:
    """Raise ParityError naming the model and each broken figure."""
    broken = []
    for where, p in results.items():
        if not p.max_abs_diff <= cfg.max_abs_diff:
            what = (
                "|p_onnx - p_native|"
                if p.decision_agreement is not None
                else "|y_onnx - y_native| / max(1, |y_native|)"
            )
            broken.append(
                f"{where}: max {what} = {p.max_abs_diff:.3g} "
                f"(limit {cfg.max_abs_diff:g}) over {p.rows} rows"
            )
        if p.decision_agreement is not None and p.decision_agreement < cfg.min_agreement:
            broken.append(
                f"{where}: same decision at threshold {cfg.threshold:g} for "
                f"{p.decision_agreement:.4%} of {p.rows} rows (need >= {cfg.min_agreement:.1%})"
            )
    if broken:
        raise ParityError(f"{model_name}: ONNX parity broken: " + "; ".join(broken))


def edge_cases(frame: pd.DataFrame, schema: FeatureSchema, rows: int = EDGE_ROWS) -> pd.DataFrame:
    """Copies of the first `rows` rows with, in turn, each feature missing (None), each
    categorical an unseen value, and every feature missing at once."""
    base = frame.loc[:, list(schema.features)].head(rows).reset_index(drop=True)
    base = base.astype({c: object for c in schema.categorical})
    variants = []
    for col in schema.features:
        variants.append(base.assign(**{col: np.nan if col in schema.numeric else None}))
    for col in schema.categorical:
        variants.append(base.assign(**{col: UNSEEN_CATEGORY}))
    variants.append(
        base.assign(**{c: np.nan for c in schema.numeric}, **{c: None for c in schema.categorical})
    )
    return pd.concat(variants, ignore_index=True)


def verify_parity(
    model: Pipeline,
    graph: bytes,
    frame: pd.DataFrame,
    schema: FeatureSchema,
    cfg: ExportConfig,
) -> dict[str, Parity]:
    """Score `frame` and its edge cases with the native model and the ONNX graph; raise
    ParityError when they differ beyond the limits."""
    predictor = OnnxPredictor(graph, schema)
    results = {}
    for where, rows in (("test", frame), ("edge_cases", edge_cases(frame, schema))):
        results[where] = parity(
            predictions(model, rows, schema),
            predictor.predict(rows),
            cfg.threshold,
            regression=schema.regression,
        )
    check_parity(results, cfg, type(model[-1]).__name__)
    return results


def export_metrics(
    model: Pipeline, graph: bytes, results: Mapping[str, Parity], cfg: ExportConfig
) -> dict[str, Any]:
    """metrics/export.json: the test split's parity figures at the top, edge cases nested.

    The differences keep 2 significant digits (they are often 1e-8: 6 decimals would say 0).
    """
    test = results["test"]
    regression = test.decision_agreement is None
    payload: dict[str, Any] = {
        "estimator": type(model[-1]).__name__,
        "output": REGRESSION_OUTPUT if regression else OUTPUT,
        "threshold": cfg.threshold,
        "rows": test.rows,
        "decision_agreement": test.decision_agreement,
        "limits": {"max_abs_diff": cfg.max_abs_diff, "min_agreement": cfg.min_agreement},
        "onnx_bytes": len(graph),
    }
    payload = round_floats(payload)
    payload["max_abs_diff"] = _significant(test.max_abs_diff)
    edges = results["edge_cases"]
    payload["edge_cases"] = {
        **round_floats(asdict(edges)),
        "max_abs_diff": _significant(edges.max_abs_diff),
    }
    return payload


def _significant(value: float, digits: int = 2) -> float:
    return float(f"{value:.{digits - 1}e}") + 0.0
