"""Score a pandas frame with an exported ONNX model (`models/model.onnx`), via onnxruntime.

The server and the gate use this; it imports neither scikit-learn nor torch. The graph's
contract, written by `stages.export` (and recorded in the graph's metadata):

- one input per feature, named as the feature, shape [None, 1]: `tensor(double)` for numeric
  features (NaN = missing), `tensor(string)` for categorical ones. A string tensor cannot hold
  a null, so a missing category is passed as the training pipeline's fill value
  (`missing_category` in the metadata), exactly what its imputer would have put there. An
  integer-coded category (the feature schema's `category_types`, also in the metadata) is
  passed as its codes' decimal digits ("2"), as the training pipeline read it
  (`category_text`): one string input type for every categorical, and a missing code is the
  same fill value as a missing string.
- output `probabilities`: `tensor(double)`, shape [None, 2], column 1 the positive class; for a
  regression (the feature schema's `task`), output `prediction`: `tensor(double)`, [None, 1].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from stages.contract.feature_schema import FeatureSchema, category_text

OUTPUT = "probabilities"
REGRESSION_OUTPUT = "prediction"
POSITIVE_COLUMN = 1
META_PREFIX = "evergreen."
INPUT_TYPES = {"numeric": "tensor(double)", "categorical": "tensor(string)"}


class OnnxPredictor:
    """An ONNX Runtime session for one exported model, checked against a feature schema.

    `predict_proba(frame)` returns the positive-class probability of each row (float64).
    Missing values are handled as the training pipeline handles them: None/NaN in a numeric
    column is imputed inside the graph, None/NaN in a categorical column becomes the missing
    category, and a category never seen in training encodes as all zeros.
    """

    def __init__(
        self, model: str | Path | bytes, schema: FeatureSchema, *, threads: int = 1
    ) -> None:
        source = "ONNX model bytes" if isinstance(model, bytes) else str(model)
        if not isinstance(model, bytes):
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: ONNX model not found")
            model = path.read_bytes()
        options = ort.SessionOptions()
        # a fixed thread count: same sums in the same order, and no oversubscription
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{source}: not a loadable ONNX model ({exc})") from exc
        self.source = source
        self.schema = schema
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.missing_category = self.metadata.get(f"{META_PREFIX}missing_category")
        self._check_contract()

    def _check_contract(self) -> None:
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        expected = {c: INPUT_TYPES["numeric"] for c in self.schema.numeric}
        expected.update({c: INPUT_TYPES["categorical"] for c in self.schema.categorical})
        if inputs != expected:
            missing = sorted(set(expected) - set(inputs))
            extra = sorted(set(inputs) - set(expected))
            typed = sorted(c for c in set(inputs) & set(expected) if inputs[c] != expected[c])
            raise ValueError(
                f"{self.source}: inputs do not match the feature schema (missing {missing}, "
                f"unexpected {extra}, wrong type {[(c, inputs[c]) for c in typed]})"
            )
        if self.output not in {o.name for o in self.session.get_outputs()}:
            raise ValueError(f"{self.source}: no '{self.output}' output")
        if self.schema.categorical and self.missing_category is None:
            raise ValueError(
                f"{self.source}: metadata lacks '{META_PREFIX}missing_category' "
                "(export it with stages.export)"
            )

    def inputs(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The session's feed for `frame`: one [n, 1] array per feature."""
        missing = [c for c in self.schema.features if c not in frame.columns]
        if missing:
            raise ValueError(f"frame: missing feature column(s) {missing}")
        feed: dict[str, np.ndarray] = {}
        numeric = list(self.schema.numeric)
        if numeric:
            block = self._numeric_block(frame, numeric)
            for j, col in enumerate(numeric):
                feed[col] = np.ascontiguousarray(block[:, j : j + 1])
        for col in self.schema.categorical:
            # as the training pipeline reads it: `str` dtype, every missing marker is NaN
            values = category_text(frame[col], self.schema.category_type(col))
            values = values.fillna(self.missing_category)
            feed[col] = values.to_numpy(dtype=object).reshape(-1, 1)
        return feed

    @staticmethod
    def _numeric_block(frame: pd.DataFrame, numeric: list[str]) -> np.ndarray:
        """The numeric features as one float64 matrix (NaN = missing), in one conversion."""
        try:
            return frame.loc[:, numeric].to_numpy(dtype="float64", na_value=np.nan)
        except (TypeError, ValueError):
            pass
        # slow path, only to name the offending column
        for col in numeric:
            try:
                pd.to_numeric(frame[col], errors="raise")
            except (TypeError, ValueError) as exc:
                raise ValueError(f"frame: numeric feature '{col}' has a non-numeric value") from exc
        return frame.loc[:, numeric].apply(pd.to_numeric).to_numpy(dtype="float64", na_value=np.nan)

    @property
    def output(self) -> str:
        """The graph output this schema's task reads."""
        return REGRESSION_OUTPUT if self.schema.regression else OUTPUT

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """What the model outputs per row of `frame`: the positive-class probability, or a
        regression's number; shape (n_rows,), float64."""
        if not self.schema.regression:
            return self.predict_proba(frame)
        if len(frame) == 0:
            return np.empty(0, dtype="float64")
        (values,) = self.session.run([REGRESSION_OUTPUT], self.inputs(frame))
        return np.asarray(values, dtype="float64").reshape(-1)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Positive-class probability per row of `frame`, shape (n_rows,), float64."""
        if self.schema.regression:
            raise ValueError(f"{self.source}: a regression has no probabilities (use predict)")
        if len(frame) == 0:
            return np.empty(0, dtype="float64")
        (proba,) = self.session.run([OUTPUT], self.inputs(frame))
        return np.asarray(proba[:, POSITIVE_COLUMN], dtype="float64")

    @property
    def features(self) -> Sequence[str]:
        """The graph's input names, in schema order."""
        return self.schema.features

    def describe(self) -> dict[str, object]:
        """The graph's Evergreen metadata (estimator, output, missing category...)."""
        return {
            k.removeprefix(META_PREFIX): _maybe_json(v)
            for k, v in sorted(self.metadata.items())
            if k.startswith(META_PREFIX)
        }


def _maybe_json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
