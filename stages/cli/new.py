"""`evergreen new DATASET [--lake PATH]`: start this project over for a dataset.

    evergreen new bank --lake /data/bank-lake

A clone of this repository carries the demo's state: the shop's landed data (`data/`,
`data.dvc`), what `dvc repro` made of it (`dvc.lock`, `artifacts/`, `metrics/`, `plots/`,
`models/`, `reports/`), its monitoring history and gate verdict, and the server's prediction
log. None of it describes another dataset, so this command makes `conf/dataset/<DATASET>.yaml`
the default dataset in `conf/config.yaml` (and `--lake` the lake), recomposes `params.yaml`,
and removes that state, printing each path it removed. The `.gitignore` files DVC keeps beside
its outputs stay. Running it again removes nothing more.

The champion: the gate reads it from `main`'s committed dvc.lock and model. Removing dvc.lock
here means that once this state is committed, `main` holds no champion; until then the gate
sees that main's champion is another dataset's and judges the challenger as with none.
Nothing removed is lost for good: git and the DVC cache still hold every committed version.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.cli.params import check_composition
from stages.lib.params import CONF_DIR, CONFIG_NAME, PARAMS_FILE, compose_params, load_params

# what a pipeline run (or a clone of one) leaves behind: files, and folders emptied of all but
# their .gitignore
STATE_FILES = ("data.dvc", "dvc.lock")
STATE_DIRS = ("data", "artifacts", "metrics", "plots", "models", "reports")
KEEP = ".gitignore"
# `- dataset: shop` in the defaults list
DEFAULT_DATASET = re.compile(r"^(\s*-\s*dataset\s*:\s*)([^\s#]+)(.*)$", re.MULTILINE)


class NewProjectError(ValueError):
    """A dataset or a config this command cannot use; the message is one line."""


def set_dataset(config: str, dataset: str, where: str) -> str:
    """`config` (the text of conf/config.yaml) with `dataset` as the default dataset."""
    if len(DEFAULT_DATASET.findall(config)) != 1:
        raise NewProjectError(
            f"{where}: expected one `- dataset: <name>` line in the defaults list"
        )
    return DEFAULT_DATASET.sub(lambda m: f"{m[1]}{dataset}{m[3]}", config)


def set_lake(config: str, lake: str, where: str) -> str:
    """`config` with `lake` as `lake.path` (quoted as YAML needs it), its comments kept."""
    lines = config.split("\n")
    start = next((i for i, line in enumerate(lines) if re.match(r"lake:\s*(#.*)?$", line)), None)
    for i in range(len(lines) if start is None else start + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line[0].isspace():
            break  # the next top-level key: the section has no path
        found = re.match(r"(\s+path:\s*)([^#]*?)(\s*#.*)?$", line)
        if found:
            value = (
                lake if re.fullmatch(r"[\w./:@+-]+", lake) else "'" + lake.replace("'", "''") + "'"
            )
            lines[i] = f"{found[1]}{value}{found[3] or ''}"
            return "\n".join(lines)
    raise NewProjectError(f"{where}: expected a `lake:` section with a `path:` key")


def state_paths(root: Path) -> list[Path]:
    """Every piece of state under `root` that `clear` removes, in a stable order."""
    found = [root / name for name in STATE_FILES if (root / name).is_file()]
    for name in STATE_DIRS:
        folder = root / name
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.name != KEEP)
    return found


def _is_inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def served_log(params: dict, root: Path) -> Path | None:
    """The server's prediction log when it is a folder inside the project (what the monitor
    would read as this model's served requests), else None."""
    where = (params.get("serve") or {}).get("predictions_path")
    if not where or "://" in str(where):
        return None
    path = root / str(where)
    return path if _is_inside(path, root) and path.exists() else None


def _describe(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    if path.is_dir():
        files = sum(1 for p in path.rglob("*") if p.is_file())
        return f"{rel}/ ({files} file{'s' if files != 1 else ''})"
    return rel


def clear(root: Path, extra: Sequence[Path] = ()) -> list[str]:
    """Remove the state under `root` (and `extra` paths); what was removed, as printed."""
    removed = []
    for path in [*state_paths(root), *extra]:
        removed.append(_describe(path, root))
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    # data/ itself goes too: ingest makes it again, and DVC must not find an empty output
    data = root / "data"
    if data.is_dir() and not any(data.iterdir()):
        data.rmdir()
    return removed


def start(root: Path, dataset: str, lake: str | None) -> tuple[list[str], list[str]]:
    """Point conf/ at `dataset` (and `lake`), recompose params.yaml, clear the state; the
    config changes and the removed paths, as printed."""
    conf = root / CONF_DIR
    dataset_file = conf / "dataset" / f"{dataset}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", dataset) or not dataset_file.is_file():
        known = sorted(p.stem for p in (conf / "dataset").glob("*.yaml"))
        raise NewProjectError(
            f"{CONF_DIR}/dataset/{dataset}.yaml: no such dataset config (write it first; "
            f"known: {', '.join(known) or 'none'})"
        )
    config_path = conf / f"{CONFIG_NAME}.yaml"
    where = f"{CONF_DIR}/{CONFIG_NAME}.yaml"
    before = config_path.read_text()
    after = set_dataset(before, dataset, where)
    if lake is not None:
        after = set_lake(after, lake, where)
    params_path = root / PARAMS_FILE
    old_params = params_path.read_bytes() if params_path.is_file() else None
    changes = []
    if after != before:
        config_path.write_text(after)
        changes.append(f"{where}: dataset {dataset}" + (f", lake.path {lake}" if lake else ""))
    try:
        compose_params(conf, params_path)
        # checked as `evergreen params --check` checks it, before any state is removed: a
        # config the stages would refuse must not cost the previous dataset's state
        check_composition(params_path, conf)
    except (ValueError, FileNotFoundError):
        # the dataset's config does not compose or check: leave conf/ and params.yaml as they were
        config_path.write_text(before)
        if old_params is not None:
            params_path.write_bytes(old_params)
        raise
    if old_params != params_path.read_bytes():
        changes.append(f"{PARAMS_FILE}: recomposed")
    log = served_log(load_params(params_path), root)
    return changes, clear(root, [log] if log is not None else [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen new",
        description="Start the project over for a dataset: make it the default, remove the "
        "previous dataset's data, outputs, metrics, history, verdict and champion reference.",
    )
    parser.add_argument("dataset", help="a dataset config's name: conf/dataset/<DATASET>.yaml")
    parser.add_argument("--lake", help="the lake to ingest from (folder or s3://bucket/prefix)")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the project's root")
    args = parser.parse_args(argv)
    try:
        changes, removed = start(args.repo, args.dataset, args.lake)
    except (ValueError, FileNotFoundError) as exc:  # ParamsError too: one line
        print(f"evergreen new: {exc}", file=sys.stderr)
        return 2
    for line in changes:
        print(line)
    if removed:
        print(f"removed {len(removed)} path(s) of the previous state:")
        for line in removed:
            print(f"  {line}")
    else:
        print("nothing to remove: no state of a previous dataset")
    lake = load_params(args.repo / PARAMS_FILE).get("lake", {}).get("path")
    print(
        f"next: evergreen ingest (from {lake}); evergreen run training --promote; evergreen "
        "run prediction; then commit "
        "(git add -A): main's champion is another dataset's until this state is committed there"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
