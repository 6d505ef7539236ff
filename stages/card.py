"""Stage `card`: write the model card (stages/lib/cards.py says what it holds and why)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from stages.contract.card import file_md5
from stages.contract.feature_schema import load_schema
from stages.lib.cards import build_card, data_version
from stages.lib.io import read_frame, read_json, write_metrics
from stages.lib.params import PARAMS_FILE, load_params


def build_parser() -> argparse.ArgumentParser:
    b = argparse.ArgumentParser(prog="python -m stages.card", description=__doc__.splitlines()[0])
    b.add_argument("--model", type=Path, required=True, help="model file (.skops)")
    b.add_argument("--onnx", type=Path, help="the exported ONNX graph, when there is one")
    b.add_argument("--schema", type=Path, required=True, help="feature_schema.json")
    b.add_argument("--train", type=Path, required=True, help="training split parquet")
    b.add_argument("--metrics", type=Path, required=True, help="evaluate's metrics JSON")
    b.add_argument("--slices", type=Path, required=True, help="evaluate's slice metrics JSON")
    b.add_argument("--train-metrics", type=Path, help="train's metrics JSON (fitted params)")
    b.add_argument("--lock", type=Path, required=True, help="dvc.lock")
    b.add_argument("--data", required=True, help="the data dependency, as dvc.lock names it")
    b.add_argument("--data-stage", required=True, help="the stage whose lock entry records it")
    b.add_argument("--out", type=Path, required=True, help="model card JSON to write")
    b.add_argument("--params", type=Path, default=Path(PARAMS_FILE), help="params.yaml")
    return b


def build(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    if not args.lock.is_file():
        raise FileNotFoundError(f"{args.lock}: dvc.lock not found (run `dvc repro` first)")
    lock = yaml.safe_load(args.lock.read_text()) or {}
    if not args.model.is_file():
        raise FileNotFoundError(f"{args.model}: model file not found")
    onnx = None
    if args.onnx is not None:
        if not args.onnx.is_file():
            raise FileNotFoundError(f"{args.onnx}: ONNX model not found")
        onnx = {"file": args.onnx.as_posix(), "md5": file_md5(args.onnx)}
    card = build_card(
        schema=load_schema(args.schema),
        train=read_frame(args.train),
        params=params,
        metrics=read_json(args.metrics, "test metrics"),
        slices=read_json(args.slices, "slice metrics"),
        train_metrics=None
        if args.train_metrics is None
        else read_json(args.train_metrics, "train metrics"),
        model_file=args.model.as_posix(),
        model_md5=file_md5(args.model),
        landing_md5=data_version(lock, args.data, args.data_stage),
        data_source=f"{args.lock.name}: stage '{args.data_stage}', dependency '{args.data}'",
        onnx=onnx,
    )
    write_metrics(args.out, card)
    print(
        f"card: {card['model']['name']} ({card['model']['md5']}) on data "
        f"{card['data']['landing_md5']} -> {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return build(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"card: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"card: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
