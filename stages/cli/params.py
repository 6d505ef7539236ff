"""`evergreen params [OVERRIDES] [--check]`: compose conf/ (Hydra) into params.yaml."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from stages.lib.params import CONF_DIR, PARAMS_FILE, compose_params


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen params",
        description="Compose conf/ (Hydra) into params.yaml, as `dvc exp run` does.",
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
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = compose_params(args.conf, Path(tmp) / "params.yaml", args.overrides)
            current = Path(args.output)
            if not current.is_file() or current.read_bytes() != fresh.read_bytes():
                print(f"{args.output} is stale: run `evergreen params` and commit it")
                return 1
        print(f"{args.output} matches {args.conf}/")
        return 0
    out = compose_params(args.conf, args.output, args.overrides)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
