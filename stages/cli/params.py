"""`evergreen params [OVERRIDES] [--check]`: compose conf/ (Hydra) into params.yaml.

The composition is then checked as the stages will read it (the dataset, each section's config
class, the model family against the dataset's task): a mistake is one line naming the file and
key it comes from and exit 2, before any stage runs. A file is written only when it passes.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from stages.lib.params import (
    CONF_DIR,
    DATASET_SECTIONS,
    PARAMS_FILE,
    ParamsError,
    compose_params,
    load_params,
    reason,
)

_KEY = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen params",
        description="Compose conf/ (Hydra) into params.yaml, as `dvc exp run` does, and check "
        "it as the stages will read it.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=hgb")
    parser.add_argument("--conf", default=CONF_DIR, help="Hydra config directory")
    parser.add_argument("--output", default=PARAMS_FILE, help="file to write")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from the composition"
    )
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as exc:  # ParamsError: one line naming the file
        print(f"evergreen params: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        dataset_keys: set[str] = set()
        fresh = compose_params(
            args.conf, Path(tmp) / "params.yaml", args.overrides, dataset_keys=dataset_keys
        )
        check_composition(fresh, args.conf, args.overrides, dataset_keys)
        if args.check:
            current = Path(args.output)
            if not current.is_file() or current.read_bytes() != fresh.read_bytes():
                print(f"{args.output} is stale: run `evergreen params` and commit it")
                return 1
            print(f"{args.output} matches {args.conf}/")
            return 0
        out = Path(args.output)
        out.write_bytes(fresh.read_bytes())
    print(f"wrote {out}")
    return 0


def _known_sections(params: Mapping[str, Any], conf_dir: Path, overrides: Sequence[str]) -> None:
    """Every top-level key is a section of conf/config.yaml or one of its groups. Hydra's own
    hint for a key it does not know (`use +task.max_periods=8`) adds a new top-level section
    that nothing reads: a mistake that exit 0 would hide."""
    from stages.lib.dataset import _DATASET_KEYS
    from stages.lib.params import did_you_mean

    config = yaml.safe_load((conf_dir / "config.yaml").read_text()) or {}
    groups = {
        str(next(iter(entry))).split("@")[0].lstrip("/")
        for entry in config.get("defaults") or ()
        if isinstance(entry, Mapping)
    }
    known = (set(config) - {"defaults"}) | groups
    for key in params:
        if key in known:
            continue
        blamed = [o for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] == key]
        where = f"override {' '.join(blamed)}" if blamed else str(conf_dir / "config.yaml")
        hint = (
            f" (a dataset key: +dataset.{key}..., or conf/dataset/<name>.yaml)"
            if key in _DATASET_KEYS
            else did_you_mean(key, sorted(known))
        )
        raise ParamsError(f"{where}: '{key}' is no section of {conf_dir}/config.yaml{hint}")


def check_composition(
    params_path: Path,
    conf_dir: str | Path,
    overrides: Sequence[str] = (),
    dataset_keys: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Build every section's config class from the composition at `params_path` (the checks
    `evergreen overrides` runs); raise ParamsError naming the file (or override) and key."""
    from stages.cli.overrides import section_checks

    params = load_params(params_path)
    _known_sections(params, Path(conf_dir), overrides)
    for name, check in section_checks().items():
        if name not in params:
            continue
        try:
            check(params, params_path)
        except (ValueError, TypeError, KeyError) as exc:
            message = str(exc).strip("'\"") if isinstance(exc, KeyError) else reason(exc)
            message = message.replace(str(params_path), "params")
            if message.startswith("conf/"):  # a DatasetConfigError names its file already
                raise ParamsError(message) from None
            message = message.removeprefix("params: ")
            unexpected = _UNEXPECTED.search(message)
            if unexpected:
                message = f"{name}.{unexpected.group(1)}: not a key of section '{name}'"
            match = _KEY.match(message)
            key = match.group(1) if match and match.group(1).startswith(f"{name}.") else name
            where = _source(key, params, Path(conf_dir), overrides, dataset_keys)
            shown = message if message.startswith(key) else f"{key}: {message}"
            raise ParamsError(f"{where}: {shown}") from None


def _source(
    key: str,
    params: Mapping[str, Any],
    conf_dir: Path,
    overrides: Sequence[str],
    dataset_keys: set[str] | frozenset[str],
) -> str:
    """Where `key`'s value comes from: an override, the dataset's config, a config group's
    file, or conf/config.yaml."""
    for item in overrides:
        name = item.split("=", 1)[0].lstrip("+~")
        if key == name or key.startswith(f"{name}.") or name.startswith(f"{key}."):
            return f"override {item}"
    head = key.split(".")[0]
    if head in DATASET_SECTIONS and any(
        key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in dataset_keys
    ):
        return f"{conf_dir}/dataset/{params['dataset'].get('name')}.yaml"
    if (conf_dir / head).is_dir():
        choice = _group_choice(head, params, conf_dir, overrides)
        return f"{conf_dir}/{head}/{choice}.yaml" if choice else f"{conf_dir}/{head}/"
    return f"{conf_dir}/config.yaml"


def _group_choice(
    group: str, params: Mapping[str, Any], conf_dir: Path, overrides: Sequence[str]
) -> str | None:
    """The option of config group `group` in this composition (a model's file is its name)."""
    if group == "model" and isinstance(params.get("model"), Mapping):
        return str(params["model"].get("name"))
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == group]
    if chosen:
        return chosen[-1]
    try:
        defaults = yaml.safe_load((conf_dir / "config.yaml").read_text()).get("defaults", [])
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    for entry in defaults:
        if isinstance(entry, Mapping) and group in entry:
            return str(entry[group])
    return None


if __name__ == "__main__":
    raise SystemExit(main())
