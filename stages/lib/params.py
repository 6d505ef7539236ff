"""Params: compose `conf/` into `params.yaml` and read one section of it.

`conf/` (Hydra) is the source of truth. `params.yaml` is its composition, written exactly as
`dvc exp run` writes it (we call DVC's own composer), so plain `dvc repro` and `dvc exp run`
see the same values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
CONF_DIR = "conf"
CONFIG_NAME = "config"


def compose_params(
    conf_dir: str | Path = CONF_DIR,
    output: str | Path = PARAMS_FILE,
    overrides: Sequence[str] = (),
    config_name: str = CONFIG_NAME,
) -> Path:
    """Compose `conf_dir` with Hydra `overrides` and write the result to `output`."""
    from dvc.utils.hydra import compose_and_dump

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"{conf_dir}/{config_name}.yaml: no Hydra config to compose")
    output = Path(output)
    compose_and_dump(
        output, str(conf_dir), None, config_name, str(conf_dir.parent), list(overrides)
    )
    return output


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found (run `evergreen params`)")
    with path.open() as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return dict(params)


def section(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Return `params[name]` (a dotted name walks into nested sections)."""
    node: Any = params
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"params: missing section '{name}' (at '{part}')")
        node = node[part]
    return node


def default_lake(cli_value: str | None, params_path: str | Path = PARAMS_FILE) -> str:
    """The lake location: `--lake` wins, then `lake.path` in params, then `lake`."""
    if cli_value:
        return cli_value
    if Path(params_path).is_file():
        return str(section(load_params(params_path), "lake.path"))
    return "lake"
