"""`evergreen publish`: copy the batch predictions to the lake's output area.

    evergreen publish [--lake DIR|s3://bucket/prefix] [--predictions PATH]

(stages/lib/predictions.py: where they go, atomically and idempotently)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stages.lib.params import PARAMS_FILE, default_lake
from stages.lib.predictions import FILE, publish


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen publish",
        description="Copy the batch predictions to <lake>/predictions/date=YYYY-MM-DD/.",
    )
    parser.add_argument("--lake", help="lake folder or s3://bucket/prefix (default: lake.path)")
    parser.add_argument(
        "--predictions",
        type=Path,
        default=Path("artifacts/predict") / FILE,
        help="the predict stage's output",
    )
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (for lake.path)")
    args = parser.parse_args(argv)

    try:
        lake = default_lake(args.lake, args.params)  # a broken params.yaml: one line too
        if not args.predictions.is_file():
            raise FileNotFoundError(
                f"{args.predictions}: predictions not found (run `dvc repro` first)"
            )
        done = publish(args.predictions.read_bytes(), lake, source=str(args.predictions))
    except (OSError, ValueError, KeyError) as exc:  # OSError: the lake cannot be written
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"evergreen publish: {message}", file=sys.stderr)
        return 2
    verb = "published" if done.written else "already published (same md5), nothing written"
    print(f"{verb}: {done.destination} ({done.md5})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
