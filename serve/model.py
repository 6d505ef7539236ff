"""A served model: an ONNX graph with its model card, and how a request becomes its input.

Nothing here imports scikit-learn, torch, DVC or a pickle loader: the graph runs on
onnxruntime (stages/contract/onnx_predict.py) and the card is JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serve.schema import ServingSchema, WireBatch, schema_from_card
from serve.settings import ServeSettings
from stages.contract.card import ModelCard
from stages.contract.onnx_predict import POSITIVE_COLUMN, OnnxPredictor


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
    card: ModelCard
    schema: ServingSchema
    predictor: OnnxPredictor

    @property
    def data_version(self) -> str | None:
        return self.card.data_version

    @property
    def git_commit(self) -> str | None:
        return self.card.git_commit

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
        return {
            "name": self.name,
            "version": self.version,
            "estimator": self.card.estimator,
            "trained_model_md5": self.card.model_md5,
            "data_version": self.data_version,
            "git_commit": self.git_commit,
            "blessed": self.card.blessed,
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
    card = ModelCard.read(card_path)
    try:
        schema = schema_from_card(card, range_margin=range_margin)
    except ValueError as exc:
        raise ValueError(f"{card_path}: {exc}") from exc
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: ONNX model not found (`dvc repro` exports it)")
    graph = model_path.read_bytes()
    version = hashlib.md5(graph).hexdigest()
    card.check_onnx(version, model_path)
    try:
        predictor = OnnxPredictor(graph, schema.feature_schema(), threads=threads)
    except ValueError as exc:
        raise ValueError(f"{model_path}: {exc}") from exc
    return ServedModel(
        name=name or card.name or model_path.stem,
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


def preflight(settings: ServeSettings) -> tuple[ServedModel, ServedModel | None]:
    """Load the champion (and shadow) once here, so a bad file fails before any worker starts
    and the routes can be typed by the card."""
    champion = load_served_model(
        settings.model, settings.card, range_margin=settings.range_margin, name=settings.model_name
    )
    shadow = None
    if settings.shadow_model is not None and settings.shadow_card is not None:
        shadow = load_served_model(settings.shadow_model, settings.shadow_card, range_margin=None)
        shadow.feed_from(champion.schema)
    return champion, shadow
