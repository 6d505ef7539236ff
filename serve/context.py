"""`evergreen serve build-context --out DIR`: the Docker build context of the prediction image.

    evergreen card stamp --out build/model_card.json        # commit + gate verdict
    evergreen serve build-context --card build/model_card.json --out build/serve
    docker build -t evergreen-serve build/serve

DIR holds exactly what the image needs, checked before it is written:

    Dockerfile, requirements.txt     serve/Dockerfile, serve/requirements.txt
    app/serve/*.py                   the server package
    app/stages/contract/*.py         the contract it imports (no training code)
    model/model.onnx                 the champion, and its stamped card model/model_card.json
    model/shadow.onnx, shadow_card.json   when a shadow model is configured
    model/serve.yaml                 the settings, with the model paths above and host 0.0.0.0

The card must be stamped (`evergreen card stamp`: git commit and gate verdict) and blessed, so
an image always says which commit and which verdict it serves; `--allow-unstamped` is for
local trials only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

import serve
import stages.contract
from serve.model import preflight
from serve.settings import DEFAULT_SETTINGS, SETTINGS_ENV, SettingsError, load_settings
from stages.contract.card import ModelCard

# the only project code serve/ imports: the contract (a test enforces it), with its packages
CONTRACT_DIR = Path(stages.contract.__file__).resolve().parent
STAGES_MODULES = (
    "__init__.py",
    *(f"contract/{p.name}" for p in sorted(CONTRACT_DIR.glob("*.py"))),
)
IMAGE_SETTINGS = "serve.yaml"
IMAGE_HOST = "0.0.0.0"
# where a local prediction log goes in the image (the Dockerfile makes it writable)
IMAGE_LOG_DIR = "/app/logs/predictions"


def check_stamped(card: ModelCard) -> None:
    """A card fit for an image: it names its commit and the gate blessed its model."""
    if not card.git_commit or card.gate is None:
        raise ValueError(
            f"{card.source}: the card is not stamped (no git_commit or gate): run "
            "`evergreen card stamp --out CARD` and pass --card CARD (or --allow-unstamped)"
        )
    if card.blessed is not True:
        raise ValueError(f"{card.source}: the gate did not bless this model; it is not served")


def image_settings(settings: dict[str, Any], *, shadow: bool) -> dict[str, Any]:
    """The settings the image runs with: files inside the image, every interface bound."""
    out = dict(settings)
    out.update(model="model.onnx", card="model_card.json", host=IMAGE_HOST)
    out.update(
        shadow_model="shadow.onnx" if shadow else None,
        shadow_card="shadow_card.json" if shadow else None,
    )
    path = out.get("predictions_path")
    if path is not None and "://" not in path:
        out["predictions_path"] = IMAGE_LOG_DIR
    return out


def build_context(
    out: Path,
    settings_path: Path,
    overrides: dict[str, Any],
    *,
    env: dict[str, str],
    allow_unstamped: bool = False,
) -> Path:
    """Check the model, card and settings, then write the build context to `out` (new)."""
    settings = load_settings(settings_path, env, overrides)
    champion, shadow = preflight(settings)
    if not allow_unstamped:
        check_stamped(champion.card)
    if out.exists():
        raise ValueError(f"{out}: already exists; build contexts are written to a new folder")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    here = Path(serve.__file__).resolve().parent
    (tmp / "app/serve").mkdir(parents=True)
    (tmp / "app/stages/contract").mkdir(parents=True)
    (tmp / "model").mkdir()
    shutil.copyfile(here / "Dockerfile", tmp / "Dockerfile")
    shutil.copyfile(here / "requirements.txt", tmp / "requirements.txt")
    for module in sorted(here.glob("*.py")):
        shutil.copyfile(module, tmp / "app/serve" / module.name)
    stages_dir = CONTRACT_DIR.parent
    for name in STAGES_MODULES:
        shutil.copyfile(stages_dir / name, tmp / "app/stages" / name)
    shutil.copyfile(settings.model, tmp / "model/model.onnx")
    shutil.copyfile(settings.card, tmp / "model/model_card.json")
    if shadow is not None and settings.shadow_model and settings.shadow_card:
        shutil.copyfile(settings.shadow_model, tmp / "model/shadow.onnx")
        shutil.copyfile(settings.shadow_card, tmp / "model/shadow_card.json")
    values = image_settings(settings.public(), shadow=shadow is not None)
    text = yaml.safe_dump({"serve": values}, sort_keys=False)
    (tmp / "model" / IMAGE_SETTINGS).write_text(
        "# written by `evergreen serve build-context`: conf/serve/default.yaml as composed, with "
        "the image's paths and host\n" + text
    )
    os.replace(tmp, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evergreen serve build-context", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (must be new)")
    parser.add_argument(
        "--settings",
        type=Path,
        default=Path(os.environ.get(SETTINGS_ENV, DEFAULT_SETTINGS)),
        help="file with a `serve` section (default %(default)s)",
    )
    parser.add_argument("--model", type=Path, help="ONNX model (settings: model)")
    parser.add_argument("--card", type=Path, help="its stamped model card (settings: card)")
    parser.add_argument("--shadow-model", type=Path, help="ONNX model to score in shadow")
    parser.add_argument("--shadow-card", type=Path, help="the shadow model's card")
    parser.add_argument(
        "--allow-unstamped", action="store_true", help="accept a card without commit/verdict"
    )
    args = parser.parse_args(argv)
    overrides = {
        "model": args.model,
        "card": args.card,
        "shadow_model": args.shadow_model,
        "shadow_card": args.shadow_card,
    }
    try:
        out = build_context(
            args.out,
            args.settings,
            overrides,
            env=dict(os.environ),
            allow_unstamped=args.allow_unstamped,
        )
    except (SettingsError, FileNotFoundError, ValueError) as exc:
        print(f"evergreen serve build-context: {exc}", file=sys.stderr)
        return 2
    print(f"evergreen serve build-context: wrote {out} (docker build -t evergreen-serve {out})")
    return 0
