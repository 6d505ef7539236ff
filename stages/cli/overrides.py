"""Config overrides from outside (workflow inputs, `evergreen dispatch`): validated against conf/
and written into it, so a retrain with overrides is an ordinary, reviewable config change.

Writing them into conf/ (rather than only into params.yaml, as `dvc exp run -S` does) keeps
`params.yaml` the composition of `conf/`, and keeps the next scheduled run on the same settings
once the pull request is merged.

An override is checked three ways before anything is written: its key exists and its value has
the kind of the current one; Hydra composes with it; and the composition passes the checks of
the config classes that read each section (`section_checks`: `evaluate.threshold=2` or
`train.n_trials=-5` are refused with the class's own message, naming the key and its range).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.contract.storage import write_bytes_atomic
from stages.lib.params import (
    CONF_DIR,
    DATASET_SECTIONS,
    abbreviate,
    compose_params,
    load_params,
    reason,
)

KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# no quotes, spaces, `$`, `;`, `|`, `&`, backticks, redirections or globs: a value can never
# become shell syntax, whatever a workflow does with it
VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:+\-/\[\]]+$")
# a config value is a number, a name or a short list: anything longer is a mistake (and a
# 100,000-digit integer would otherwise stop YAML and Hydra with Python's integer-size error)
MAX_VALUE_CHARS = 1000


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
        shown = repr(abbreviate(item))
        if not sep or not key:
            raise OverrideError(f"override {shown}: expected key=value")
        if not KEY_RE.match(key):
            raise OverrideError(f"override {shown}: key must be a dotted name like train.n_trials")
        if len(value) > MAX_VALUE_CHARS:
            raise OverrideError(
                f"override {shown}: {key}'s value is {len(value)} characters long "
                f"(at most {MAX_VALUE_CHARS})"
            )
        if not VALUE_RE.match(value):
            raise OverrideError(
                f"override {shown}: value may only contain letters, digits and _ . , : + - / [ ]"
            )
        out.append(Override(key, value))
    return out


def _value(o: Override) -> Any:
    """The override's value as YAML reads it (what Hydra writes into the config)."""
    try:
        return yaml.safe_load(o.value)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer past Python's limit
        raise OverrideError(f"override {abbreviate(str(o))}: {reason(exc)}") from None


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


def model_fits_task(model: Any, dataset: Any) -> object:
    """The estimator `model` (a ModelConfig) builds for `dataset`'s task: a family with none
    for it (ridge for a classification, the MLP for a regression) is a ValueError naming
    model.estimator and the task, as train would raise it."""
    from stages.lib.training import build_estimator

    try:
        return build_estimator(model, 0, regression=dataset.task.regression)
    except ValueError as exc:
        raise ValueError(f"{exc}; the dataset's task.kind is {dataset.task.kind}") from None


def _slices_named(params: Mapping[str, Any]) -> None:
    """Each column `evaluate.slices` names is one of the test split's, as evaluate will look
    for it (a misspelt one was a traceback at evaluate, after the whole training)."""
    from stages.lib.dataset import dataset_from_params
    from stages.lib.evaluation import EvaluateConfig
    from stages.lib.params import did_you_mean
    from stages.lib.rows import split_columns
    from stages.lib.snapshots import FeaturesConfig

    slices = EvaluateConfig.from_params(params["evaluate"]).slices
    try:  # what the split holds; a mistake there is the dataset's or features' own line
        dataset = dataset_from_params(params["dataset"])
        split = split_columns(dataset, FeaturesConfig.from_params(params["features"]))
    except (ValueError, KeyError, TypeError):
        return
    # evaluate.slices is the dataset's `slices` unless set apart: name the file it came from
    own = params["dataset"].get("slices")
    where = (
        f"conf/dataset/{dataset.name}.yaml: slices"
        if own is not None and list(own) == list(params["evaluate"].get("slices") or [])
        else "evaluate.slices"
    )
    for spec in slices:
        if spec.column not in split:
            raise ValueError(
                f"{where}: '{spec.column}' is no column of the test split"
                f"{did_you_mean(spec.column, split)}, expected one of {', '.join(split)}"
            )


def _report_named(params: Mapping[str, Any]) -> None:
    """Each column `report.segments` and `report.value_column` name is one of the prediction
    set's, as the report will look for it (a misspelt one failed the prediction run at its
    last stage, and nothing was published)."""
    from stages.lib.dataset import dataset_from_params
    from stages.lib.params import did_you_mean
    from stages.lib.rows import split_columns
    from stages.lib.snapshots import FeaturesConfig

    report = params["report"] or {}
    if not isinstance(report, Mapping):
        raise ValueError("report: expected a mapping")
    try:  # what the prediction set holds; a mistake there is the dataset's or features' line
        dataset = dataset_from_params(params["dataset"])
        columns = split_columns(dataset, FeaturesConfig.from_params(params["features"]))
    except (ValueError, KeyError, TypeError):
        return
    segments = report.get("segments") or []
    if not isinstance(segments, list) or not all(isinstance(c, str) for c in segments):
        raise ValueError(f"report.segments: expected a list of column names, got {segments!r}")
    named = [("report.segments", c) for c in segments]
    named.append(("report.value_column", report.get("value_column")))
    for key, column in named:
        if column is not None and column not in columns:
            raise ValueError(
                f"{key}: '{column}' is no column of the prediction set"
                f"{did_you_mean(column, columns)}, expected one of {', '.join(columns)}"
            )


def _seasonal_named(params: Mapping[str, Any]) -> None:
    """Each column `monitor.seasonal` names is a column of the dataset's tables (a misspelt
    one was silently no column, and the real one an input that a new month moves)."""
    from stages.lib.dataset import dataset_from_params, settings_for
    from stages.lib.monitoring import MonitorConfig
    from stages.lib.params import did_you_mean

    seasonal = MonitorConfig.from_params(settings_for(params, "monitor")).seasonal
    try:
        dataset = dataset_from_params(params["dataset"])
    except (ValueError, KeyError, TypeError):
        return  # the dataset's own line
    tables = list(dict.fromkeys(c.name for t in dataset.tables for c in t.columns))
    for column in seasonal:
        if column not in tables:
            raise ValueError(
                f"monitor.seasonal: '{column}' is no column of the dataset's tables"
                f"{did_you_mean(column, tables)}"
            )


def section_checks() -> dict[str, Callable[[Mapping[str, Any], Path], object]]:
    """Each params section -> what builds its config class from the composed params (and the
    file they were written to). The classes check their own ranges: no second table of ranges
    here. Imported when called, so `evergreen --help` stays light."""
    from serve.settings import load_settings
    from stages.cli.gate import GateConfig
    from stages.lib.dataset import dataset_from_params, settings_for
    from stages.lib.drift import DriftConfig
    from stages.lib.engine import EngineConfig
    from stages.lib.policy import production_policy
    from stages.lib.profiling import ProfileConfig
    from stages.lib.snapshots import FeaturesConfig
    from stages.lib.splitting import SplitConfig
    from stages.lib.training import ModelConfig, TrainConfig
    from stages.lib.validation import ValidateConfig
    from stages.sim.shop import FaultConfig, SimulateConfig

    return {
        "dataset": lambda p, _: dataset_from_params(p["dataset"]),
        # a family that has no estimator for the dataset's task (a regressor for a
        # classification) is refused here, not by a traceback at train
        "model": lambda p, _: model_fits_task(
            ModelConfig.from_params(p["model"]), dataset_from_params(p["dataset"])
        ),
        "train": lambda p, _: TrainConfig.from_params(p["train"]),
        "evaluate": lambda p, _: _slices_named(p),
        # as the gate and the monitor read them: the dataset's own keys win
        "gate": lambda p, _: GateConfig.from_params(settings_for(p, "gate")),
        "validate": lambda p, _: ValidateConfig(**p["validate"]),
        "drift": lambda p, _: DriftConfig.from_params(p["drift"]),
        "profile": lambda p, _: ProfileConfig.from_params(p["profile"]),
        "features": lambda p, _: FeaturesConfig.from_params(p["features"]),
        "engine": lambda p, _: EngineConfig.from_params(p["engine"]),
        "monitor": lambda p, _: _seasonal_named(p),
        "report": lambda p, _: _report_named(p),
        "split": lambda p, _: SplitConfig(**p["split"]),
        # every policy parses and the production one is among them
        "retrain": lambda p, _: production_policy(p),
        # the file alone: no EVERGREEN_SERVE_* variable of this shell
        "serve": lambda _, path: load_settings(path, env={}),
        "simulate": lambda p, _: (
            SimulateConfig.from_params(p["simulate"]),
            FaultConfig.from_params(p["simulate"].get("faults")),
        ),
    }


def check_sections(
    params: Mapping[str, Any],
    params_file: Path,
    overrides: Sequence[Override] = (),
    source: str | None = None,
) -> None:
    """Build each section's config class from composed `params` (written at `params_file`,
    named `source` in messages); raise OverrideError naming the override that broke a section
    and the class's message."""
    for name, check in section_checks().items():
        if name not in params:
            continue
        try:
            check(params, params_file)
        except (ValueError, TypeError, KeyError) as exc:
            touching = [str(o) for o in overrides if o.key.split(".")[0] == name]
            blamed = touching or [str(o) for o in overrides]
            what = f"override {' '.join(blamed)}" if blamed else f"params {name}"
            message = str(exc).strip("'\"") if isinstance(exc, KeyError) else reason(exc)
            message = message.replace(str(params_file), source or str(params_file))
            raise OverrideError(f"{abbreviate(what, 200)}: {message}") from None


def validate_overrides(conf_dir: Path, overrides: Sequence[Override]) -> dict[str, Any]:
    """Check every override names an existing key or group option with a value of the right
    kind, then compose with them (Hydra's own check) and build each section's config class
    from the composition (their range checks); returns the composed params."""
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
            if not _same_kind(existing, _value(o)):
                raise OverrideError(
                    f"override {o}: expected a {type(existing).__name__} like {existing!r}"
                )
        try:
            composed = compose_params(conf_dir, Path(tmp) / "o.yaml", [str(o) for o in overrides])
        except Exception as exc:  # Hydra's own grammar/type errors, reported in one line
            shown = [abbreviate(str(o)) for o in overrides]
            raise OverrideError(f"overrides {shown}: {reason(exc)}") from exc
        params = load_params(composed)
        check_sections(params, composed, overrides, source=f"{conf_dir}/")
        return params


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


def _sets(tree: Any, parts: Sequence[str]) -> bool:
    for part in parts:
        if not isinstance(tree, Mapping) or part not in tree:
            return False
        tree = tree[part]
    return True


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
        dataset_path = conf_dir / "dataset" / f"{selected.get('dataset')}.yaml"
        if head in DATASET_SECTIONS and rest and dataset_path.is_file():
            tree = changed.get(dataset_path) or rt.load(dataset_path.read_text())
            if _sets(tree, o.key.split(".")):
                # the dataset's value wins over conf/config.yaml's: change it where it is set
                _set_dotted(tree, o.key.split("."), _value(o))
                changed[dataset_path] = tree
                continue
        if head in groups and rest:
            path = conf_dir / head / f"{selected[head]}.yaml"
            tree = changed.setdefault(path, rt.load(path.read_text()))
            _set_dotted(tree, rest, _value(o))
        else:
            _set_dotted(config, o.key.split("."), _value(o))
    for path, tree in changed.items():
        text = io.StringIO()
        rt.dump(tree, text)
        # atomic: a failed write (full disk) leaves the file as it was, and no temporary file
        write_bytes_atomic(text.getvalue().encode(), path)
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
    except (OverrideError, ValueError, OSError) as exc:  # ValueError: conf/ unreadable
        print(f"evergreen overrides: {exc}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in changed) + ": run `evergreen params` next")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
