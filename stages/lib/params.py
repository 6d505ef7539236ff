"""Params: compose `conf/` into `params.yaml` and read one section of it.

`conf/` (Hydra) is the source of truth. `params.yaml` is its composition, written exactly as
`dvc exp run` writes it (we call DVC's own composer), so plain `dvc repro` and `dvc exp run`
see the same values.

What a user can get wrong here (a YAML syntax error in conf/ or params.yaml, an override Hydra
cannot parse, a 100,000-digit number) is a `ParamsError`: one line naming the file and line, or
the override, never a parser's traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
CONF_DIR = "conf"
CONFIG_NAME = "config"
# how much of an offending value or a parser's message goes into an error line
SHOWN_CHARS = 60
REASON_CHARS = 300


class ParamsError(ValueError):
    """conf/ or a params file that cannot be read or composed; the message is one line."""


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
) -> Path:
    """Compose `conf_dir` with Hydra `overrides` and write the result to `output`."""
    from dvc.utils.hydra import compose_and_dump

    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"{conf_dir}/{config_name}.yaml: no Hydra config to compose")
    output = Path(output)
    check_overrides(overrides)
    try:
        compose_and_dump(
            output, str(conf_dir), None, config_name, str(conf_dir.parent), list(overrides)
        )
    except Exception as exc:  # Hydra and OmegaConf raise many types; one line, never a trace
        cause = _yaml_cause(exc)
        if cause is not None:
            mark = getattr(cause, "problem_mark", None)
            raise yaml_error(getattr(mark, "name", None) or conf_dir, cause) from None
        with_overrides = f" with {[abbreviate(o) for o in overrides]}" if overrides else ""
        raise ParamsError(
            f"{conf_dir}/{config_name}.yaml: cannot compose{with_overrides}: {reason(exc)}"
        ) from None
    return output


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
    return dict(params)


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
