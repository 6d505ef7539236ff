"""A served model: an ONNX graph with its model card, and how a request becomes its input.

Nothing here imports scikit-learn, torch, DVC or a pickle loader: the graph runs on
onnxruntime (stages/onnx_predict.py) and the card is JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve.schema import ServingSchema, WireBatch, schema_from_card
from stages.onnx_predict import POSITIVE_COLUMN, OnnxPredictor


def read_card(path: Path) -> dict[str, Any]:
    """The model card JSON; FileNotFoundError/ValueError name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model card not found (`dvc repro` writes it)")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: model card is not valid JSON ({exc})") from exc
    if not isinstance(card, dict):
        raise ValueError(f"{path}: model card must be a JSON object")
    return card


@dataclass(frozen=True)
class Feed:
    """Where each graph input comes from in a WireBatch (a column index per input)."""

    numeric: tuple[tuple[str, int], ...]
    categorical: tuple[tuple[str, int], ...]
    missing_category: str | None

    def inputs(self, wire: WireBatch) -> dict[str, np.ndarray]:
        """The session's feed: [rows, 1] float64 (NaN = missing) or object strings (a missing
        category as the graph's fill value), as OnnxPredictor.inputs builds from a frame."""
        feed: dict[str, np.ndarray] = {}
        if self.numeric:
            columns = np.ascontiguousarray(wire.numeric.T)
            for name, j in self.numeric:
                feed[name] = columns[j].reshape(-1, 1)
        fill = self.missing_category
        for name, j in self.categorical:
            values = [fill if v is None else v for v in wire.categorical[j]]
            feed[name] = np.array(values, dtype=object).reshape(-1, 1)
        return feed


@dataclass(frozen=True)
class ServedModel:
    """One loaded model: its identity, card, serving schema and onnxruntime session."""

    name: str
    version: str
    card: Mapping[str, Any]
    schema: ServingSchema
    predictor: OnnxPredictor

    @property
    def data_version(self) -> str | None:
        return (self.card.get("data") or {}).get("landing_md5")

    @property
    def git_commit(self) -> str | None:
        return self.card.get("git_commit")

    def feed_from(self, request_schema: ServingSchema) -> Feed:
        """How to feed this model from requests validated against `request_schema` (the
        champion's); ValueError when this model needs a feature such requests lack."""
        numeric = {f.name: j for j, f in enumerate(request_schema.numeric)}
        categorical = {f.name: j for j, f in enumerate(request_schema.categorical)}
        lacking = [f.name for f in self.schema.numeric if f.name not in numeric]
        lacking += [f.name for f in self.schema.categorical if f.name not in categorical]
        if lacking:
            raise ValueError(
                f"model {self.name} ({self.version}) needs feature(s) {lacking} that requests "
                "validated against the champion's card do not carry (or carry as another type)"
            )
        return Feed(
            numeric=tuple((f.name, numeric[f.name]) for f in self.schema.numeric),
            categorical=tuple((f.name, categorical[f.name]) for f in self.schema.categorical),
            missing_category=self.predictor.missing_category,
        )

    def score(self, feed: Feed, wire: WireBatch) -> np.ndarray:
        """Positive-class probabilities (a regression's predictions), one per row of `wire`
        (float64)."""
        (out,) = self.predictor.session.run([self.predictor.output], feed.inputs(wire))
        if self.schema.regression:
            return np.asarray(out, dtype=np.float64).reshape(-1)
        return np.asarray(out[:, POSITIVE_COLUMN], dtype=np.float64)

    def identity(self) -> dict[str, Any]:
        """Name, version and what the card says about where the model came from."""
        model = self.card.get("model") or {}
        gate = self.card.get("gate")
        return {
            "name": self.name,
            "version": self.version,
            "estimator": model.get("estimator"),
            "trained_model_md5": model.get("md5"),
            "data_version": self.data_version,
            "git_commit": self.git_commit,
            "blessed": gate.get("blessed") if isinstance(gate, Mapping) else None,
        }


def load_served_model(
    model_path: Path,
    card_path: Path,
    *,
    range_margin: float | None,
    name: str | None = None,
    threads: int = 1,
) -> ServedModel:
    """Load an ONNX graph and its card, and check they belong together.

    The version is the md5 of the ONNX file; when the card records the md5 of the ONNX graph
    it describes (`onnx.md5`), a different file is refused. The graph's inputs must be the
    card's features (OnnxPredictor checks them). Errors name the file and what is wrong.
    """
    card = read_card(card_path)
    try:
        schema = schema_from_card(card, range_margin=range_margin)
    except ValueError as exc:
        raise ValueError(f"{card_path}: {exc}") from exc
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: ONNX model not found (`dvc repro` exports it)")
    graph = model_path.read_bytes()
    version = hashlib.md5(graph).hexdigest()
    described = (card.get("onnx") or {}).get("md5")
    if described is not None and described != version:
        raise ValueError(
            f"{card_path}: the card describes ONNX graph {described}, but {model_path} is "
            f"{version}: serve the graph and card of the same `dvc repro`"
        )
    try:
        predictor = OnnxPredictor(graph, schema.feature_schema(), threads=threads)
    except ValueError as exc:
        raise ValueError(f"{model_path}: {exc}") from exc
    card_name = (card.get("model") or {}).get("name")
    return ServedModel(
        name=name or (str(card_name) if card_name else model_path.stem),
        version=version,
        card=card,
        schema=schema,
        predictor=predictor,
    )


def concat(wires: Sequence[WireBatch]) -> WireBatch:
    """Several requests as one batch (rows in order); `received` is the earliest."""
    if len(wires) == 1:
        return wires[0]
    return WireBatch(
        keys=[k for w in wires for k in w.keys],
        numeric=np.concatenate([w.numeric for w in wires]),
        categorical=[
            tuple(v for w in wires for v in w.categorical[j])
            for j in range(len(wires[0].categorical))
        ],
        received=min(w.received for w in wires),
    )
