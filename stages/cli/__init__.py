"""The `evergreen` command: one sub-command per module, each with its own `main(argv)`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# sub-command words -> module with a `main(argv)`; imported lazily so `evergreen --help`
# does not pay for pandas, duckdb or litserve.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("lake", "simulate"): (
        "stages.cli.simulate",
        "write the simulated shop lake (daily partitions)",
    ),
    ("lake", "land"): (
        "stages.cli.land",
        "split CSV exports by day into the lake's partitions of a table",
    ),
    ("new",): (
        "stages.cli.new",
        "start the project over for a dataset: make it the default, clear the previous state",
    ),
    ("ingest",): ("stages.cli.ingest", "copy new lake objects into data/ and record data.dvc"),
    ("params",): ("stages.cli.params", "compose conf/ into params.yaml"),
    ("serve", "build-context"): (
        "serve.context",
        "the Docker build context of the prediction image",
    ),
    ("serve",): ("serve.app", "run the LitServe prediction server"),
    ("gate",): ("stages.cli.gate", "judge the workspace model against the champion on a git ref"),
    ("card", "stamp"): ("stages.cli.card", "stamp the model card with its commit and gate verdict"),
    ("overrides",): ("stages.cli.overrides", "validate config overrides or write them into conf/"),
    ("dispatch",): ("stages.cli.dispatch", "run the retrain workflow on GitHub with overrides"),
    ("publish",): ("stages.cli.publish", "copy the batch predictions to <lake>/predictions/"),
    ("monitor",): ("stages.cli.monitor", "drift + realised performance; --dispatch retrains"),
    ("shadow",): (
        "stages.cli.shadow",
        "the shadow model's live record and verdict, and the serving skew",
    ),
    ("report", "pr"): ("stages.cli.pr_report", "the pull request's report: challenger vs champion"),
    ("run",): (
        "stages.cli.run",
        "run prediction|training|daily: the two pipelines, the retrain policy between them",
    ),
    ("champion",): (
        "stages.cli.champion",
        "make the trained model the champion (models/champion, models/champion.dvc)",
    ),
    ("retrain",): (
        "stages.cli.retrain",
        "ingest, training run, gate, promote, prediction run, report; push retrain/<date>",
    ),
    ("promote",): (
        "stages.cli.promote",
        "verify the verdict, GTO tags, stamped card, build context",
    ),
    ("canary",): ("stages.cli.canary", "check a server started from an image's build context"),
    ("backtest",): ("stages.cli.backtest", "replay the lake's history under each retrain policy"),
}


def _usage() -> str:
    lines = ["usage: evergreen <command> [options]", "", "commands:"]
    for words, (_, help_text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<20} {help_text}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    for words, (module_name, _) in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
        if tuple(args[: len(words)]) == words:
            module = importlib.import_module(module_name)
            return int(module.main(args[len(words) :]) or 0)
    print(_usage(), file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
    return 0 if args and args[0] in ("-h", "--help") else 2
