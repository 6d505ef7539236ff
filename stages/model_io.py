"""Persist the whole predictor (preprocessing + estimator) without pickle, via skops."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import skops.io as sio

from stages.io import write_bytes_atomic

# Types the project's pipelines are made of; anything else in a model file is refused,
# so loading a file never runs code it was not meant to.
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")
# The project's own estimators, by exact name: a prefix such as "stages." would trust any
# class a future module defines.
TRUSTED_TYPES = frozenset({"stages.mlp.TabularMLPClassifier"})
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _renumber(node: Any, ids: dict[int, int]) -> Any:
    """Replace memory addresses (`__id__`, `<id>.npy`) by their order of first appearance."""
    if isinstance(node, list):
        return [_renumber(item, ids) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "__id__" and isinstance(value, int):
            value = ids.setdefault(value, len(ids))
        elif key == "file" and isinstance(value, str) and value.endswith(".npy"):
            value = f"{ids.setdefault(int(value[:-4]), len(ids))}.npy"
        out[key] = _renumber(value, ids)
    return out


def canonical_skops(raw: bytes) -> bytes:
    """The same model always gives the same bytes: skops names entries after memory addresses
    and stamps the save time, so DVC would see a 'new' model after every identical retrain."""
    ids: dict[int, int] = {}
    with zipfile.ZipFile(io.BytesIO(raw)) as src:
        schema = _renumber(json.loads(src.read("schema.json")), ids)
        arrays = {
            f"{ids[int(n[:-4])]}.npy": src.read(n) for n in src.namelist() if n != "schema.json"
        }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as dst:
        for name in sorted(arrays, key=lambda n: int(n[:-4])):
            dst.writestr(zipfile.ZipInfo(name, _ZIP_EPOCH), arrays[name])
        dst.writestr(zipfile.ZipInfo("schema.json", _ZIP_EPOCH), json.dumps(schema, indent=2))
    return buf.getvalue()


def save_model(model: Any, path: str | Path) -> Path:
    """Write `model` to `path` atomically, with reproducible bytes."""
    return write_bytes_atomic(canonical_skops(sio.dumps(model)), path)


def load_model(path: str | Path) -> Any:
    """Load a skops file, refusing any type outside the project's trusted set."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    untrusted = sio.get_untrusted_types(file=path)
    refused = [
        t for t in untrusted if not t.startswith(TRUSTED_PREFIXES) and t not in TRUSTED_TYPES
    ]
    if refused:
        raise ValueError(f"{path}: refusing to load untrusted types {refused}")
    return sio.load(path, trusted=untrusted)
