"""Persist the whole predictor (preprocessing + estimator) without pickle, via skops."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import skops.io as sio

from stages.lib.io import write_bytes_atomic

# skops loads the types on its own default list (scikit-learn's estimators and transformers,
# numpy arrays, plain containers) and refuses any other unless the caller trusts it by name.
# These are the only others the project's families put in a model file (a test saves every
# family and compares): trusting them by exact name, never by prefix, means a file naming
# `builtins.exec`, `os.system` or any class outside this list is refused before anything in
# it is constructed.
TRUSTED_TYPES = frozenset(
    {
        "numpy.dtype",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.tree._tree.Tree",
        "stages.lib.mlp.TabularMLPClassifier",
    }
)
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


class UntrustedModelError(ValueError):
    """A model file names a type the project's families never produce."""


def load_model(path: str | Path, *, expected_md5: str | None = None) -> Any:
    """Load a skops file, refusing any type outside skops' defaults and TRUSTED_TYPES; with
    `expected_md5` (what a commit's dvc.lock records), a file with other bytes is refused
    before it is read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    raw = path.read_bytes()
    if expected_md5 is not None:
        md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest()
        if md5 != expected_md5:
            raise UntrustedModelError(
                f"{path}: md5 {md5} is not the {expected_md5} its commit records; not loaded"
            )
    try:
        untrusted = sio.get_untrusted_types(data=raw)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a skops model file ({exc})") from exc
    refused = sorted(t for t in untrusted if t not in TRUSTED_TYPES)
    if refused:
        raise UntrustedModelError(
            f"{path}: refusing to load types no model family produces: {refused} "
            f"(trusted beyond skops' defaults: {sorted(TRUSTED_TYPES)})"
        )
    return sio.loads(raw, trusted=untrusted)
