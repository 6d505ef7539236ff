"""Persist the whole predictor (preprocessing + estimator) without pickle, via skops."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import skops.io as sio

# Types the project's pipelines are made of; anything else in a model file is refused,
# so loading a file never runs code it was not meant to.
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


def save_model(model: Any, path: str | Path) -> Path:
    """Write `model` to `path` atomically (a crash leaves the previous file intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sio.dump(model, tmp)
    os.replace(tmp, path)
    return path


def load_model(path: str | Path) -> Any:
    """Load a skops file, refusing any type outside the project's trusted set."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    untrusted = sio.get_untrusted_types(file=path)
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise ValueError(f"{path}: refusing to load untrusted types {refused}")
    return sio.load(path, trusted=untrusted)
