"""The model card as one typed class: written by the `card` stage (stages/lib/cards.py builds
the document), read here by everything else (predict, monitor, the gate, promotion, the canary
and the server). Reading a card never goes around this class, so a key is named in one place.

The document itself stays a JSON object (`ModelCard.doc`): the card stage writes it, `evergreen
card stamp` copies it with the git commit and the gate verdict, and the server shows parts of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def file_md5(path: str | Path) -> str:
    """md5 of a file, streamed (DVC's hash of a file output; a model's version)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _section(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class ModelCard:
    """A model card document and the source it came from (named in every error)."""

    doc: Mapping[str, Any]
    source: str = "model card"

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """Read a card file; FileNotFoundError/ValueError name the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model card not found (`dvc repro` writes it)")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: model card is not valid JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: model card must be a JSON object")
        return cls(doc, str(path))

    # --- the model -------------------------------------------------------------------------
    @property
    def model(self) -> Mapping[str, Any]:
        return _section(self.doc, "model")

    @property
    def name(self) -> str | None:
        name = self.model.get("name")
        return str(name) if name else None

    @property
    def estimator(self) -> str | None:
        return self.model.get("estimator")

    @property
    def model_md5(self) -> str | None:
        """md5 of the trained model file (.skops) the card describes."""
        return self.model.get("md5")

    @property
    def onnx_md5(self) -> str | None:
        """md5 of the ONNX graph the card describes (the served model's version)."""
        return _section(self.doc, "onnx").get("md5")

    def check_onnx(self, onnx_md5: str, onnx_path: str | Path) -> None:
        """Refuse an ONNX file other than the one this card describes (when it names one)."""
        described = self.onnx_md5
        if described is not None and described != onnx_md5:
            raise ValueError(
                f"{self.source}: the card describes ONNX graph {described}, but {onnx_path} is "
                f"{onnx_md5}: use the graph and card of the same `dvc repro`"
            )

    # --- the data, features and label ------------------------------------------------------
    @property
    def data(self) -> Mapping[str, Any]:
        return _section(self.doc, "data")

    @property
    def data_version(self) -> str | None:
        """The md5 DVC recorded for the landing zone the model was trained on."""
        return self.data.get("landing_md5")

    @property
    def train_snapshot_dates(self) -> list[str]:
        return list(self.data.get("train_snapshot_dates") or [])

    @property
    def features(self) -> Mapping[str, Any] | None:
        features = self.doc.get("features")
        return features if isinstance(features, Mapping) else None

    @property
    def label_name(self) -> str | None:
        return _section(self.doc, "label").get("name")

    @property
    def metrics(self) -> Mapping[str, Any]:
        return _section(self.doc, "metrics")

    # --- what promotion adds (`evergreen card stamp`) -------------------------------------
    @property
    def git_commit(self) -> str | None:
        return self.doc.get("git_commit")

    @property
    def gate(self) -> Mapping[str, Any] | None:
        gate = self.doc.get("gate")
        return gate if isinstance(gate, Mapping) else None

    @property
    def blessed(self) -> bool | None:
        return None if self.gate is None else self.gate.get("blessed")

    def stamped(self, gate: Mapping[str, Any], commit: str) -> dict[str, Any]:
        """A copy with the git commit and the gate verdict, refused when the gate judged
        another model file than the card describes."""
        gate_md5 = _section(gate, "challenger").get("model_md5")
        if "blessed" not in gate or gate_md5 is None:
            raise ValueError("gate report: lacks 'blessed' or 'challenger.model_md5'")
        if self.model_md5 != gate_md5:
            raise ValueError(
                f"the gate judged model {gate_md5} but the card describes {self.model_md5}: "
                "rerun `dvc repro` and `evergreen gate` on the same workspace"
            )
        return {**self.doc, "git_commit": commit, "gate": dict(gate)}
