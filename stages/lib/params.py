"""Params: compose `conf/` into `params.yaml` and read one section of it.

`conf/` (Hydra) is the source of truth. `params.yaml` is its composition, written as `dvc exp
run` writes it (the same Hydra compose and YAML dump as DVC's `compose_and_dump`, with the
dataset merge below between composing and resolving), so plain `dvc repro` and `dvc exp run`
see the same values.

A dataset is its config: `conf/dataset/<name>.yaml` may set any key of the sections that
depend on the data (DATASET_SECTIONS) under the section's name. Composition merges them over
conf/'s defaults and removes them from `dataset`, so params.yaml holds the values the stages use
and DVC's per-stage param deps stay exact. Precedence: conf/config.yaml (and conf/<group>/) <
conf/dataset/<name>.yaml < command-line overrides. `dvc exp run -S` composes with Hydra alone:
`load_params` applies the same merge to what it wrote, where the dataset's value of a key wins
over a `-S` override of that key (override `dataset.<section>.<key>` there instead).

What a user can get wrong here (a YAML syntax error in conf/ or params.yaml, an override Hydra
cannot parse, a 100,000-digit number, a key a dataset's section does not have) is a
`ParamsError`: one line naming the file and line, or the override, never a parser's traceback.
"""

from __future__ import annotations

import copy
import difflib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
CONF_DIR = "conf"
CONFIG_NAME = "config"
# how much of an offending value or a parser's message goes into an error line
SHOWN_CHARS = 60
REASON_CHARS = 300
# the params sections whose keys a dataset's config may set (`<section>:` in its file); not
# engine, lake, serve or simulate: they describe the machine, the server or the simulator
DATASET_SECTIONS = (
    "validate",
    "profile",
    "drift",
    "features",
    "split",
    "train",
    "evaluate",
    "report",
    "monitor",
    "gate",
    "retrain",
)


class ParamsError(ValueError):
    """conf/ or a params file that cannot be read or composed; the message is one line."""


def did_you_mean(name: str, names: Iterable[Any]) -> str:
    """' (did you mean 'X'?)' for the closest of `names` to a misspelt `name`, or ''."""
    close = difflib.get_close_matches(str(name), [str(n) for n in names], n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def known_key(key: str, known: Iterable[Any]) -> str:
    """What an unknown `key` should have been: the closest known key first (a typo's fix
    survives the line being abbreviated), then every known key."""
    names = [str(k) for k in known]
    return f"a known key{did_you_mean(key, names)}, one of {', '.join(names) or '(none)'}"


def abbreviate(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text`, or its start and its length when longer than `limit` (an error stays a line)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def reason(exc: BaseException) -> str:
    """An exception's message as one short line (Python's advice on its integer-size limit,
    which is about Python, left out)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return abbreviate(text.split("; use sys.set_int_max_str_digits()")[0], REASON_CHARS)


def yaml_error(path: str | Path, exc: yaml.YAMLError) -> ParamsError:
    """A YAML syntax error as one line: the file, the line and what the parser expected."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or reason(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
        problem = f"{context} from line {context_mark.line + 1}: {problem}"
    elif context:
        problem = f"{context}: {problem}"
    return ParamsError(f"{where}: not valid YAML ({problem})")


def _yaml_cause(exc: BaseException) -> yaml.MarkedYAMLError | None:
    """The YAML syntax error behind `exc` (Hydra raises it as is or wrapped), if any."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, yaml.MarkedYAMLError):
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return None


def check_overrides(overrides: Sequence[str]) -> None:
    """Parse each Hydra override alone, so a bad one is named (Hydra's own message does not
    say which override, and a 100,000-digit integer makes it raise Python's ValueError)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for item in overrides:
        try:
            parser.parse_override(item)
        except Exception as exc:  # HydraException, or ValueError from int() of a huge number
            raise ParamsError(f"override {abbreviate(item)}: {reason(exc)}") from None


def compose_params(
    conf_dir: str | Path = CONF_DIR,
    output: str | Path = PARAMS_FILE,
    overrides: Sequence[str] = (),
    config_name: str = CONFIG_NAME,
    dataset_keys: set[str] | None = None,
) -> Path:
    """Compose `conf_dir` with Hydra `overrides`, merge the dataset's sections (module
    docstring) and write the result to `output`, as DVC's composer writes it. `dataset_keys`,
    when given, receives the dotted keys whose value is the dataset config's."""
    from dvc.utils.hydra import load_hydra_plugins
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"{conf_dir}/{config_name}.yaml: no Hydra config to compose")
    output = Path(output)
    check_overrides(overrides)
    try:
        # DVC's compose_and_dump, with the merge between composing and resolving, so an
        # interpolation (serve.threshold: ${evaluate.threshold}) sees the dataset's value
        load_hydra_plugins(str(conf_dir.parent))
        with initialize_config_dir(str(conf_dir), version_base=None):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        raw = OmegaConf.to_container(cfg, resolve=False)
        key_overrides = _key_overrides(conf_dir, overrides)
        merged = merge_dataset_sections(raw, key_overrides)
        if dataset_keys is not None:
            dataset_keys.update(_set_keys(raw.get("dataset"), key_overrides))
        # resolved into plain containers: OmegaConf.resolve in place cannot store a
        # container an interpolation returns (`${oc.select:dataset.slices,[]}` of a dataset
        # without slices: "Value 'list' is not a supported primitive type")
        resolved = OmegaConf.to_container(OmegaConf.create(merged), resolve=True)
        text = OmegaConf.to_yaml(OmegaConf.create(resolved))
    except ParamsError:
        raise
    except Exception as exc:  # Hydra and OmegaConf raise many types; one line, never a trace
        cause = _yaml_cause(exc)
        if cause is not None:
            mark = getattr(cause, "problem_mark", None)
            raise yaml_error(getattr(mark, "name", None) or conf_dir, cause) from None
        missing = re.search(r"Could not override '([^']+)'", reason(exc))
        if missing:
            # a key the config does not hold yet (an optional one: task.max_periods): Hydra's
            # own hint (`+key`) reads like a typo's; say both what it means and what to do
            key = missing.group(1)
            given = next((o for o in overrides if o.split("=", 1)[0] == key), key)
            raise ParamsError(
                f"override {abbreviate(given)}: '{key}' is not set in {conf_dir.name}/ (an "
                f"optional key, or a misspelt one): write it in its config file, or add it "
                f"with +{abbreviate(given)}"
            ) from None
        with_overrides = f" with {[abbreviate(o) for o in overrides]}" if overrides else ""
        raise ParamsError(
            f"{conf_dir}/{config_name}.yaml: cannot compose{with_overrides}: {reason(exc)}"
        ) from None
    output.write_text(text, encoding="utf-8")
    return output


def _key_overrides(conf_dir: Path, overrides: Sequence[str]) -> list[tuple[str, bool]]:
    """(dotted key, deleted) of each override of a key under a dataset section (not of a
    config group such as `split=out_of_time`): they win over the dataset's value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    out = []
    for item in OverridesParser.create().parse_overrides(list(overrides)):
        key = item.key_or_group
        if key.split(".")[0] in DATASET_SECTIONS and not (conf_dir / key).is_dir():
            out.append((key, item.type == OverrideType.DEL))
    return out


def _set_keys(dataset: Any, key_overrides: Sequence[tuple[str, bool]]) -> set[str]:
    """The dotted keys a dataset's sections set, less those the command line overrode."""
    found: set[str] = set()

    def walk(node: Any, where: str) -> None:
        found.add(where)
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{where}.{key}")

    for name in DATASET_SECTIONS:
        if isinstance(dataset, Mapping) and isinstance(dataset.get(name), Mapping):
            for key, value in dataset[name].items():
                walk(value, f"{name}.{key}")
    overridden = [k for k, _ in key_overrides]
    return {k for k in found if not any(k == o or k.startswith(f"{o}.") for o in overridden)}


def _dig(tree: Any, dotted: str) -> tuple[bool, Any]:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _put(tree: dict, dotted: str, value: Any, delete: bool = False) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(tree.get(part), dict):
            return
        tree = tree[part]
    if delete:
        tree.pop(last, None)
    else:
        tree[last] = copy.deepcopy(value)


def _deep_merge(base: Any, own: Any, where: str, file: str) -> Any:
    """`own` over `base`: mappings key by key (a key `base` lacks is an error naming `file`),
    anything else replaced."""
    if not isinstance(own, Mapping):
        return copy.deepcopy(own)
    if not isinstance(base, Mapping):
        if base is None:  # a null default (report.segments) may become a mapping
            return copy.deepcopy(dict(own))
        raise ParamsError(f"{file}: {where}: expected {type(base).__name__}, got a mapping")
    out = dict(base)
    for key, value in own.items():
        if key not in base:
            raise ParamsError(f"{file}: {where}.{key}: expected {known_key(key, base)}")
        out[key] = _deep_merge(base[key], value, f"{where}.{key}", file)
    return out


def merge_dataset_sections(
    params: Mapping[str, Any], key_overrides: Sequence[tuple[str, bool]] = ()
) -> dict[str, Any]:
    """`params` with each `dataset.<section>` merged over `<section>` and removed from
    `dataset`; `key_overrides` ((dotted key, deleted) of the command line's overrides) are
    put back from `params` as they were, so they win over the dataset. Idempotent."""
    dataset = params.get("dataset")
    if not isinstance(dataset, Mapping) or not any(s in dataset for s in DATASET_SECTIONS):
        return dict(params)
    name = dataset.get("name")
    file = f"conf/dataset/{name if isinstance(name, str) else '<name>'}.yaml"
    out = dict(params)
    out["dataset"] = {k: v for k, v in dataset.items() if k not in DATASET_SECTIONS}
    for section_name in DATASET_SECTIONS:
        if section_name not in dataset:
            continue
        own = dataset[section_name]
        if own is None:
            continue
        if not isinstance(own, Mapping):
            raise ParamsError(
                f"{file}: {section_name}: expected a mapping of {section_name} settings, "
                f"got {own!r}"
            )
        base = params.get(section_name)
        if not isinstance(base, Mapping):
            raise ParamsError(f"{file}: {section_name}: conf/ has no section '{section_name}'")
        out[section_name] = _deep_merge(base, own, section_name, file)
    for key, deleted in key_overrides:
        found, value = _dig(params, key)
        if found or deleted:
            _put(out, key, value, delete=deleted or not found)
    return out


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: params file not found (run `evergreen params`)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not a text file ({reason(exc)})") from None
    except ValueError as exc:  # a number past Python's integer-size limit
        raise ParamsError(f"{path}: {reason(exc)}") from None
    if not isinstance(params, Mapping):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    # a no-op on evergreen's composition; `dvc exp run -S` writes Hydra's alone
    return merge_dataset_sections(params)


def stage_params(path: str | Path, stage: str) -> dict[str, Any]:
    """params.yaml for a stage's `main`: a missing or broken file is one line on stderr naming
    the stage and the file, and exit 2 (never a traceback)."""
    try:
        return load_params(path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"{stage}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


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
