"""Config overrides from outside (workflow inputs, `evergreen dispatch`): validated against conf/
and written into it, so a retrain with overrides is an ordinary, reviewable config change.

Writing them into conf/ (rather than only into params.yaml, as `dvc exp run -S` does) keeps
`params.yaml` the composition of `conf/`, and keeps the next scheduled run on the same settings
once the pull request is merged.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.lib.params import CONF_DIR, compose_params, load_params

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# no quotes, spaces, `$`, `;`, `|`, `&`, backticks, redirections or globs: a value can never
# become shell syntax, whatever a workflow does with it
VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:+\-/\[\]]+$")


class OverrideError(ValueError):
    """An override that names no config key, or carries a value that is not allowed."""


@dataclass(frozen=True)
class Override:
    key: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


def parse_overrides(items: Iterable[str]) -> list[Override]:
    """`key=value` strings (a whitespace-separated string may hold several) -> overrides."""
    out = []
    for item in (part for raw in items for part in raw.split()):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OverrideError(f"override {item!r}: expected key=value")
        if not KEY_RE.match(key):
            raise OverrideError(f"override {item!r}: key must be a dotted name like train.n_trials")
        if not VALUE_RE.match(value):
            raise OverrideError(
                f"override {item!r}: value may only contain letters, digits and _ . , : + - / [ ]"
            )
        out.append(Override(key, value))
    return out


def _groups(conf_dir: Path) -> dict[str, list[str]]:
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(conf_dir.iterdir())
        if d.is_dir()
    }


def _lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _same_kind(current: Any, value: Any) -> bool:
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, (int, float)):
        return isinstance(value, (int, float))
    if current is None:
        return True
    return isinstance(value, type(current))


def validate_overrides(conf_dir: Path, overrides: Sequence[Override]) -> dict[str, Any]:
    """Check every override names an existing key or group option with a value of the right
    kind, then compose with them (Hydra's own check); returns the composed params."""
    conf_dir = Path(conf_dir)
    groups = _groups(conf_dir)
    with tempfile.TemporaryDirectory() as tmp:
        current = load_params(compose_params(conf_dir, Path(tmp) / "p.yaml"))
        for o in overrides:
            if o.key in groups:
                if o.value not in groups[o.key]:
                    raise OverrideError(f"override {o}: {o.key} must be one of {groups[o.key]}")
                continue
            try:
                existing = _lookup(current, o.key)
            except KeyError:
                raise OverrideError(f"override {o}: no key '{o.key}' in {conf_dir}/") from None
            if isinstance(existing, dict):
                raise OverrideError(f"override {o}: '{o.key}' is a section, not a value")
            if not _same_kind(existing, yaml.safe_load(o.value)):
                raise OverrideError(
                    f"override {o}: expected a {type(existing).__name__} like {existing!r}"
                )
        try:
            composed = compose_params(conf_dir, Path(tmp) / "o.yaml", [str(o) for o in overrides])
        except Exception as exc:  # Hydra's own grammar/type errors, reported in one line
            raise OverrideError(f"overrides {[str(o) for o in overrides]}: {exc}") from exc
        return load_params(composed)


def _round_trip():
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    return rt


def _set_dotted(tree: Any, parts: Sequence[str], value: Any) -> None:
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree[parts[-1]] = value


def apply_overrides(conf_dir: Path, overrides: Sequence[Override]) -> list[Path]:
    """Write validated overrides into conf/ (comments kept); returns the files changed."""
    conf_dir = Path(conf_dir)
    validate_overrides(conf_dir, overrides)
    groups = _groups(conf_dir)
    rt = _round_trip()
    config_path = conf_dir / "config.yaml"
    config = rt.load(config_path.read_text())
    changed: dict[Path, Any] = {config_path: config}
    selected = {}
    for entry in config.get("defaults", []):
        if isinstance(entry, dict):
            selected.update(entry)
    for o in (o for o in overrides if o.key in groups):
        for entry in config["defaults"]:
            if isinstance(entry, dict) and o.key in entry:
                entry[o.key] = o.value
        selected[o.key] = o.value
    for o in (o for o in overrides if o.key not in groups):
        head, *rest = o.key.split(".")
        if head in groups and rest:
            path = conf_dir / head / f"{selected[head]}.yaml"
            tree = changed.setdefault(path, rt.load(path.read_text()))
            _set_dotted(tree, rest, yaml.safe_load(o.value))
        else:
            _set_dotted(config, o.key.split("."), yaml.safe_load(o.value))
    for path, tree in changed.items():
        with path.open("w") as f:
            rt.dump(tree, f)
    return sorted(changed)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen overrides",
        description="Validate config overrides, or write them into conf/.",
    )
    parser.add_argument("action", choices=("check", "apply"))
    parser.add_argument("--set", dest="items", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--from-env", metavar="VAR", help="read overrides from this variable")
    parser.add_argument("--conf", default=CONF_DIR, type=Path)
    args = parser.parse_args(argv)
    items = list(args.items)
    if args.from_env:
        items.append(os.environ.get(args.from_env, ""))
    try:
        overrides = parse_overrides(items)
        if args.action == "check":
            validate_overrides(args.conf, overrides)
            print(f"overrides ok: {' '.join(map(str, overrides)) or '(none)'}")
            return 0
        if not overrides:
            print("no overrides: conf/ unchanged")
            return 0
        changed = apply_overrides(args.conf, overrides)
    except OverrideError as exc:
        print(f"evergreen overrides: {exc}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in changed) + ": run `evergreen params` next")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
