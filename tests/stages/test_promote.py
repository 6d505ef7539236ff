"""`evergreen promote`'s verdict check and GTO registration, on real temporary git repositories
(the whole promotion, with DVC, the card stamp and the build context, runs in
tests/e2e/test_github_loop.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from stages.cli.canary import canary_record
from stages.cli.canary import main as canary_main
from stages.cli.promote import PromotionRefused, check_verdict, register
from stages.cli.promote import main as promote_main
from stages.contract.card import ModelCard
from tests.stages.test_pr_report import git

MODEL, ONNX = "a" * 32, "b" * 32


def lock(model: str = MODEL, onnx: str = ONNX) -> dict:
    return {
        "stages": {
            "train": {"outs": [{"path": "models/model.skops", "md5": model}]},
            "export": {"outs": [{"path": "models/model.onnx", "md5": onnx}]},
        }
    }


def gate(blessed: bool = True, model: str = MODEL) -> dict:
    checks = [{"name": "max_regression", "passed": blessed}]
    return {"blessed": blessed, "checks": checks, "challenger": {"model_md5": model}}


def card(model: str = MODEL, onnx: str = ONNX) -> dict:
    return {"model": {"md5": model}, "onnx": {"md5": onnx}}


def test_a_blessed_verdict_on_the_recorded_model_passes() -> None:
    assert check_verdict(gate(), lock(), card()) == (MODEL, ONNX)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None, lock(), card()), "metrics/gate.json is not committed"),
        ((gate(), None, card()), "dvc.lock is not committed"),
        ((gate(), lock(), None), "models/model_card.json is not committed"),
        ((gate(blessed=False), lock(), card()), "did not bless this model (failed: ['max_"),
        ((gate(model="c" * 32), lock(), card()), f"judged model {'c' * 32} but dvc.lock"),
        ((gate(), lock(), card(model="c" * 32)), f"describes model {'c' * 32} but dvc.lock"),
        ((gate(), lock(), card(onnx="d" * 32)), f"describes ONNX {'d' * 32} but dvc.lock"),
    ],
)
def test_a_verdict_that_does_not_cover_the_model_is_refused(args: tuple, message: str) -> None:
    with pytest.raises(PromotionRefused, match=re.escape(message)):
        check_verdict(*args)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    return repo


def commit(repo: Path, files: dict[str, object], message: str) -> str:
    for path, content in files.items():
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            yaml.safe_dump(content) if path.endswith(".lock") else json.dumps(content)
        )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def test_gto_versions_bump_minor_and_a_rerun_registers_nothing(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in (("NAME", "t"), ("EMAIL", "t@example.com")):
        monkeypatch.setenv(f"GIT_AUTHOR_{name}", value)
        monkeypatch.setenv(f"GIT_COMMITTER_{name}", value)
    first = commit(repo, {"a.json": 1}, "one")
    assert register(repo, "churn", "prod", first) == ("v0.1.0", ["churn#prod#1", "churn@v0.1.0"])
    second = commit(repo, {"a.json": 2}, "two")
    assert register(repo, "churn", "prod", second) == ("v0.2.0", ["churn#prod#2", "churn@v0.2.0"])
    before = git(repo, "tag", "--list")
    assert register(repo, "churn", "prod", second) == ("v0.2.0", ["churn#prod#2", "churn@v0.2.0"])
    assert git(repo, "tag", "--list") == before
    assert git(repo, "rev-list", "-n1", "churn@v0.1.0").strip() == first


def test_promote_refuses_an_unblessed_commit_and_tags_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "metrics/gate.json": gate(blessed=False),
        "dvc.lock": lock(),
        "models/model_card.json": card(),
    }
    commit(repo, files, "a challenger the gate refused")
    code = promote_main(["--repo", str(repo), "--out", str(repo / "build"), "--remote", ""])
    assert code == 1
    assert "promote: refused: metrics/gate.json: the gate did not bless" in capsys.readouterr().err
    assert git(repo, "tag", "--list") == ""
    assert not (repo / "build").exists()


def test_promote_refuses_a_workspace_that_differs_from_the_commit(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"metrics/gate.json": gate(), "dvc.lock": lock(), "models/model_card.json": card()}
    commit(repo, files, "blessed")
    (repo / "metrics/gate.json").write_text(json.dumps(gate(model="e" * 32)))
    code = promote_main(["--repo", str(repo), "--out", str(repo / "build"), "--remote", ""])
    assert code == 1
    assert "metrics/gate.json: the workspace copy differs from HEAD's" in capsys.readouterr().err


def test_the_canary_record_fits_the_card_schema() -> None:
    features = {
        "entity_key": "customer_id",
        "numeric": [{"name": "orders", "min": 0.0, "max": 4.0}, {"name": "x", "min": None}],
        "categorical": [
            {"name": "plan", "allowed": ["basic", "premium"], "observed": ["premium"]},
            {"name": "country", "allowed": None, "observed": ["DE", "FR"]},
        ],
    }
    assert canary_record(ModelCard({"features": features})) == {
        "customer_id": 1,
        "orders": 2.0,
        "x": None,
        "plan": "basic",
        "country": "DE",
    }


def test_the_canary_needs_a_build_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert canary_main(["--context", str(tmp_path)]) == 2
    assert f"{tmp_path}/model/model_card.json not found" in capsys.readouterr().err


def test_promote_serves_the_champion_and_refuses_a_model_that_is_not(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The blessed model must be the champion models/champion.dvc records: without the record,
    or with another model in it, nothing is tagged and no context is written."""
    from stages.cli.promote import champion_model
    from stages.contract.card import file_md5

    onnx = repo / "models/model.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"the blessed graph")
    blessed = file_md5(onnx)
    files = {"metrics/gate.json": gate(), "dvc.lock": lock(onnx=blessed),
             "models/model_card.json": card(onnx=blessed)}  # fmt: skip
    commit(repo, files, "blessed, champion not recorded")
    argv = ["--repo", str(repo), "--out", str(repo / "build"), "--remote", "", "--no-pull"]
    assert promote_main(argv) == 1
    assert "models/champion.dvc is not committed" in capsys.readouterr().err

    champion = repo / "models/champion/model.onnx"
    champion.parent.mkdir(parents=True)
    champion.write_bytes(b"last month's graph")
    commit(repo, {"models/champion.dvc": {"outs": [{"path": "champion"}]}}, "stale champion")
    assert promote_main(argv) == 1
    err = capsys.readouterr().err
    assert f"models/champion/model.onnx: holds {file_md5(champion)}, not the blessed" in err
    assert git(repo, "tag", "--list") == "" and not (repo / "build").exists()

    champion.write_bytes(b"the blessed graph")
    assert champion_model(repo, blessed, pull=False) == champion
